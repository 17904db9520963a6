"""A fast fake LLM backend for the benchmarks: raw asyncio protocol on uvloop, pre-built answers.

One process speaks one dialect (OpenAI chat completions or Anthropic messages) on
every POST path, so neither the request path nor the body's shape matter: the
body's ``model`` picks the script (see `plan_for`) and ``stream`` picks SSE.
Answers are built once per (model, stream) and cached, so a request costs a
header scan, one small JSON parse and a few writes. ``GET /_bench/last`` returns
the monotonic time (ns) at which the last stream's first body byte was written,
for time-to-first-byte measurements from another process.

    python -m bench.fake_upstream --dialect openai [--port 0] [--events-per-write 1]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

import orjson

from bench.loops import run_fast

_WORDS = "the quick brown fox jumps over the lazy dog while the tests run green again".split()
DEFAULT_CHUNKS = 20
TEXT_WORDS = 60


@dataclass(frozen=True, slots=True)
class Plan:
    """What one model name asks for."""

    chunks: int = DEFAULT_CHUNKS
    first_pause: float = 0.0  # seconds between the first chunk and the rest
    interval: float = 0.0  # seconds between content chunks after the first


_PLAN_RE = re.compile(r"(c|slow|ttfb|pace)(\d+)$")
PACED_CHUNKS = 20


def plan_for(model: str) -> Plan:
    """``…-c200``: 200 chunks; ``…-slow30``: 30 chunks a second apart; ``…-ttfb50``: 50 ms pause
    after the first chunk; ``…-pace5``: 20 chunks 5 ms apart (a model generating tokens)."""
    match = _PLAN_RE.search(model)
    if match is None:
        return Plan()
    kind, number = match.group(1), int(match.group(2))
    if kind == "c":
        return Plan(chunks=max(number, 1))
    if kind == "slow":
        return Plan(chunks=max(number, 1), interval=1.0)
    if kind == "pace":
        return Plan(chunks=PACED_CHUNKS, interval=number / 1000.0)
    return Plan(first_pause=number / 1000.0)


def _piece(i: int) -> str:
    return _WORDS[i % len(_WORDS)] + " "


def _text(words: int) -> str:
    return "".join(_piece(i) for i in range(words)).rstrip()


# -- answers ------------------------------------------------------------------------------------


def openai_json(model: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _text(TEXT_WORDS)},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 612, "completion_tokens": 80, "total_tokens": 692},
        }
    )


def anthropic_json(model: str) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_bench",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": _text(TEXT_WORDS)}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": 612,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
                "output_tokens": 80,
            },
        }
    )


def openai_events(model: str, chunks: int) -> list[bytes]:
    """Role chunk, ``chunks`` content chunks, finish chunk, usage chunk, ``[DONE]``."""
    base: dict[str, Any] = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return b"data: " + orjson.dumps(dict(base, choices=[choice])) + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": _piece(i)}) for i in range(chunks)]
    out.append(chunk({}, "stop"))
    usage = {"prompt_tokens": 612, "completion_tokens": chunks, "total_tokens": 612 + chunks}
    out.append(b"data: " + orjson.dumps(dict(base, choices=[], usage=usage)) + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def anthropic_events(model: str, chunks: int) -> list[bytes]:
    """``message_start`` … ``chunks`` text deltas … ``message_stop``, as Anthropic sends them."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    message = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 612,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": 1,
        },
    }
    out = [
        event("message_start", {"type": "message_start", "message": message}),
        event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
    ]
    for i in range(chunks):
        delta = {"type": "text_delta", "text": _piece(i)}
        out.append(
            event(
                "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
            )
        )
        if i == 0:
            out.append(event("ping", {"type": "ping"}))
    out += [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": chunks},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]
    return out


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
)
_END = b"0\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Answer:
    """A pre-built answer: one whole response, or a stream's writes and pauses."""

    whole: bytes = b""
    first: bytes = b""  # headers and the first chunk(s), written at once
    rest: tuple[bytes, ...] = ()  # later writes, chunk-encoded, the last one ends the body
    first_pause: float = 0.0
    interval: float = 0.0
    # Which of `rest` carry generated text: only those must reach the client at once (a
    # translator rightly sends nothing for a ping or a block stop).
    text: tuple[bool, ...] = ()


class Fake:
    """The answers of one dialect, built on first use, and the last stream's first-byte time."""

    def __init__(self, dialect: str, events_per_write: int = 1) -> None:
        self.dialect = dialect
        self.per_write = max(events_per_write, 1)
        self._cache: dict[tuple[str, bool], Answer] = {}
        self.last_first_byte_ns = 0
        self.last_writes_ns: list[int] = []  # the last paced stream's write times
        self.requests = 0

    def answer(self, model: str, stream: bool) -> Answer:
        cached = self._cache.get((model, stream))
        if cached is None:
            cached = self._cache[(model, stream)] = self._build(model, stream)
        return cached

    def _build(self, model: str, stream: bool) -> Answer:
        if not stream:
            body = openai_json(model) if self.dialect == "openai" else anthropic_json(model)
            return Answer(whole=_JSON_HEAD % len(body) + body)
        plan = plan_for(model)
        events = (
            openai_events(model, plan.chunks)
            if self.dialect == "openai"
            else anthropic_events(model, plan.chunks)
        )
        # The first write carries everything up to and including the first content piece, so a
        # translator has something to emit as soon as it arrives.
        head_count = 2 if self.dialect == "openai" else 3
        first = _SSE_HEAD + b"".join(_chunked(e) for e in events[:head_count])
        later = events[head_count:]
        step = 1 if plan.interval else self.per_write
        rest = [
            b"".join(_chunked(e) for e in later[i : i + step]) for i in range(0, len(later), step)
        ]
        if rest:
            rest[-1] += _END
        else:
            first += _END
        text = tuple(
            any(b'"text_delta"' in e or b'"content":"' in e for e in later[i : i + step])
            for i in range(0, len(later), step)
        )
        return Answer(
            first=first,
            rest=tuple(rest),
            first_pause=plan.first_pause,
            interval=plan.interval,
            text=text,
        )


class _Connection(asyncio.Protocol):
    """HTTP/1.1 keep-alive, one request at a time (clients here never pipeline)."""

    def __init__(self, fake: Fake) -> None:
        self.fake = fake
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._serve()

    def _serve(self) -> None:
        while self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end]).lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body = bytes(self.buf[end + 4 : total])
            del self.buf[:total]
            if head.startswith(b"get /_bench/last"):
                self._json(
                    {
                        "first_byte_ns": self.fake.last_first_byte_ns,
                        "writes_ns": self.fake.last_writes_ns,
                    }
                )
                continue
            if head.startswith(b"get /_bench/stats"):
                self._json({"requests": self.fake.requests})
                continue
            self.fake.requests += 1
            try:
                request = orjson.loads(body)
                model, stream = str(request.get("model", "")), request.get("stream") is True
            except (orjson.JSONDecodeError, AttributeError):
                model, stream = "", False
            answer = self.fake.answer(model, stream)
            if answer.whole:
                self.transport.write(answer.whole)
                continue
            if answer.first_pause or answer.interval:
                self.busy = True
                asyncio.get_running_loop().create_task(self._paced(answer))
                return
            self.transport.write(answer.first)
            self.fake.last_first_byte_ns = time.monotonic_ns()
            for part in answer.rest:
                self.transport.write(part)

    def _json(self, data: dict[str, Any]) -> None:
        assert self.transport is not None
        self.transport.write(_JSON_HEAD % len(payload := orjson.dumps(data)) + payload)

    async def _paced(self, answer: Answer) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.write(answer.first)
        writes = [time.monotonic_ns()]
        self.fake.last_first_byte_ns = writes[0]
        self.fake.last_writes_ns = writes
        if answer.first_pause:
            await asyncio.sleep(answer.first_pause)
        for i, part in enumerate(answer.rest):
            if answer.interval and i:
                await asyncio.sleep(answer.interval)
            if transport.is_closing():
                return
            transport.write(part)
            if answer.text[i]:
                writes.append(time.monotonic_ns())
        self.busy = False
        if self.buf:
            self._serve()


async def serve(dialect: str, host: str, port: int, events_per_write: int) -> None:
    fake = Fake(dialect, events_per_write)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(fake), host, port, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialect", choices=("openai", "anthropic"), required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--events-per-write", type=int, default=1, help="SSE events per socket write (default 1)"
    )
    args = parser.parse_args(argv)
    run_fast(serve(args.dialect, args.host, args.port, args.events_per_write))
    return 0


if __name__ == "__main__":
    sys.exit(main())
