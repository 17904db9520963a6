"""The gateway's one error tree.

Every failure the gateway reports to a client is one of these. Each carries an
HTTP status and a neutral ``kind``; the dialect modules (`app.dialects.anthropic`,
`app.dialects.openai`) render it in their own envelope and status.
"""

from __future__ import annotations

from collections.abc import Mapping


class GatewayError(Exception):
    """Base of every error a client may see; never rendered with a traceback."""

    status: int = 500
    kind: str = "api_error"
    fixed_headers: Mapping[str, str] = {}  # sent with every error of the class
    # A same-dialect backend's own error answer (status, body in the client's envelope),
    # which the client gets as it came when this error is the request's last word.
    upstream_reply: tuple[int, bytes] | None = None

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.param = param
        self.code = code
        self.headers = {**self.fixed_headers, **(headers or {})}


class InvalidRequestError(GatewayError):
    """The request is malformed or asks for something impossible (400)."""

    status = 400
    kind = "invalid_request"


class UnauthorizedError(GatewayError):
    """No proxy key, or an unknown, revoked or expired one (401).

    Sent with ``x-should-retry: false``, which Claude Code and both SDKs obey: Claude Code
    otherwise retries a 401 ten times, for minutes, before saying the key is wrong.
    """

    status = 401
    kind = "authentication"
    fixed_headers = {"x-should-retry": "false"}
    # The key's record when it exists but is revoked or expired: the usage trail names who
    # is still sending it.
    key: object | None = None


class BillingError(GatewayError):
    """The upstream account cannot pay for the request (402)."""

    status = 402
    kind = "billing"


class ForbiddenError(GatewayError):
    """The key may not use what it asked for (403)."""

    status = 403
    kind = "permission"


class NotFoundError(GatewayError):
    """Unknown path or model (404)."""

    status = 404
    kind = "not_found"


class RequestTimeoutError(InvalidRequestError):
    """The request body stopped arriving before its end (408)."""

    status = 408


class UnsupportedMediaTypeError(InvalidRequestError):
    """A request body in a Content-Encoding the gateway cannot decode (415)."""

    status = 415


class MethodNotAllowedError(GatewayError):
    """The path exists but not for this HTTP method (405)."""

    status = 405
    kind = "invalid_request"


class PayloadTooLargeError(GatewayError):
    """The request body is larger than the configured limit (413)."""

    status = 413
    kind = "request_too_large"


class HeadersTooLargeError(GatewayError):
    """The request's header block is larger than the server reads (431)."""

    status = 431
    kind = "invalid_request"


class RateLimitedError(GatewayError):
    """A proxy key's RPM/TPM window, or every upstream key, is exhausted (429)."""

    status = 429
    kind = "rate_limit"


class InternalError(GatewayError):
    """A fault inside the gateway itself (500); logged with its traceback."""

    status = 500
    kind = "api_error"


class UpstreamError(GatewayError):
    """The upstream failed in a way that is not the client's fault (502)."""

    status = 502
    kind = "api_error"


def nested_too_deeply(exc: BaseException) -> bool:
    """Whether ``exc`` is orjson refusing to write JSON nested past 254 levels (it reads
    1,024), or Python's recursion limit meeting such nesting."""
    return isinstance(exc, RecursionError) or (
        isinstance(exc, TypeError) and str(exc) == "Recursion limit reached"
    )


def nested_answer() -> UpstreamError:
    """The 502 for an upstream answer nested deeper than the gateway can write."""
    return UpstreamError(
        "upstream answered with JSON nested too deeply to translate (more than 254 levels "
        "of objects and arrays)"
    )


def answer_error(exc: Exception) -> Exception:
    """What to raise for ``exc`` met writing an upstream's answer: `nested_answer` when the
    answer is nested deeper than the gateway can write (`nested_too_deeply`), else ``exc``."""
    return nested_answer() if nested_too_deeply(exc) else exc


class UpstreamConnectError(UpstreamError):
    """The upstream could not be reached (refused, unresolvable, TLS)."""


class UpstreamTimeoutError(UpstreamError):
    """The upstream did not answer, or stopped streaming, within the timeout (504)."""

    status = 504
    kind = "timeout"


class OverloadedError(UpstreamError):
    """The upstream is overloaded (Anthropic 529, OpenAI 503)."""

    status = 529
    kind = "overloaded"


_BY_UPSTREAM_STATUS: dict[int, type[GatewayError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    402: BillingError,
    403: ForbiddenError,
    404: NotFoundError,
    408: UpstreamTimeoutError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: RateLimitedError,
    503: OverloadedError,
    504: UpstreamTimeoutError,
    529: OverloadedError,
}


def from_upstream_status(
    status: int, message: str, *, retry_after: float | None = None, code: str | None = None
) -> GatewayError:
    """The error a client sees for an upstream's non-2xx answer; the message is kept verbatim."""
    cls = _BY_UPSTREAM_STATUS.get(status)
    if cls is None:
        cls = UpstreamError if status >= 500 else InvalidRequestError
    err = cls(message, retry_after=retry_after, code=code)
    if cls is UpstreamError and status == 500:
        err.status = 500
    return err
