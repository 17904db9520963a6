"""Reasoning a backend writes inline, as ``<think>…</think>`` at the start of its content.

vLLM without ``--reasoning-parser``, llama.cpp with ``--reasoning-format none`` and older
Ollama put a reasoning model's thinking (Qwen3, QwQ, DeepSeek-R1 distills) into the answer
text itself (PROTOCOL.md §5.5). For an Anthropic client that belongs in a thinking block:
Claude Code would otherwise show the tags and the thinking as the answer, and send them
back as the model's words on every later turn.

Only a ``<think>`` that opens the content (after whitespace) counts; the tag anywhere else
is text. `ThinkTags` splits a stream's content pieces as they come, holding back only what
may still turn out to be a tag; `split_think_tags` splits a whole answer.
"""

from __future__ import annotations

OPEN = "<think>"
CLOSE = "</think>"

UNDECIDED = 0  # no visible content yet: a tag may still open it
INSIDE = 1  # inside the thinking
AFTER = 2  # just past the closing tag: the whitespace models put after it is dropped
PLAIN = 3  # text from here on

Pieces = list[tuple[str, str]]  # ("thinking" | "text", piece), in order


class ThinkTags:
    """Feed a stream's content pieces in order; get ("thinking" | "text", piece) pairs."""

    __slots__ = ("state", "_held")

    def __init__(self) -> None:
        self.state = UNDECIDED
        self._held = ""

    def feed(self, text: str) -> Pieces:
        if self.state == PLAIN:
            return [("text", text)]
        if self.state == UNDECIDED:
            return self._undecided(text)
        if self.state == INSIDE:
            return self._inside(text)
        text = text.lstrip()
        if not text:
            return []
        self.state = PLAIN
        return [("text", text)]

    def settles_plain(self, text: str) -> bool:
        """True when the content is plain text from ``text`` on: already so, or nothing is
        held and ``text`` starts it visibly with something other than a tag (recorded)."""
        if self.state == PLAIN:
            return True
        if self.state != UNDECIDED or self._held:
            return False
        start = text.lstrip()
        if not start or start[0] == "<":
            return False
        self.state = PLAIN
        return True

    def finish(self) -> Pieces:
        """What was held back, at the end of the content."""
        held, self._held = self._held, ""
        if not held:
            return []
        return [("thinking" if self.state == INSIDE else "text", held)]

    def _undecided(self, text: str) -> Pieces:
        held = self._held + text
        start = held.lstrip()
        if not start or (len(start) < len(OPEN) and OPEN.startswith(start)):
            self._held = held  # whitespace, or what may become the tag
            return []
        self._held = ""
        if start.startswith(OPEN):
            self.state = INSIDE
            return self._inside(start[len(OPEN) :])
        self.state = PLAIN
        return [("text", held)]

    def _inside(self, text: str) -> Pieces:
        text = self._held + text
        self._held = ""
        end = text.find(CLOSE)
        if end >= 0:
            self.state = AFTER
            out: Pieces = [("thinking", text[:end])] if end else []
            return out + self.feed(text[end + len(CLOSE) :])
        # Hold back an end that may be the start of the closing tag.
        cut = text.rfind("<", max(len(text) - len(CLOSE) + 1, 0))
        if cut >= 0 and CLOSE.startswith(text[cut:]):
            self._held = text[cut:]
            text = text[:cut]
        return [("thinking", text)] if text else []


def split_think_tags(content: str) -> tuple[str, str] | None:
    """``(thinking, text)`` of a whole answer that opens with ``<think>``; None otherwise.
    An answer cut inside its thinking (no closing tag) is all thinking."""
    start = content.lstrip()
    if not start.startswith(OPEN):
        return None
    body = start[len(OPEN) :]
    end = body.find(CLOSE)
    if end < 0:
        return body, ""
    return body[:end], body[end + len(CLOSE) :].lstrip()
