"""The proxy endpoints' common case, served without `tornado.web.RequestHandler`.

Tornado's HTTP server (`app.http1.LeanHTTPServer`) parses every request; `ApiRouter`
then gives a POST to ``/v1/messages``, ``/v1/chat/completions``, ``/v1/responses``,
``/v1/embeddings`` or ``/v1/messages/count_tokens`` (under any prefix) with a
Content-Length within the limit and no Content-Encoding to `ApiCall`, a plain
`HTTPMessageDelegate` that hands the body to `Gateway` and writes its `Reply` straight to
the connection, its head as lines (no `HTTPHeaders`).
Everything else (the dashboard, ``/v1/models``, other methods, chunked, compressed or
oversized bodies, any request on a server other than the lean one) goes to the Tornado
Application as before.

RequestHandler's per-request machinery (its initialisation, default headers, header
value checks, output transforms, flush and finish bookkeeping) was a tenth of the
gateway's CPU per request (issue 7's profiles); this path does only what an API call
needs and behaves the same: request-id headers, CORS headers for a browser, the
dialect's error envelope, Nagle off for streams, a client that goes away cancels its
request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from http.client import responses
from typing import Any, cast

import tornado.web
from tornado import httputil
from tornado.iostream import StreamClosedError

from app.errors import (
    GatewayError,
    HeadersTooLargeError,
    InternalError,
    InvalidRequestError,
    RequestTimeoutError,
)
from app.gateway import (
    PEEK_LIMIT,
    ApiRequest,
    Gateway,
    LastChunk,
    Reply,
    error_reply,
    shutdown_error,
    stream_error_bytes,
)
from app.handlers.api import (
    CORS_HEADERS,
    dialect_for,
    is_api_path,
    is_dashboard_path,
    new_request_id,
)
from app.http1 import LeanConnection, parse_header_block
from app.services import Services

access_log = logging.getLogger("tornado.access")
log = logging.getLogger("bridgekeeper.api")


def log_request(status: int, method: str, path: str, seconds: float) -> None:
    """Server errors always, other requests at DEBUG; never the query string or headers
    (keys may travel there)."""
    if status >= 500:
        level = logging.WARNING
    elif access_log.isEnabledFor(logging.DEBUG):
        level = logging.DEBUG
    else:
        return
    access_log.log(level, "%d %s %s %.1fms", status, method, path, 1000.0 * seconds)


_date_cache: list[Any] = [0, ""]


def _http_date() -> str:
    """The ``Date`` line, made once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[:] = [now, "Date: " + httputil.format_timestamp(now)]
    return str(_date_cache[1])


def head_lines(reply: Reply, request_id: str) -> list[str]:
    """A reply's header lines, the request ids and the date."""
    # str.join over each (name, value) pair, in C: ~0.3 k instructions a line fewer than
    # an f-string in a Python loop (a limited key's answer has six limit headers).
    lines = list(map(": ".join, reply.headers.items()))
    lines += [f"request-id: {request_id}", f"x-request-id: {request_id}", _http_date()]
    return lines


_CORS_LINES = [f"{name}: {value}" for name, value in CORS_HEADERS]


def _reason(status: int) -> str:
    return responses.get(status, "Unknown")


class ApiRouter(httputil.HTTPServerConnectionDelegate):
    """The HTTP server's delegate: proxy calls to `ApiCall`, the rest to ``app``."""

    def __init__(
        self,
        app: tornado.web.Application,
        endpoints: Mapping[str, tuple[str, str]],
        services: Services,
        gateway: Gateway,
        *,
        dialect: str | None = None,
    ) -> None:
        self.app = app
        self.endpoints = dict(endpoints)  # path -> (dialect, endpoint)
        self.services = services
        self.gateway = gateway
        self.dialect = dialect  # every path's, on a listener that speaks one (else None)

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _Dispatch(self, server_conn, request_conn)

    def on_close(self, server_conn: object) -> None:
        self.app.on_close(server_conn)

    def refused_head(self, head: bytes, limit: int | None) -> bytes:
        """The whole response to a request whose header block ran past ``limit`` bytes (a
        431), or, ``limit`` None, that is not HTTP/1.1 the server can read (a 400: a
        malformed request line or header line, a broken chunked body). ``head``: the start
        of the request (`_refusal`)."""
        err: GatewayError
        if limit is None:
            err = InvalidRequestError(
                "The request is not valid HTTP/1.1: a malformed request line or header "
                "line (a name with spaces, a line without a colon, a folded line), or a "
                "broken chunked body."
            )
        else:
            err = HeadersTooLargeError(
                f"The request's headers are larger than the {limit} bytes this gateway "
                "reads; send fewer or shorter headers."
            )
        # A 431's head is cut short: no header of it is read.
        return self._refusal(head, err, whole=limit is None)

    def stalled_body(self, head: bytes, seconds: float) -> bytes:
        """The whole response to a request whose body stopped coming: nothing of it for
        ``seconds`` (a 408, as nginx answers its ``client_body_timeout``). ``head``: the
        request's (`_refusal`)."""
        err = RequestTimeoutError(
            f"The request body stopped arriving: nothing more of it came for {seconds:g} s."
        )
        return self._refusal(head, err, whole=True)

    def _refusal(self, head: bytes, err: GatewayError, *, whole: bool) -> bytes:
        """``err`` as the whole response to the request ``head`` starts, then the connection
        closes. The error is in the dialect of its path or, where the path does not say, of
        its headers (`dialect_for`). On an API path it is recorded in the usage trail
        (`_record_refusal`; ``whole``: ``head`` is the request's whole head, as read)."""
        start, _, fields = head.lstrip(b"\r\n").partition(b"\n")
        words = start.split(b" ")
        path = words[1].decode("latin1").partition("?")[0] if len(words) > 1 else ""
        lowered = b"\n" + fields.lower()
        found = self.endpoints.get(path)
        if found is not None:
            dialect = found[0]
        elif self.dialect is not None:
            dialect = self.dialect
        else:
            anthropic = b"\nanthropic-version:" in lowered or b"\nx-api-key:" in lowered
            dialect = dialect_for(path, anthropic)
        request_id = new_request_id()
        if is_api_path(path):
            endpoint = found[1] if found is not None else "unknown"
            self._record_refusal(dialect, endpoint, fields if whole else None, request_id, err)
        reply = error_reply(dialect, err, request_id)
        lines = [f"HTTP/1.1 {reply.status} {_reason(reply.status)}", *head_lines(reply, request_id)]
        if b"\norigin:" in lowered and not is_dashboard_path(path):
            lines += _CORS_LINES
        lines += [f"Content-Length: {len(reply.body)}", "Connection: close"]
        log_request(reply.status, words[0].decode("latin1"), path, 0.0)
        return "\r\n".join(lines).encode("latin1") + b"\r\n\r\n" + reply.body

    def _record_refusal(
        self,
        dialect: str,
        endpoint: str,
        fields: bytes | None,
        request_id: str,
        err: GatewayError,
    ) -> None:
        """Leave the refused request's usage row (`Gateway.record_refusal`) from a task, as
        the shutdown waits for a request's, while the answer goes out. The key is looked for
        in ``fields``, the head's header lines, when the server's own parse of them
        (`parse_header_block`) takes them: a malformed header block, or a 431's cut short
        (None), names no key. Never raises: a failure to record is logged, and the client
        still gets its answer."""
        try:
            headers = httputil.HTTPHeaders()
            if fields is not None:
                try:
                    headers = parse_header_block(fields.decode("latin1"))
                except httputil.HTTPInputError:
                    pass
            req = ApiRequest(dialect, endpoint, b"", headers, request_id)
            task = asyncio.get_running_loop().create_task(self._recorded(req, err))
            inflight = self.services.inflight
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        except Exception:
            log.exception(
                "request %s (a %d): its usage row could not be recorded", request_id, err.status
            )

    async def _recorded(self, req: ApiRequest, err: GatewayError) -> None:
        try:
            await self.gateway.record_refusal(req, err)
        except Exception:
            log.exception(
                "request %s (a %d): its usage row could not be recorded", req.request_id, err.status
            )


class _Dispatch(httputil.HTTPMessageDelegate):
    """Decides at the headers which delegate gets the message, then forwards to it."""

    __slots__ = ("router", "server_conn", "request_conn", "target")

    def __init__(
        self, router: ApiRouter, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> None:
        self.router = router
        self.server_conn = server_conn
        self.request_conn = request_conn
        self.target: httputil.HTTPMessageDelegate | None = None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Any:
        router = self.router
        target: httputil.HTTPMessageDelegate | None = None
        if isinstance(start_line, httputil.RequestStartLine) and start_line.method == "POST":
            path, _, _ = start_line.path.partition("?")
            found = router.endpoints.get(path)
            length = headers.get("Content-Length")
            if (
                found is not None
                and isinstance(self.request_conn, LeanConnection)
                and length is not None
                and length.isdigit()
                and int(length) <= router.services.settings.max_body_bytes
                and "Content-Encoding" not in headers  # decompressed by `ProxyHandler`
            ):
                target = ApiCall(router, self.request_conn, start_line, found[0], found[1])
        if target is None:
            target = router.app.start_request(self.server_conn, self.request_conn)
        self.target = target
        return target.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Any:
        assert self.target is not None
        return self.target.data_received(chunk)

    def finish(self) -> None:
        assert self.target is not None
        self.target.finish()

    def on_connection_close(self) -> None:
        if self.target is not None:
            self.target.on_connection_close()


class ApiCall(httputil.HTTPMessageDelegate):
    """One proxy call: collect the body, run the gateway, write the reply."""

    def __init__(
        self,
        router: ApiRouter,
        conn: httputil.HTTPConnection,
        start_line: httputil.RequestStartLine,
        dialect: str,
        endpoint: str,
    ) -> None:
        self.services = router.services
        self.gateway = router.gateway
        self.conn = cast(LeanConnection, conn)
        self.start_line = start_line
        self.dialect = dialect
        self.endpoint = endpoint
        self.request_id = new_request_id()
        self.headers: httputil.HTTPHeaders | None = None
        self.chunks: list[bytes] = []
        self.task: asyncio.Task[None] | None = None
        self.started = time.perf_counter()
        self.status = 0
        self.refused = False  # answered before its body was read (`_key_before_body`)

    # -- HTTPMessageDelegate ---------------------------------------------------------------

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self.headers = headers
        # Called if the client goes away after its request was read (the body below).
        self.conn.set_close_callback(self.on_connection_close)
        if int(headers["Content-Length"]) > PEEK_LIMIT:  # a digit string (`_Dispatch`)
            return self._key_before_body(headers)
        return None

    async def _key_before_body(self, headers: httputil.HTTPHeaders) -> None:
        """A large body is read only for a valid key: without one it is refused at once
        (a 401 that drains what the client still sends), so no one without a key can make
        the gateway hold megabytes per connection (32 MiB each, as many as it accepts).
        A smaller body is read first, so the usage row can name the model it asks for."""
        try:
            await self.services.authenticate_headers(headers)
        except GatewayError as err:
            self.refused = True
            lean = self.conn._lean
            if lean is not None:
                lean.linger = True
            req = ApiRequest(self.dialect, self.endpoint, b"", headers, self.request_id)
            reply = await self.gateway.reject(req, err)
            self._write_whole(reply)
            log_request(
                reply.status,
                self.start_line.method,
                self.start_line.path.partition("?")[0],
                time.perf_counter() - self.started,
            )

    def data_received(self, chunk: bytes) -> None:
        if not self.refused:
            self.chunks.append(chunk)

    def finish(self) -> None:
        if self.refused:
            return
        body = b"".join(self.chunks)
        self.chunks = []
        self.task = asyncio.get_running_loop().create_task(self._run(body))

    def on_connection_close(self) -> None:
        task = self.task
        if task is not None and not task.done():
            task.cancel()

    # -- the call --------------------------------------------------------------------------

    async def _run(self, body: bytes) -> None:
        task = self.task
        inflight = self.services.inflight
        if task is not None:
            inflight.add(task)
        assert self.headers is not None
        req = ApiRequest(self.dialect, self.endpoint, body, self.headers, self.request_id)
        reply: Reply | None = None
        try:
            reply = await self.gateway.answer(req)
            await self._write(reply)
        except asyncio.CancelledError:
            # The client went away (the gateway recorded it and closed the upstream), or
            # shutdown's grace is over: then the client is told.
            if self.services.stopping:
                self._cut_by_shutdown()
            return
        except StreamClosedError:
            pass
        except Exception:
            log.exception("request %s failed while being answered", self.request_id)
            if not self._head_sent():
                internal = InternalError("internal error")
                self._write_whole(error_reply(self.dialect, internal, self.request_id))
            else:
                self.conn.close()  # the answer is cut short: say so by closing
        finally:
            if reply is not None and reply.after is not None:
                await reply.after()
            if task is not None:
                inflight.discard(task)
            log_request(
                self.status or 499,
                self.start_line.method,
                self.start_line.path.partition("?")[0],
                time.perf_counter() - self.started,
            )

    def _cut_by_shutdown(self) -> None:
        """An answer not begun is a 529/503 the SDKs retry (`shutdown_error`); a stream
        begun gets that error as its last event and its proper end, where it used to stop
        mid chunked body. A Responses stream (events numbered by the gateway's own
        translator) is closed."""
        err = shutdown_error()
        try:
            if not self._head_sent():
                self._write_whole(error_reply(self.dialect, err, self.request_id))
            elif self.endpoint == "responses" or self.conn.stream.closed():
                self.conn.close()
            else:
                self.conn.send_chunk(stream_error_bytes(self.dialect, err), last=True)
                self.conn.finish()
        except (StreamClosedError, OSError):
            pass

    def _head_sent(self) -> bool:
        """Whether the response's head went out (``status`` is set before a stream's first
        chunk, which brings the head with it)."""
        return self.conn._response_start_line is not None

    def _head(self, reply: Reply) -> list[str]:
        self.status = reply.status
        lines = head_lines(reply, self.request_id)
        headers = self.headers
        if headers is not None and "Origin" in headers:
            lines += _CORS_LINES
        return lines

    def _write_whole(self, reply: Reply) -> None:
        lines = self._head(reply)
        reason = _reason(reply.status)
        self.conn.write_head(reply.status, reason, lines, reply.body, length=len(reply.body))
        self.conn.finish()

    async def _write(self, reply: Reply) -> None:
        stream = reply.stream
        if stream is None:
            self._write_whole(reply)
            return
        lines = self._head(reply)
        conn = self.conn
        # Nagle is off on every lean connection (app/http1.py): no chunk waits for the
        # client's delayed ACK.
        first = True
        writing = conn.stream.writing
        try:
            async for chunk in stream:
                last = type(chunk) is LastChunk
                if first:
                    first = False
                    reason = _reason(reply.status)
                    pending = conn.write_head(reply.status, reason, lines, chunk, last=last)
                else:
                    pending = conn.send_chunk(chunk, last=last)
                # Pending only when the client's socket did not take it all; its future
                # resolves a loop turn after the bytes went out: wait for it only while
                # the socket is still full, which is all the back-pressure a stream needs.
                if pending is not None and writing():
                    await pending
            if first:
                pending = conn.write_head(reply.status, _reason(reply.status), lines)
                if pending is not None:
                    await pending
        except StreamClosedError:
            return
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        conn.finish()
