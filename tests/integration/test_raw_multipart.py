"""Hand-built multipart requests through httpx: the shapes curl and other clients send."""

from __future__ import annotations

import contextlib

import httpx
import pytest

from tests.helpers import edits_request_head, gradient_png, image_bytes, multipart_body

pytestmark = pytest.mark.integration

RED = gradient_png(64, 64)
BLUE = image_bytes(64, 64, (10, 20, 230))


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


def edit(http: httpx.Client, parts: list[tuple[str, bytes, str | None]], **headers: str) -> httpx.Response:
    body, content_type = multipart_body(parts)
    return http.post("/v1/images/edits", content=body, headers={"content-type": content_type, **headers})


def first_image(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["data"][0]["b64_json"]


def test_repeated_image_and_mixed_brackets_merge_in_arrival_order(http):
    common = [("prompt", b"swap", None), ("seed", b"3", None)]
    as_brackets = edit(http, [("image[]", RED, "a.png"), ("image[]", BLUE, "b.png"), *common])
    repeated = edit(http, [("image", RED, "a.png"), ("image", BLUE, "b.png"), *common])
    mixed = edit(http, [("image", RED, "a.png"), ("image[]", BLUE, "b.png"), *common])
    reversed_order = edit(http, [("image[]", BLUE, "b.png"), ("image", RED, "a.png"), *common])
    only_first = edit(http, [("image", RED, "a.png"), *common])
    assert first_image(as_brackets) == first_image(repeated) == first_image(mixed)
    assert first_image(reversed_order) != first_image(as_brackets)
    assert first_image(only_first) != first_image(as_brackets)


def test_fields_after_files_and_files_without_filename(http):
    response = edit(http, [("image", RED, None), ("prompt", b"late prompt", None), ("n", b"2", None)])
    assert response.status_code == 200
    assert len(response.json()["data"]) == 2


@pytest.mark.parametrize("prompt", [b"123", b"null", b'"quoted"', b"{}"])
def test_json_looking_prompts_are_plain_text(http, prompt):
    assert edit(http, [("image", RED, "a.png"), ("prompt", prompt, None)]).status_code == 200


def test_quotes_in_a_prompt_are_kept(http):
    """If the server JSON-decoded fields, '"quoted"' and 'quoted' would be the same prompt."""
    quoted = edit(http, [("image", RED, "a.png"), ("prompt", b'"quoted"', None), ("seed", b"1", None)])
    bare = edit(http, [("image", RED, "a.png"), ("prompt", b"quoted", None), ("seed", b"1", None)])
    assert first_image(quoted) != first_image(bare)


def test_errors_are_openai_shaped_and_carry_the_request_id(server, http):
    response = edit(
        http, [("image", RED, "a.png"), ("prompt", b"p", None), ("n", b"11", None)], **{"x-request-id": "raw-1"}
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"] == "raw-1"
    body = response.json()
    assert server.wait_for_log("[raw-1] POST /v1/images/edits status=400 seconds=")
    assert body["error"]["param"] == "n"
    assert body["error"]["type"] == "invalid_request_error"
    assert body["detail"] == body["error"]["message"]


def test_long_request_ids_are_truncated_and_missing_ones_generated(http):
    response = edit(http, [("prompt", b"p", None)], **{"x-request-id": "x" * 300})
    assert response.headers["x-request-id"] == "x" * 128
    assert edit(http, [("prompt", b"p", None)]).headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b'{"prompt": "p"}', "application/json", 422),  # a JSON body with no image
        (b"garbage", "multipart/form-data; boundary=zzz", 400),
        (
            b'--zzz\r\nContent-Disposition: form-data; name="prompt"\r\n\r\nunterminated',
            "multipart/form-data; boundary=zzz",
            400,
        ),
    ],
)
def test_malformed_bodies_are_4xx(http, content, content_type, status):
    response = http.post("/v1/images/edits", content=content, headers={"content-type": content_type})
    assert response.status_code == status
    assert "error" in response.json()


def test_bad_image_bytes_are_400_naming_the_index(http):
    response = edit(http, [("image", RED, "a.png"), ("image", b"GIF89a-broken", "b.gif"), ("prompt", b"p", None)])
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "image[1]"


def test_private_urls_are_refused(http):
    response = edit(http, [("url", b"http://127.0.0.1:1/a.png", None), ("prompt", b"p", None)])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "url_not_allowed"
    assert response.json()["error"]["param"] == "url[0]"


def test_unknown_v1_paths_and_methods_are_openai_shaped(http):
    missing = http.get("/v1/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    wrong_method = http.get("/v1/images/edits")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert http.get("/v1/models/other").status_code == 404
    wrong_on_models = http.post("/v1/models")
    assert wrong_on_models.status_code == 405 and wrong_on_models.headers["allow"] == "GET"


def test_the_server_keeps_serving_after_errors(http):
    assert first_image(edit(http, [("image", RED, "a.png"), ("prompt", b"still here", None)]))


def test_uploads_and_prompts_stay_off_disk_and_out_of_info_logs(server, http):
    marker = b"imgedit-private-marker-6d1f"
    import io

    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", marker.decode())
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG", pnginfo=info)
    big = buffer.getvalue() + b"\0" * (2 * 1024 * 1024)  # past Starlette's 1 MiB spooling threshold
    response = edit(http, [("image", big, "secret.png"), ("prompt", marker, None), ("user", marker, None)])
    assert response.status_code == 200
    assert marker.decode() not in server.log()
    for path in server.tmp_dir.rglob("*"):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):  # a file another part removed meanwhile
            assert marker not in path.read_bytes(), path


def test_a_client_that_hangs_up_mid_upload_leaves_no_traceback(server, http):
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(server.url)
    body, content_type = multipart_body([("image", RED * 50, "a.png"), ("prompt", b"p", None)])
    head = edits_request_head(address.netloc, content_type, len(body), x_request_id="hang-up-1")
    with socket.create_connection((address.hostname, address.port)) as connection:
        connection.sendall(head + body[: len(body) // 3])
    assert server.wait_for_log("[hang-up-1] POST /v1/images/edits status=")
    assert "Traceback" not in server.log()
    assert first_image(edit(http, [("image", RED, "a.png"), ("prompt", b"after the hang-up", None)]))
