"""The web playground: one static page, mounted at ``/playground``, that calls the public API from the browser.

The page is three files in this package (``index.html``, ``playground.js``,
``playground.css``): no build step, nothing fetched from elsewhere, so it works
offline. It talks to the server only through ``GET /v1/models`` and the
streaming ``POST /v1/images/edits``, like any other client, and sends the API
key (when the server wants one) as a bearer token. The page itself needs no
key: it holds no data, and ``IMGEDIT_API_KEY`` guards ``/v1/*`` only.

Every file is served with a strict Content-Security-Policy: scripts and styles
from this origin only (the page has no inline script or style), images also
from ``data:`` and ``blob:`` URLs (the previews and results) and from the
origin of an S3 image store's links (background jobs show their images as
links), requests to this origin only.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

#: Where the page is mounted in the service.
MOUNT_PATH = "/playground"


def content_security_policy(image_origins: tuple[str, ...] = ()) -> str:
    """The page's policy; ``image_origins`` may also serve images (an S3 store's links)."""
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            " ".join(["img-src 'self' data: blob:", *image_origins]),
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ]
    )


CONTENT_SECURITY_POLICY = content_security_policy()


def security_headers(policy: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": policy,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # The files are small; revalidating keeps a page open across an upgrade consistent with its script.
        "Cache-Control": "no-cache",
    }


@dataclass(frozen=True)
class Asset:
    """One file of the page: its name in this package and its media type."""

    name: str
    media_type: str


#: URL path under the mount -> the file served there.
ASSETS: dict[str, Asset] = {
    "/": Asset("index.html", "text/html; charset=utf-8"),
    "/playground.js": Asset("playground.js", "text/javascript; charset=utf-8"),
    "/playground.css": Asset("playground.css", "text/css; charset=utf-8"),
}


def asset_text(name: str) -> str:
    """The text of one of the page's files, as shipped in the package."""
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def create_playground_app(image_origins: tuple[str, ...] = ()) -> Starlette:
    """The app to mount at ``/playground``: the page's three files and a 404 for anything else.

    The files are read once, here, so a request never touches the disk.

    Args:
        image_origins: other origins the page may show images from (an S3 store's, for its links).
    """
    headers = security_headers(content_security_policy(image_origins))
    contents = {path: asset_text(asset.name).encode("utf-8") for path, asset in ASSETS.items()}

    def serve(path: str) -> Route:
        asset = ASSETS[path]
        body = contents[path]

        async def endpoint(request: Request) -> Response:
            return Response(body, media_type=asset.media_type, headers=headers)

        return Route(path, endpoint, methods=["GET", "HEAD"], name=asset.name)

    async def not_found(request: Request) -> Response:
        return PlainTextResponse("Not found.", status_code=404, headers=headers)

    return Starlette(
        routes=[
            *(serve(path) for path in ASSETS),
            Route("/{path:path}", not_found, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
        ]
    )
