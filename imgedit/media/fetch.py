"""Turn an image URL into bytes, safely.

``data:`` URLs are decoded in place. ``http(s)`` URLs are fetched with a guard
against server-side request forgery:

* the host is resolved once, every address it resolves to is checked (loopback,
  private, link-local, multicast, reserved and unspecified addresses are
  refused, including IPv4 addresses embedded in IPv6 ones), and the connection
  goes to an address that was checked, so a DNS answer that changes between
  check and connect cannot slip through;
* every redirect hop is a new, fully checked request (at most a few hops);
* the whole fetch has a time limit and the body a byte limit, enforced while
  it streams in.

Operators of internal deployments can allow private addresses. Link-local
addresses (169.254.0.0/16, fe80::/10), where cloud metadata services answer,
stay refused even then, unless the allow-list names the host itself.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import anyio
import httpcore
import httpx

from imgedit import __version__
from imgedit.errors import invalid

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: Resolves ``(host, port)`` to IP address strings.
Resolver = Callable[[str, int], Awaitable[list[str]]]
#: Says why an address must not be contacted, or None when it may be.
AddressCheck = Callable[[Address], str | None]

_REDIRECTS = (301, 302, 303, 307, 308)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
#: An ASCII host name, IPv4 address or IPv6 address (as httpx gives it, without brackets).
_HOST = re.compile(rb"[A-Za-z0-9._-]+|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*")


@dataclass(frozen=True, kw_only=True)
class FetchPolicy:
    """Limits of URL inputs. ``enabled=False`` refuses http(s) URLs; data URLs still work.

    ``allowed_hosts``, when not empty, lists the only host names that may be
    fetched (``example.com``, or ``*.example.com`` for its subdomains), at
    every redirect hop; the address checks still apply.
    """

    enabled: bool = True
    allow_private: bool = False
    timeout: float = 30.0
    max_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 3
    allowed_hosts: tuple[str, ...] = ()

    def host_allowed(self, host: str) -> bool:
        if not self.allowed_hosts:
            return True
        host = host.lower().rstrip(".")
        return any(
            host.endswith(allowed[1:]) if allowed.startswith("*.") else host == allowed
            for allowed in self.allowed_hosts
        )

    def names(self, host: str) -> bool:
        """Whether the allow-list names ``host`` itself (not through a ``*.`` pattern)."""
        return host.lower().strip("[]").rstrip(".") in self.allowed_hosts


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the system resolver (``getaddrinfo``)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def forbidden_reason(address: Address) -> str | None:
    """Why ``address`` must not be fetched from, or None when it is a public address."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return forbidden_reason(embedded)
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("non-public", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def link_local_reason(address: Address) -> str | None:
    """``link-local`` when ``address`` is one (cloud metadata services answer there), else None."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return link_local_reason(embedded)
    return "link-local" if address.is_link_local else None


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class _RefusedAddress(Exception):
    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"host {host!r} resolves to a {reason} address")


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves each host once, checks every address, connects only to checked ones.

    ``check_for`` gives the check for a host (None: every address may be contacted).
    """

    def __init__(self, resolver: Resolver, check_for: Callable[[str], AddressCheck | None]) -> None:
        self._resolver = resolver
        self._check_for = check_for
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.checked_addresses(host, port)
        last_error: Exception = httpcore.ConnectError(f"no address for {host!r}")
        for address in addresses:
            try:
                return await self._inner.connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error

    async def checked_addresses(self, host: str, port: int) -> list[Address]:
        """The addresses of ``host``, each checked; raises when one is refused or none is found."""
        name = host.lower().rstrip(".")
        check = self._check_for(host)
        if check is not None and check(_LOOPBACK) and (name == "localhost" or name.endswith(".localhost")):
            # Always loopback (RFC 6761), whatever a resolver answers or fails to.
            raise _RefusedAddress(host, "loopback")
        try:
            addresses = [ipaddress.ip_address(host.strip("[]"))]
        except ValueError:
            try:
                answers = await self._resolver(host, port)
            except OSError as exc:
                raise httpcore.ConnectError(f"cannot resolve {host!r}") from exc
            addresses = [ipaddress.ip_address(answer.split("%", 1)[0]) for answer in answers]
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host!r}")
        if check is not None:
            # One bad answer refuses the host: an attacker may control the order.
            for address in addresses:
                if reason := check(address):
                    raise _RefusedAddress(host, reason)
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _http_url(url: str, base: httpx.URL | None = None) -> httpx.URL | None:
    """``url`` (relative to ``base``) as a normalised absolute http(s) URL, or None when it is not one.

    Normalising turns international host names into their ASCII form and
    percent-encodes the path, which is what goes on the wire.
    """
    try:
        parsed = base.join(url) if base is not None else httpx.URL(url)
        port = parsed.port
        # raw_host encodes the host as ASCII, which an IPv6 zone id ("[fe80::1%é]") need not be.
        host = parsed.raw_host
    except (httpx.InvalidURL, ValueError, TypeError, UnicodeError):
        return None
    if parsed.scheme not in ("http", "https") or not (port is None or 0 < port < 65536):
        return None
    if not _HOST.fullmatch(host):
        return None
    return parsed


class Fetcher:
    """Reads image URLs into bytes under a :class:`FetchPolicy`.

    Args:
        policy: the limits.
        resolver: host name resolution (the system's by default).
        check: which addresses are refused; :func:`forbidden_reason` by
            default. When the policy allows private addresses, only link-local
            ones are refused, and not for a host the allow-list names itself.
    """

    def __init__(
        self, policy: FetchPolicy, resolver: Resolver = system_resolver, check: AddressCheck = forbidden_reason
    ) -> None:
        self.policy = policy
        self._resolver = resolver
        self._check = check
        self._ssl_context: ssl.SSLContext = httpx.create_ssl_context()

    def _check_for(self, host: str) -> AddressCheck | None:
        """The address check for ``host`` (None: any address)."""
        if not self.policy.allow_private:
            return self._check
        return None if self.policy.names(host) else link_local_reason

    async def read(self, url: str, param: str) -> bytes:
        """The bytes behind ``url``.

        Raises:
            RequestError: with ``param`` for a malformed, refused, failing,
                too slow or too large URL.
        """
        if url[:5].lower() == "data:":
            return self._read_data_url(url, param)
        target = _http_url(url)
        if target is None:
            raise invalid(
                param,
                f"'{param}' is not a valid http(s) URL; use http, https or a data: URL.",
                code="invalid_url",
            )
        if not self.policy.enabled:
            raise invalid(
                param,
                "Fetching image URLs is disabled on this server; upload the image or use a data: URL.",
                code="url_fetch_disabled",
            )
        self._check_host(target, param)
        try:
            with anyio.fail_after(self.policy.timeout):
                return await self._fetch(target, param)
        except TimeoutError:
            raise invalid(
                param, f"Fetching '{param}' took longer than {self.policy.timeout:g} s.", code="url_fetch_failed"
            ) from None

    async def check_target(self, url: str, param: str) -> None:
        """Refuse, now, a URL that :meth:`post` would refuse: not http(s), not on the allow-list, or a host
        that resolves to a forbidden address (checked again when it is posted to).

        Raises:
            RequestError: naming ``param``.
        """
        target = _http_url(url)
        if target is None:
            raise invalid(param, f"'{param}' is not a valid http(s) URL.", code="invalid_url")
        self._check_host(target, param)
        backend = _GuardedBackend(self._resolver, self._check_for)
        try:
            await backend.checked_addresses(target.host, target.port or (443 if target.scheme == "https" else 80))
        except _RefusedAddress as exc:
            raise invalid(param, f"The URL in '{param}' is not allowed: {exc}.", code="url_not_allowed") from None
        except httpcore.ConnectError:
            raise invalid(param, f"The host of '{param}' cannot be resolved.", code="invalid_url") from None

    async def post(self, url: str, content: bytes, headers: dict[str, str], timeout: float) -> int:
        """POST ``content`` to ``url`` under the same address checks as fetching, following no redirect.

        Returns:
            The status code of the answer.

        Raises:
            OSError: the host is refused, unreachable, or too slow (``timeout`` seconds in all).
        """
        target = _http_url(url)
        if target is None or not self.policy.host_allowed(target.host):
            raise OSError("the URL is not allowed")
        backend = _GuardedBackend(self._resolver, self._check_for)
        wire_headers = [(b"User-Agent", f"imgedit/{__version__}".encode())]
        wire_headers += [(name.encode(), value.encode()) for name, value in headers.items()]
        try:
            with anyio.fail_after(timeout):
                async with httpcore.AsyncConnectionPool(ssl_context=self._ssl_context, network_backend=backend) as pool:
                    response = await pool.request("POST", str(target), headers=wire_headers, content=content)
                    return response.status
        except Exception as exc:  # any failure is a failed attempt, reported to the caller
            raise OSError(f"{type(exc).__name__}: {exc}") from None

    def _check_host(self, url: httpx.URL, param: str) -> None:
        if not self.policy.host_allowed(url.host):
            raise invalid(
                param,
                f"The URL in '{param}' is not allowed: host {url.host!r} is not on this server's allow-list.",
                code="url_not_allowed",
            )

    def _read_data_url(self, url: str, param: str) -> bytes:
        header, comma, payload = url.partition(",")
        if not comma:
            raise invalid(param, f"The data URL in '{param}' has no ',' before its data.", code="invalid_url")
        limit = self.policy.max_bytes
        if not header.lower().endswith(";base64"):
            try:
                data = unquote_to_bytes(payload)
            except UnicodeEncodeError:  # a lone surrogate, which no URL can hold
                raise invalid(param, f"The data URL in '{param}' is not valid text.", code="invalid_url") from None
        else:
            compact = "".join(payload.split()).replace("-", "+").replace("_", "/")
            try:
                data = base64.b64decode(compact + "=" * (-len(compact) % 4), validate=True)
            except (binascii.Error, ValueError):
                raise invalid(param, f"The data URL in '{param}' is not valid base64.", code="invalid_url") from None
        if len(data) > limit:
            raise invalid(param, f"The image in '{param}' is larger than {limit} bytes.", code="image_too_large")
        return data

    async def _fetch(self, url: httpx.URL, param: str) -> bytes:
        backend = _GuardedBackend(self._resolver, self._check_for)
        headers = [(b"User-Agent", f"imgedit/{__version__}".encode()), (b"Accept", b"image/*")]
        async with httpcore.AsyncConnectionPool(ssl_context=self._ssl_context, network_backend=backend) as pool:
            for _hop in range(self.policy.max_redirects + 1):
                try:
                    async with pool.stream("GET", str(url), headers=headers) as response:
                        location = dict((k.lower(), v) for k, v in response.headers).get(b"location")
                        if response.status in _REDIRECTS and location:
                            next_url = _http_url(location.decode("latin-1"), base=url)
                            if next_url is None:
                                raise invalid(param, f"'{param}' redirected to an unsupported URL.", code="invalid_url")
                            self._check_host(next_url, param)
                            url = next_url
                            continue
                        if response.status != 200:
                            raise invalid(
                                param,
                                f"Fetching '{param}' failed with HTTP status {response.status}.",
                                code="url_fetch_failed",
                            )
                        return await self._read_body(response, param)
                except _RefusedAddress as exc:
                    raise invalid(
                        param, f"The URL in '{param}' is not allowed: {exc}.", code="url_not_allowed"
                    ) from None
                except httpcore.TimeoutException:
                    raise invalid(param, f"Fetching '{param}' timed out.", code="url_fetch_failed") from None
                except (
                    httpcore.NetworkError,
                    httpcore.ProtocolError,
                    httpcore.UnsupportedProtocol,
                    ssl.SSLError,
                    ValueError,  # a malformed answer httpcore could not make sense of
                ) as exc:
                    raise invalid(
                        param, f"Fetching '{param}' failed: {type(exc).__name__}.", code="url_fetch_failed"
                    ) from None
        raise invalid(
            param, f"'{param}' redirected more than {self.policy.max_redirects} times.", code="url_fetch_failed"
        )

    async def _read_body(self, response: httpcore.Response, param: str) -> bytes:
        limit = self.policy.max_bytes
        declared = dict((k.lower(), v) for k, v in response.headers).get(b"content-length", b"")
        too_large = invalid(param, f"The image at '{param}' is larger than {limit} bytes.", code="image_too_large")
        if declared.isdigit() and int(declared) > limit:
            raise too_large
        body = bytearray()
        async for chunk in response.aiter_stream():
            body += chunk
            if len(body) > limit:
                raise too_large
        return bytes(body)
