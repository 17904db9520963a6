"""Tornado's HTTP/1.1 server with its per-request costs taken out.

Every request on Tornado's own server pays for things an API gateway does not need per
request (issue 7's profiles, a quarter of Tornado's share of the CPU):

- a timer per request for the idle-connection timeout (``gen.with_timeout`` around the
  header read) - here one timer per connection does it;
- two ``setsockopt`` calls per response (Nagle on, Nagle off) - here TCP_NODELAY is set
  once per connection and left on: every response is written whole in one send, or is a
  stream whose chunks must not wait for the client's delayed ACK;
- a regular expression call and several Python calls per request header line to
  validate and store it - here one regular expression checks the whole block (the same
  rules: RFC 9110 field names and values, CRLF or LF line ends, no folding) and
  another reads it out;
- a timer per request with a body for Tornado's ``body_timeout`` (a total for the whole
  body) - here the same per-connection timer ends a request whose body stalls: no byte
  of it for ``body_timeout`` seconds, as nginx's ``client_body_timeout``;
- a future, a done-callback and a loop turn per write - here a write that finds
  nothing queued before it goes straight to the socket; only what the socket does not
  take at once is queued on the stream as before;
- a fresh buffer zeroed for every socket read (two a request) and a regular expression
  tried at every byte of the request head - here one scratch buffer per thread and two
  ``find`` calls (`LeanStream`, which relies on Tornado 6.6's stream internals: the
  version is pinned).

Everything else is Tornado's: `LeanConnection` is an ``HTTP1Connection`` and serves
`tornado.web.Application` and `ApiRouter` alike; the request body, keep-alive, HEAD,
HTTP/1.0 and error handling are its own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
from collections.abc import Callable
from typing import Any

from tornado import httputil, iostream
from tornado.concurrent import Future, future_add_done_callback
from tornado.http1connection import HTTP1Connection, HTTP1ServerConnection, parse_int
from tornado.httpserver import HTTPServer, _HTTPRequestContext
from tornado.log import app_log, gen_log

# One header line as RFC 9110 has it (field-name ":" OWS field-value OWS), as Tornado's
# `HTTPHeaders.parse_line` checks it line by line: a token, then a value of visible or
# obs-text characters with single spaces or tabs only inside it.
_VCHAR = r"[\x21-\x7e\x80-\xff]"
_VALUE = rf"(?:{_VCHAR}(?:[ \t\x21-\x7e\x80-\xff]*{_VCHAR})?)?"
_LINE = rf"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*({_VALUE})[ \t]*\r?\n"
_HEADER_LINE = re.compile(_LINE)
_HEADER_BLOCK = re.compile(rf"(?:{_LINE})*\r?\n")


def parse_header_block(block: str) -> httputil.HTTPHeaders:
    """The header lines of a request (after its start line, up to and including the blank
    line) as `HTTPHeaders`; `HTTPInputError` for anything Tornado's parser rejects."""
    if _HEADER_BLOCK.fullmatch(block) is None:
        raise httputil.HTTPInputError("Malformed HTTP headers")
    headers = httputil.HTTPHeaders()
    pairs = _HEADER_LINE.findall(block)
    for name, value in pairs:
        headers[name] = value
    if len(headers) != len(pairs):
        # A name given twice: Tornado keeps every value (rare enough to parse again).
        headers = httputil.HTTPHeaders()
        for name, value in pairs:
            headers.add(name, value)
    return headers


class LeanConnection(HTTP1Connection):
    """One request on a `LeanServerConnection`: Tornado's, with a leaner header parse,
    response head and write (see the module's docstring)."""

    def __init__(
        self,
        stream: iostream.IOStream,
        params: Any,
        context: object,
        owner: LeanServerConnection,
    ) -> None:
        super().__init__(stream, False, params, context)
        self._owner = owner
        # Straight to the socket only on a plain TCP stream (TLS has its own buffering).
        plain = type(stream) is LeanStream
        self._sock: socket.socket | None = stream.socket if plain else None
        self._lean: LeanStream | None = stream if plain else None  # type: ignore[assignment]

    def _parse_headers(self, data: bytes) -> tuple[str, httputil.HTTPHeaders]:
        self._owner.reading_headers_since = None  # the headers are in: not idle any more
        if self._lean is not None:
            self._lean.head = data  # for the answer to a request that turns out malformed
        text = data.decode("latin1").lstrip("\r\n")
        eol = text.find("\n")
        return text[:eol].rstrip("\r"), parse_header_block(text[eol + 1 :])

    def write_headers(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
        chunk: bytes | None = None,
    ) -> Future[None]:
        assert isinstance(start_line, httputil.ResponseStartLine)
        self._frame_response(start_line, headers.get("Content-Length"))
        # As Tornado does: these replace whatever the application set.
        for name, value in self._framing_fields():
            headers[name] = value
        lines = [f"{name}: {value}" for name, value in headers.get_all()]
        return _resolved(self._send_head(start_line, lines, chunk))

    def write_head(
        self,
        code: int,
        reason: str,
        lines: list[str],
        chunk: bytes | None = None,
        *,
        length: int | None = None,
        last: bool = False,
    ) -> Future[None] | None:
        """`write_headers` for a head written as ``name: value`` lines with distinct names,
        none of them Content-Length, Connection or Transfer-Encoding (`ApiCall`: no
        `HTTPHeaders` built); ``length``: the body's Content-Length, None to stream it.
        None when it all went out at once, else a future for when it has."""
        start_line = httputil.ResponseStartLine("HTTP/1.1", code, reason)
        self._frame_response(start_line, None if length is None else str(length))
        if length is not None:
            lines.append(f"Content-Length: {length}")
        lines += [f"{name}: {value}" for name, value in self._framing_fields()]
        return self._send_head(start_line, lines, chunk, last)

    def _frame_response(self, start_line: httputil.ResponseStartLine, length: str | None) -> None:
        """Tornado's bookkeeping for a response head: chunked or not, how much body."""
        request = self._request_start_line
        assert request is not None
        self._response_start_line = start_line
        code = start_line.code
        bodiless = request.method == "HEAD" or code in (204, 304) or 100 <= code < 200
        self._chunking_output = request.version == "HTTP/1.1" and not bodiless and length is None
        if request.method == "HEAD" or code == 304:
            self._expected_content_remaining = 0
        elif length is not None:
            self._expected_content_remaining = parse_int(length)
        else:
            self._expected_content_remaining = None

    def _framing_fields(self) -> list[tuple[str, str]]:
        """The Connection and Transfer-Encoding fields Tornado adds to a response head."""
        request = self._request_start_line
        assert request is not None and self._request_headers is not None
        out = []
        if request.version == "HTTP/1.1" and self._disconnect_on_finish:
            out.append(("Connection", "close"))
        if (
            request.version == "HTTP/1.0"
            and self._request_headers.get("Connection", "").lower() == "keep-alive"
        ):
            out.append(("Connection", "Keep-Alive"))
        if self._chunking_output:
            out.append(("Transfer-Encoding", "chunked"))
        return out

    def _send_head(
        self,
        start_line: httputil.ResponseStartLine,
        lines: list[str],
        chunk: bytes | None,
        last: bool = False,
    ) -> Future[None] | None:
        start = f"HTTP/1.1 {start_line.code} {start_line.reason}"
        # A CR or LF in the start line or in a header line would split the response. Looked
        # for in them joined without separators: `in` finds a character with memchr, where
        # counting the head's CRs and LFs took ~5 instructions a character (~2 k a request,
        # ~5 k with limit headers).
        probe = start + "".join(lines)
        if "\r" in probe or "\n" in probe:
            raise ValueError(f"Illegal characters (CR or LF) in response headers: {lines!r}")
        head = "\r\n".join((start, *lines))
        data = head.encode("latin1") + b"\r\n\r\n"
        if chunk:
            data += self._format_chunk(chunk)
        return self._send(self._ending(data) if last else data)

    def write(self, chunk: bytes) -> Future[None]:
        if self.stream.closed():
            return super().write(chunk)
        return _resolved(self._send(self._format_chunk(chunk)))

    def send_chunk(self, chunk: bytes, *, last: bool = False) -> Future[None] | None:
        """``write`` for `ApiCall`: None when it all went out at once (no future made), else
        a future for when it has; ``last``: nothing follows, so the end of a chunked body
        goes in the same send (`finish` then leaves it out), one segment less a stream."""
        if self.stream.closed():
            return super().write(chunk)
        data = self._format_chunk(chunk)
        return self._send(self._ending(data) if last else data)

    def _ending(self, data: bytes) -> bytes:
        if self._chunking_output:
            self._chunking_output = False  # for `finish`: the terminator is written
            return data + b"0\r\n\r\n"
        return data

    def _send(self, data: bytes) -> Future[None] | None:
        """Write ``data``: straight to the socket when nothing is queued before it (None
        when the socket took it all), the rest (or all, on a full or failing socket)
        queued on the stream as Tornado does (a future for when it has gone)."""
        stream = self.stream
        sent = 0
        if self._sock is not None and not stream.writing() and not stream.closed():
            try:
                sent = self._sock.send(data)
            except OSError:
                sent = 0  # full, or failing: the stream's own write reports it properly
            if sent == len(data):
                return None
        future: Future[None] = Future()
        if stream.closed():
            future.set_exception(iostream.StreamClosedError())
            future.exception()
            return future
        self._write_future = future
        self._pending_write = stream.write(memoryview(data)[sent:] if sent else data)
        future_add_done_callback(self._pending_write, self._on_write_complete)
        return future


def _resolved(future: Future[None] | None) -> Future[None]:
    """Tornado's interface always returns a future: a done one for a write already made."""
    if future is None:
        future = Future()
        future.set_result(None)
    return future


class LeanServerConnection(HTTP1ServerConnection):
    """A connection's request loop, with `LeanConnection` and one idle timer for all its
    requests (Tornado arms one per request)."""

    def __init__(
        self,
        stream: iostream.IOStream,
        params: Any,
        context: object,
        idle_timeout: float,
        body_timeout: float | None = None,
        stalled_body: Callable[[bytes, float], bytes] | None = None,
    ) -> None:
        super().__init__(stream, params, context)
        self.idle_timeout = idle_timeout
        self.body_timeout = body_timeout
        # (the request's head, the body timeout) -> the whole response to a stalled body
        self.stalled_body = stalled_body
        self.reading_headers_since: float | None = None
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._conn: LeanConnection | None = None  # the request being read or answered
        # The stream's pending read the timer last saw after a request's headers, and since
        # when: the same one still pending `body_timeout` later means no byte came meanwhile.
        self._waiting: Future[Any] | None = None
        self._waiting_since = 0.0

    def _check_idle(self) -> None:
        since = self.reading_headers_since
        now = self._loop.time()
        if since is not None and now - since >= self.idle_timeout:
            self._timer = None
            self.stream.close()  # idle too long between requests, or headers too slow
            return
        start = since if since is not None else now
        at = start + self.idle_timeout
        limit = self.body_timeout
        if limit is not None:
            # After the headers, the stream reads only the body: a new pending read each
            # time some of it came (Tornado reads a fixed-length body with ``partial``).
            waiting = self.stream._read_future if since is None else None
            if waiting is None or waiting is not self._waiting:
                self._waiting, self._waiting_since = waiting, now
            elif now - self._waiting_since >= limit:
                self._timer = None
                self._body_stalled(limit)
                return
            at = min(at, now + limit / 2)  # a stall is ended after limit to 1.5 x limit
        self._timer = self._loop.call_at(at, self._check_idle)

    def _body_stalled(self, limit: float) -> None:
        """Close a connection whose request body stopped coming, answering it (a 408, by
        ``stalled_body``) when no response to it has begun."""
        gen_log.info("Timeout reading body from %s", self.context)
        stream = self.stream
        conn = self._conn
        answer = self.stalled_body
        if (
            answer is not None
            and type(stream) is LeanStream
            and stream.socket is not None
            and conn is not None
            and conn._response_start_line is None
        ):
            stream.answer_and_close(answer(stream.head, limit))
        stream.close()

    async def _server_request_loop(self, delegate: httputil.HTTPServerConnectionDelegate) -> None:
        stream = self.stream
        step = self.idle_timeout
        if self.body_timeout is not None:
            step = min(step, self.body_timeout / 2)
        self._timer = self._loop.call_at(self._loop.time() + step, self._check_idle)
        try:
            while True:
                self.reading_headers_since = self._loop.time()
                conn = self._conn = LeanConnection(stream, self.params, self.context, self)
                request_delegate = delegate.start_request(self, conn)
                try:
                    ret = await conn.read_response(request_delegate)
                except (
                    iostream.StreamClosedError,
                    iostream.UnsatisfiableReadError,
                    asyncio.CancelledError,
                ):
                    return
                except Exception:
                    gen_log.error("Uncaught exception", exc_info=True)
                    conn.close()
                    return
                if not ret:
                    return
                if stream._read_buffer_size:
                    # Pipelined requests already read: let other connections have a turn
                    # (Tornado yields after every request; with nothing buffered the next
                    # read waits on the socket anyway).
                    await asyncio.sleep(0)
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._conn = self._waiting = None
            delegate.on_close(self)


def _keep_nodelay(value: bool) -> None:
    """Stands in for the stream's ``set_nodelay``: the flag stays on (see the module)."""


_HEAD_END = b"\r?\n\r?\n"  # what `HTTP1Connection` reads a request's head up to
_BARE_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"  # its answer to what it cannot parse


def head_end(buffer: bytes | bytearray) -> int:
    """Where the first match of ``\\r?\\n\\r?\\n`` in ``buffer`` ends, -1 when there is
    none: the blank line after a request's headers. The regular expression has no literal
    to skip ahead by and tried every byte of the head (~20 k instructions a request); two
    ``find`` calls do it, the second bounded by the first's hit."""
    crlf = buffer.find(b"\n\r\n")
    lf = buffer.find(b"\n\n", 0, crlf + 2) if crlf >= 0 else buffer.find(b"\n\n")
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


class _Scratch(threading.local):
    """Each thread's read buffer for `LeanStream` (event loops in several threads, as in
    tests, must not share one)."""

    def __init__(self) -> None:
        self.size = 0
        self.view = memoryview(bytearray())


_scratch = _Scratch()


LINGER_SECONDS = 2.0  # how long a refused connection's unread request is drained
_lingering: set[asyncio.Task[None]] = set()


async def linger_close(sock: socket.socket, data: bytes) -> None:
    """Send ``data``, end our side, and read (discarding) what the client still sends
    until it closes or `LINGER_SECONDS` pass; then close. Closing a socket with unread
    bytes would send a reset, which can destroy the response before the client reads it
    (a client still sending an oversized request has not read anything yet)."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)

    async def drain() -> None:
        await loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)
        while await loop.sock_recv(sock, 65536):
            pass

    try:
        await asyncio.wait_for(drain(), LINGER_SECONDS)
    except (TimeoutError, OSError):
        pass
    finally:
        sock.close()


class LeanStream(iostream.IOStream):
    """A served connection's stream: Tornado's, reading without its per-read costs.

    - Tornado reads into a fresh ``bytearray(read_chunk_size)`` every time: 64 KiB zeroed
      for each request and again for the read that finds nothing after it (~32 k
      instructions a request). Here every read goes into one scratch buffer per thread
      and only what came is copied out, as Tornado copies it out of its own.
    - The request head is found by `head_end` instead of a regular expression.
    - TCP_NODELAY stays on (see the module).
    - A request head past the server's ``max_header_size``, or one Tornado cannot parse
      (a malformed header line or request line, a bad body framing), gets the response
      ``refused_head`` makes of it (a 431, a 400), where Tornado closes without a word or
      with a bare ``400 Bad Request``; and so does a request whose body stalls
      (``stalled_body``, from `LeanServerConnection`), where Tornado closes without a word.
    """

    # (the head read so far: its first 8 KiB when over the limit, else the whole head, read
    # as far as ``max_header_size``; the head size limit it broke or None for a malformed
    # request) -> the whole response; None: answer as Tornado does.
    refused_head: Callable[[bytes, int | None], bytes] | None = None
    head = b""  # the last request head read (`LeanConnection._parse_headers`)
    # Answered before its body was read (a 413): on close, what the client still sends is
    # drained (`linger_close`) rather than reset, which could destroy the answer unread.
    linger = False

    def set_nodelay(self, value: bool) -> None:
        pass  # on since `LeanHTTPServer.handle_stream`, and it stays on

    def _read_to_buffer(self) -> int | None:
        if self._user_read_buffer:
            return super()._read_to_buffer()
        scratch = _scratch
        if scratch.size != self.read_chunk_size:
            scratch.size = self.read_chunk_size
            scratch.view = memoryview(bytearray(self.read_chunk_size))
        view = scratch.view
        try:
            bytes_read = self.read_from_fd(view)
        except OSError as e:
            # As Tornado: a reset closes quietly (the error stays on the stream), others raise.
            self.close(exc_info=e)
            if self._is_connreset(e):
                return None
            raise
        if bytes_read is None:
            return 0
        if bytes_read == 0:
            self.close()
            return 0
        self._read_buffer += view[:bytes_read]
        self._read_buffer_size += bytes_read
        if self._read_buffer_size > self.max_buffer_size:
            gen_log.error("Reached maximum read buffer size")
            error = iostream.StreamBufferFullError("Reached maximum read buffer size")
            self.close(exc_info=error)
            raise error
        return bytes_read

    def _find_read_pos(self) -> int | None:
        regex = self._read_regex
        if regex is None or regex.pattern != _HEAD_END or not self._read_buffer:
            return super()._find_read_pos()
        end = head_end(self._read_buffer)
        size = self._read_buffer_size if end < 0 else end
        limit = self._read_max_bytes
        if limit is not None and size > limit:
            self._refuse_head(limit)
        self._check_max_bytes(regex, size)
        return None if end < 0 else end

    def write(self, data: bytes | memoryview, *args: Any, **kwargs: Any) -> Future[None]:
        if data == _BARE_400 and self.refused_head is not None and self.socket is not None:
            # Tornado's answer to a request it could not parse: the delegate's instead.
            self.answer_and_close(self.refused_head(self.head, None))
            return _resolved(None)
        return super().write(data, *args, **kwargs)

    def _refuse_head(self, limit: int) -> None:
        """Answer an oversized head (`_check_max_bytes` raises next and Tornado closes)."""
        if self.refused_head is not None and self.socket is not None:
            self.answer_and_close(self.refused_head(bytes(self._read_buffer[:8192]), limit))

    def close_fd(self) -> None:
        if self.linger and self.socket is not None:
            self.linger = False
            self.answer_and_close(b"")  # the answer is out: drain on a duplicate
        super().close_fd()

    def answer_and_close(self, data: bytes) -> None:
        """Send ``data`` on a duplicate of the socket, which keeps the connection open for
        it when Tornado closes the stream, and drain what the client still sends
        (`linger_close`)."""
        assert self.socket is not None
        with contextlib.suppress(OSError):
            task = asyncio.get_running_loop().create_task(linger_close(self.socket.dup(), data))
            _lingering.add(task)
            task.add_done_callback(_lingering.discard)


class LeanHTTPServer(HTTPServer):
    """`tornado.httpserver.HTTPServer` serving its connections with `LeanServerConnection`.

    ``body_timeout`` is how long a request's body may go without a byte of it coming (as
    nginx's ``client_body_timeout``; Tornado's bounds the whole body, with a timer per
    request); then the request is answered by the delegate's ``stalled_body`` (the
    request's head, the timeout -> the whole response), if it has one, and closed.
    """

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        # Tornado's per-request header and body timeouts become the connection's idle timer.
        self._idle_timeout = float(self.conn_params.header_timeout or 3600)
        self.conn_params.header_timeout = None
        self._body_timeout = self.conn_params.body_timeout
        self.conn_params.body_timeout = None
        self._refused_head = getattr(self.request_callback, "refused_head", None)
        self._stalled_body = getattr(self.request_callback, "stalled_body", None)

    def _handle_connection(self, connection: socket.socket, address: Any) -> None:
        """`TCPServer._handle_connection` with a `LeanStream` for a plain TCP connection
        (built as one: swapping an instance's class afterwards made every attribute
        lookup on it dearer than what the swap saved)."""
        if self.ssl_options is not None:
            super()._handle_connection(connection, address)
            return
        try:
            stream = LeanStream(
                connection,
                max_buffer_size=self.max_buffer_size,
                read_chunk_size=self.read_chunk_size,
            )
            stream.refused_head = self._refused_head
            self.handle_stream(stream, address)
        except Exception:
            app_log.error("Error in connection callback", exc_info=True)

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        iostream.IOStream.set_nodelay(stream, True)
        if type(stream) is not LeanStream:
            stream.set_nodelay = _keep_nodelay  # type: ignore[method-assign]
        context = _HTTPRequestContext(stream, address, self.protocol, self.trusted_downstream)
        conn = LeanServerConnection(
            stream,
            self.conn_params,
            context,
            self._idle_timeout,
            self._body_timeout,
            self._stalled_body,
        )
        self._connections.add(conn)
        conn.start_serving(self)
