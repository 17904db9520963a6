"""`LeanHTTPServer` must answer byte for byte as Tornado's own server does: the same
header parse (and the same refusals), the same response heads and framing, keep-alive,
HEAD, HTTP/1.0; plus what it changes: one idle timer per connection, which also ends a
request whose body stalls, TCP_NODELAY left on, writes straight to the socket that still
arrive whole when the socket is full."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from tornado import httputil

from app.http1 import LeanConnection, LeanHTTPServer, head_end, parse_header_block

pytestmark = pytest.mark.gen_test(timeout=30)

BIG = bytes(range(256)) * (16 * 4096)  # 16 MiB: more than any socket buffer takes at once


# -- the header parse --------------------------------------------------------------------------


def _tornado_parse(block: str) -> Any:
    try:
        return sorted(httputil.HTTPHeaders.parse(block).get_all())
    except httputil.HTTPInputError:
        return "refused"


def _lean_parse(block: str) -> Any:
    try:
        return sorted(parse_header_block(block).get_all())
    except httputil.HTTPInputError:
        return "refused"


TRICKY = [
    "\r\n",
    "Host: a\r\n\r\n",
    "Host: a\n\n",
    "Host: a\r\nContent-Length: 5\r\n\r\n",
    "host: a\r\nHOST: b\r\n\r\n",  # a name twice keeps both values
    "Set-Cookie: a=1\r\nset-cookie: b=2\r\nX: y\r\n\r\n",
    "X-Empty:\r\n\r\n",
    "X-Empty:   \r\n\r\n",
    "X:  padded value \t \r\n\r\n",
    "X: in\tside\r\n\r\n",
    "X: caf\xe9\r\n\r\n",  # obs-text (latin-1 decoded)
    "X : spaced name\r\n\r\n",
    "X\t: tab name\r\n\r\n",
    " Folded: no\r\n\r\n",
    "X: a\r\n continued\r\n\r\n",
    "X: a\rb\r\n\r\n",
    "X: a\x00b\r\n\r\n",
    "X: a\x7fb\r\n\r\n",
    "No colon here\r\n\r\n",
    ": no name\r\n\r\n",
    "Na(me: bad token\r\n\r\n",
    "X: a\r\n\r\r\n",
    "X: ok\r\nY: \x01\r\n\r\n",
    "X: v:with:colons\r\n\r\n",
    "Authorization: Bearer sk-abc_DEF.123\r\nx-api-key: k\r\n\r\n",
]


@pytest.mark.parametrize("block", TRICKY)
def test_header_block_parse_matches_tornado_on_the_tricky_cases(block: str) -> None:
    assert _lean_parse(block) == _tornado_parse(block)


ENDS = ["\r\n", "\n"]


def test_head_end_is_where_tornados_head_regex_ends() -> None:
    """The request head is read up to `head_end` instead of Tornado's ``\\r?\\n\\r?\\n``
    search: the same end (or none) on every buffer of CRs, LFs and other bytes."""
    rng = random.Random(11)
    pattern = re.compile(rb"\r?\n\r?\n")
    buffers = [b"", b"\n\n", b"\r\n\r\n", b"\n\r\n", b"\r\n\n", b"a\n\n\r\n", b"\n\n\r\n"]
    buffers += [
        bytes(rng.choice(b"\r\na:") for _ in range(rng.randint(0, 24))) for _ in range(20000)
    ]
    for buffer in buffers:
        match = pattern.search(buffer)
        assert head_end(bytearray(buffer)) == (match.end() if match else -1), buffer


def test_header_block_parse_matches_tornado_on_random_blocks() -> None:
    rng = random.Random(7)
    names = ["Host", "X-Api-Key", "content-length", "A", "x:y", "b c", "", "é", "t!#$%&'*+-.^_`|~"]
    pieces = ["v", " ", "\t", "\r", "\n", "\x00", "\x7f", "\xe9", ":", "a b", "\x1f", "~"]
    refused = accepted = 0
    for _ in range(4000):
        lines = []
        for _ in range(rng.randint(0, 4)):
            value = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 5)))
            lines.append(rng.choice(names) + ":" + value + rng.choice(ENDS))
        # What Tornado's read hands the parser: up to the first blank line.
        message = "GET / HTTP/1.1\r\n" + "".join(lines) + rng.choice(ENDS)
        end = re.search(r"\r?\n\r?\n", message)
        assert end is not None
        block = message[message.find("\n") + 1 : end.end()]
        expected = _tornado_parse(block)
        assert _lean_parse(block) == expected, repr(block)
        if expected == "refused":
            refused += 1
        else:
            accepted += 1
    assert refused > 500 and accepted > 500  # both sides of the rules were exercised


@pytest.mark.parametrize("bad", ["\r", "\n", "\r\n", "\n\r", "\r\r\n\n"])
@pytest.mark.parametrize("where", ["value", "name", "last"])
def test_a_response_head_with_cr_or_lf_in_a_line_is_never_sent(bad: str, where: str) -> None:
    """Response splitting: a line of the head, or its start line, holding CR or LF raises
    instead of going out (the lean path writes its heads without Tornado's per-header
    check); a head of no lines is the start line alone."""
    sent: list[bytes] = []
    conn: Any = type("Stub", (), {"_send": lambda self, data: sent.append(data)})()
    start = httputil.ResponseStartLine("HTTP/1.1", 200, "OK")
    good = ["Content-Type: application/json", "request-id: req_1"]
    LeanConnection._send_head(conn, start, list(good), None)
    assert sent == [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nrequest-id: req_1\r\n\r\n"
    ]
    line = {"value": f"x-a: 1{bad}x-b: 2", "name": f"x{bad}a: 1", "last": f"x-a: 1{bad}"}[where]
    with pytest.raises(ValueError, match="CR or LF"):
        LeanConnection._send_head(conn, start, [*good, line], None)
    assert len(sent) == 1
    LeanConnection._send_head(conn, start, [], None)
    assert sent[1] == b"HTTP/1.1 200 OK\r\n\r\n"
    bad_start = httputil.ResponseStartLine("HTTP/1.1", 200, f"OK{bad}x-a: 1")
    with pytest.raises(ValueError, match="CR or LF"):
        LeanConnection._send_head(conn, bad_start, list(good), None)
    assert len(sent) == 2


# -- whole servers ---------------------------------------------------------------------------


class Text(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("X-Thing", "1")
        self.write("hello")

    def post(self) -> None:
        self.write(self.request.body[::-1])

    def head(self) -> None:
        self.set_header("Content-Length", "5")


class Empty(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_status(204)


class Streamed(tornado.web.RequestHandler):
    async def get(self) -> None:
        for i in range(3):
            self.write(f"part {i}\n")
            await self.flush()


class Big(tornado.web.RequestHandler):
    async def get(self) -> None:
        if self.get_argument("stream", ""):
            for at in range(0, len(BIG), 1 << 20):
                self.write(BIG[at : at + (1 << 20)])
                await self.flush()
        else:
            self.write(BIG)


class Nodelay(tornado.web.RequestHandler):
    def get(self) -> None:
        sock = self.request.connection.stream.socket  # type: ignore[union-attr]
        self.write(str(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)))


class Slow(tornado.web.RequestHandler):
    async def get(self) -> None:
        await asyncio.sleep(float(self.get_argument("s")))
        self.write("done")


def _app() -> tornado.web.Application:
    return tornado.web.Application(
        [
            (r"/text", Text),
            (r"/empty", Empty),
            (r"/streamed", Streamed),
            (r"/big", Big),
            (r"/nodelay", Nodelay),
            (r"/slow", Slow),
        ]
    )


async def _serve(cls: type[tornado.httpserver.HTTPServer], **kwargs: Any) -> tuple[Any, int]:
    server = cls(_app(), **kwargs)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    return server, port


@contextlib.asynccontextmanager
async def both_servers() -> AsyncIterator[dict[str, int]]:
    tornado_server, tornado_port = await _serve(tornado.httpserver.HTTPServer)
    lean_server, lean_port = await _serve(LeanHTTPServer)
    try:
        yield {"tornado": tornado_port, "lean": lean_port}
    finally:
        for server in (tornado_server, lean_server):
            server.stop()
            await server.close_all_connections()


async def _exchange(port: int, raw: bytes, *, settle: float = 0.3) -> bytes:
    """Send ``raw`` on one connection; everything the server says until it closes or
    goes quiet for ``settle`` seconds."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    out = b""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(1 << 20), settle)
            if not data:
                break
            out += data
    except TimeoutError:
        pass
    writer.close()
    return out


def _normalised(raw: bytes) -> bytes:
    return re.sub(rb"Date: [^\r]+", b"Date: -", raw)


CONVERSATIONS = {
    "keep-alive": (
        b"GET /text HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /text HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"HEAD /text HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /empty HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /streamed HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /missing HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
    "close": b"GET /text HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    "http/1.0": b"GET /text HTTP/1.0\r\n\r\n",
    "http/1.0 keep-alive": (
        b"GET /text HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        b"GET /streamed HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    ),
    "bare LF": b"GET /text HTTP/1.1\nHost: x\n\n",
    "CRLF lines, LF blank line": (
        b"GET /text HTTP/1.1\r\nHost: x\r\n\nGET /text HTTP/1.1\nHost: y\n\r\n"
    ),
    "duplicate names": b"GET /text HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
    "malformed header": b"GET /text HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
    "malformed line": b"GET /text HTTP/1.1 extra\r\nHost: x\r\n\r\n",
    "bodies over many reads": (
        b"POST /text HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n"
        + bytes(range(256)) * 1171
        + b"a" * 224
        + b"POST /text HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n"
        + b"xy" * 35000
    ),
    "chunked body": (
        b"POST /text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("ended", [True, False])
async def test_a_head_over_the_size_limit_is_refused_like_tornados(ended: bool) -> None:
    """Over Tornado's 64 KiB, whether its blank line came or not: the connection is closed
    (by a server whose delegate has no ``refused_head`` answer: see the next test)."""
    raw = b"GET /text HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000
    raw += b"\r\n\r\n" if ended else b""

    async def closed_without_a_word(port: int) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        said = await asyncio.wait_for(reader.read(), 5)  # to EOF: the server closed it
        writer.close()
        return said == b""

    async with both_servers() as servers:
        assert await closed_without_a_word(servers["tornado"])
        assert await closed_without_a_word(servers["lean"])
        fine = CONVERSATIONS["close"]  # and the servers go on serving
        assert _normalised(await _exchange(servers["lean"], fine)) == _normalised(
            await _exchange(servers["tornado"], fine)
        )


def _send_all_then_read(port: int, raw: bytes) -> bytes:
    """A blocking client, as `http.client` is: all of ``raw``, then a body a moment later,
    then what the server says, to EOF (a server that closed with the body unread would
    have sent a reset instead)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        time.sleep(0.05)
        sock.sendall(b"{}" * 1000)
        said = b""
        while data := sock.recv(65536):
            said += data
        return said


class _Answering(tornado.web.Application):
    """An Application that answers an oversized or malformed head, and a stalled body, as
    `app.handlers.lean.ApiRouter` does."""

    def refused_head(self, head: bytes, limit: int | None) -> bytes:
        status = b"400 Malformed" if limit is None else b"431 Too Large"
        said = head.split(b"\r\n", 1)[0] + (b" malformed" if limit is None else b" over %d" % limit)
        return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status, len(said), said)

    def stalled_body(self, head: bytes, seconds: float) -> bytes:
        said = head.split(b"\r\n", 1)[0] + b" stalled %g" % seconds
        return b"HTTP/1.1 408 Stalled\r\nContent-Length: %d\r\n\r\n%s" % (len(said), said)


@pytest.mark.parametrize("ended", [True, False])
@pytest.mark.parametrize("size", [70_000, 3_000_000])
async def test_a_head_over_the_size_limit_gets_the_delegates_answer_whole(
    ended: bool, size: int
) -> None:
    """The answer reaches a client that is still sending (3 MB of header: it reads only
    once it has sent them all), and then the connection closes; the server goes on."""
    raw = b"GET /text HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * size
    raw += b"\r\n\r\n" if ended else b""
    server = LeanHTTPServer(_Answering(_app().default_router.rules))
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    try:
        said = await asyncio.to_thread(_send_all_then_read, port, raw)
        expected = b"GET /text HTTP/1.1 over 65536"
        assert said == b"HTTP/1.1 431 Too Large\r\nContent-Length: 29\r\n\r\n" + expected
        fine = await _exchange(port, CONVERSATIONS["close"])
        assert fine.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        server.stop()
        await server.close_all_connections()


@pytest.mark.parametrize("name", ["malformed header", "malformed line"])
async def test_a_malformed_head_gets_the_delegates_answer(name: str) -> None:
    """Where Tornado answers a bare ``400 Bad Request`` (the previous test's servers), a
    delegate with a ``refused_head`` answer gives its own; the server goes on."""
    server = LeanHTTPServer(_Answering(_app().default_router.rules))
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    try:
        said = await asyncio.to_thread(_send_all_then_read, port, CONVERSATIONS[name])
        start = CONVERSATIONS[name].split(b"\r\n", 1)[0] + b" malformed"
        head = b"HTTP/1.1 400 Malformed\r\nContent-Length: %d\r\n\r\n" % len(start)
        assert said == head + start
        fine = await _exchange(port, CONVERSATIONS["close"])
        assert fine.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        server.stop()
        await server.close_all_connections()


@pytest.mark.parametrize("name", list(CONVERSATIONS))
async def test_answers_are_byte_for_byte_tornados(name: str) -> None:
    raw = CONVERSATIONS[name]
    async with both_servers() as servers:
        tornado_says = await _exchange(servers["tornado"], raw)
        lean_says = await _exchange(servers["lean"], raw)
    assert tornado_says  # the conversation got an answer at all
    assert _normalised(lean_says) == _normalised(tornado_says)


@pytest.mark.parametrize("stream", ["", "1"])
async def test_a_full_socket_still_gets_every_byte(stream: str) -> None:
    server, port = await _serve(LeanHTTPServer)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /big?stream={stream} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await asyncio.sleep(0.3)  # the server's sends fill the socket before anything is read
    head = await reader.readuntil(b"\r\n\r\n")
    if stream:
        assert b"Transfer-Encoding: chunked" in head
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        assert f"Content-Length: {len(BIG)}".encode() in head
        body = await reader.readexactly(len(BIG))
    assert body == BIG
    writer.close()
    server.stop()
    await server.close_all_connections()


async def test_nodelay_is_on_and_stays_on() -> None:
    raw = b"GET /nodelay HTTP/1.1\r\nHost: x\r\n\r\n" * 3
    async with both_servers() as servers:
        said = await _exchange(servers["lean"], raw)
    bodies = [part[-1:] for part in said.split(b"\r\n\r\n")[1:]]
    assert [int(b) != 0 for b in bodies] == [True, True, True]


async def test_an_idle_connection_is_closed_but_a_slow_answer_is_not() -> None:
    server, port = await _serve(LeanHTTPServer, idle_connection_timeout=0.3)
    loop = asyncio.get_running_loop()
    try:
        # Silent from the start: closed after the idle time.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = loop.time()
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.25 <= loop.time() - started < 2
        writer.close()
        # An answer that takes longer than the idle time is not idleness; after it, the
        # connection is idle again and closed.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /slow?s=0.8 HTTP/1.1\r\nHost: x\r\n\r\n")
        said = await asyncio.wait_for(reader.read(), 5)
        assert said.startswith(b"HTTP/1.1 200 OK") and said.endswith(b"done")
        writer.close()
        # Headers that trickle in slower than the idle time are cut too.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /text HTTP/1.1\r\n")
        await asyncio.sleep(0.5)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        server.stop()
        await server.close_all_connections()


# -- the body timeout --------------------------------------------------------------------------

STALLING = b"POST /text HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n12345678"


async def _lean(app: tornado.web.Application, **kwargs: Any) -> tuple[LeanHTTPServer, int]:
    server = LeanHTTPServer(app, **kwargs)
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1")
    server.add_sockets(sockets)
    return server, sockets[0].getsockname()[1]


async def _until_closed(port: int, raw: bytes) -> bytes:
    """Send ``raw``, then say nothing: what the server says until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    said = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return said


@pytest.mark.parametrize("chunked", [False, True])
async def test_a_stalled_body_gets_the_delegates_answer(chunked: bool) -> None:
    """Headers and part of a body, then silence: ``body_timeout`` later the delegate's answer
    (Tornado's server without a body timeout waits for ever; with one, it closes without a
    word); the server goes on."""
    raw = STALLING
    if chunked:
        raw = b"POST /text HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n64\r\n1234"
    server, port = await _lean(_Answering(_app().default_router.rules), body_timeout=0.3)
    try:
        said = await _until_closed(port, raw)
        start = raw.split(b"\r\n", 1)[0] + b" stalled 0.3"
        assert said == b"HTTP/1.1 408 Stalled\r\nContent-Length: %d\r\n\r\n" % len(start) + start
        fine = await _exchange(port, CONVERSATIONS["close"])
        assert fine.startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        server.stop()
        await server.close_all_connections()


async def test_a_stalled_body_is_closed_without_a_delegate_answer() -> None:
    server, port = await _lean(_app(), body_timeout=0.3)
    try:
        assert await _until_closed(port, STALLING) == b""
    finally:
        server.stop()
        await server.close_all_connections()


async def test_a_slow_body_a_slow_answer_and_an_idle_connection_are_not_a_stalled_body() -> None:
    """The body timeout is for silence while a body is owed: a body that keeps coming, however
    long it takes in all, an answer slower than the timeout, and a connection idle between
    requests (the idle timeout's) all go on."""
    server, port = await _lean(_app(), body_timeout=0.4, idle_connection_timeout=30)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /text HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n")
        for _ in range(30):  # 1.5 s in all
            await asyncio.sleep(0.05)
            writer.write(b"a")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK") and b"Content-Length: 30" in head
        assert await reader.readexactly(30) == b"a" * 30
        await asyncio.sleep(1.0)  # idle between requests
        writer.write(b"GET /slow?s=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        said = await asyncio.wait_for(reader.read(), 5)
        assert said.startswith(b"HTTP/1.1 200 OK") and said.endswith(b"done")
    finally:
        writer.close()
        server.stop()
        await server.close_all_connections()
