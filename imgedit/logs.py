"""Logging for the ``imgedit`` logger: one format, the request id on every line.

The request being handled lives in a context variable (:data:`current_request`),
set by the API layer's access-log middleware; every line logged while handling
it carries its id (worker threads copy the context), and :func:`add_to_access_line` adds
details to its access line. Prompts and other user text are logged only at
debug level (``IMGEDIT_LOG_LEVEL=debug``); info level carries ids, sizes and timings.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import os
import sys
from dataclasses import dataclass, field

LOGGER_NAME = "imgedit"
_FORMAT = "%(asctime)s [%(levelname)s] [imgedit] [%(request_id)s] %(message)s"


@dataclass
class RequestContext:
    """What is known about the request being handled."""

    id: str
    #: Extra ``key=value`` pairs for the access line, added by the handler.
    details: dict[str, object] = field(default_factory=dict)


current_request: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("imgedit_request", default=None)


def current_request_id() -> str:
    context = current_request.get()
    return context.id if context is not None else "-"


def add_to_access_line(**details: object) -> None:
    """Add ``details`` to the current request's access line (no-op outside a request)."""
    context = current_request.get()
    if context is not None:
        context.details.update(details)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class _ImgeditHandler(logging.StreamHandler):
    """Marks the handler we installed, so configuring twice does not duplicate lines."""


def configure_logging(level: str) -> None:
    """Send ``imgedit`` records to stderr at ``level`` and quiet library chatter.

    diffusers warns on every call about arguments it ignores (for instance a
    negative prompt without true CFG); those warnings say nothing to an operator.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    logger.propagate = False
    # A dictConfig run after our modules were imported (BentoML configures its
    # workers' logging that way) disables the loggers it does not name.
    for name, existing in logging.root.manager.loggerDict.items():
        if (name == LOGGER_NAME or name.startswith(LOGGER_NAME + ".")) and isinstance(existing, logging.Logger):
            existing.disabled = False
    if not any(isinstance(handler, _ImgeditHandler) for handler in logger.handlers):
        handler = _ImgeditHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT))
        handler.addFilter(_RequestIdFilter())
        logger.addHandler(handler)
    # Both libraries reset their root logger's level when first used, so set
    # it through their own helpers where they are loaded, and through the
    # variables they read where not: importing them here would cost BentoML's
    # supervisor process, which never runs a model, seconds of start-up.
    for library, variable in (("diffusers", "DIFFUSERS_VERBOSITY"), ("transformers", "TRANSFORMERS_VERBOSITY")):
        if variable in os.environ:  # the operator's choice, or ours from an earlier call
            continue
        os.environ[variable] = "error"
        if library in sys.modules:
            importlib.import_module(f"{library}.utils.logging").set_verbosity_error()
    # Importing torchao, which diffusers does even without quantization, logs several lines at every
    # start-up: each compiled kernel this machine cannot load (CUDA kernels on a CPU, kernels built
    # for another Python), and torch's deprecation notes on how torchao registers its types. Debug
    # level hears them. python-multipart warns of each malformed form with a byte of it, which is the
    # client's data (and its answer already says the form is malformed).
    for name in ("torchao", "torch.utils._pytree", "python_multipart"):
        logging.getLogger(name).setLevel(logging.NOTSET if logger.level <= logging.DEBUG else logging.ERROR)


def get_logger(name: str) -> logging.Logger:
    """A child of the ``imgedit`` logger, for module ``name``."""
    return logging.getLogger(f"{LOGGER_NAME}.{name.rsplit('.', 1)[-1]}")
