"""What a Responses API request leaves for its answer: the fields a Response echoes and
how the Chat Completions names the gateway used map back.

The gateway serves ``POST /v1/responses`` by translating the request into a Chat
Completions one (`responses_request`), sending that through the usual pipeline, and
turning the chat answer or stream back into a Response (`responses_answer`,
`responses_stream`). This is the state and the names the two halves share.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The ``include`` value that asks for reasoning items' ``encrypted_content``.
ENCRYPTED_REASONING = "reasoning.encrypted_content"


def epoch_seconds() -> int:
    return int(time.time())


# A redacted_thinking block's data goes out as a reasoning item's encrypted_content behind
# this prefix (`responses_answer`); the request side (`responses_input`) reads it back into
# a redacted_thinking block.
REDACTED_PREFIX = "redacted:"


@dataclass(slots=True)
class ToolOrigin:
    """Where one Chat Completions function came from in the Responses request."""

    name: str  # the tool's own name
    namespace: str | None = None  # a ``namespace`` tool's name, for a tool inside one
    custom: bool = False  # a ``custom`` (free-form text) tool: arguments are {"input": text}


@dataclass(slots=True)
class ResponsesContext:
    """Built by `responses_request.translate_request`; read by the answer and the stream."""

    response_id: str  # "resp_…"
    created_at: int  # epoch seconds
    model: str  # as the client asked (the answer's own model name wins when it has one)
    # The request fields a Response object repeats, already in its shape: instructions,
    # max_output_tokens, parallel_tool_calls, temperature, top_p, tool_choice, tools,
    # text, reasoning, metadata, user, store, truncation, …
    echo: dict[str, Any] = field(default_factory=dict)
    # include has "reasoning.encrypted_content": reasoning items carry the thinking's
    # signature as ``encrypted_content`` (and take it back on the next turn).
    encrypted_reasoning: bool = False
    # Chat function name -> its origin, for every name that is not a plain function tool
    # under its own name (namespaced and custom tools).
    tools: dict[str, ToolOrigin] = field(default_factory=dict)
    # The Responses field each chat message was made from ("instructions", "input[3]"), by
    # chat message index: errors found in the chat body name what the client sent.
    origins: list[str] = field(default_factory=list)
    # The clock a completed Response's ``completed_at`` is read from (tests fix it).
    clock: Callable[[], int] = epoch_seconds
