"""Same-dialect traffic: the few changes a passed-through request gets, and usage sniffing.

A passed-through request keeps every field but ``model`` (and the route's
settings). Anthropic thinking blocks with an empty signature — produced by a
translated OpenAI backend earlier in the conversation — are stripped, because a
real Anthropic backend rejects them (PROTOCOL.md §6.7); signed ones the backend refuses
(another backend's signatures) go when its 400 says so. Streams are relayed
byte for byte while `AnthropicSniffer`/`OpenAISniffer` read usage from them.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from app.dialects.sse import SSEEvent
from app.dialects.usage import Usage, from_anthropic, from_openai


def strip_unsigned_thinking(body: dict[str, Any]) -> dict[str, Any]:
    """Drop assistant thinking blocks whose signature is empty (never accepted upstream)."""
    return _strip_thinking(body, signed_too=False)


# Anthropic's 400 for a signature it did not make (another Anthropic-compatible backend's,
# or one a client edited): "messages.1.content.0: Invalid `signature` in `thinking` block".
_BAD_SIGNATURE = re.compile(r"invalid\W+(?:signature|data)\W+in\W+(?:redacted_)?thinking", re.I)


def strip_refused_thinking(message: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """When the backend's 400 ``message`` refuses a thinking block's signature, ``body``
    without any thinking in its history; None when the error is another one or there is
    no thinking left to take out."""
    if not _BAD_SIGNATURE.search(message):
        return None
    stripped = _strip_thinking(body, signed_too=True)
    return stripped if stripped is not body else None


def _strip_thinking(body: dict[str, Any], *, signed_too: bool) -> dict[str, Any]:
    """``body`` without the history's unsigned (with ``signed_too``, all) thinking and
    redacted thinking blocks.

    An assistant message left with no content goes too (Anthropic refuses an empty one
    and merges the user turns around it). When the last assistant message lost its
    thinking but calls a tool, thinking is turned off for this request: with thinking on,
    Anthropic requires that message to start with a genuine thinking block (§6.4 step 6),
    and signatures cannot be made up.
    """
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body
    changed = False
    out_messages = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and message.get("role") == "assistant":
            kept = [b for b in content if not _dropped_thinking(b, signed_too)]
            if len(kept) != len(content):
                changed = True
                if not kept:
                    continue  # only thinking: a reasoning-only answer
                message = dict(message, content=kept)
        out_messages.append(message)
    if not changed:
        return body
    out = dict(body, messages=out_messages)
    if _thinking_on(body) and _calls_without_thinking(out_messages):
        del out["thinking"]
    return out


def _calls_without_thinking(messages: list[Any]) -> bool:
    """The last assistant message calls a tool but does not start with thinking."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "assistant":
            content = message.get("content")
            if not isinstance(content, list) or not content:
                return False
            first = content[0].get("type") if isinstance(content[0], dict) else None
            calls = any(isinstance(b, dict) and b.get("type") == "tool_use" for b in content)
            return calls and first not in ("thinking", "redacted_thinking")
    return False


def _dropped_thinking(block: Any, signed_too: bool) -> bool:
    if not isinstance(block, dict):
        return False
    kind = block.get("type")
    if kind == "thinking":
        return signed_too or not block.get("signature")
    return signed_too and kind == "redacted_thinking"


def _thinking_on(body: dict[str, Any]) -> bool:
    thinking = body.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")


class AnthropicSniffer:
    """Reads usage, completion and errors from a relayed Anthropic stream."""

    __slots__ = ("usage", "completed", "error", "stop_reason")

    def __init__(self) -> None:
        self.usage = Usage()
        self.completed = False
        self.error: dict[str, Any] | None = None
        self.stop_reason: str | None = None

    def feed(self, event: SSEEvent) -> None:
        name = event.event
        if name == "message_start" or name == "message_delta":
            try:
                data = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                return
            if not isinstance(data, dict):
                return  # relayed as it came; nothing in it to read
            if name == "message_start":
                message = data.get("message")
                if isinstance(message, dict):
                    from_anthropic(message.get("usage"), self.usage)
            else:
                from_anthropic(data.get("usage"), self.usage)
                delta = data.get("delta")
                reason = delta.get("stop_reason") if isinstance(delta, dict) else None
                if isinstance(reason, str) and reason:
                    self.stop_reason = reason
        elif name == "message_stop":
            self.completed = True
        elif name == "error":
            try:
                data = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                data = {}
            error = data.get("error") if isinstance(data, dict) else None
            self.error = (
                error if isinstance(error, dict) else {"type": "api_error", "message": event.data}
            )


class OpenAISniffer:
    """Reads usage, completion and errors from a relayed OpenAI stream."""

    __slots__ = ("usage", "completed", "error", "finish_reason", "saw_usage")

    def __init__(self) -> None:
        self.usage = Usage()
        self.completed = False
        self.error: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.saw_usage = False

    def feed(self, event: SSEEvent) -> bool:
        """Returns True when the event is the usage-only chunk (no choices)."""
        data_text = event.data
        if data_text.startswith("[DONE]"):
            self.completed = True
            return False
        if (
            '"usage"' not in data_text
            and '"error"' not in data_text
            and '"finish_reason":"' not in data_text
            and '"finish_reason": "' not in data_text
        ):
            return False
        try:
            data = event.json()  # shared with the output meter
        except orjson.JSONDecodeError:
            return False
        if not isinstance(data, dict):
            return False
        if data.get("error"):
            error = data["error"]
            self.error = error if isinstance(error, dict) else {"message": str(error)}
            return False
        usage = from_openai(data.get("usage"))
        if usage is not None:
            self.usage = usage
            self.saw_usage = True
        choices = data.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                reason = choice.get("finish_reason") if isinstance(choice, dict) else None
                if isinstance(reason, str) and reason:
                    self.finish_reason = reason
        return usage is not None and not choices


def is_error_envelope(dialect: str, body: bytes) -> bool:
    """``body`` is an error in ``dialect``'s own envelope, which its SDK reads: Anthropic's
    ``{"type": "error", "error": {"type", "message"}}``, OpenAI's ``{"error": {"message"}}``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return False
    if dialect == "anthropic":
        return data.get("type") == "error" and isinstance(error.get("type"), str)
    return True
