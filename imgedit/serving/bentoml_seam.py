"""Everything imgedit asks of BentoML beyond its documented decorators, in one place.

* :func:`raw_request_input`: an input descriptor that hands the API function
  the HTTP request with its body unread, so that :mod:`imgedit.api.body`
  reads it (BentoML's typed multipart inputs mishandle what real clients send).
  It overrides ``from_http_request``, which BentoML 1.4 calls on every input
  descriptor but does not document, and ``model_json_schema``, which feeds
  the OpenAPI document. BentoML documents one body type per API; the API
  method's ``openapi_request`` is extended so that an API taking several
  (multipart and JSON) documents each.
* :func:`worker_index`: which of the service's workers this process is (from 0);
  :func:`in_worker`: whether it is a worker at all.
* :func:`arrange_exit_status` and :func:`stop_server`: a worker that cannot
  start stops the whole ``bentoml serve`` (its parent process), which then
  exits with status 1; BentoML's process manager would otherwise restart the
  worker forever, or leave a server with no worker inside a container.

BentoML is pinned to the 1.4 line; ``tests/serving/test_bentoml_seam.py``
fails when an upgrade changes any of this behaviour.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, ClassVar, NoReturn, cast

import bentoml
from pydantic import ConfigDict
from starlette.requests import Request

#: Set by :func:`arrange_exit_status` for the workers: where a worker records a fatal start-up failure.
#: (Not ``IMGEDIT_``-prefixed: it is no setting.)
FAILURE_FILE_VARIABLE = "_IMGEDIT_STARTUP_FAILURE_FILE"


class RawRequestInput(bentoml.IODescriptor):  # type: ignore[misc]  # BentoML's SDK ships no type information
    """The HTTP request, its body unread; the API reads and answers it itself."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    media_type: ClassVar[str | None] = None
    #: Each body type the API takes, with its schema, as the OpenAPI document shows them.
    bodies: ClassVar[dict[str, dict[str, Any]]] = {}

    connection: Request | None = None

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return cls.bodies.get(cls.media_type or "", {})

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> RawRequestInput:
        received: RawRequestInput = cls.model_construct(connection=request)
        return received


def raw_request_input(bodies: dict[str, dict[str, Any]]) -> type[RawRequestInput]:
    """A :class:`RawRequestInput` documented as taking each body type of ``bodies`` (media type -> schema)."""
    media_type = next(iter(bodies))
    bound = cast(
        type[RawRequestInput],
        type("EditsInput", (RawRequestInput,), {"media_type": media_type, "bodies": dict(bodies)}),
    )
    # Keeps BentoML from documenting the descriptor's own field as a form part.
    bound.multipart_fields = list(RawRequestInput.model_fields)
    _document_every_body_type()
    return bound


def _document_every_body_type() -> None:
    """Make BentoML's API methods document every body type of a :class:`RawRequestInput` (once per process)."""
    from _bentoml_sdk.method import APIMethod
    from bentoml._internal.service.openapi.specification import MediaType, Schema

    original = APIMethod.openapi_request
    if getattr(original, "documents_every_body_type", False):
        return
    known = {attribute.name for attribute in Schema.__attrs_attrs__}

    def openapi_request(method: Any) -> dict[str, Any]:
        spec = method.input_spec
        if not (isinstance(spec, type) and issubclass(spec, RawRequestInput)):
            documented: dict[str, Any] = original(method)
            return documented
        return {
            "content": {
                media_type: MediaType(schema=Schema(**{key: value for key, value in schema.items() if key in known}))
                for media_type, schema in spec.bodies.items()
            }
        }

    openapi_request.documents_every_body_type = True  # type: ignore[attr-defined]  # marks it as patched already
    APIMethod.openapi_request = openapi_request


def worker_index() -> int:
    """This worker's index among the service's workers, from 0 (0 outside ``bentoml serve``)."""
    return (bentoml.server_context.worker_index or 1) - 1


def in_worker() -> bool:
    """Whether this process is one of the service's workers (not ``bentoml serve``'s own process)."""
    return bentoml.server_context.worker_index is not None


def arrange_exit_status() -> None:
    """In the ``bentoml serve`` process: exit with status 1 if a worker later calls :func:`stop_server`.

    The workers inherit the path of a file they write their failure to; this
    process reads it when it exits.
    """
    descriptor, path = tempfile.mkstemp(prefix="imgedit-startup-")
    os.close(descriptor)
    os.environ[FAILURE_FILE_VARIABLE] = path

    def exit_with_failure_status() -> None:
        try:
            failed = os.path.getsize(path) > 0
            os.unlink(path)
        except OSError:
            failed = False
        if failed:
            os._exit(1)

    atexit.register(exit_with_failure_status)


def stop_server(message: str) -> NoReturn:
    """Print ``message`` and stop the whole ``bentoml serve`` process, not just this worker.

    The worker records the failure for :func:`arrange_exit_status`'s exit
    handler (so ``bentoml serve`` exits with status 1), asks its parent to shut
    down, and exits.
    """
    print(message, file=sys.stderr, flush=True)
    failure_file = os.environ.get(FAILURE_FILE_VARIABLE)
    if failure_file:
        with contextlib.suppress(OSError):
            Path(failure_file).write_text(message)
    parent = os.getppid()
    try:
        parent_command = Path(f"/proc/{parent}/cmdline").read_bytes()
    except OSError:
        parent_command = b""
    if b"bentoml" in parent_command:
        os.kill(parent, signal.SIGTERM)
    os._exit(1)
