"""The playground page in a real headless Chromium, against a real server with the tiny FLUX.1 Kontext.

Chromium is Debian's package (``make system-deps`` installs it), driven by
Playwright's Python package with ``executable_path``; Playwright's own browser
downloads are never used. Without Chromium these tests are skipped, unless
``REQUIRE_CHROMIUM=1`` (set by ``make test``) makes that a failure.
"""

from __future__ import annotations

import email.parser
import email.policy
import io
import os
import re
import shutil

import httpx
import pytest
from PIL import Image

from devtools.lora_files import write_lora
from devtools.server import start_server, stop
from imgedit.model.tiny import build_tiny
from tests.helpers import gradient_png
from tests.integration.conftest import API_KEYS, FAMILIES

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MODEL = "tiny:flux-kontext"
SERVED = "flux-kontext"
#: The shared server behind API keys serves the default tiny model.
KEY, KEYED_SERVED = API_KEYS[0], "qwen-image-edit-plus"
INPUT_SIZE = (200, 150)
EXPECTED_CONSOLE_ERROR = "Failed to load resource: the server responded with a status of 4"


def chromium_path() -> str | None:
    return os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def unavailable(reason: str) -> None:
    if os.environ.get("REQUIRE_CHROMIUM") == "1":
        pytest.fail(f"{reason}; REQUIRE_CHROMIUM=1 says these tests must run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        unavailable("Chromium is not installed (`make system-deps` installs Debian's chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright's Python package is not installed (it is in the `test` extra)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """The open server, with one LoRA adapter the page offers."""
    tmp = tmp_path_factory.mktemp("playground")
    ink = write_lora(build_tiny(MODEL).pipeline, tmp / "ink", seed=1)
    server = start_server(tmp, IMGEDIT_MODEL=MODEL, IMGEDIT_LORA_ADAPTERS=f"ink={ink}")
    yield server
    stop(server.process)


@pytest.fixture(scope="module")
def guarded_server(keyed_server):
    return keyed_server


@pytest.fixture
def page(browser):
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    problems: list[str] = []

    def console(message) -> None:
        # A Content-Security-Policy violation or a script error shows up here; so does every
        # 4xx answer (the tests cause some on purpose), which the page shows itself.
        if message.type == "error" and not message.text.startswith(EXPECTED_CONSOLE_ERROR):
            problems.append(message.text)

    opened.on("console", console)
    opened.on("pageerror", lambda error: problems.append(str(error)))
    yield opened
    context.close()
    assert problems == []


@pytest.fixture
def input_png(tmp_path):
    path = tmp_path / "input.png"
    path.write_bytes(gradient_png(*INPUT_SIZE))
    return path


def form_parts(body: bytes, content_type: str) -> dict[str, bytes]:
    """The parts of a ``multipart/form-data`` body, by name (the last of each name)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
        for part in message.iter_parts()
    }


def record_edits(page) -> list:
    """The edit requests the page will send, bodies included (``expect_request`` misses bodies built from blobs)."""
    sent = []

    def record(route) -> None:
        sent.append(route.request)
        route.continue_()

    page.route("**/v1/images/edits", record)
    return sent


def api_error(server, **fields: str) -> str:
    """The message the API itself gives for an edit with ``fields``."""
    response = httpx.post(
        f"{server.url}/v1/images/edits", files={"image": gradient_png(*INPUT_SIZE)}, data={"prompt": "p", **fields}
    )
    assert response.status_code == 400
    return response.json()["error"]["message"]


def choose_image_and_prompt(page, input_png, **fields: str) -> None:
    page.set_input_files("#images", str(input_png))
    page.fill("#prompt", "make it snow")
    for field, value in fields.items():
        page.fill(f"#{field}", value)


def test_an_edit_with_a_painted_mask_shows_previews_then_a_downloadable_result(page, open_server, input_png, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{open_server.url}/playground")  # redirected to /playground/
    expect(page.locator("#model-status")).to_have_text(f"Model: {SERVED}; LoRA adapters: ink")
    expect(page.locator("#key-form")).to_be_hidden()
    choose_image_and_prompt(page, input_png, size="256x256", steps="4", seed="1234")
    page.select_option("#partial-images", "2")
    page.select_option("#lora", "ink")

    canvas = page.locator("#mask-canvas")
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()

    sent = record_edits(page)
    # One observer records, in order, what is added to the previews and results lists.
    page.evaluate(
        """() => {
            window.arrivals = [];
            new MutationObserver((records) => {
                for (const record of records) {
                    for (const node of record.addedNodes) window.arrivals.push(record.target.id);
                }
            }).observe(document.querySelector("main"), { childList: true, subtree: true });
        }"""
    )
    page.click("#edit-button")
    expect(page.locator("#previews img").first).to_be_visible()
    (request,) = sent
    parts = form_parts(request.post_data_buffer, request.headers["content-type"])
    assert parts["stream"] == b"true" and parts["size"] == b"256x256" and parts["seed"] == b"1234"
    assert parts["model"] == SERVED.encode() and parts["partial_images"] == b"2" and parts["lora"] == b"ink"
    mask = Image.open(io.BytesIO(parts["mask"]))
    assert mask.format == "PNG" and mask.size == INPUT_SIZE
    alpha = mask.getchannel("A")
    assert alpha.getpixel((100, 75)) == 0  # on the stroke: to be edited
    assert alpha.getpixel((5, 5)) == 255 and alpha.getpixel((100, 5)) == 255  # away from it: kept

    result = page.locator("#results img")
    expect(result).to_have_count(1)
    page.wait_for_function(
        "() => { const i = document.querySelector('#results img'); return i.complete && i.naturalWidth }"
    )
    assert result.evaluate("image => [image.naturalWidth, image.naturalHeight]") == [256, 256]
    expect(page.locator("#results")).to_contain_text("seed 1234")
    expect(page.locator("#run-status")).to_have_text(re.compile(r"Done: 1 image in \d+\.\d s\."))
    assert page.locator("#progress").evaluate("bar => bar.value === bar.max")
    arrivals = [target for target in page.evaluate("window.arrivals") if target in ("previews", "results")]
    assert arrivals == ["previews", "previews", "results"]  # the previews came first, while the edit ran

    link = page.locator("#results a[download]")
    expect(link).to_have_attribute("download", "imgedit-1234.png")
    with page.expect_download() as download:
        link.click()
    assert Image.open(download.value.path()).size == (256, 256)

    screenshot = tmp_path / "playground.png"
    page.screenshot(path=screenshot, full_page=True)
    assert screenshot.stat().st_size > 0


def test_an_api_error_is_shown_as_the_api_words_it(page, open_server, input_png):
    from playwright.sync_api import expect

    message = api_error(open_server, size="7x7")
    page.goto(f"{open_server.url}/playground/")
    expect(page.locator("#model-status")).to_have_text(f"Model: {SERVED}; LoRA adapters: ink")
    choose_image_and_prompt(page, input_png, size="7x7")
    page.click("#edit-button")
    expect(page.locator("#error")).to_have_text(message)
    expect(page.locator("#edit-button")).to_be_enabled()
    expect(page.locator("#results img")).to_have_count(0)


def test_the_page_asks_for_the_api_key_and_sends_it_as_a_bearer_token(page, guarded_server, input_png):
    from playwright.sync_api import expect

    missing = httpx.get(f"{guarded_server.url}/v1/models").json()["error"]["message"]
    wrong = httpx.get(f"{guarded_server.url}/v1/models", headers={"Authorization": "Bearer sk-wrong"})
    page.goto(f"{guarded_server.url}/playground/")
    key = page.locator("#api-key")
    expect(key).to_be_focused()
    expect(page.locator("#key-error")).to_have_text(missing)

    key.fill("sk-wrong")
    key.press("Enter")
    expect(page.locator("#key-error")).to_have_text(wrong.json()["error"]["message"])
    key.fill(KEY)
    key.press("Enter")
    expect(page.locator("#model-status")).to_have_text(f"Model: {KEYED_SERVED}")
    expect(page.locator("#key-form")).to_be_hidden()

    choose_image_and_prompt(page, input_png, size="64x64", steps="2")
    sent = record_edits(page)
    page.click("#edit-button")
    expect(page.locator("#results img")).to_have_count(1)
    assert [request.headers["authorization"] for request in sent] == [f"Bearer {KEY}"]
    expect(page.locator("#run-status")).to_have_text(re.compile(r"^Done"))
    kept = page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage}, document.cookie])")
    assert KEY not in kept
    assert key.input_value() == ""


def test_a_background_edit_polls_its_job_and_shows_links_that_open(page, open_server, input_png):
    from playwright.sync_api import expect

    page.goto(f"{open_server.url}/playground/")
    expect(page.locator("#model-status")).to_have_text(f"Model: {SERVED}; LoRA adapters: ink")
    choose_image_and_prompt(page, input_png, size="256x256", steps="4", seed="99")
    page.check("#background")
    sent = record_edits(page)
    polls: list[str] = []
    page.on("request", lambda request: polls.append(request.url) if "/v1/images/edits/edit_" in request.url else None)
    page.click("#edit-button")
    result = page.locator("#results img")
    expect(result).to_have_count(1)
    (request,) = sent
    assert request.headers["prefer"] == "respond-async"
    parts = form_parts(request.post_data_buffer, request.headers["content-type"])
    assert parts["response_format"] == b"url" and "stream" not in parts
    assert polls and all(url.startswith(f"{open_server.url}/v1/images/edits/edit_") for url in polls)
    page.wait_for_function(
        "() => { const i = document.querySelector('#results img'); return i.complete && i.naturalWidth }"
    )
    assert result.evaluate("image => [image.naturalWidth, image.naturalHeight]") == [256, 256]
    expect(page.locator("#run-status")).to_have_text(re.compile(r"Done: 1 image in \d+\.\d s\."))
    opener = page.locator("#results a[target=_blank]")
    href = opener.get_attribute("href")
    assert href.startswith(f"{open_server.url}/v1/images/files/")
    with page.context.expect_page() as opened:
        opener.click()
    opened.value.wait_for_load_state()
    assert opened.value.evaluate("() => document.images[0].naturalWidth") == 256
    opened.value.close()


def test_the_model_picker_lists_every_served_model_and_each_ones_loras(page, catalog, input_png):
    """A server of several models (IMGEDIT_MODELS): the picker offers each, the LoRA list follows the chosen model,
    and the edit names the chosen model and LoRA."""
    from playwright.sync_api import expect

    sent = record_edits(page)
    page.goto(f"{catalog.url}/playground/")
    expect(page.locator("#model option")).to_have_count(len(FAMILIES))
    expect(page.locator("#model")).to_have_value("qwen-image-edit-plus")
    expect(page.locator("#lora")).to_be_disabled()
    page.select_option("#model", "flux2-klein")
    expect(page.locator("#lora option")).to_have_text(["None", "anime"])
    page.select_option("#lora", "anime")
    choose_image_and_prompt(page, input_png, size="64x64", steps="2")
    page.click("#edit-button")
    expect(page.locator("#results img")).to_have_count(1)
    parts = form_parts(sent[-1].post_data_buffer, sent[-1].headers["content-type"])
    assert (parts["model"], parts["lora"]) == (b"flux2-klein", b"anime")
