"""The playground's files: how they are served and what they may contain (local assets, labels, no inline code)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from starlette.testclient import TestClient

from imgedit.playground import ASSETS, CONTENT_SECURITY_POLICY, asset_text, create_playground_app

FILES = [asset.name for asset in ASSETS.values()]
CONTROLS = ("input", "select", "textarea")


@pytest.fixture(scope="module")
def client():
    with TestClient(create_playground_app()) as test_client:
        yield test_client


class Page(HTMLParser):
    """Every start tag of a page, with its attributes, and the text inside each label."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.script_text = ""
        self._in_script = False
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.script_text += data

    def all(self, *names: str) -> list[dict[str, str | None]]:
        return [attrs for tag, attrs in self.tags if tag in names]


@pytest.fixture(scope="module")
def page() -> Page:
    return Page(asset_text("index.html"))


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("/", "text/html"), ("/playground.js", "text/javascript"), ("/playground.css", "text/css")],
)
def test_each_file_is_served_with_its_type_and_a_strict_policy(client, path, media_type):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.text == asset_text(ASSETS[path].name)
    assert client.head(path).status_code == 200


def test_the_policy_allows_only_this_origin_and_image_urls_made_in_the_page():
    directives = dict(directive.split(" ", 1) for directive in CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == directives["style-src"] == directives["connect-src"] == "'self'"
    assert directives["img-src"] == "'self' data: blob:"
    assert directives["object-src"] == directives["base-uri"] == "'none'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("path", ["/nope", "/index.html", "/playground.js/x", "/../service.py", "/__init__.py"])
def test_anything_else_is_a_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


@pytest.mark.parametrize("name", FILES)
def test_no_file_names_another_site(name):
    text = asset_text(name)
    assert not re.search(r"https?:|//[a-z0-9]", text, re.IGNORECASE), "the page must work offline"
    if name.endswith(".css"):
        assert "@import" not in text and "url(" not in text


def test_the_page_loads_only_its_own_script_and_stylesheet(page):
    scripts = page.all("script")
    assert [script.get("src") for script in scripts] == ["playground.js"]
    assert page.script_text.strip() == ""  # no inline script: the policy would block it
    stylesheets = [link["href"] for link in page.all("link") if link.get("rel") == "stylesheet"]
    assert stylesheets == ["playground.css"]
    assert page.all("style") == []
    for tag, attributes in page.tags:
        assert "style" not in attributes, tag
        assert not any(name.startswith("on") for name in attributes), tag
        for name in ("src", "href", "action"):
            value = attributes.get(name)
            assert value is None or value == "data:," or re.fullmatch(r"[a-z.-]+", value), (tag, name, value)


def test_every_form_control_has_a_label(page):
    labelled = {label["for"] for label in page.all("label")}
    controls = [attrs for attrs in page.all(*CONTROLS) if attrs.get("type") not in ("hidden", "submit", "button")]
    assert len(controls) >= 12
    for control in controls:
        assert control.get("id") in labelled, control


def test_ids_are_unique_and_every_id_the_script_uses_exists(page):
    ids = [attrs["id"] for attrs in page.all(*{tag for tag, _ in page.tags}) if attrs.get("id")]
    assert len(ids) == len(set(ids))
    used = re.findall(r'\$\("([^"]+)"\)', asset_text("playground.js"))
    assert len(used) > 20
    assert set(used) <= set(ids)


def test_buttons_are_real_buttons_and_focus_stays_visible(page):
    assert all(button.get("type") in ("submit", "button") for button in page.all("button"))
    css = asset_text("playground.css")
    assert re.search(r":focus-visible\s*\{[^}]*outline:\s*3px solid", css)
    assert "outline: none" not in css and "outline: 0" not in css


def test_status_and_errors_are_announced(page):
    by_id = {attrs["id"]: attrs for attrs in page.all(*{tag for tag, _ in page.tags}) if attrs.get("id")}
    assert by_id["run-status"]["aria-live"] == "polite"
    assert by_id["model-status"]["aria-live"] == "polite"
    assert by_id["error"]["role"] == "alert"
    assert by_id["key-error"]["role"] == "alert"
    assert by_id["api-key"]["type"] == "password"


def test_the_script_keeps_the_api_key_out_of_storage_and_uses_only_the_public_api():
    script = asset_text("playground.js")
    assert "localStorage" not in script and "sessionStorage" not in script and "document.cookie" not in script
    endpoints = set(re.findall(r'new URL\("([^"]+)", API\)', script))
    assert endpoints == {"models", "images/edits"}
    jobs = set(re.findall(r"new URL\(`([^`]+)`, API\)", script))
    assert jobs == {"images/edits/${job.id}", "images/edits/${state.jobId}/cancel"}
    assert 'new URL("../v1/", document.baseURI)' in script


def test_an_s3_store_origin_may_serve_images_and_nothing_else():
    from imgedit.playground import content_security_policy

    policy = dict(directive.split(" ", 1) for directive in content_security_policy(("http://minio:9000",)).split("; "))
    assert policy["img-src"] == "'self' data: blob: http://minio:9000"
    assert policy["connect-src"] == "'self'"
