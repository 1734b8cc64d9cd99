"""A corpus of malformed and hostile requests against a real server: every one gets its 4xx, none a 500.

Each case names the status, the ``param`` and (where it matters) the ``code``
it must get back in OpenAI's error shape. After the corpus the server must
still edit, its log must hold no traceback, and its memory must be back near
where it started.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from devtools.server import start_server, stop
from tests.helpers import edits_request_head, gradient_png, image_bytes, multipart_body, png_declaring

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
LIMITS = {
    "IMGEDIT_MAX_BODY_BYTES": str(4 * MiB),
    "IMGEDIT_MAX_IMAGE_BYTES": str(2 * MiB),
    "IMGEDIT_MAX_FIELD_BYTES": str(64 * 1024),
    "IMGEDIT_MAX_INPUT_PIXELS": str(4_000_000),
    "IMGEDIT_MAX_PARTS": "32",
    "IMGEDIT_MAX_PROMPT_CHARS": "8000",
    # Short enough for the stall and slow-origin cases to be quick, long enough that nothing on loopback
    # (an upload, a fetch from the local origin) comes near them, however busy the machine.
    "IMGEDIT_BODY_IDLE_TIMEOUT": "2",
    "IMGEDIT_URL_TIMEOUT": "3",
}
#: Released when the tests are done: until then the origin's slow path never answers.
NEVER = threading.Event()
PNG = gradient_png(64, 64)


@dataclass
class Case:
    """One bad request: form parts, or a raw body with its content type."""

    name: str
    status: int
    param: str | None
    code: str | None = None
    parts: list[tuple[str, bytes | str]] = field(default_factory=list)
    raw: tuple[bytes, str] | None = None


def mask(size=(64, 64), hole=(0, 0, 32, 64), mode="RGBA") -> bytes:
    image = Image.new(mode, size, (0, 0, 0, 255) if mode == "RGBA" else 0)
    if mode == "RGBA":
        image.paste((0, 0, 0, 0), hole)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def edit(*extra: tuple[str, bytes | str], prompt: str | None = "p", image: bytes | None = PNG):
    parts: list[tuple[str, bytes | str]] = []
    if image is not None:
        parts.append(("image", image))
    if prompt is not None:
        parts.append(("prompt", prompt))
    return [*parts, *extra]


def raw(parts: list[tuple[str, bytes, str | None]]) -> tuple[bytes, str]:
    return multipart_body(parts)


PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"
SVG = b"<svg xmlns='http://www.w3.org/2000/svg' width='64' height='64'/>"
HTML = b"<!doctype html><html><body>hello</body></html>"
JPEG = image_bytes(64, 64, fmt="JPEG")
_noise = io.BytesIO()  # a picture that does not compress, so half of it is really cut short
Image.effect_noise((128, 128), 80).convert("RGB").save(_noise, format="PNG")
NOISE_PNG = _noise.getvalue()
BAD_EXIF = (Path(__file__).parents[1] / "data" / "bad_exif.jpg").read_bytes()


def json_body(**fields: object) -> tuple[bytes, str]:
    return json.dumps(fields).encode(), "application/json"


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


JSON_IMAGE = [{"image_url": data_url(PNG)}]
APPLICATION_JSON = "application/json"

CASES = [
    # The body itself.
    Case("json body without images", 422, "image", "missing_required_parameter", raw=json_body(prompt="p")),
    Case("text body", 400, None, "invalid_content_type", raw=(b"prompt=p", "text/plain")),
    Case(
        "multipart boundary past the parser's limit",
        400,
        None,
        "invalid_multipart",
        raw=(b"--" + b"b" * 300 + b"--\r\n", "multipart/form-data; boundary=" + "b" * 300),
    ),
    # JSON bodies.
    Case("malformed json", 400, None, "invalid_json", raw=(b'{"prompt": "p",', APPLICATION_JSON)),
    Case("json array", 400, None, "invalid_json", raw=(b'[{"prompt": "p"}]', APPLICATION_JSON)),
    Case("json string", 400, None, "invalid_json", raw=(b'"p"', APPLICATION_JSON)),
    Case("deep json", 400, None, "invalid_json", raw=(b"[" * 100_000 + b"]" * 100_000, APPLICATION_JSON)),
    Case("json NaN", 400, None, "invalid_json", raw=(b'{"prompt": "p", "guidance_scale": NaN}', APPLICATION_JSON)),
    Case("json huge number", 400, None, "invalid_json", raw=(b'{"seed": ' + b"7" * 5000 + b"}", APPLICATION_JSON)),
    Case("json bad utf-8", 400, None, "invalid_json", raw=(b'{"prompt": "\xff\xfe"}', APPLICATION_JSON)),
    Case("json n as text", 400, "n", "invalid_value", raw=json_body(prompt="p", images=JSON_IMAGE, n="2")),
    # What a coverage-guided fuzzer found to end in a 500, one case per class.
    Case(
        "json number beyond a double",
        400,
        "guidance_scale",
        raw=json_body(prompt="p", images=JSON_IMAGE, guidance_scale=10**400),
    ),
    Case(
        "lora scale beyond a double",
        400,
        "lora",
        raw=json_body(prompt="p", images=JSON_IMAGE, lora=[{"name": "ink", "scale": 10**400}]),
    ),
    Case(
        "lora json text beyond a double",
        400,
        "lora",
        parts=edit(("lora", '{"name": "ink", "scale": 1' + "0" * 400 + "}")),
    ),
    Case(
        "lora json text nested deep",
        400,
        "lora",
        "invalid_json",
        parts=edit(("lora", '{"name":"ink","x":' + "[" * 1010 + "]" * 1010 + "}")),
    ),
    Case("json prompt lone surrogate", 400, "prompt", "invalid_text", raw=json_body(prompt="red \ud800 roses")),
    Case(
        "json data url lone surrogate",
        400,
        "images",
        "invalid_text",
        raw=json_body(prompt="p", images=[{"image_url": "data:image/png,\udfff"}]),
    ),
    Case("json n as bool", 400, "n", "invalid_value", raw=json_body(prompt="p", images=JSON_IMAGE, n=True)),
    Case("json prompt number", 400, "prompt", "invalid_value", raw=json_body(prompt=5, images=JSON_IMAGE)),
    Case("json file id", 400, "images", "unsupported_file_id", raw=json_body(prompt="p", images=[{"file_id": "f"}])),
    Case("json bare string image", 400, "images[0]", "invalid_value", raw=json_body(prompt="p", images=["x"])),
    Case("json images an object", 400, "images[0]", "invalid_value", raw=json_body(prompt="p", images={"a": 1})),
    Case(
        "json data url of html",
        400,
        "images[0]",
        "invalid_image_format",
        raw=json_body(prompt="p", images=[{"image_url": data_url(HTML)}]),
    ),
    Case(
        "json metadata host",
        400,
        "images[0]",
        "url_not_allowed",
        raw=json_body(prompt="p", images=[{"image_url": "http://169.254.169.254/latest/meta-data/"}]),
    ),
    Case("json too many images", 400, "images", "too_many_images", raw=json_body(prompt="p", images=JSON_IMAGE * 5)),
    Case(
        "json mask without alpha",
        400,
        "mask",
        "invalid_value",
        raw=json_body(prompt="p", images=JSON_IMAGE, mask={"image_url": data_url(PNG)}),
    ),
    Case(
        "json gif output",
        400,
        "output_format",
        "invalid_value",
        raw=json_body(prompt="p", images=JSON_IMAGE, output_format="gif"),
    ),
    Case("urlencoded body", 400, None, "invalid_content_type", raw=(b"prompt=p", "application/x-www-form-urlencoded")),
    Case("no boundary", 400, None, "invalid_multipart", raw=(b"--x\r\n", "multipart/form-data")),
    Case("garbage", 400, None, "invalid_multipart", raw=(b"\x00\xff" * 100, "multipart/form-data; boundary=zz")),
    Case("empty multipart", 400, None, "invalid_multipart", raw=(b"", "multipart/form-data; boundary=zz")),
    Case(
        "no closing boundary",
        400,
        None,
        "invalid_multipart",
        raw=(raw([("prompt", b"p", None)])[0][:-8], raw([("prompt", b"p", None)])[1]),
    ),
    Case(
        "part without a name",
        400,
        None,
        "invalid_multipart",
        raw=(
            b'--b\r\nContent-Disposition: form-data; filename="a"\r\n\r\nx\r\n--b--\r\n',
            "multipart/form-data; boundary=b",
        ),
    ),
    Case("too many parts", 400, None, "too_many_parts", parts=edit(*[("junk", "x")] * 40)),
    Case("image over its byte limit", 413, "image", "payload_too_large", parts=edit(image=PNG + b"\0" * (2 * MiB))),
    Case("field over its byte limit", 413, "prompt", "payload_too_large", parts=edit(prompt="p" * (65 * 1024))),
    Case("duplicate prompt", 400, "prompt", "duplicate_parameter", parts=edit(("prompt", "again"))),
    Case("duplicate mask", 400, "mask", "duplicate_parameter", parts=edit(("mask", mask()), ("mask", mask()))),
    Case("prompt not utf-8", 400, "prompt", parts=edit(("prompt", b"\xff\xfe\xfd"), prompt=None)),
    # Fields.
    Case("no prompt", 400, "prompt", "missing_required_parameter", parts=edit(prompt=None)),
    Case("empty prompt", 400, "prompt", "missing_required_parameter", parts=edit(prompt="")),
    Case("blank prompt", 400, "prompt", "missing_required_parameter", parts=edit(prompt="   \n")),
    Case("prompt too long", 400, "prompt", parts=edit(prompt="p" * 8001)),
    Case("no image and no url", 422, "image", "missing_required_parameter", parts=edit(image=None)),
    Case("another model", 400, "model", "model_not_found", parts=edit(("model", "gpt-image-1"))),
    Case("n zero", 400, "n", parts=edit(("n", "0"))),
    Case("n eleven", 400, "n", parts=edit(("n", "11"))),
    Case("n not a number", 400, "n", parts=edit(("n", "two"))),
    Case("n fractional", 400, "n", parts=edit(("n", "1.5"))),
    Case("size half", 400, "size", parts=edit(("size", "1024x"))),
    Case("size too small", 400, "size", parts=edit(("size", "32x32"))),
    Case("size too many pixels", 400, "size", parts=edit(("size", "4096x4096"))),
    Case("size negative", 400, "size", parts=edit(("size", "-64x64"))),
    Case("size absurd", 400, "size", parts=edit(("size", "99999999999x1"))),
    Case("size star", 400, "size", parts=edit(("size", "64*64"))),
    Case("response_format gif", 400, "response_format", parts=edit(("response_format", "gif"))),
    Case("output_format gif", 400, "output_format", parts=edit(("output_format", "gif"))),
    Case("compression over 100", 400, "output_compression", parts=edit(("output_compression", "101"))),
    Case("compression negative", 400, "output_compression", parts=edit(("output_compression", "-1"))),
    Case("compression word", 400, "output_compression", parts=edit(("output_compression", "ten"))),
    Case(
        "transparent jpeg",
        400,
        "background",
        parts=edit(("background", "transparent"), ("output_format", "jpg")),
    ),
    Case("background green", 400, "background", parts=edit(("background", "green"))),
    Case("quality ultra", 400, "quality", parts=edit(("quality", "ultra"))),
    Case("no steps", 400, "num_inference_steps", parts=edit(("num_inference_steps", "0"))),
    Case("too many steps", 400, "num_inference_steps", parts=edit(("num_inference_steps", "201"))),
    Case("guidance nan", 400, "guidance_scale", parts=edit(("guidance_scale", "nan"))),
    Case("guidance infinite", 400, "guidance_scale", parts=edit(("guidance_scale", "inf"))),
    Case("guidance too high", 400, "guidance_scale", parts=edit(("guidance_scale", "21"))),
    Case("true cfg negative", 400, "true_cfg_scale", parts=edit(("true_cfg_scale", "-1"))),
    Case("seed negative", 400, "seed", parts=edit(("seed", "-1"))),
    Case("seed over 64 bits", 400, "seed", parts=edit(("seed", str(2**64)))),
    Case("stream maybe", 400, "stream", parts=edit(("stream", "maybe"))),
    Case("partial images four", 400, "partial_images", parts=edit(("partial_images", "4"))),
    Case("strength two", 400, "strength", parts=edit(("strength", "2"))),
    Case("image guidance negative", 400, "image_guidance_scale", parts=edit(("image_guidance_scale", "-3"))),
    Case("five images", 400, "image", "too_many_images", parts=edit(*[("image[]", PNG)] * 4)),
    Case("prompt too long for the model", 400, "prompt", "prompt_too_long", parts=edit(prompt="word " * 1000)),
    # Images.
    Case("empty image", 400, "image[0]", "invalid_image", parts=edit(image=b"")),
    Case("svg", 400, "image[0]", "invalid_image_format", parts=edit(image=SVG)),
    Case("pdf", 400, "image[0]", "invalid_image_format", parts=edit(image=PDF)),
    Case("html", 400, "image[0]", "invalid_image_format", parts=edit(image=HTML)),
    Case(
        "truncated png second",
        400,
        "image[1]",
        "invalid_image",
        parts=edit(("image", NOISE_PNG[: len(NOISE_PNG) // 2])),
    ),
    Case("corrupt jpeg", 400, "image[0]", parts=edit(image=JPEG[:200] + b"\x00" * 50)),
    Case("decompression bomb", 400, "image[0]", "image_too_large", parts=edit(image=png_declaring(50_000, 50_000))),
    Case("over the pixel limit", 400, "image[0]", "image_too_large", parts=edit(image=png_declaring(2500, 2000))),
    Case("corrupt exif", 400, "image[0]", "invalid_image", parts=edit(image=BAD_EXIF)),
    Case("too elongated", 400, "image[1]", "invalid_image", parts=edit(("image", image_bytes(3000, 6)))),
    # Masks.
    Case("mask of another size", 400, "mask", parts=edit(("mask", mask(size=(32, 32), hole=(0, 0, 16, 16))))),
    Case("mask without alpha", 400, "mask", parts=edit(("mask", mask(mode="L")))),
    Case("mask not an image", 400, "mask", "invalid_image_format", parts=edit(("mask", HTML))),
    Case("mask with nothing to edit", 400, "mask", parts=edit(("mask", mask(hole=(0, 0, 0, 0))))),
    # URLs: the network guard.
    *[
        Case(f"url {url}", 400, "url[0]", "url_not_allowed", parts=edit(("url", url), image=None))
        for url in (
            "http://127.0.0.1/a.png",
            "http://2130706433/a.png",
            "http://0x7f000001/a.png",
            "http://017700000001/a.png",
            "http://127.1/a.png",
            "http://[::1]/a.png",
            "http://[::ffff:127.0.0.1]/a.png",
            "http://localhost./a.png",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://10.0.0.1/a.png",
            "http://0.0.0.0:3000/",
        )
    ],
    *[
        Case(f"url {url}", 400, "url[0]", "invalid_url", parts=edit(("url", url), image=None))
        for url in ("file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com/", "http://[::1/a.png")
    ],
    Case(
        "data url not base64",
        400,
        "url[0]",
        "invalid_url",
        parts=edit(("url", "data:image/png;base64,!!!"), image=None),
    ),
    Case(
        "data url not an image", 400, "url[0]", "invalid_image_format", parts=edit(("url[]", "data:,hello"), image=None)
    ),
    Case("empty url", 400, "url[0]", parts=edit(("url", "   "), image=None)),
    Case(
        "second url bad",
        400,
        "url[1]",
        "invalid_url",
        parts=edit(
            ("url[]", "data:image/png;base64," + base64.b64encode(PNG).decode()), ("url[]", "ftp://x/"), image=None
        ),
    ),
]


def send(http: httpx.Client, case: Case) -> httpx.Response:
    if case.raw is not None:
        body, content_type = case.raw
    else:
        body, content_type = multipart_body(
            [
                (
                    name,
                    value.encode() if isinstance(value, str) else value,
                    "f" if name in ("image", "image[]", "mask") else None,
                )
                for name, value in case.parts
            ]
        )
    return http.post("/v1/images/edits", content=body, headers={"content-type": content_type})


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("corpus"), **LIMITS)
    yield server
    stop(server.process)


def test_the_corpus_is_large_and_distinct():
    assert len(CASES) >= 60
    assert len({case.name for case in CASES}) == len(CASES)


def test_every_bad_request_gets_its_4xx_and_the_server_keeps_serving(guarded):
    failures = []
    with httpx.Client(base_url=guarded.url, timeout=60) as http:
        assert send(http, Case("valid", 200, None, parts=edit())).status_code == 200
        before = guarded.worker().memory_info().rss
        for _ in range(2):  # twice: memory must not grow with repetition
            for case in CASES:
                response = send(http, case)
                error = (
                    response.json().get("error", {})
                    if response.headers.get("content-type") == "application/json"
                    else {}
                )
                outcome = (response.status_code, error.get("param"), error.get("code") if case.code else None)
                expected = (case.status, case.param, case.code)
                if outcome != expected or set(error) != {"message", "type", "param", "code"} or not error["message"]:
                    failures.append(f"{case.name}: got {outcome}, expected {expected}: {response.text[:120]}")
        after_valid = send(http, Case("valid", 200, None, parts=edit()))
        after = guarded.worker().memory_info().rss
    assert failures == []
    assert after_valid.status_code == 200
    assert "Traceback" not in guarded.log()
    print(f"worker RSS before {before / MiB:.0f} MiB, after {after / MiB:.0f} MiB")
    assert after <= before * 1.25 + 64 * MiB, (before, after)


def test_declared_and_streamed_bodies_over_the_limit_are_413(guarded):
    with httpx.Client(base_url=guarded.url, timeout=60) as http:
        declared = http.post(
            "/v1/images/edits",
            content=b"x" * (4 * MiB + 1),
            headers={"content-type": "multipart/form-data; boundary=zz"},
        )
        assert declared.status_code == 413

        # Three images each under the 2 MiB image limit, 5.7 MiB in all: the body limit stops it.
        body, content_type = multipart_body([("image[]", b"i" * (19 * MiB // 10), "a.png")] * 3)

        def chunks():
            for start in range(0, len(body), 256 * 1024):
                yield body[start : start + 256 * 1024]

        streamed = http.post("/v1/images/edits", content=chunks(), headers={"content-type": content_type})
        assert streamed.status_code == 413
        assert streamed.json()["error"]["message"].startswith("The request body exceeds")
        assert "Content-Length" not in streamed.request.headers  # sent chunked: no declared size to trust

        # The same for JSON: a data URL of 5 MiB, declared and chunked.
        big_json = json.dumps({"prompt": "p", "images": [{"image_url": data_url(b"i" * 5 * MiB)}]}).encode()
        declared_json = http.post("/v1/images/edits", content=big_json, headers={"content-type": APPLICATION_JSON})
        streamed_json = http.post(
            "/v1/images/edits",
            content=(big_json[start : start + 256 * 1024] for start in range(0, len(big_json), 256 * 1024)),
            headers={"content-type": APPLICATION_JSON},
        )
        assert (declared_json.status_code, streamed_json.status_code) == (413, 413)
        # Unknown keys are ignored, and the server still serves JSON after all of this.
        fine = http.post(
            "/v1/images/edits", json={"prompt": "p", "images": JSON_IMAGE, "temperature": 2, "extra": {"a": [1]}}
        )
        assert fine.status_code == 200, fine.text


def test_a_client_that_stalls_gets_408_and_others_are_served(guarded):
    address = urlsplit(guarded.url)
    body, content_type = multipart_body([("image", PNG, "a.png"), ("prompt", b"p", None)])
    head = edits_request_head(address.netloc, content_type, len(body))
    with socket.create_connection((address.hostname, address.port)) as connection:
        connection.sendall(head + body[: len(body) // 2])
        connection.settimeout(30)
        answer = connection.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408")
    assert httpx.post(f"{guarded.url}/v1/images/edits", files={"image": PNG}, data={"prompt": "p"}).status_code == 200


class _Origin(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/big.png":
            self.send_response(200)
            self.send_header("Content-Length", str(60 * MiB))
            self.end_headers()
        elif self.path == "/endless.png":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"10000\r\n" + b"z" * 65536 + b"\r\n")
            except OSError:
                return
        elif self.path == "/slow.png":
            NEVER.wait()  # past any URL timeout
            self.send_response(200)
            self.end_headers()
        elif self.path == "/page.html":
            body = HTML
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/hop/"):
            left = int(self.path.rsplit("/", 1)[1])
            self.send_response(302)
            self.send_header("Location", f"/hop/{left + 1}")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture(scope="module")
def origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Origin)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    NEVER.set()
    server.shutdown()


@pytest.fixture(scope="module")
def trusting(tmp_path_factory):
    """A server that may fetch from loopback: only for the origin-based URL cases."""
    server = start_server(
        tmp_path_factory.mktemp("trusting"), IMGEDIT_URL_ALLOW_PRIVATE="true", IMGEDIT_URL_MAX_BYTES=str(MiB), **LIMITS
    )
    yield server
    stop(server.process)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/big.png", "image_too_large"),
        ("/endless.png", "image_too_large"),
        ("/slow.png", "url_fetch_failed"),
        ("/page.html", "invalid_image_format"),
        ("/hop/0", "url_fetch_failed"),
        ("/missing.png", "url_fetch_failed"),
    ],
)
def test_bad_url_targets_are_400s(trusting, origin, path, code):
    body, content_type = multipart_body([("prompt", b"p", None), ("url", f"{origin}{path}".encode(), None)])
    response = httpx.post(
        f"{trusting.url}/v1/images/edits", content=body, headers={"content-type": content_type}, timeout=60
    )
    assert response.status_code == 400, response.text
    assert (response.json()["error"]["param"], response.json()["error"]["code"]) == ("url[0]", code)
