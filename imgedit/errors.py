"""The errors every layer may raise, with no HTTP in them.

* :class:`RequestError`: what the client sent cannot be served (a bad field, an
  undecodable image, a prompt the model cannot take); it names the field
  (``param``) and carries a short code. Whichever layer finds it raises it; the
  API layer alone turns it into an HTTP answer (:func:`imgedit.api.errors.http_error`):
  400, or 404 for :class:`NotFound`.
* :class:`StartupError`: serving cannot start as configured; one line for the
  operator, naming the setting.
"""

from __future__ import annotations


class RequestError(Exception):
    """The request cannot be served as sent.

    Attributes:
        message: a sentence for the client; never contains internals.
        param: the request field at fault (``"image[1]"``, ``"size"``...), if any.
        code: a short machine-readable code such as ``"invalid_value"``.
    """

    def __init__(self, message: str, *, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class NotFound(RequestError):
    """The request names something this server does not have (a LoRA that is not loaded, say)."""


class StartupError(Exception):
    """Serving cannot start; the message is one line for the operator."""


def invalid(param: str | None, message: str, code: str = "invalid_value") -> RequestError:
    """A bad value of ``param``."""
    return RequestError(message, param=param, code=code)


def one_line(error: BaseException, limit: int = 300) -> str:
    """``error``'s message on one line, cut to ``limit`` characters, for operator messages."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
