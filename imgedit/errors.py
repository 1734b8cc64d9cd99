"""The one error type of the request path, and the body it is sent as.

Every failure a client can see is an :class:`ApiError`, raised from whichever
layer finds it (a bad field, an undecodable image, a prompt the model cannot
take). Its body is what the ``openai`` SDK reads (``{"error": {"message",
"type", "param", "code"}}``) plus the API spec's top-level ``detail``, which
repeats the message. Turning it into an HTTP response is the API layer's job
(:func:`imgedit.api.responses.error_response`), so that no layer below it
depends on a web framework.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(eq=False)
class ApiError(Exception):
    """A failure to report to the client.

    Attributes:
        status: HTTP status code.
        message: human-readable sentence; never contains internals.
        param: the request field at fault (``"image[1]"``, ``"size"``...), if any.
        code: a short machine-readable code such as ``"invalid_value"``.
        headers: extra response headers (``Retry-After``, ``x-should-retry``...).
    """

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

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


def invalid(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    """A 400 for a bad value of ``param``."""
    return ApiError(400, message, param=param, code=code)


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


def one_line(error: BaseException, limit: int = 300) -> str:
    """``error``'s message on one line, cut to ``limit`` characters, for operator messages."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
