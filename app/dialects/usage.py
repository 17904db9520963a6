"""The neutral token-usage record and its extraction from both dialects' usage objects.

Anthropic's ``input_tokens`` excludes cache reads and writes; OpenAI's
``prompt_tokens`` includes them (PROTOCOL.md §6.9). ``Usage.input_tokens`` here
follows Anthropic: uncached input only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from app.dialects.json_values import is_int
from app.dialects.sse import SSEEvent


@dataclass(slots=True)
class Usage:
    """Tokens of one request; ``estimated`` when the upstream reported none."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def prompt_tokens(self) -> int:
        """All input, cached or not: OpenAI's ``prompt_tokens``."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


# The most tokens one count may say: the usage table's INTEGER columns stop at 2**31 - 1 on
# PostgreSQL (and SQLite at 2**63 - 1), and no context window comes near it. A backend's
# larger count is garbage, read as no count; kept, it was a row the recorder could never
# write, and every event queued behind it stayed unwritten.
MAX_TOKENS = 2**31 - 1


def _int(value: Any) -> int:
    return value if is_int(value) and 0 < value <= MAX_TOKENS else 0


def from_anthropic(usage: dict[str, Any] | None, into: Usage | None = None) -> Usage:
    """Merge an Anthropic ``usage`` (message, message_start or cumulative message_delta)."""
    u = into if into is not None else Usage()
    if not isinstance(usage, dict):
        return u
    if usage.get("input_tokens") is not None:
        u.input_tokens = _int(usage.get("input_tokens"))
    if usage.get("cache_read_input_tokens") is not None:
        u.cache_read_tokens = _int(usage.get("cache_read_input_tokens"))
    if usage.get("cache_creation_input_tokens") is not None:
        u.cache_write_tokens = _int(usage.get("cache_creation_input_tokens"))
    if usage.get("output_tokens") is not None:
        u.output_tokens = _int(usage.get("output_tokens"))
    details = usage.get("output_tokens_details")
    if isinstance(details, dict) and details.get("thinking_tokens") is not None:
        u.reasoning_tokens = _int(details.get("thinking_tokens"))
    u.estimated = False
    return u


def from_openai(usage: dict[str, Any] | None) -> Usage | None:
    """An OpenAI ``usage`` object as neutral Usage (None when absent).

    Reads DeepSeek's ``prompt_cache_hit_tokens`` when ``cached_tokens`` is missing.
    """
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = 0
    cache_write = 0
    if isinstance(details, dict):
        cached = _int(details.get("cached_tokens"))
        cache_write = _int(details.get("cache_write_tokens"))
    if not cached:
        cached = _int(usage.get("prompt_cache_hit_tokens"))
    completion_details = usage.get("completion_tokens_details")
    reasoning = 0
    if isinstance(completion_details, dict):
        reasoning = _int(completion_details.get("reasoning_tokens"))
    return Usage(
        input_tokens=max(prompt - cached - cache_write, 0),
        output_tokens=_int(usage.get("completion_tokens")),
        cache_read_tokens=cached,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
    )


def to_anthropic(u: Usage) -> dict[str, Any]:
    """Anthropic ``usage`` with all four integer fields present (Claude Code requires them)."""
    out: dict[str, Any] = {
        "input_tokens": u.input_tokens,
        "cache_creation_input_tokens": u.cache_write_tokens,
        "cache_read_input_tokens": u.cache_read_tokens,
        "output_tokens": u.output_tokens,
    }
    if u.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return out


def to_openai(u: Usage) -> dict[str, Any]:
    """OpenAI ``usage``: prompt includes cache reads and writes; total is the sum."""
    prompt_details: dict[str, Any] = {"cached_tokens": u.cache_read_tokens}
    if u.cache_write_tokens:
        prompt_details["cache_write_tokens"] = u.cache_write_tokens
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
    }


_ANTHROPIC_TEXT = frozenset(("text", "thinking", "partial_json"))
_OPENAI_TEXT = frozenset(("content", "reasoning_content", "reasoning"))


class TextCount:
    """Generated text tallied for a token estimate, without keeping the text.

    Characters and UTF-8 bytes add up over pieces, so the estimate is exactly
    `app.dialects.tokens.estimate_text` of all the pieces joined.
    """

    __slots__ = ("chars", "_extra")

    def __init__(self) -> None:
        self.chars = 0
        self._extra = 0  # UTF-8 bytes beyond one a character

    def add(self, text: Any) -> None:
        """Count one piece (a delta's text, thinking or tool arguments)."""
        if isinstance(text, str) and text:
            self.chars += len(text)
            if not text.isascii():
                self._extra += len(text.encode("utf-8", "surrogatepass")) - len(text)

    def add_counts(self, chars: int, extra: int) -> None:
        """Count pieces already measured: ``chars`` characters, ``extra`` bytes beyond."""
        self.chars += chars
        self._extra += extra

    @property
    def tokens(self) -> int:
        if not self.chars:
            return 0
        non_ascii = min(self.chars, (self._extra + 1) // 2)
        return math.ceil((self.chars - non_ascii) / 3.5 + non_ascii)


class OutputMeter(TextCount):
    """The output an upstream stream has produced so far, estimated from its deltas.

    A stream that ends early (client gone, connection cut) never gets the upstream's own
    final count, which comes last: it is charged this instead (text, thinking, tool names
    and tool arguments, at `app.dialects.tokens.estimate_text`'s rates).
    """

    __slots__ = ("_anthropic",)

    def __init__(self, dialect: str) -> None:
        super().__init__()
        self._anthropic = dialect == "anthropic"

    def feed(self, event: SSEEvent) -> None:
        if self._anthropic:
            if event.event != "content_block_delta" and '"content_block_delta"' not in event.data:
                if event.event == "content_block_start" or (
                    event.event is None and '"content_block_start"' in event.data
                ):
                    self._block_start(event)
                return
        elif '"delta"' not in event.data:
            return
        try:
            data = event.json()
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict):
            return
        # Every delta of every stream comes through here: look up only the keys present.
        if self._anthropic:
            delta = data.get("delta")
            if isinstance(delta, dict):
                for name in _ANTHROPIC_TEXT.intersection(delta):
                    self.add(delta[name])
            return
        choices = data.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            for name in _OPENAI_TEXT.intersection(delta):
                self.add(delta[name])
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict):
                    self.add(function.get("name"))
                    self.add(function.get("arguments"))

    def _block_start(self, event: SSEEvent) -> None:
        """A ``tool_use`` block's name, and its input when it comes whole in the start."""
        try:
            data = event.json()
        except orjson.JSONDecodeError:
            return
        block = data.get("content_block") if isinstance(data, dict) else None
        if not isinstance(block, dict) or block.get("type") != "tool_use":
            return
        self.add(block.get("name"))
        tool_input = block.get("input")
        if isinstance(tool_input, dict) and tool_input:
            try:
                self.add(orjson.dumps(tool_input).decode())
            except TypeError:  # nested past the 254 levels orjson writes: not counted
                pass

    def charge(self, usage: Usage) -> Usage:
        """``usage`` with at least the output seen so far (flagged estimated if raised)."""
        seen = self.tokens
        if seen > usage.output_tokens:
            usage.output_tokens = seen
            usage.estimated = True
        return usage
