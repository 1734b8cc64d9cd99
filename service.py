"""imgedit as a BentoML service: ``bentoml serve service:ImageEdit``.

Glue only: settings come from ``IMGEDIT_*`` variables; each worker builds one
:class:`~imgedit.serving.worker.Worker` at start-up and this class hands it
every request; what this file needs of BentoML beyond its decorators lives in
:mod:`imgedit.serving.bentoml_seam`.
"""

from __future__ import annotations

import sys

import bentoml
from starlette.requests import Request
from starlette.responses import Response

from imgedit.api.access_log import AccessLogMiddleware
from imgedit.api.auth import ApiKeyMiddleware, parse_keys
from imgedit.api.body import JSON, MULTIPART
from imgedit.api.openapi import openapi_form, openapi_json
from imgedit.api.responses import ImagesResponse
from imgedit.api.routes import create_v1_app
from imgedit.config import ConfigError, load_settings, unknown_variables
from imgedit.errors import StartupError
from imgedit.logs import configure_logging
from imgedit.playground import MOUNT_PATH as PLAYGROUND_PATH
from imgedit.playground import create_playground_app
from imgedit.serving.bentoml_seam import (
    end_with_server,
    in_worker,
    prepare_serving_process,
    raw_request_input,
    worker_index,
)
from imgedit.serving.startup import (
    claim_devices,
    preflight,
    start_or_stop_server,
    store_models,
    traffic,
    worker_count,
)
from imgedit.serving.storage import link_origins
from imgedit.serving.worker import Worker

try:
    settings = load_settings()
except ConfigError as error:
    sys.exit(f"imgedit: {error}")
for name in unknown_variables():
    print(f"imgedit: warning: {name} is not a setting of this version; ignored", file=sys.stderr)
configure_logging(settings.log_level)

#: Extra seconds BentoML waits beyond our own deadline, so that the server's
#: OpenAI-shaped 504 (which also stops the run) always comes first.
TIMEOUT_GRACE_SECONDS = 60
if in_worker():
    end_with_server()  # with its ranks, however its `bentoml serve` ends
    claim_devices(settings, worker_index())  # before anything starts CUDA
else:
    # In `bentoml serve`, before it starts the workers: metrics files of this server's own, apart from any
    # other server's on the host, and the process id the workers follow.
    prepare_serving_process()
#: One worker per GPU, each with its own copy of the model and its own queue (per IMGEDIT_*_DEGREE GPUs
#: with several ranks per edit).
WORKERS = worker_count(settings)
try:
    #: Models from the BentoML store (bentoml:TAG in IMGEDIT_MODEL or IMGEDIT_MODELS), which the Bento carries.
    STORE_MODELS = store_models(settings)
except StartupError as error:
    sys.exit(f"imgedit: {error}")
#: One class attribute per store model, inherited by the service, so that `bentoml build` packs their weights.
StoreModels = type(
    "StoreModels", (), {f"weights_{n}": bentoml.models.BentoModel(tag) for n, tag in enumerate(STORE_MODELS)}
)


def this_worker() -> Worker:
    """The worker serving in this process (the routes are made before it starts)."""
    return bentoml.get_current_service().worker


v1_app = create_v1_app(
    lambda: this_worker().models(),
    # The LoRA endpoints exist only with an admin key to open them.
    this_worker if settings.admin_key is not None else None,
    lambda: this_worker().jobs(),
)
#: The web page at /playground: static files that call /v1 from the browser, so it needs no key of its own.
playground_app = create_playground_app(link_origins(settings))


@bentoml.service(
    name="imgedit",
    resources={"gpu": WORKERS * settings.ranks_per_edit},
    workers=WORKERS,
    traffic=traffic(settings, WORKERS, TIMEOUT_GRACE_SECONDS),
    # Our middleware writes the access line, with the request id BentoML's lacks.
    logging={"access": {"enabled": False}},
)
@bentoml.asgi_app(v1_app, path="/v1")
@bentoml.asgi_app(playground_app, path=PLAYGROUND_PATH)
class ImageEdit(StoreModels):  # type: ignore[misc,valid-type]  # a class made at import time, from the settings
    """OpenAI-compatible image edits (``POST /v1/images/edits``) for diffusers pipelines."""

    @bentoml.on_deployment
    def check_before_workers_start() -> None:
        try:
            preflight(settings)
        except StartupError as error:
            sys.exit(f"imgedit: {error}")

    def __init__(self) -> None:
        self.worker = start_or_stop_server(settings, worker_index())

    def __is_ready__(self) -> bool:
        return self.worker.ready

    @bentoml.api(
        route="/v1/images/edits",
        input_spec=raw_request_input({MULTIPART: openapi_form(), JSON: openapi_json()}),
        output_spec=ImagesResponse,
    )
    async def edits(self, connection: Request) -> Response:
        """Edit images as OpenAI's ``images.edit`` does."""
        return await self.worker.edit(connection)

    @bentoml.on_shutdown
    def close(self) -> None:
        self.worker.close()


# @bentoml.service made the class a Service (mypy sees a class of an unknown base, so it checks nothing here).
ImageEdit.add_asgi_middleware(AccessLogMiddleware)
if settings.api_key is not None or settings.admin_key is not None:
    # Inside the access-log middleware, so a 401 still carries its request id and access line.
    ImageEdit.add_asgi_middleware(
        ApiKeyMiddleware,
        keys=parse_keys(settings.api_key.get_secret_value() if settings.api_key else None),
        admin_keys=parse_keys(settings.admin_key.get_secret_value() if settings.admin_key else None),
    )
