"""The ``/v1`` routes that are not BentoML APIs: models, jobs, stored images, LoRA endpoints, OpenAI-shaped 404/405s.

BentoML APIs accept POST only, so ``GET /v1/models``, the background jobs
(``GET``/``DELETE /v1/images/edits/{id}``, ``POST .../cancel``) and the
signed image links (``GET /v1/images/files/{name}``) live in this small
Starlette app, mounted under ``/v1``, with vLLM's ``POST /v1/load_lora_adapter``
and ``POST /v1/unload_lora_adapter`` when an admin key is configured (the
:class:`~imgedit.api.auth.ApiKeyMiddleware` asks for it). BentoML tries its
own routes first, so the catch-all here only sees requests nothing else serves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from imgedit.api.errors import ApiError, http_error
from imgedit.api.json_text import parse_json
from imgedit.api.responses import error_response
from imgedit.errors import RequestError

EDITS_PATH = "/images/edits"
#: Where a directory store's images are served (under /v1); the signature in the link is the credential.
FILES_PATH = "/images/files"
#: vLLM's LoRA endpoints, answered only with an admin key.
LOAD_LORA_PATH, UNLOAD_LORA_PATH = "/load_lora_adapter", "/unload_lora_adapter"
#: The largest body the LoRA endpoints read.
MAX_ADMIN_BODY_BYTES = 64 * 1024
_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass(frozen=True, kw_only=True)
class ModelCard:
    """One entry of ``GET /v1/models`` (OpenAI's ``Model`` object)."""

    id: str
    created: int
    owned_by: str = "imgedit"
    object: str = "model"
    #: For a LoRA (vLLM's convention): the served model it runs on.
    root: str | None = None
    parent: str | None = None
    #: For a served model: whether it is on the device now (with several models, the others wait in host memory).
    on_device: bool | None = None


class LoraEndpoints(Protocol):
    """What the LoRA endpoints call: each returns the answer's body or raises an ApiError."""

    async def load_lora(self, name: Any, path: Any, scale: Any = 1.0) -> dict[str, Any]: ...

    async def unload_lora(self, name: Any) -> dict[str, Any]: ...


class JobEndpoints(Protocol):
    """What the job and image routes call: each returns the answer's body (or file) or raises an ApiError."""

    async def get_job(self, job_id: str, request: Request) -> dict[str, Any]: ...

    async def cancel_job(self, job_id: str, request: Request) -> dict[str, Any]: ...

    async def delete_job(self, job_id: str, request: Request) -> dict[str, Any]: ...

    def image_file(self, name: str, expires: str | None, signature: str | None) -> tuple[Path, str]: ...


def create_v1_app(
    models: Callable[[], list[ModelCard]],
    loras: Callable[[], LoraEndpoints] | None = None,
    jobs: Callable[[], JobEndpoints] | None = None,
) -> Starlette:
    """The app to mount at ``/v1``.

    Args:
        models: returns the served models; called per request, because the
            model is loaded after this app is created.
        loras: returns what loads and unloads LoRAs; None leaves the LoRA endpoints out (404).
        jobs: returns what answers for background jobs and stored images; None leaves them out (404).
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

    async def load_lora(request: Request) -> Response:
        assert loras is not None
        body = await _admin_body(request)
        return JSONResponse(
            await loras().load_lora(body.get("lora_name"), body.get("lora_path"), body.get("scale", 1.0))
        )

    async def unload_lora(request: Request) -> Response:
        assert loras is not None
        body = await _admin_body(request)
        return JSONResponse(await loras().unload_lora(body.get("lora_name")))

    async def get_job(request: Request) -> Response:
        assert jobs is not None
        return JSONResponse(await jobs().get_job(request.path_params["job_id"], request))

    async def cancel_job(request: Request) -> Response:
        assert jobs is not None
        return JSONResponse(await jobs().cancel_job(request.path_params["job_id"], request))

    async def delete_job(request: Request) -> Response:
        assert jobs is not None
        return JSONResponse(await jobs().delete_job(request.path_params["job_id"], request))

    async def image_file(request: Request) -> Response:
        assert jobs is not None
        query = request.query_params
        path, media_type = jobs().image_file(request.path_params["name"], query.get("expires"), query.get("signature"))
        headers = {"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"}
        return FileResponse(path, media_type=media_type, headers=headers)

    async def fallback(request: Request) -> Response:
        path = "/" + request.path_params["path"]
        allowed = _allowed_methods(path, loras is not None, jobs is not None)
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

    job_routes = [
        Route(EDITS_PATH + "/{job_id}", get_job, methods=["GET"]),
        Route(EDITS_PATH + "/{job_id}", delete_job, methods=["DELETE"]),
        Route(EDITS_PATH + "/{job_id}/cancel", cancel_job, methods=["POST"]),
        Route(FILES_PATH + "/{name}", image_file, methods=["GET"]),
    ]
    lora_routes = [
        Route(LOAD_LORA_PATH, load_lora, methods=["POST"]),
        Route(UNLOAD_LORA_PATH, unload_lora, methods=["POST"]),
    ]
    return Starlette(
        routes=[
            Route("/models", list_models, methods=["GET"]),
            Route("/models/{model_id:path}", get_model, methods=["GET"]),
            *(lora_routes if loras is not None else []),
            *(job_routes if jobs is not None else []),
            Route("/{path:path}", fallback, methods=_ALL_METHODS),
        ],
        exception_handlers={ApiError: api_error},
    )


def _allowed_methods(path: str, loras: bool, jobs: bool) -> str | None:
    """The methods a path takes, for a 405; None for a path nothing serves (404)."""
    posts = (EDITS_PATH, LOAD_LORA_PATH, UNLOAD_LORA_PATH) if loras else (EDITS_PATH,)
    if path in posts:
        return "POST"
    if path == "/models" or path.startswith("/models/"):
        return "GET"
    parts = path.split("/")
    if jobs and path.startswith(EDITS_PATH + "/"):
        return "POST" if len(parts) == 5 and parts[4] == "cancel" else "GET, DELETE" if len(parts) == 4 else None
    if jobs and path.startswith(FILES_PATH + "/") and len(parts) == 4:
        return "GET"
    return None


async def _admin_body(request: Request) -> dict[str, Any]:
    """The JSON object a LoRA endpoint was sent.

    Raises:
        ApiError: 413 past :data:`MAX_ADMIN_BODY_BYTES`, 400 for anything but a JSON object (naming a
            field that holds what JSON text may not, as :func:`~imgedit.api.json_text.parse_json` says).
    """
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_ADMIN_BODY_BYTES:
            raise ApiError(413, f"The body exceeds {MAX_ADMIN_BODY_BYTES} bytes.", code="payload_too_large")
    try:
        body = parse_json(data, None, "The body")
    except RequestError as error:
        raise http_error(error) from None
    if not isinstance(body, dict):
        raise ApiError(400, 'Send a JSON object, e.g. {"lora_name": ..., "lora_path": ...}.', code="invalid_json")
    return body
