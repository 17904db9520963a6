"""Two quirks of chat-completion stream chunks that every stream translator reading an
OpenAI-compatible backend (`anthropic_to_openai_stream`, `responses_sse`/`responses_stream`)
undoes the same way: an emoji cut between two events, and tool arguments sent as snapshots.
"""

from __future__ import annotations

import json
import re
from typing import Any

# A \uD800-\uDFFF escape: half of a UTF-16 surrogate pair, which orjson refuses alone.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_TEXT_FIELDS = ("content", "reasoning_content", "reasoning", "refusal")


def split_pair(data: str, held: dict[str, str]) -> Any:
    """``data`` parsed when orjson refused it only for half a surrogate pair, else None.

    Node servers cut a text between the two halves of a UTF-16 pair (an emoji) and
    escape each half in its own event: valid JSON that orjson refuses. Parsed leniently,
    a delta's text that ends in a high half holds it in ``held`` (the stream's own, one
    entry per field) for the next event of that field, whose low half completes it; any
    other lone half becomes U+FFFD (a held one whose partner never comes is dropped). Only
    for after the fast parse failed, so plain streams pay nothing.
    """
    if _SURROGATE_ESCAPE.search(data) is None:
        return None
    try:
        chunk = json.loads(data)
    except ValueError:
        return None
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    for choice in choices if isinstance(choices, list) else []:
        delta = choice.get("delta") if isinstance(choice, dict) else None
        if not isinstance(delta, dict):
            continue
        for name in _TEXT_FIELDS:
            if isinstance(delta.get(name), str):
                delta[name] = _paired(held, name, delta[name])
        calls = delta.get("tool_calls")
        for call in calls if isinstance(calls, list) else []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                key = f"arguments {call.get('index')}"
                function["arguments"] = _paired(held, key, function["arguments"])
    return chunk


def _paired(held: dict[str, str], key: str, text: str) -> str:
    text = held.pop(key, "") + text
    if text and "\ud800" <= text[-1] <= "\udbff":
        held[key] = text[-1]
        text = text[:-1]
    # Through UTF-16, a pair of halves is the one character; a lone half is U+FFFD.
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def new_arguments(received: str, fragment: str) -> str:
    """What is new in a tool call's argument ``fragment``, given the arguments ``received``
    before it: the fragment, unless it starts with all of them and goes on (a cumulative
    snapshot, as some gateways send them, PROTOCOL.md §5.5), then only its new end. As
    deltas, snapshots would repeat an opening brace, which no JSON object does."""
    if received and len(fragment) > len(received) and fragment.startswith(received):
        return fragment[len(received) :]
    return fragment
