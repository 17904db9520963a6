"""A scripted fake upstream server (OpenAI or Anthropic dialect) that records what it received.

Tests push replies in the order they should be served; when the script is empty
the fake answers like a healthy backend of its dialect (JSON, or SSE when the
request asked to stream).
"""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import tornado.httpserver
import tornado.netutil
import tornado.web

from app.dialects.sse import OPENAI_DONE, anthropic_event, openai_chunk


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: Any = None  # the gateway's end of the connection: one per upstream connection

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


@dataclass
class JsonReply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None


@dataclass
class SSEReply:
    chunks: list[bytes]
    delay: float = 0.0
    cut: bool = False  # close the connection after the chunks, without a terminator
    end_delay: float = 0.0  # pause between the last chunk and the end of the body
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class HangReply:
    seconds: float


Reply = JsonReply | SSEReply | HangReply


def openai_completion(
    text: str = "fake reply", model: str = "fake-model", **usage: int
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": usage.get("prompt_tokens", 11),
            "completion_tokens": usage.get("completion_tokens", 7),
            "total_tokens": usage.get("prompt_tokens", 11) + usage.get("completion_tokens", 7),
        },
    }


def openai_stream(
    pieces: list[str],
    model: str = "fake-model",
    usage: bool = True,
    prompt: int = 11,
    completion: int = 7,
) -> list[bytes]:
    base = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
    }
    out = [
        openai_chunk(
            dict(
                base,
                choices=[
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "finish_reason": None,
                    }
                ],
            )
        )
    ]
    for piece in pieces:
        out.append(
            openai_chunk(
                dict(
                    base, choices=[{"index": 0, "delta": {"content": piece}, "finish_reason": None}]
                )
            )
        )
    out.append(
        openai_chunk(dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    )
    if usage:
        out.append(
            openai_chunk(
                dict(
                    base,
                    choices=[],
                    usage={
                        "prompt_tokens": prompt,
                        "completion_tokens": completion,
                        "total_tokens": prompt + completion,
                    },
                )
            )
        )
    out.append(OPENAI_DONE)
    return out


def openai_embeddings(
    vectors: list[list[float]],
    model: str = "fake-model",
    prompt_tokens: int = 5,
    encoding_format: str | None = None,
) -> dict[str, Any]:
    """An embeddings answer, OpenAI's member order (``usage`` last); with ``encoding_format``
    "base64", each vector as little-endian float32s in base64."""

    def encoded(vector: list[float]) -> list[float] | str:
        if encoding_format != "base64":
            return vector
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()

    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encoded(v)}
            for i, v in enumerate(vectors)
        ],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def anthropic_message(
    text: str = "fake reply",
    model: str = "fake-model",
    input_tokens: int = 11,
    output_tokens: int = 7,
) -> dict[str, Any]:
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": output_tokens,
        },
    }


def anthropic_stream(
    pieces: list[str], model: str = "fake-model", input_tokens: int = 11, output_tokens: int = 7
) -> list[bytes]:
    start = anthropic_message("", model, input_tokens, 1)
    start["content"] = []
    start["stop_reason"] = None
    out = [
        anthropic_event("message_start", {"type": "message_start", "message": start}),
        anthropic_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        anthropic_event("ping", {"type": "ping"}),
    ]
    for piece in pieces:
        out.append(
            anthropic_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": piece},
                },
            )
        )
    out.append(anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
    return out + anthropic_end("end_turn", output_tokens)


def anthropic_end(stop_reason: str, output_tokens: int) -> list[bytes]:
    """A stream's last two events: ``message_delta`` with ``stop_reason``, ``message_stop``."""
    return [
        anthropic_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        anthropic_event("message_stop", {"type": "message_stop"}),
    ]


class _Handler(tornado.web.RequestHandler):
    def initialize(self, fake: FakeUpstream) -> None:
        self.fake = fake

    def check_xsrf_cookie(self) -> None:
        pass

    async def get(self) -> None:
        await self._serve()

    async def post(self) -> None:
        await self._serve()

    def on_connection_close(self) -> None:
        self.fake.disconnects += 1
        self.fake.disconnected.set()

    async def _serve(self) -> None:
        received = Received(
            self.request.method or "",
            self.request.path,
            {k: v for k, v in self.request.headers.get_all()},
            self.request.body,
            self.request.connection.stream.socket.getpeername(),  # type: ignore[union-attr]
        )
        self.fake.received.append(received)
        reply = self.fake.next_reply(received)
        if isinstance(reply, HangReply):
            await asyncio.sleep(reply.seconds)
            reply = self.fake.default_reply(received)
        if isinstance(reply, JsonReply):
            self.set_status(reply.status)
            self.set_header("Content-Type", "application/json")
            for k, v in reply.headers.items():
                self.set_header(k, v)
            self.finish(reply.raw if reply.raw is not None else orjson.dumps(reply.body))
            return
        self.set_status(reply.status)
        self.set_header("Content-Type", "text/event-stream")
        for k, v in reply.headers.items():
            self.set_header(k, v)
        try:
            for chunk in reply.chunks:
                self.write(chunk)
                await self.flush()
                if reply.delay:
                    await asyncio.sleep(reply.delay)
        except tornado.iostream.StreamClosedError:
            return
        if reply.cut:
            self.request.connection.stream.close()  # type: ignore[union-attr]
            return
        if reply.end_delay:
            await asyncio.sleep(reply.end_delay)
        self.finish()


class FakeUpstream:
    """A fake backend on 127.0.0.1 speaking ``dialect`` ("openai" or "anthropic")."""

    def __init__(self, dialect: str = "openai") -> None:
        self.dialect = dialect
        self.received: list[Received] = []
        self.script: deque[Reply] = deque()
        self.disconnects = 0
        self.disconnected = asyncio.Event()
        self.port = 0
        self._server: tornado.httpserver.HTTPServer | None = None

    @property
    def url(self) -> str:
        """Base URL as an upstream's ``base_url`` (OpenAI style ends in /v1)."""
        root = f"http://127.0.0.1:{self.port}"
        return root + "/v1" if self.dialect == "openai" else root

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def next_reply(self, received: Received) -> Reply:
        if self.script:
            return self.script.popleft()
        return self.default_reply(received)

    def default_reply(self, received: Received) -> Reply:
        body = received.json or {}
        model = body.get("model", "fake-model") if isinstance(body, dict) else "fake-model"
        stream = isinstance(body, dict) and body.get("stream") is True
        if received.path.endswith("/models"):
            return JsonReply(
                body={
                    "object": "list",
                    "data": [
                        {"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}
                    ],
                }
            )
        if received.path.endswith("/count_tokens"):
            return JsonReply(body={"input_tokens": 42})
        if received.path.endswith("/embeddings"):
            # One vector per input, ``[0.5, -0.25, index]`` (exact in float32).
            asked = body if isinstance(body, dict) else {}
            given = asked.get("input")
            several = isinstance(given, list) and given and not isinstance(given[0], int)
            count = len(given) if several else 1
            vectors = [[0.5, -0.25, float(i)] for i in range(count)]
            encoding = asked.get("encoding_format")
            return JsonReply(body=openai_embeddings(vectors, model, encoding_format=encoding))
        if self.dialect == "openai":
            if stream:
                return SSEReply(openai_stream(["fake ", "reply"], model))
            return JsonReply(body=openai_completion("fake reply", model))
        if stream:
            return SSEReply(anthropic_stream(["fake ", "reply"], model))
        return JsonReply(body=anthropic_message("fake reply", model))

    async def start(self) -> FakeUpstream:
        app = tornado.web.Application([(r"/.*", _Handler, {"fake": self})])
        self._server = tornado.httpserver.HTTPServer(app)
        sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1", family=socket.AF_INET)
        self._server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            await self._server.close_all_connections()
            self._server = None


def openai_delta(
    delta: dict[str, Any],
    finish: str | None = None,
    model: str = "fake-model",
    chunk_id: str = "chatcmpl-fake",
) -> bytes:
    """One ``chat.completion.chunk`` event: ``delta`` (and ``finish``) for choice 0."""
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return openai_chunk(
        {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [choice],
        }
    )


def openai_usage(
    prompt: int,
    completion: int,
    model: str = "fake-model",
    cached: int | None = None,
    chunk_id: str = "chatcmpl-fake",
) -> bytes:
    """The usage-only chunk a stream ends with when ``include_usage`` is asked for."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return openai_chunk(
        {
            "id": chunk_id,
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "choices": [],
            "usage": usage,
        }
    )


def anthropic_block(index: int, block: dict[str, Any], deltas: list[Any]) -> list[bytes]:
    """One content block's events: its start, ``deltas``, its stop."""
    out = [
        anthropic_event(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": block},
        )
    ]
    out += [
        anthropic_event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": d}
        )
        for d in deltas
    ]
    out.append(
        anthropic_event("content_block_stop", {"type": "content_block_stop", "index": index})
    )
    return out
