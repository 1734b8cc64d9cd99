"""The errors the API answers, in OpenAI's shape.

Every failure a client sees is an :class:`ApiError`: one raised by this layer
(a malformed body, a missing key, a full queue), or a
:class:`~imgedit.errors.RequestError` from a layer below, turned into one by
:func:`http_error`. Its body is what the ``openai`` SDK reads (``{"error":
{"message", "type", "param", "code"}}``) plus the API spec's top-level
``detail``, which repeats the message.
"""

from __future__ import annotations

from imgedit.errors import NotFound, RequestError


class ApiError(Exception):
    """A failure to report to the client.

    Args:
        status: HTTP status code.
        message: human-readable sentence; never contains internals.
        param: the request field at fault (``"image[1]"``, ``"size"``...), if any.
        code: a short machine-readable code such as ``"invalid_value"``.
        headers: extra response headers (``Retry-After``, ``x-should-retry``...).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def type(self) -> str:
        """OpenAI's error type for the status (a wrong API key is an ``invalid_request_error`` there too)."""
        if self.status == 404:
            return "not_found_error"
        if self.status == 429:
            return "rate_limit_error"
        if self.status >= 500:
            return "server_error"
        return "invalid_request_error"

    def body(self) -> dict[str, object]:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code},
            "detail": self.message,
        }


def http_error(error: RequestError) -> ApiError:
    """What the client is told of a request the layers below refused: 404 for what does not exist, else 400."""
    return ApiError(404 if isinstance(error, NotFound) else 400, error.message, param=error.param, code=error.code)


def internal_error() -> ApiError:
    """The 500 sent for an unexpected failure; details stay in the server log.

    ``x-should-retry: false`` stops the ``openai`` SDK from running the same
    failing edit three times.
    """
    return ApiError(
        500,
        "The server failed to process the request; the failure was logged.",
        code="server_error",
        headers={"x-should-retry": "false"},
    )


#: Seconds a client is told to wait (``Retry-After``) before retrying a request refused while the server drains.
SHUTTING_DOWN_RETRY_SECONDS = 5


def shutting_down(message: str) -> ApiError:
    """The 503 for a request the server refuses, or stops waiting for, while it drains for shutdown."""
    return ApiError(
        503,
        message,
        code="server_shutting_down",
        # Closed after this answer, so that the client's next request opens a connection (to another replica)
        # rather than reusing this one just as the server closes it.
        headers={"Retry-After": str(SHUTTING_DOWN_RETRY_SECONDS), "Connection": "close"},
    )
