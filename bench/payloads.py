"""The request bodies the benchmarks send, and the model names that tell the fakes what to answer.

Bodies are shaped like a coding assistant's turn, trimmed to ~2.5 KB: a system
prompt, a short exchange and one tool. A model name's suffix is the fake
upstream's script (see `bench.fake_upstream.plan_for`): ``c20`` streams 20
content chunks, ``slow30`` one chunk a second for 30 s, ``ttfb50`` pauses 50 ms
after the first chunk.
"""

from __future__ import annotations

from typing import Any

import orjson

SYSTEM = (
    "You are a careful senior engineer helping a colleague in a large Python code base. "
    "Answer briefly, show code only when it helps, and say which file you would change. "
) * 6

_USER_1 = "The test suite got slow after the last merge. Where would you look first?"
_ASSISTANT_1 = (
    "I would profile the slowest tests with `pytest --durations=20`, then check fixtures "
    "that start servers or databases per test instead of per session."
)
_USER_2 = (
    "Durations show the e2e tests each take 2 s, and most of it is in the gateway fixture. "
    "Can you read tests/conftest.py and tell me what it does on every test?"
)

_TOOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "path": {"type": "string", "description": "file to read, relative to the repository"},
        "start": {"type": "integer", "description": "first line (1-based)"},
        "end": {"type": "integer", "description": "last line (inclusive)"},
    },
    "required": ["path"],
}
_TOOL_DESCRIPTION = "Read a file of the repository, optionally only some lines."


def anthropic_body(model: str, *, stream: bool) -> bytes:
    """A Messages API request (what Claude Code sends, in miniature)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 1024,
        "system": [{"type": "text", "text": SYSTEM}],
        "messages": [
            {"role": "user", "content": _USER_1},
            {"role": "assistant", "content": [{"type": "text", "text": _ASSISTANT_1}]},
            {"role": "user", "content": [{"type": "text", "text": _USER_2}]},
        ],
        "tools": [
            {"name": "read_file", "description": _TOOL_DESCRIPTION, "input_schema": _TOOL_SCHEMA}
        ],
        "temperature": 0.2,
        "metadata": {"user_id": "bench-user"},
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def openai_body(model: str, *, stream: bool) -> bytes:
    """A Chat Completions request (what the ``openai`` SDK sends, in miniature)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 1024,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": _USER_1},
            {"role": "assistant", "content": _ASSISTANT_1},
            {"role": "user", "content": _USER_2},
        ],
        "tools": [
            {
                "type": "function",
                "function": {
                    "name": "read_file",
                    "description": _TOOL_DESCRIPTION,
                    "parameters": _TOOL_SCHEMA,
                },
            }
        ],
        "temperature": 0.2,
        "user": "bench-user",
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def body_for(client_dialect: str, model: str, *, stream: bool) -> bytes:
    if client_dialect == "anthropic":
        return anthropic_body(model, stream=stream)
    return openai_body(model, stream=stream)


def request_bytes(
    host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None
) -> bytes:
    """One raw HTTP/1.1 keep-alive POST, built once and sent many times."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: application/json",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
