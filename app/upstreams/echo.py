"""The built-in ``echo`` backend: answers deterministically in the client's own dialect.

It repeats the last user text back (``echo: …``), streaming it word by word when
asked, with usage from the local token estimate; to an embeddings request, it gives each
input a small unit vector made from a hash of it (the same input, the same vector). It
makes ``make run`` useful with no API key, and gives tests and demos a backend that
needs no network.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import struct
from collections.abc import Mapping
from typing import Any, cast

import orjson

from app.dialects.embeddings import (
    EmbeddingObject,
    EmbeddingsRequest,
    EmbeddingsResponse,
    estimate_input,
    inputs,
)
from app.dialects.json_values import is_int
from app.dialects.sse import OPENAI_DONE, anthropic_event, openai_chunk
from app.dialects.tokens import estimate_anthropic_input, estimate_openai_input, estimate_text

ECHO_ID = "echo0000000000000000"
MAX_ECHO = 2000


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [
                b.get("text", "")
                for b in content
                if isinstance(b, dict)
                and b.get("type") == "text"
                and isinstance(b.get("text"), str)
            ]
            if texts:
                return "\n".join(texts)
            if any(isinstance(b, dict) and b.get("type") == "tool_result" for b in content):
                return "(tool result received)"
        return ""
    return ""


def reply_text(body: Mapping[str, Any]) -> str:
    text = _last_user_text(body.get("messages"))[:MAX_ECHO]
    return "echo: " + text if text else "echo"


def _pieces(text: str) -> list[str]:
    return re.findall(r"\S+\s*|\s+", text) or [text]


def anthropic_message(body: Mapping[str, Any]) -> dict[str, Any]:
    text = reply_text(body)
    return {
        "id": "msg_" + ECHO_ID,
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": estimate_anthropic_input(dict(body)),
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": estimate_text(text),
        },
    }


def anthropic_stream(body: Mapping[str, Any]) -> list[bytes]:
    message = anthropic_message(body)
    text = message["content"][0]["text"]
    start = dict(message, content=[], stop_reason=None)
    start["usage"] = dict(message["usage"], output_tokens=1)
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
    ]
    for piece in _pieces(text):
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
    out += [
        anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        anthropic_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": message["usage"],
            },
        ),
        anthropic_event("message_stop", {"type": "message_stop"}),
    ]
    return out


def _openai_usage(body: Mapping[str, Any], text: str) -> dict[str, Any]:
    prompt = estimate_openai_input(dict(body))
    completion = estimate_text(text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def openai_completion(body: Mapping[str, Any], created: int = 0) -> dict[str, Any]:
    text = reply_text(body)
    return {
        "id": "chatcmpl-" + ECHO_ID,
        "object": "chat.completion",
        "created": created,
        "model": body.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": _openai_usage(body, text),
        "system_fingerprint": None,
    }


def openai_stream(body: Mapping[str, Any], created: int = 0) -> list[bytes]:
    text = reply_text(body)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    base: dict[str, Any] = {
        "id": "chatcmpl-" + ECHO_ID,
        "object": "chat.completion.chunk",
        "created": created,
        "model": body.get("model"),
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        data = dict(
            base, choices=[{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
        )
        if include_usage:
            data["usage"] = None
        return openai_chunk(data)

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": piece}) for piece in _pieces(text)]
    out.append(chunk({}, "stop"))
    if include_usage:
        out.append(openai_chunk(dict(base, choices=[], usage=_openai_usage(body, text))))
    out.append(OPENAI_DONE)
    return out


ECHO_DIMENSIONS = 8  # an embedding's length when the request asks for none
MAX_ECHO_DIMENSIONS = 4096


def embedding(item: str | list[int], dimensions: int) -> list[float]:
    """A unit vector of ``dimensions`` float32 values made from ``item``'s hash."""
    data = item.encode("utf-8", "surrogatepass") if isinstance(item, str) else orjson.dumps(item)
    raw = hashlib.shake_256(data).digest(2 * dimensions)
    values = [v / 32767.5 - 1.0 for v in struct.unpack(f"<{dimensions}H", raw)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Rounded to float32, so the base64 form and the float form carry the same numbers.
    packed = struct.pack(f"<{dimensions}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{dimensions}f", packed))


def openai_embeddings(body: Mapping[str, Any]) -> EmbeddingsResponse:
    """The answer to a validated embeddings request: one `embedding` per input, of the
    asked ``dimensions`` (at most `MAX_ECHO_DIMENSIONS`), in base64 when asked."""
    asked = body.get("dimensions")
    dimensions = min(asked, MAX_ECHO_DIMENSIONS) if is_int(asked) and asked > 0 else ECHO_DIMENSIONS
    in_base64 = body.get("encoding_format") == "base64"
    data: list[EmbeddingObject] = []
    for index, item in enumerate(inputs(body["input"])):
        vector = embedding(item, dimensions)
        encoded: list[float] | str = vector
        if in_base64:
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    prompt = estimate_input(cast(EmbeddingsRequest, body))
    return {
        "object": "list",
        "data": data,
        "model": body["model"],
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }


class EchoResponse:
    """An echo answer behind the UpstreamResponse interface."""

    def __init__(self, body: bytes | None = None, chunks: list[bytes] | None = None) -> None:
        self.status = 200
        self.headers: Mapping[str, str] = {
            "content-type": "text/event-stream" if chunks is not None else "application/json"
        }
        self.timeout: float | None = None
        self._body = body or b""
        self._chunks = chunks
        self._next = 0

    async def read(self) -> bytes:
        return self._body if self._chunks is None else b"".join(self._chunks)

    async def read_chunk(self) -> bytes:
        chunks = self._chunks if self._chunks is not None else [self._body]
        if self._next >= len(chunks):
            return b""
        self._next += 1
        await asyncio.sleep(0)
        return chunks[self._next - 1]

    def read_error(self, exc: BaseException) -> BaseException | None:
        return None

    def close(self) -> None:
        return None

    def release(self) -> None:
        return None


def embeddings_response(body: Mapping[str, Any]) -> EchoResponse:
    """The echo answer to an embeddings request (`openai_embeddings`)."""
    return EchoResponse(orjson.dumps(openai_embeddings(body)))


def respond(dialect: str, body: Mapping[str, Any], stream: bool, created: int = 0) -> EchoResponse:
    """The echo answer to ``body`` in ``dialect`` ("anthropic" or "openai")."""
    if dialect == "anthropic":
        if stream:
            return EchoResponse(chunks=anthropic_stream(body))
        return EchoResponse(orjson.dumps(anthropic_message(body)))
    if stream:
        return EchoResponse(chunks=openai_stream(body, created))
    return EchoResponse(orjson.dumps(openai_completion(body, created)))
