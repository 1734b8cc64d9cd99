from __future__ import annotations

import base64
import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imgedit.errors import RequestError
from imgedit.media.fetch import Fetcher, FetchPolicy, forbidden_reason
from tests.helpers import Refused, image_bytes, status_of

pytestmark = pytest.mark.anyio

PNG = image_bytes(8, 8)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path
        if path == "/image.png":
            self._send(200, PNG, {"Content-Type": "image/png"})
        elif path.startswith("/hops/"):
            left = int(path.rsplit("/", 1)[1])
            self._send(302, headers={"Location": f"/hops/{left - 1}" if left > 1 else "/image.png"})
        elif path == "/page.html":
            self._send(200, b"<html><body>not a picture</body></html>", {"Content-Type": "text/html"})
        elif path == "/bad-location":
            self._send(302, headers={"Location": "http://[::1/x.png"})
        elif path.startswith("/to/"):
            self._send(307, headers={"Location": f"http://{path[4:]}/image.png"})
        elif path == "/slow":
            time.sleep(1.5)
            self._send(200, PNG)
        elif path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(PNG)
        elif path == "/endless":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b"1000\r\n" + b"x" * 4096 + b"\r\n")
            except OSError:
                pass
        else:
            self._send(404, b"missing")


@pytest.fixture(scope="module")
def origin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def fake_resolver(answers: dict[str, list[str]], calls: list[str] | None = None):
    async def resolve(host: str, port: int) -> list[str]:
        if calls is not None:
            calls.append(host)
        return answers[host]

    return resolve


async def error_of(fetcher: Fetcher, url: str) -> RequestError:
    with pytest.raises(Refused) as caught:
        await fetcher.read(url, "url[1]")
    assert status_of(caught.value) == 400
    assert caught.value.param == "url[1]"
    return caught.value


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "0.0.0.0",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a00:1",
        "2002:7f00:1::1",
    ],
)
def test_non_public_addresses_are_forbidden(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert forbidden_reason(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://2130706433/a.png",
        "http://0x7f000001/a.png",
        "http://017700000001/a.png",
        "http://127.1/a.png",
        "http://localhost/a.png",
        "http://[::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",
        "https://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0:3000/",
    ],
)
async def test_loopback_and_metadata_spellings_are_refused(url):
    error = await error_of(Fetcher(FetchPolicy()), url)
    assert error.code == "url_not_allowed"


async def test_a_name_resolving_to_a_private_address_is_refused():
    fetcher = Fetcher(FetchPolicy(), resolver=fake_resolver({"images.example": ["93.184.216.34", "10.0.0.7"]}))
    error = await error_of(fetcher, "https://images.example/cat.png")
    assert "private" in error.message


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "gopher://example.com/", "a.png"])
async def test_other_schemes_are_refused(url):
    calls: list[str] = []
    error = await error_of(Fetcher(FetchPolicy(), resolver=fake_resolver({}, calls)), url)
    assert error.code == "invalid_url"
    assert calls == []


@pytest.mark.parametrize(
    "url",
    [
        "http://[::1/a.png",
        "http://example.com:99999/a.png",
        "http:///a.png",
        "https://",
        "http://exa mple.com/",
        "http://[fe80::1%\u00e9]/x.png",  # a zone id that is no ASCII: found by the fuzzer as a 500
    ],
)
async def test_malformed_urls_are_400(url):
    calls: list[str] = []
    error = await error_of(Fetcher(FetchPolicy(), resolver=fake_resolver({}, calls)), url)
    assert error.code == "invalid_url"
    assert calls == []


async def test_international_host_names_are_resolved_in_ascii():
    calls: list[str] = []
    fetcher = Fetcher(FetchPolicy(), resolver=fake_resolver({"xn--exmple-cua.test": ["10.0.0.1"]}, calls))
    assert (await error_of(fetcher, "http://exämple.test/ü.png")).code == "url_not_allowed"
    assert calls == ["xn--exmple-cua.test"]


async def test_a_malformed_redirect_is_400(origin):
    error = await error_of(Fetcher(FetchPolicy(allow_private=True)), f"http://{origin}/bad-location")
    assert error.code == "invalid_url"


async def test_fetches_an_image_when_private_hosts_are_allowed(origin):
    fetcher = Fetcher(FetchPolicy(allow_private=True))
    assert await fetcher.read(f"http://{origin}/image.png", "url[0]") == PNG


async def test_http_errors_are_400(origin):
    error = await error_of(Fetcher(FetchPolicy(allow_private=True)), f"http://{origin}/missing")
    assert "404" in error.message


async def test_follows_at_most_the_allowed_redirects(origin):
    fetcher = Fetcher(FetchPolicy(allow_private=True, max_redirects=3))
    assert await fetcher.read(f"http://{origin}/hops/3", "url[0]") == PNG
    error = await error_of(fetcher, f"http://{origin}/hops/4")
    assert "redirected more than 3 times" in error.message


async def test_every_redirect_hop_is_checked(origin):
    port = origin.rsplit(":", 1)[1]
    resolver = fake_resolver({"public.test": ["127.0.0.1"], "internal.test": ["127.0.0.2"]})

    def only_127_0_0_1(address):
        return None if str(address) == "127.0.0.1" else "private"

    fetcher = Fetcher(FetchPolicy(), resolver=resolver, check=only_127_0_0_1)
    assert await fetcher.read(f"http://public.test:{port}/image.png", "url[0]") == PNG
    error = await error_of(fetcher, f"http://public.test:{port}/to/internal.test:{port}")
    assert error.code == "url_not_allowed" and "internal.test" in error.message


async def test_connects_to_the_address_it_checked(origin):
    """A resolver that changes its answer after the check cannot redirect the connection."""
    port = origin.rsplit(":", 1)[1]
    answers = iter([["127.0.0.1"], ["127.0.0.2"]])
    calls: list[str] = []

    async def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    def only_127_0_0_1(address):
        return None if str(address) == "127.0.0.1" else "private"

    fetcher = Fetcher(FetchPolicy(), resolver=rebinding, check=only_127_0_0_1)
    assert await fetcher.read(f"http://rebind.test:{port}/image.png", "url[0]") == PNG
    assert calls == ["rebind.test"]


async def test_slow_servers_time_out(origin):
    error = await error_of(Fetcher(FetchPolicy(allow_private=True, timeout=0.3)), f"http://{origin}/slow")
    assert "longer than 0.3 s" in error.message


@pytest.mark.parametrize("path", ["/declared-huge", "/endless"])
async def test_bodies_over_the_byte_limit_are_refused(origin, path):
    fetcher = Fetcher(FetchPolicy(allow_private=True, max_bytes=64 * 1024, timeout=10))
    error = await error_of(fetcher, f"http://{origin}{path}")
    assert error.code == "image_too_large"


async def test_disabled_fetching_refuses_http_but_not_data_urls(origin):
    fetcher = Fetcher(FetchPolicy(enabled=False, allow_private=True))
    assert (await error_of(fetcher, f"http://{origin}/image.png")).code == "url_fetch_disabled"
    data_url = "data:image/png;base64," + base64.b64encode(PNG).decode()
    assert await fetcher.read(data_url, "url[0]") == PNG


@pytest.mark.parametrize(
    "encode",
    [
        lambda data: "data:image/png;base64," + base64.b64encode(data).decode(),
        lambda data: "DATA:;base64," + base64.b64encode(data).decode(),
        lambda data: "data:image/png;base64," + base64.urlsafe_b64encode(data).decode().rstrip("="),
        lambda data: "data:image/png;base64,\n" + "\n".join(base64.encodebytes(data).decode().split()),
    ],
)
async def test_data_urls_are_decoded(encode):
    assert await Fetcher(FetchPolicy()).read(encode(PNG), "url[0]") == PNG


@pytest.mark.parametrize(
    "url",
    [
        "data:image/png;base64,!!!not base64!!!",
        "data:image/png;base64",
        # A lone surrogate (a JSON body can write one): percent-decoding it used to fail with a 500.
        "data:image/png,abc\ud800",
        "data:image/png;base64,iVBO\udfff",
    ],
)
async def test_bad_data_urls_are_400(url):
    assert (await error_of(Fetcher(FetchPolicy()), url)).code == "invalid_url"


async def test_oversized_data_url_is_refused():
    url = "data:image/png;base64," + base64.b64encode(b"x" * 2048).decode()
    assert (await error_of(Fetcher(FetchPolicy(max_bytes=1024)), url)).code == "image_too_large"


def test_the_host_allow_list_matches_names_and_subdomains():
    policy = FetchPolicy(allowed_hosts=("images.example.com", "*.cdn.example"))
    assert policy.host_allowed("images.example.com") and policy.host_allowed("IMAGES.example.com.")
    assert policy.host_allowed("a.cdn.example") and policy.host_allowed("b.a.cdn.example")
    assert not policy.host_allowed("cdn.example") and not policy.host_allowed("example.com")
    assert not policy.host_allowed("images.example.com.evil.test")
    assert FetchPolicy().host_allowed("anything.test")


async def test_hosts_off_the_allow_list_are_refused_at_every_hop(origin):
    port = origin.rsplit(":", 1)[1]
    resolver = fake_resolver({"allowed.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    policy = FetchPolicy(allow_private=True, allowed_hosts=("allowed.test",))
    fetcher = Fetcher(policy, resolver=resolver)
    assert await fetcher.read(f"http://allowed.test:{port}/image.png", "url[0]") == PNG
    assert (await error_of(fetcher, f"http://other.test:{port}/image.png")).code == "url_not_allowed"
    redirected = await error_of(fetcher, f"http://allowed.test:{port}/to/other.test:{port}")
    assert redirected.code == "url_not_allowed" and "other.test" in redirected.message


@pytest.mark.parametrize("host", ["localhost.", "LOCALHOST", "api.localhost", "x.localhost."])
async def test_localhost_names_are_refused_without_asking_a_resolver(host):
    calls: list[str] = []
    fetcher = Fetcher(FetchPolicy(), resolver=fake_resolver({}, calls))
    assert (await error_of(fetcher, f"http://{host}/a.png")).code == "url_not_allowed"
    assert calls == []


async def test_non_image_content_is_fetched_but_fails_to_decode(origin):
    """The fetcher returns bytes; decoding them is what refuses HTML with a 400 naming the URL."""
    from imgedit.media.images import decode_image

    data = await Fetcher(FetchPolicy(allow_private=True)).read(f"http://{origin}/page.html", "url[0]")
    assert data.startswith(b"<html>")
    with pytest.raises(Refused) as caught:
        decode_image(data, "url[0]", 1000)
    assert (caught.value.param, caught.value.code) == ("url[0]", "invalid_image_format")


@pytest.mark.parametrize(
    "address", ["169.254.169.254", "169.254.0.1", "fe80::1", "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe"]
)
async def test_link_local_stays_refused_when_private_hosts_are_allowed(address):
    calls: list[str] = []
    fetcher = Fetcher(FetchPolicy(allow_private=True), resolver=fake_resolver({"metadata.test": [address]}, calls))
    for url in (f"http://{_literal(address)}/latest/meta-data/", "http://metadata.test/latest/meta-data/"):
        error = await error_of(fetcher, url)
        assert error.code == "url_not_allowed"
        assert "link-local" in error.message


async def test_link_local_is_reached_only_through_a_host_the_allow_list_names():
    resolver = fake_resolver({"metadata.internal": ["169.254.169.254"], "x.cloud.internal": ["169.254.169.254"]})
    named = Fetcher(
        FetchPolicy(allow_private=True, allowed_hosts=("metadata.internal", "*.cloud.internal")), resolver=resolver
    )
    assert named._check_for("metadata.internal") is None  # the operator named this very host
    assert named._check_for("x.cloud.internal") is not None  # a pattern is not a name
    error = await error_of(named, "http://x.cloud.internal/")
    assert error.code == "url_not_allowed" and "link-local" in error.message


async def test_private_hosts_still_fetch_when_allowed(origin):
    fetcher = Fetcher(FetchPolicy(allow_private=True))
    assert fetcher._check_for("127.0.0.1") is not None  # a check still runs: link-local only
    assert await fetcher.read(f"http://{origin}/image.png", "url[0]")


def _literal(address: str) -> str:
    return f"[{address}]" if ":" in address else address
