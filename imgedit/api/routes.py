"""The ``/v1`` routes that are not BentoML APIs: the model list and OpenAI-shaped 404/405s.

BentoML APIs accept POST only, so ``GET /v1/models`` lives in this small
Starlette app, mounted under ``/v1``. BentoML tries its own routes first, so
the catch-all here only sees requests nothing else serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imgedit.api.responses import error_response
from imgedit.errors import ApiError

EDITS_PATH = "/images/edits"
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(frozen=True)
class ModelCard:
    """One entry of ``GET /v1/models`` (OpenAI's ``Model`` object)."""

    id: str
    created: int
    owned_by: str = "imgedit"
    object: str = "model"


def create_v1_app(models: Callable[[], list[ModelCard]]) -> Starlette:
    """The app to mount at ``/v1``.

    Args:
        models: returns the served models; called per request, because the
            model is loaded after this app is created.
    """

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [asdict(card) for card in models()]})

    async def get_model(request: Request) -> Response:
        model_id = request.path_params["model_id"]
        for card in models():
            if card.id == model_id:
                return JSONResponse(asdict(card))
        raise ApiError(
            404, f"The model {model_id!r} does not exist on this server.", param="model", code="model_not_found"
        )

    async def fallback(request: Request) -> Response:
        path = "/" + request.path_params["path"]
        allowed = "POST" if path == EDITS_PATH else "GET" if path == "/models" or path.startswith("/models/") else None
        if allowed is not None:
            raise ApiError(
                405,
                f"{request.method} is not allowed here; use {allowed}.",
                code="method_not_allowed",
                headers={"Allow": allowed},
            )
        raise ApiError(404, f"Unknown path {request.url.path}.", code="not_found")

    async def api_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ApiError)
        return error_response(error)

    return Starlette(
        routes=[
            Route("/models", list_models, methods=["GET"]),
            Route("/models/{model_id:path}", get_model, methods=["GET"]),
            Route("/{path:path}", fallback, methods=_ALL_METHODS),
        ],
        exception_handlers={ApiError: api_error},
    )
