"""Tool-call arguments from a conversation's history, made into a JSON object.

An OpenAI client sends back every tool call of the conversation as a JSON *string*; an
Anthropic backend wants each as an object (PROTOCOL.md §6.4: "attempt repair, else
``{}``"). A model's arguments can be cut off (``max_tokens`` hit mid-call) or wrapped in a
Markdown fence; refusing them would fail every later turn of that conversation. This is
history the model reads, not a call anyone runs, so closing a cut-off object is safe here
(unlike a live stream, where the gateway never completes a call's arguments itself).
`is_json_prefix` tells whether streamed text can still become JSON.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_FENCE = "```"
_CLOSER = {"{": "}", "[": "]"}
_CUTS = 3  # members dropped from the end, at most, before giving up

# A string's characters after its opening quote: no raw control character (RFC 8259 §7).
_STRING_BODY = re.compile(r'(?:[^"\\\x00-\x1f]+|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*')
_ESCAPE_CUT = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?\Z")
_NUMBER_CHARS = re.compile(r"[-+.eE0-9]+")
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_CUT = re.compile(r"-?(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?)?")
_LITERALS = {"t": "true", "f": "false", "n": "null"}
_BLANK = " \t\n\r"
# What `is_json_prefix` expects next.
_VALUE, _FIRST_VALUE, _KEY, _FIRST_KEY, _COLON, _NEXT, _END = range(7)


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


def is_json_prefix(text: str) -> bool:
    """Whether ``text`` can still become one JSON value: it is one, or some text appended to
    it makes one (blank text can). Scans all of ``text``: for the rare checks of a stream, not
    for every fragment."""
    closers: list[str] = []
    expect = _VALUE
    at, size = 0, len(text)
    while at < size:
        char = text[at]
        if char in _BLANK:
            at += 1
        elif expect == _VALUE or expect == _FIRST_VALUE:
            if char == "]" and expect == _FIRST_VALUE:
                closers.pop()
                at += 1
            elif char in "{[":
                closers.append("}" if char == "{" else "]")
                expect = _FIRST_KEY if char == "{" else _FIRST_VALUE
                at += 1
                continue
            elif char == '"':
                at = _after_string(text, at)
                if at < 0 or at > size:
                    return at > size
            elif char in _LITERALS:
                word = _LITERALS[char]
                piece = text[at : at + len(word)]
                if not word.startswith(piece):
                    return False
                at += len(word)
            else:
                number = _NUMBER_CHARS.match(text, at)
                if number is None:
                    return False
                if number.end() == size:
                    return _NUMBER_CUT.fullmatch(number.group()) is not None
                if _NUMBER.fullmatch(number.group()) is None:
                    return False
                at = number.end()
            expect = _NEXT if closers else _END
        elif expect == _KEY or expect == _FIRST_KEY:
            if char == "}" and expect == _FIRST_KEY:
                closers.pop()
                expect = _NEXT if closers else _END
                at += 1
            elif char == '"':
                at = _after_string(text, at)
                if at < 0 or at > size:
                    return at > size
                expect = _COLON
            else:
                return False
        elif expect == _COLON:
            if char != ":":
                return False
            expect = _VALUE
            at += 1
        elif expect == _NEXT:
            if char == ",":
                expect = _KEY if closers[-1] == "}" else _VALUE
            elif char == closers[-1]:
                closers.pop()
                expect = _NEXT if closers else _END
            else:
                return False
            at += 1
        else:
            return False  # anything but blanks after a whole value
    return True


def _after_string(text: str, start: int) -> int:
    """Where the string opening at ``text[start]`` ends: the index after its closing quote,
    ``len(text) + 1`` when ``text`` ends inside it, -1 when it is no JSON string."""
    end = _STRING_BODY.match(text, start + 1)
    assert end is not None  # the pattern matches the empty string
    at = end.end()
    if at == len(text) or _ESCAPE_CUT.match(text, at):
        return len(text) + 1
    return at + 1 if text[at] == '"' else -1
