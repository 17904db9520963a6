"""Tool-call arguments from a conversation's history, made into a JSON object.

An OpenAI client sends back every tool call of the conversation as a JSON *string*; an
Anthropic backend wants each as an object (PROTOCOL.md §6.4: "attempt repair, else
``{}``"). A model's arguments can be cut off (``max_tokens`` hit mid-call) or wrapped in a
Markdown fence; refusing them would fail every later turn of that conversation. This is
history the model reads, not a call anyone runs, so closing a cut-off object is safe here
(unlike a live stream, where the gateway never completes a call's arguments itself).
"""

from __future__ import annotations

from typing import Any

import orjson

_FENCE = "```"
_CLOSER = {"{": "}", "[": "]"}
_CUTS = 3  # members dropped from the end, at most, before giving up


def object_arguments(raw: str) -> tuple[dict[str, Any], str | None]:
    """``raw`` as an object, and what was done to it: None when it parsed as it was,
    ``"repaired"`` when fenced or cut off, ``"replaced"`` when nothing could be made of it
    (``{}``)."""
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = _repaired(raw)
        if isinstance(value, dict):
            return value, "repaired"
        return {}, "replaced"
    if isinstance(value, dict):
        return value, None
    return {}, "replaced"


def _repaired(raw: str) -> Any:
    text = raw.strip()
    if text.startswith(_FENCE):
        text = text[len(_FENCE) :].removeprefix("json").strip()
        text = text.removesuffix(_FENCE).strip()
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    if not text.startswith("{"):
        return None
    for _ in range(_CUTS):
        try:
            return orjson.loads(_closed(text))
        except orjson.JSONDecodeError:
            # Cut inside a key, or after one: drop the last member and close again.
            comma = text.rfind(",")
            if comma < 0:
                return None
            text = text[:comma]
    return None


def _closed(text: str) -> str:
    """``text`` cut off inside an object: its open string, value and brackets closed."""
    stack: list[str] = []
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in _CLOSER:
            stack.append(_CLOSER[char])
        elif char in "}]" and stack and stack[-1] == char:
            stack.pop()
    if in_string:
        text = (text[:-1] if escaped else text) + '"'  # a dangling backslash dropped
    text = text.rstrip()
    if text.endswith(","):
        text = text[:-1]
    elif text.endswith(":"):
        text += " null"
    return text + "".join(reversed(stack))
