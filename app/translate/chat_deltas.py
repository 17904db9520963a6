"""Two quirks of chat-completion stream chunks that every stream translator reading an
OpenAI-compatible backend (`anthropic_to_openai_stream`, `responses_sse`/`responses_stream`)
undoes the same way: an emoji cut between two events, and tool arguments sent as snapshots.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import orjson

from app.translate.json_repair import is_json_prefix

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


def is_object(text: str) -> bool:
    """Whether ``text`` is one JSON object."""
    try:
        return isinstance(orjson.loads(text), dict)
    except orjson.JSONDecodeError:
        return False


def _snapshot_added(reading: str, fragment: str) -> str:
    """``reading`` (arguments read as snapshots) after ``fragment``."""
    if fragment.startswith(reading):
        return fragment
    return reading if reading.startswith(fragment) else reading + fragment


class ToolArguments:
    """One tool call's arguments as the backend streams them: deltas, or snapshots.

    Some gateways resend all the arguments so far in every fragment (cumulative snapshots,
    PROTOCOL.md §5.5), but a genuine delta can also start with everything received:
    ``{"q":`` then ``{"q":1}}``. For a fragment F that starts with all the text R received
    (only then, so plain deltas never pay for it), the JSON grammar decides
    (`is_json_prefix`):

    * R + F can be no JSON text (R is a whole value, F repeats an opening ``{`` or quote, or
      R is no JSON at all, as in a fence): F is a snapshot, and the call is in snapshot mode
      from then on (only a snapshot's new end is new; an unchanged one adds nothing);
    * R + F can be JSON and F alone cannot: F is a genuine delta;
    * both can (R ends where a value may start: ``{"a": `` then ``{"a": 1}``): only later
      fragments tell, so the call is *undecided* from here; both readings are kept, and
      `settled` picks one when the call closes.

    A blank R is trimmed without deciding anything: both readings are then the same JSON.
    """

    __slots__ = ("_parts", "size", "_snapshots", "_snapshot")

    def __init__(self) -> None:
        self._parts: list[str] = []  # the fragments as deltas (their new ends for snapshots)
        self.size = 0  # len(self.text), without joining the parts
        self._snapshots = False  # the backend sends cumulative snapshots
        self._snapshot: str | None = None  # the arguments read as snapshots, while undecided

    @property
    def text(self) -> str:
        """The arguments read as deltas (snapshots trimmed to their new ends)."""
        parts = self._parts
        if len(parts) > 1:
            self._parts = parts = ["".join(parts)]
        return parts[0] if parts else ""

    @property
    def undecided(self) -> bool:
        """Both readings are still JSON: the call's text is known only at its close."""
        return self._snapshot is not None

    def add(self, fragment: str) -> str:
        """What is new in ``fragment``: the fragment, or a snapshot's new end (maybe
        nothing). While the call is undecided, the fragment as a delta, the snapshot
        reading being kept aside."""
        if self._snapshot is not None:
            self._snapshot = _snapshot_added(self._snapshot, fragment)
        elif self.size and len(fragment) >= self.size and fragment.startswith(self.text):
            fragment = self._decided(fragment)
        elif self._snapshots and self.text.startswith(fragment):
            fragment = ""
        if fragment:
            self._parts.append(fragment)
            self.size += len(fragment)
        return fragment

    def _decided(self, fragment: str) -> str:
        received = self.text
        blank = received.isspace()  # then trimming changes nothing but blanks
        if self._snapshots or blank or not is_json_prefix(received + fragment):
            self._snapshots = self._snapshots or not blank
            return fragment[len(received) :]
        if is_json_prefix(fragment):
            self._snapshot = fragment
        return fragment

    def settled(self, whole: Callable[[str], bool] = is_object) -> str:
        """The arguments at the call's close: as deltas, unless undecided; then the first
        reading that is ``whole``, else the first that can still be JSON, the deltas'
        first."""
        text = self.text
        if self._snapshot is None:
            return text
        readings = (text, self._snapshot)
        return next(
            (r for r in readings if whole(r)),
            next((r for r in readings if is_json_prefix(r)), text),
        )
