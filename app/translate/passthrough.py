"""Same-dialect traffic: the few changes a passed-through request gets, and usage sniffing.

A passed-through request keeps every field but ``model`` (and the route's
settings). Anthropic thinking blocks with an empty signature — produced by a
translated OpenAI backend earlier in the conversation — are stripped, because a
real Anthropic backend rejects them (PROTOCOL.md §6.7). Streams are relayed
byte for byte while `AnthropicSniffer`/`OpenAISniffer` read usage from them.
"""

from __future__ import annotations

from typing import Any

import orjson

from app.dialects.sse import SSEEvent
from app.dialects.usage import Usage, from_anthropic, from_openai


def strip_unsigned_thinking(body: dict[str, Any]) -> dict[str, Any]:
    """Drop assistant thinking blocks whose signature is empty (never accepted upstream),
    and an assistant message left with no content by that (Anthropic refuses an empty
    one; the turns around it, both the user's, it takes as one)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return body
    changed = False
    out_messages = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if message.get("role") == "assistant" and isinstance(content, list):
            kept = [
                b
                for b in content
                if not (
                    isinstance(b, dict) and b.get("type") == "thinking" and not b.get("signature")
                )
            ]
            if len(kept) != len(content):
                changed = True
                if not kept:
                    continue  # only unsigned thinking: a reasoning-only answer
                message = dict(message, content=kept)
        out_messages.append(message)
    return dict(body, messages=out_messages) if changed else body


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
            if name == "message_start":
                from_anthropic((data.get("message") or {}).get("usage"), self.usage)
            else:
                from_anthropic(data.get("usage"), self.usage)
                delta = data.get("delta")
                if isinstance(delta, dict):
                    self.stop_reason = delta.get("stop_reason") or self.stop_reason
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
                if isinstance(choice, dict) and choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
        return usage is not None and not choices
