"""Server-sent events: an incremental, tolerant parser and the two framings.

The parser accepts what real upstreams send: ``\\r\\n`` or ``\\n`` line ends,
multi-line ``data:``, ``data:`` without the space, comment lines, and a last
event with no blank line after it (PROTOCOL.md §7.0).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

_UNPARSED: Any = object()


@dataclass(slots=True, unsafe_hash=True)
class SSEEvent:
    """One parsed event: its ``event:`` name (None when absent) and joined ``data``.

    Treat it as immutable (it hashes by value). Not ``frozen``: a frozen dataclass's
    ``__init__`` goes through ``object.__setattr__`` per field, and one event is made for
    every upstream SSE event.
    """

    event: str | None
    data: str
    _parsed: Any = field(default=_UNPARSED, repr=False, compare=False, hash=False)

    def json(self) -> Any:
        """``data`` parsed, once: the output meter and the translator both read each event
        (a JSON parse is ~10k instructions an event). Shared: do not mutate it."""
        parsed = self._parsed
        if parsed is _UNPARSED:
            parsed = self._parsed = orjson.loads(self.data)
        return parsed


class SSEParser:
    """Feed raw bytes as they arrive; get back the complete events in them."""

    __slots__ = ("_buf", "_event", "_data")

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []

    @property
    def idle(self) -> bool:
        """Between events: nothing buffered, so the next byte starts a new event."""
        return not self._buf and not self._data and self._event is None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b"\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 1 :]
        out: list[SSEEvent] = []
        data = self._data
        # Every stream chunk goes through here (issue 7's profile: ~5 µs an event before),
        # so the complete lines are decoded in one call (a line ends at b"\n", never inside a
        # UTF-8 sequence) and the two common lines, blank and ``data:``, are handled inline.
        for line in buf[:end].decode("utf-8", "replace").split("\n"):
            if line[-1:] == "\r":
                line = line[:-1]
            if not line:
                if data:
                    out.append(SSEEvent(self._event, "\n".join(data)))
                    data.clear()
                self._event = None
            elif line.startswith("data:"):
                data.append(line[6:] if line.startswith(" ", 5) else line[5:])
            else:
                self._line(line, out)
        return out

    def finish(self) -> list[SSEEvent]:
        """Flush a trailing line and an event that was not followed by a blank line."""
        out: list[SSEEvent] = []
        if self._buf:
            line = self._buf.rstrip(b"\r")
            self._buf = b""
            self._line(line.decode("utf-8", "replace"), out)
        self._dispatch(out)
        return out

    def _line(self, line: str, out: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line.startswith(":"):
            return
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value

    def _dispatch(self, out: list[SSEEvent]) -> None:
        if self._data:
            out.append(SSEEvent(self._event, "\n".join(self._data)))
        self._event = None
        self._data = []


def _dumps(data: Any) -> bytes:
    return orjson.dumps(data)


def anthropic_event(name: str, data: dict[str, Any]) -> bytes:
    """One Anthropic SSE event: both the ``event:`` line and ``data.type`` (PROTOCOL.md §2.4)."""
    return b"event: " + name.encode() + b"\ndata: " + _dumps(data) + b"\n\n"


def openai_chunk(data: dict[str, Any]) -> bytes:
    """One OpenAI SSE chunk: ``data:`` only, no ``event:`` line (PROTOCOL.md §5.3)."""
    return b"data: " + _dumps(data) + b"\n\n"


OPENAI_DONE = b"data: [DONE]\n\n"
OPENAI_KEEPALIVE = b": keep-alive\n\n"
ANTHROPIC_PING = b'event: ping\ndata: {"type":"ping"}\n\n'
