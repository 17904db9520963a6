"""Upstream SSE bytes in, client SSE bytes out: parser, output meter and translator in one.

Both stream translators take parsed events; most of a stream, though, is text deltas of
one shape, and each of those went through an SSEEvent, a dict per level and a re-encode
(~14 µs an event A→O, ~7 µs O→A). Here every complete event of a read goes first to the
translator's ``fast_event``, which frames the common case straight from the bytes, and
only what it declines goes through the tolerant parser and the full translator. Output is
byte for byte what the parser and ``feed`` alone give (tests compare them on every stream
fixture, cut at every size), and nothing is held back: each read's events are answered
in that read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import repeat
from operator import itemgetter
from typing import Any, Protocol

import orjson

from app.dialects.sse import SSEEvent, SSEParser
from app.dialects.usage import OutputMeter
from app.errors import GatewayError


class StreamTranslator(Protocol):
    done: bool
    error: GatewayError | None

    def feed(self, event: SSEEvent) -> list[bytes]: ...

    def fast_event(self, part: bytes, meter: OutputMeter) -> bytes | None: ...

    def fast_run(
        self, parts: list[bytes], at: int, out: list[bytes], meter: OutputMeter
    ) -> int: ...

    def finish(self) -> list[bytes]: ...

    def ping(self) -> list[bytes]: ...


_PROBE = "\x00bk-probe"
_PROBE_LITERAL = orjson.dumps(_PROBE)
# One JSON string with nothing escaped in it (no quote, backslash or control character):
# its bytes are exactly what ``orjson.dumps`` gives for its text.
_PLAIN_LITERAL = re.compile(rb'"[^"\\\x00-\x1f]+"')


class TextSlot:
    """Where the text sits in one kind of an upstream's delta events, learned from one.

    An upstream's text deltas differ only in their text: ``data: {"id":…,"choices":[{…
    "delta":{"content":`` + the JSON string + ``}…}]}``. Once the bytes around the string
    are known, an event that starts and ends with them and holds one JSON string between
    is that same delta with another text, with no need to parse the rest (~0.5 µs instead
    of ~2 for the parse alone). Learning proves it: the bytes around a probe string must
    parse to the probe at the text's place.
    """

    __slots__ = ("_head", "_tail", "_ends")

    def __init__(self) -> None:
        self._head = b""
        self._tail = b""
        self._ends = 0  # 0: nothing learned

    def text(self, part: bytes) -> str | None:
        """The text of ``part`` when it is the learned delta with another text, else None."""
        if not self._ends or not part.startswith(self._head) or not part.endswith(self._tail):
            return None
        literal = part[len(self._head) : len(part) - len(self._tail)]
        if literal[:1] != b'"':
            return None
        try:
            text = orjson.loads(literal)
        except orjson.JSONDecodeError:
            return None
        return text if type(text) is str else None

    @property
    def ends(self) -> tuple[bytes, bytes] | None:
        """The learned bytes before and after the text, or None."""
        return (self._head, self._tail) if self._ends else None

    def learn(self, part: bytes, body_at: int, text: str, locate: Callable[[Any], Any]) -> None:
        """``part``'s JSON (from byte ``body_at``) holds ``text`` where ``locate`` looks."""
        self._ends = 0
        literal = orjson.dumps(text)
        at = part.find(literal)
        if at < body_at or part.find(literal, at + 1) >= 0:
            return  # not there as written, or there twice: ambiguous
        head, tail = part[:at], part[at + len(literal) :]
        try:
            # One string token swapped for another changes only that value: if the probe
            # lands where ``locate`` looks, every other text does too.
            if locate(orjson.loads(head[body_at:] + _PROBE_LITERAL + tail)) != _PROBE:
                return
        except (orjson.JSONDecodeError, AttributeError, LookupError, TypeError):
            return
        self._head, self._tail, self._ends = head, tail, 1


_WINDOW = 64  # events `plain_run` checks at once: bounds what a run that breaks wastes
_FEW = 5  # fewer events than this are cheaper one by one
# Plain literals joined by \x01 (a byte no plain literal holds): a run's texts checked at once.
_PLAIN_JOINED = re.compile(rb'"[^"\\\x00-\x1f]+"(?:\x01"[^"\\\x00-\x1f]+")*')
_starts, _ends = bytes.startswith, bytes.endswith


def plain_run(
    parts: list[bytes],
    at: int,
    ends: tuple[bytes, bytes],
    frame: tuple[bytes, bytes],
    out: list[bytes],
) -> tuple[int, int, int]:
    """Frames the events at ``parts[at:]`` for as long as each is ``ends[0]`` + a JSON string
    with nothing escaped + ``ends[1]`` (one `TextSlot`'s shape), as ``frame[0]`` + the same
    string + ``frame[1]``, onto ``out``. Returns the index after the last one taken, and the
    characters and UTF-8 bytes beyond one a character of their texts (for the meters).

    The string's bytes are what ``orjson.dumps`` makes of its text, so this is byte for
    byte what ``fast_event`` gives for each, without decoding or encoding the text. Up to
    `_WINDOW` events are checked and framed together, each step one call over all of them
    (issue 7: the bulk of a long stream; ~12k CPU instructions an event through
    ``fast_event``, ~4k one by one).
    """
    chars = extra = 0
    while True:
        taken, more_chars, more_extra = _window(parts[at : at + _WINDOW], ends, frame, out)
        at += taken
        chars += more_chars
        extra += more_extra
        if taken < _WINDOW:
            return at, chars, extra


def _window(
    window: list[bytes], ends: tuple[bytes, bytes], frame: tuple[bytes, bytes], out: list[bytes]
) -> tuple[int, int, int]:
    """`plain_run` over one window of events: how many it took, and their counts."""
    head, tail = ends
    if len(window) < _FEW:
        return _one_by_one(window, ends, frame, out)
    shaped = list(map(_starts, window, repeat(head, len(window))))
    if False in shaped:
        window = window[: shaped.index(False)]
    shaped = list(map(_ends, window, repeat(tail, len(window))))
    if False in shaped:
        window = window[: shaped.index(False)]
    count = len(window)
    if count < 2:
        return _one_by_one(window, ends, frame, out)
    pieces = list(map(itemgetter(slice(len(head), -len(tail) or None)), window))
    literals = b"\x01".join(pieces)
    if literals.count(b"\x01") != count - 1:
        return _one_by_one(window, ends, frame, out)  # a raw \x01 in a text: not JSON
    plain = _PLAIN_JOINED.match(literals)
    if plain is None:
        return 0, 0, 0
    stop = plain.end()
    if stop < len(literals):
        # The texts are plain up to the piece the match stopped in (or just before).
        count = literals.count(b"\x01", 0, stop) + (literals[stop : stop + 1] == b"\x01")
        if not count:
            return 0, 0, 0
        pieces = pieces[:count]
        literals = literals[: literals.rfind(b"\x01", 0, stop + 1)]
    size = len(literals) - 3 * count + 1  # less the separators and the quotes
    if literals.isascii():
        chars = size
    else:
        try:
            chars = len(literals.decode()) - 3 * count + 1
        except UnicodeDecodeError:
            return _one_by_one(window[:count], ends, frame, out)  # stops at the bad one
    before, after = frame
    out.append(before + (after + before).join(pieces) + after)
    return count, chars, size - chars


def _one_by_one(
    parts: list[bytes], ends: tuple[bytes, bytes], frame: tuple[bytes, bytes], out: list[bytes]
) -> tuple[int, int, int]:
    """`_window` one event at a time, up to the first not in the shape."""
    head, tail = ends
    cut, trim = len(head), len(tail)
    before, after = frame
    plain = _PLAIN_LITERAL.fullmatch
    chars = extra = taken = 0
    for part in parts:
        if not (part.startswith(head) and part.endswith(tail)):
            break
        literal = part[cut : len(part) - trim]
        if plain(literal) is None:
            break
        size = len(literal) - 2
        if literal.isascii():
            chars += size
        else:
            try:
                text_chars = len(literal[1:-1].decode())
            except UnicodeDecodeError:
                break  # not UTF-8: the slow path says so as it always did
            chars += text_chars
            extra += size - text_chars
        out.append(before + literal + after)
        taken += 1
    return taken, chars, extra


def simple_event(part: bytes) -> SSEEvent | None:
    """``part`` (one whole event, no CR) as the parser would read it, when it is the usual
    ``data: …`` line, optionally after one ``event: …`` line; None for anything else.
    The parser's line splitting and decoding cost more than the event's translation."""
    if part.startswith(b"data:"):
        if part.find(b"\n") >= 0:
            return None
        data = part[6:] if part.startswith(b" ", 5) else part[5:]
        return SSEEvent(None, data.decode("utf-8", "replace"))
    if not part.startswith(b"event:"):
        return None
    end = part.find(b"\n")
    if end < 0 or not part.startswith(b"data:", end + 1) or part.find(b"\n", end + 1) >= 0:
        return None
    name = part[7:end] if part.startswith(b" ", 6) else part[6:end]
    at = end + 1
    data = part[at + 6 :] if part.startswith(b" ", at + 5) else part[at + 5 :]
    return SSEEvent(name.decode("utf-8", "replace"), data.decode("utf-8", "replace"))


class StreamPipeline:
    """Feed each upstream read; get back what to write to the client for it."""

    __slots__ = ("translator", "meter", "_parser", "fast_events")

    def __init__(self, translator: Any, upstream_dialect: str) -> None:
        self.translator: StreamTranslator = translator
        self.meter = OutputMeter(upstream_dialect)
        self._parser = SSEParser()
        self.fast_events = 0  # events framed by the fast path (tests check it is taken)

    def feed(self, chunk: bytes) -> list[bytes]:
        parser = self._parser
        if chunk.find(b"\n\n") == len(chunk) - 2 > 0 and parser.idle and chunk.find(b"\r") < 0:
            # One whole event, a live stream's usual read: straight to the translator (the
            # general path below costs ~0.8 k more instructions an event).
            part = chunk[:-2]
            framed = self.translator.fast_event(part, self.meter)
            if framed is None:
                event = simple_event(part)
                return self._slow(parser.feed(chunk) if event is None else [event])
            self.fast_events += 1
            return [framed] if framed else []
        # ``find``, not ``in``, on the hot paths: a bytes ``in`` first tries its operand as an
        # integer, raising and clearing a TypeError in C (~1.9 k instructions a test).
        if chunk.find(b"\r") >= 0:
            return self._slow(parser.feed(chunk))  # CRLF framing: the parser knows it
        out: list[bytes] = []
        if not parser.idle:
            # The read ends an event an earlier read began: the parser finishes it.
            cut = chunk.find(b"\n\n")
            if cut < 0:
                return self._slow(parser.feed(chunk))
            out = self._slow(parser.feed(chunk[: cut + 2]))
            chunk = chunk[cut + 2 :]
        parts = chunk.split(b"\n\n")
        tail = parts.pop()  # b"" when the read ends on an event boundary
        fast = self.translator.fast_event
        meter = self.meter
        at, count = 0, len(parts)
        # A run of deltas is framed in one call (`plain_run`); one event alone is cheaper
        # through ``fast_event``, which costs fewer calls.
        run = self.translator.fast_run if count > 1 else None
        while at < count:
            if run is not None:
                taken = run(parts, at, out, meter)
                if taken > at:
                    self.fast_events += taken - at
                    at = taken
                    continue
            part = parts[at]
            at += 1
            if not part:
                continue  # an extra blank line ends nothing
            framed = fast(part, meter)
            if framed is None:
                event = simple_event(part)
                out += self._slow(parser.feed(part + b"\n\n") if event is None else [event])
            else:
                self.fast_events += 1
                if framed:
                    out.append(framed)
        if tail:
            out += self._slow(parser.feed(tail))
        return out

    def finish(self) -> list[bytes]:
        """Upstream EOF: a last event without its blank line, then the translator's ending."""
        out = self._slow(self._parser.finish())
        return out + self.translator.finish()

    def _slow(self, events: list[SSEEvent]) -> list[bytes]:
        out: list[bytes] = []
        translator = self.translator
        for event in events:
            self.meter.feed(event)
            out += translator.feed(event)
        return out
