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
* :func:`prepare_serving_process`: each ``bentoml serve`` keeps its workers'
  metrics files in a folder of its own (BentoML shares one per BentoML home,
  and empties it whenever a server starts), set through BentoML's container.
* :func:`end_with_server`: a worker ends, with its ranks, as soon as its
  ``bentoml serve`` is gone (BentoML starts each worker in a session of its
  own, so nothing else stops one whose server was killed).

BentoML is pinned to the 1.4 line; ``tests/serving/test_bentoml_seam.py``
fails when an upgrade changes any of this behaviour.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, ClassVar, NoReturn, cast

import bentoml
from pydantic import ConfigDict
from starlette.requests import Request

#: Set by :func:`arrange_exit_status` for the workers: where a worker records a fatal start-up failure.
#: (Not ``IMGEDIT_``-prefixed: it is no setting.)
FAILURE_FILE_VARIABLE = "_IMGEDIT_STARTUP_FAILURE_FILE"
#: Set by :func:`prepare_serving_process` for the workers: the process id of their ``bentoml serve``.
SERVER_PID_VARIABLE = "_IMGEDIT_SERVER_PID"
#: Each server's metrics folder is made under the temporary directory with this prefix (see :func:`own_metrics_folder`).
METRICS_FOLDER_PREFIX = "imgedit-metrics-"
#: How often a worker checks that its ``bentoml serve`` is still its parent, in seconds.
SERVER_CHECK_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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
            _remove_own_metrics_folder()  # os._exit skips the exit handler that removes it
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


# -- one server's own processes and files ---------------------------------------------------


def prepare_serving_process() -> None:
    """In the ``bentoml serve`` process, before BentoML sets up its workers (so when ``service.py`` is imported):
    make this server's own metrics folder, and tell the workers which process is their server."""
    os.environ[SERVER_PID_VARIABLE] = str(os.getpid())
    own_metrics_folder()


#: Once made: the folder holding this process's metrics folder and its lock file, and that file, kept open
#: (and so locked) until this process ends.
_metrics_home: Path | None = None
_metrics_lock: IO[str] | None = None


def own_metrics_folder() -> Path:
    """Make a folder for this server's ``prometheus_client`` multiprocess files, have BentoML use it, and remove
    it when this process exits; also remove those left by servers that ended without removing theirs.

    BentoML gives its workers ``$BENTOML_HOME/prometheus_multiproc_dir`` (one folder per BentoML home, so per
    host) and empties it each time a server starts (``bentoml.serving.ensure_prometheus_dir``): two servers on
    one host read each other's files, and the second one deletes the first one's. BentoML reads no setting
    or variable for that folder; it takes it from its container's ``prometheus_multiproc_dir`` provider,
    which is set here, as BentoML's own pytest plugin sets it. ``bentoml serve`` imports the service before it
    asks for the folder, so setting it at import is in time.

    The folder is ``<tmp>/imgedit-metrics-XXXX/prometheus``; ``<tmp>/imgedit-metrics-XXXX/lock`` is locked
    (``flock``) for as long as this process lives, which tells a later server whether the folder is in use.
    """
    global _metrics_home, _metrics_lock
    from bentoml._internal.configuration.containers import BentoMLContainer

    _remove_abandoned_metrics_folders(Path(tempfile.gettempdir()))
    home = Path(tempfile.mkdtemp(prefix=METRICS_FOLDER_PREFIX))
    lock = (home / "lock").open("w")  # not inherited by the workers: the lock is this process's alone
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    lock.write(f"{os.getpid()}\n")  # written only once locked: an empty lock file is a folder being made
    lock.flush()
    folder = home / "prometheus"
    folder.mkdir()
    _metrics_home, _metrics_lock = home, lock
    BentoMLContainer.prometheus_multiproc_dir.set(str(folder))
    atexit.register(_remove_own_metrics_folder)
    return folder


def _remove_own_metrics_folder() -> None:
    if _metrics_home is not None:
        shutil.rmtree(_metrics_home, ignore_errors=True)


def _remove_abandoned_metrics_folders(parent: Path) -> None:
    """Remove the metrics folders under ``parent`` whose server is gone (killed, so it could not remove its own)."""
    for home in parent.glob(METRICS_FOLDER_PREFIX + "*"):
        try:
            with (home / "lock").open() as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if lock.read():
                    shutil.rmtree(home, ignore_errors=True)
        except OSError:  # locked by a live server, no lock file yet, or another user's
            continue


def end_with_server() -> None:
    """In a worker: end, with every process it started (its ranks), as soon as its ``bentoml serve`` is gone.

    circus, BentoML's process manager, forks the workers from the main thread of ``bentoml serve`` and makes
    each the leader of a session of its own: a signal to ``bentoml serve``'s process group never reaches them,
    and when ``bentoml serve`` is killed outright they would go on serving on the listening socket they
    inherited. Two guards, so that it ends however its server went:

    * the kernel kills it when its parent ends (``PR_SET_PDEATHSIG``: it follows the *thread* that forked,
      here the main thread of ``bentoml serve``, which lives as long as that process); its ranks then die
      with it, by the same means (:mod:`imgedit.ranks.main`);
    * a thread checks every :data:`SERVER_CHECK_SECONDS` that its parent is still its server (for what the
      first misses: a server gone before this runs, a kernel without ``prctl``), and kills the worker's
      process group (the worker and its ranks) when not.

    It does not drain: no server is left to send it requests or to wait for it.
    """
    server = int(os.environ.get(SERVER_PID_VARIABLE) or os.getppid())
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    threading.Thread(target=follow_server, args=(server,), name="imgedit-server-watch", daemon=True).start()


def follow_server(server: int, interval: float = SERVER_CHECK_SECONDS) -> NoReturn:
    """Return never: once process ``server`` is no longer this process's parent, kill this process and its group."""
    while os.getppid() == server:
        time.sleep(interval)
    with contextlib.suppress(OSError, ValueError):  # nowhere left to write to is no reason to stay
        print(
            f"imgedit: the server (process {server}) is gone; worker {os.getpid()} stops", file=sys.stderr, flush=True
        )
    if os.getpgrp() == os.getpid():  # circus made it the leader of its group, which its ranks joined
        os.killpg(os.getpid(), signal.SIGKILL)
    os._exit(1)
