"""The A→O stream state machine: OpenAI ``chat.completion.chunk`` events in, Anthropic SSE out.

Follows PROTOCOL.md §7.1: one block open at a time with contiguous indices, thinking → text →
tool order inside a chunk, tool blocks only once their name is known, and ``message_delta``
held after ``finish_reason`` until usage, ``[DONE]`` or EOF. Thinking blocks are unsigned:
they start with ``"signature": ""`` and get no ``signature_delta`` (there is nothing to sign;
the SDK and Claude Code keep the ``""`` from the start event).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.dialects.anthropic import error_event
from app.dialects.json_values import is_int
from app.dialects.sse import ANTHROPIC_PING, SSEEvent, anthropic_event
from app.dialects.usage import OutputMeter, TextCount, Usage, from_openai, to_anthropic
from app.errors import GatewayError, UpstreamError
from app.translate.anthropic_to_openai import (
    RequestContext,
    arguments_object,
    final_usage,
    matched_stop,
    parse_arguments,
    reasoning_text,
    stop_reason,
)
from app.translate.anthropic_to_openai_errors import error_from_payload
from app.translate.chat_deltas import ToolArguments, is_object, split_pair
from app.translate.ids import new_message_id, new_tool_id, sanitize_tool_id
from app.translate.stream_pipeline import TextSlot, plain_run
from app.translate.think_tags import PLAIN, UNDECIDED, Pieces, ThinkTags

log = logging.getLogger(__name__)

CUT_STREAM_MESSAGE = "upstream stream ended before completion"
_REASONING_KEYS = frozenset(("reasoning_content", "reasoning"))
_BLOCK_OF = {"content": "text", "reasoning_content": "thinking", "reasoning": "thinking"}
_DELTA_HEADS = {
    kind: b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
    b'"delta":{"type":"' + kind.encode() + b'_delta","' + kind.encode() + b'":'
    for kind in ("text", "thinking")
}


def _locator(name: str) -> Callable[[Any], Any]:
    return lambda chunk: chunk["choices"][0]["delta"][name]


OPENAI_TEXT_AT = {name: _locator(name) for name in _BLOCK_OF}


def openai_text_delta(part: bytes) -> tuple[str, str] | None:
    """``(field, text)`` when ``part`` is a ``data:`` chunk with one choice whose delta holds
    one text field (content or reasoning) and nothing else: no finish, usage or error."""
    if not part.startswith(b"data: {") or b'"finish_reason":"' in part:
        return None  # (unescaped quotes: JSON's own, never inside a string)
    try:
        chunk = orjson.loads(part[6:])
    except orjson.JSONDecodeError:
        return None
    choices = chunk.get("choices")
    if (
        type(choices) is not list
        or len(choices) != 1
        or chunk.get("usage") is not None
        or "error" in chunk
        or "x_groq" in chunk
    ):
        return None
    choice = choices[0]
    if type(choice) is not dict or choice.get("finish_reason"):
        return None
    delta = choice.get("delta")
    if type(delta) is not dict:
        return None
    found: tuple[str, str] | None = None
    for name, value in delta.items():
        if value is None or name == "role":
            continue
        if found is not None or name not in _BLOCK_OF or type(value) is not str:
            return None  # two kinds of content in one chunk (`feed` orders them), or a call
        found = (name, value)
    return found


def _holds_object(text: str) -> bool:
    return arguments_object(text) is not None


@dataclass(slots=True)
class _Tool:
    """One backend tool call: buffered until its name is known, then one tool_use block.

    Its arguments go out as they come once their first non-blank character is ``{``. Any
    other start (a JSON string holding the object, as double-encoding backends send it, a
    Markdown fence, text before the object, an array) is a shape `parse_arguments` repairs
    or replaces in the whole answer, and a stream cannot take deltas back: such a call is
    *held*, and its block gets one ``input_json_delta`` with what `parse_arguments` makes of
    all of it when it closes. So only the first non-blank fragment costs a check.

    Some gateways resend all the arguments so far in every fragment (cumulative snapshots,
    PROTOCOL.md §5.5); `ToolArguments` tells them from deltas by the JSON grammar, as the
    Responses stream does. A call it leaves undecided between the two readings is held from
    there, and at its close the first reading that holds an object (as sent for ``{``, as
    `parse_arguments` repairs it otherwise), else the first that can still be JSON, wins,
    the deltas' first.
    """

    raw_id: str | None
    name: str | None = None
    buffered: str = ""  # fragments not emitted yet (the call has no block yet)
    # Every fragment, to tell when the arguments form a whole object (snapshots trimmed).
    arguments: ToolArguments = field(default_factory=ToolArguments)
    streamed: list[str] = field(default_factory=list)  # the input_json_delta fragments sent
    started: bool = False
    waiting: bool = False
    got_args: bool = False
    held: bool = True  # until the first non-blank character shows an object
    shape: str | None = None  # "object" (starts with ``{``) or "repair"; None while blank
    sent: int = 0  # characters of the arguments accounted for before the call was held

    def complete(self) -> bool:
        return is_object(self.arguments.text)


@dataclass(slots=True)
class _Open:
    kind: str  # "thinking" | "text" | "tool"
    index: int
    tool: _Tool | None = None


@dataclass(slots=True)
class _Chunk:
    reasoning: str = ""
    texts: list[tuple[str, str]] = field(default_factory=list)  # (content | refusal, text)
    calls: list[dict[str, Any]] = field(default_factory=list)


class StreamTranslator:
    """Feed one upstream SSE event at a time; get back framed Anthropic events.

    Invents: the ``msg_…`` id, ``toolu_…`` ids for calls without one, ``"{}"`` arguments for
    tool blocks that received none, one empty text block for a stream with no content, a
    blank line between content and refusal text (`_joined`), and estimated usage when the
    backend sent none (counted as the whole answer counts it). Splits reasoning written
    inline as ``<think>…</think>`` at the start of the content into a thinking block.
    Replaces arguments that do not start with ``{`` by what `parse_arguments` makes of them,
    sent whole at the call's close (`_Tool`). Drops: reasoning unless ``ctx.thinking``,
    whitespace-only text that never turns into visible text (a blank content before a
    refusal included), blanks before a call's arguments, the repeated part of cumulative
    argument snapshots, argument fragments for a call whose block is already closed,
    anything after ``finish_reason`` except usage.
    """

    def __init__(self, ctx: RequestContext, *, message_id: str | None = None) -> None:
        self.ctx = ctx
        self.message_id = message_id or new_message_id()
        self.started = False
        self.done = False
        self.error: GatewayError | None = None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self._upstream: Usage | None = None
        self._next_index = 0
        self._open: _Open | None = None
        self._tools: dict[int, _Tool] = {}
        self._waiting: list[_Tool] = []
        self._last_oa_index: int | None = None
        self._had_tool_block = False
        self._finish: str | None = None
        self._matched: str | None = None
        self._pending_ws = ""
        self._content_shown = False  # the content had non-blank text
        self._refusal_blank: str | None = ""  # a refusal's blank start; None once it shows
        self._content_blank: str | None = None  # the same for content after a refusal
        # Text, thinking, tool names and arguments as the whole answer counts them, for a
        # usage estimate.
        self._produced = TextCount()
        self._head_for: _Open | None = None  # the block `_head` frames deltas for
        self._head = b""
        self._slots = {"text": TextSlot(), "thinking": TextSlot()}
        self._tags = ThinkTags()  # reasoning written inline as <think>…</think>
        self._high: dict[str, str] = {}  # a text field's trailing high surrogate, held

    @property
    def usage(self) -> Usage:
        """The backend's last usage, or an estimate flagged ``estimated=True``."""
        return final_usage(self._upstream, self.ctx.input_estimate, self._produced)

    # -- public API -------------------------------------------------------------------------

    def feed(self, event: SSEEvent) -> list[bytes]:
        if self.done:
            return []
        data = event.data.strip()
        if not data:
            return []
        if data == "[DONE]":
            return self._finalize()
        try:
            # The event's shared parse, unless stripping changed what there is to parse.
            chunk = event.json() if len(data) == len(event.data) else orjson.loads(data)
        except orjson.JSONDecodeError:
            chunk = self._split_pair(data)
            if chunk is None:
                if event.event == "error":
                    return self._fail(UpstreamError(data[:2000]))
                return self._fail(
                    UpstreamError(f"upstream sent an unparsable stream event: {data:.200}")
                )
        if not isinstance(chunk, dict):
            return self._fail(
                UpstreamError(f"upstream sent an unexpected stream event: {data:.200}")
            )
        if chunk.get("error"):
            return self._fail(error_from_payload(chunk["error"]))
        if event.event == "error":
            # Some servers name the event instead of wrapping the payload in {"error": …}.
            return self._fail(error_from_payload(chunk))
        got_usage = self._record_usage(chunk)
        out = [] if self.started else self._start()
        choices = chunk.get("choices")
        if self._finish is None and isinstance(choices, list) and choices:
            choice = choices[0]
            if isinstance(choice, dict):
                out += self._choice(choice)
        if self._finish is not None and got_usage:
            out += self._finalize()
        return out

    def _off_fast_path(self) -> bool:
        """Whether the next event needs the full path: the stream is not under way, is
        finishing, waits for a decision, or holds content that follows a refusal."""
        return (
            self._finish is not None
            or bool(self._waiting)
            or self.done
            or not self.started
            or self._content_blank is not None
        )

    def fast_event(self, part: bytes, meter: OutputMeter) -> bytes | None:
        """One event's bytes (``part``, without its blank line) framed for the client, when it
        is the bulk of every stream: a ``data:`` chunk whose only choice continues the open
        text or thinking block. None for anything else, which then goes through `feed`.

        Gives exactly what `feed` would (a test compares them over every stream fixture) at
        a fraction of the cost: no SSEEvent, no dict per level, usually no parse of more than
        the text (`TextSlot`), the frame's constant head made once per block (issue 7: this
        translation cost ~14 µs an event, most of a 200-chunk stream's cost).
        """
        if self._off_fast_path():
            return None
        block = self._open
        slot = self._slots[block.kind] if block is not None and block.tool is None else None
        text = slot.text(part) if slot is not None else None
        if text is None:
            found = openai_text_delta(part)
            if found is None:
                return None
            name, text = found
            if name in _REASONING_KEYS and not self.ctx.thinking:
                meter.add(text)
                self._produced.add(text)
                return b""
            if _BLOCK_OF[name] == "text" and not self._tags.settles_plain(text):
                return None  # may open with <think>: `feed` splits it
            if block is None and _BLOCK_OF[name] == "text" and not self._pending_ws:
                # A stream's first text opens its block here, as `_text` would (nothing
                # open, nothing waiting, no whitespace held back), and teaches the slot its
                # shape: through `feed`, then a second event to learn, the first two deltas
                # cost ~26 µs where the rest cost ~3.
                if not text.strip():
                    return None  # held back or dropped as whitespace: `_text` decides
                self._content_shown = True
                opening = self._begin("text", {"type": "text", "text": ""})[0]
                self._slots["text"].learn(part, 6, text, OPENAI_TEXT_AT[name])
                assert self._open is not None
                return opening + self._framed(self._open, text, meter)
            if slot is None or block is None or _BLOCK_OF[name] != block.kind:
                return None
            slot.learn(part, 6, text, OPENAI_TEXT_AT[name])
        assert block is not None
        if not text:
            return b""
        return self._framed(block, text, meter)

    def _framed(self, block: _Open, text: str, meter: OutputMeter) -> bytes:
        """``text`` counted, and framed as a delta of the open ``block``."""
        if text.isascii():  # the usual case, counted without two more calls
            meter.chars += len(text)
            self._produced.chars += len(text)
        else:
            meter.add(text)
            self._produced.add(text)
        if self._head_for is not block:
            self._head_for = block
            self._head = _DELTA_HEADS[block.kind] % block.index
        return self._head + orjson.dumps(text) + b"}}\n\n"

    def fast_run(self, parts: list[bytes], at: int, out: list[bytes], meter: OutputMeter) -> int:
        """The text or thinking deltas at ``parts[at:]`` that continue the open block in its
        learned shape, framed onto ``out`` (`plain_run`); returns where they stop."""
        if self._off_fast_path():
            return at
        block = self._open
        if block is None or block.tool is not None:
            return at
        ends = self._slots[block.kind].ends
        if ends is None:
            return at
        if self._head_for is not block:
            self._head_for = block
            self._head = _DELTA_HEADS[block.kind] % block.index
        end, chars, extra = plain_run(parts, at, ends, (self._head, b"}}\n\n"), out)
        meter.add_counts(chars, extra)
        self._produced.add_counts(chars, extra)
        return end

    def finish(self) -> list[bytes]:
        """Upstream EOF: finalise after a finish_reason, else report the cut stream."""
        if self.done:
            return []
        if self._finish is not None:
            return self._finalize()
        out = self._close()
        return out + self._fail(UpstreamError(CUT_STREAM_MESSAGE))

    def _split_pair(self, data: str) -> Any:
        """``data`` parsed when orjson refused it only for half a surrogate pair, else None
        (`chat_deltas.split_pair`, holding a trailing high half in ``_high``)."""
        return split_pair(data, self._high)

    def ping(self) -> list[bytes]:
        if self.done:
            return []
        out = [] if self.started else self._start()
        out.append(ANTHROPIC_PING)
        return out

    # -- chunks ------------------------------------------------------------------------------

    def _record_usage(self, chunk: dict[str, Any]) -> bool:
        raw = chunk.get("usage")
        if not isinstance(raw, dict):
            groq = chunk.get("x_groq")
            raw = groq.get("usage") if isinstance(groq, dict) else None
        usage = from_openai(raw)
        # Some servers send an all-zero usage in every chunk; it must not replace a real one.
        if usage is None or (usage.prompt_tokens == 0 and usage.output_tokens == 0):
            return False
        self._upstream = usage
        return True

    def _split(self, choice: dict[str, Any]) -> _Chunk:
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            return _Chunk()
        parts = _Chunk(reasoning=reasoning_text(delta))
        for key in ("content", "refusal"):
            value = delta.get(key)
            if isinstance(value, str) and value:
                parts.texts.append((key, value))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            parts.calls = [c for c in calls if isinstance(c, dict)]
        legacy = delta.get("function_call")
        if isinstance(legacy, dict):
            parts.calls.append({"index": 0, "function": legacy})
        return parts

    def _choice(self, choice: dict[str, Any]) -> list[bytes]:
        parts = self._split(choice)
        out: list[bytes] = []
        if parts.reasoning:
            self._produced.add(parts.reasoning)
            if self.ctx.thinking:
                out += self._thinking(parts.reasoning)
        for key, piece in parts.texts:
            text = self._joined(key, piece)
            if not text:
                continue
            if self._tags.state == PLAIN:
                out += self._text(text)
            else:
                out += self._pieces(self._tags.feed(text))
        for call in parts.calls:
            out += self._tool_fragment(call)
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            self._finish = finish
            self._matched = matched_stop(choice, self.ctx.stop_sequences)
            if self._tags.state != PLAIN:
                out += self._pieces(self._tags.finish())
            out += self._flush_waiting()
            out += self._close()
        return out

    def _joined(self, key: str, text: str) -> str:
        """A content or refusal delta's ``text`` as the whole answer joins the two fields
        (`_message_text`): one blank line between non-blank content and the first non-blank
        refusal text, whichever field comes first. The second field's blank start is held
        until it shows text (dropped if it never does), and a blank content before a
        refusal is dropped."""
        if key == "content":
            if self._content_blank is None:
                self._content_shown = self._content_shown or not text.isspace()
                return text
            held = self._content_blank + text
            if held.isspace():
                self._content_blank = held
                return ""
            self._content_blank = None
            self._content_shown = True
            return "\n\n" + held
        if self._refusal_blank is None:
            return text
        held = self._refusal_blank + text
        if held.isspace():
            self._refusal_blank = held
            return ""
        self._refusal_blank = None
        if self._content_shown:
            return "\n\n" + held
        self._pending_ws = ""  # the blank content, which the whole answer drops
        if self._tags.state == UNDECIDED:
            self._tags.finish()  # held only blanks of the content
        self._content_blank = ""  # content from here on comes after the refusal
        return held

    def _pieces(self, pieces: Pieces) -> list[bytes]:
        """Content split at an inline ``<think>`` tag: its thinking (when the client asked
        for thinking) and its text."""
        out: list[bytes] = []
        for kind, piece in pieces:
            if kind == "text":
                out += self._text(piece)
            else:
                self._produced.add(piece)  # as the whole answer counts it, shown or not
                if self.ctx.thinking:
                    out += self._thinking(piece)
        return out

    def _thinking(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        if self._open is None or self._open.kind != "thinking":
            out += self._flush_waiting()
            out += self._close()
            out += self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        out.append(self._delta({"type": "thinking_delta", "thinking": text}))
        return out

    def _text(self, text: str) -> list[bytes]:
        if self._open is not None and self._open.kind == "text":
            self._produced.add(text)
            return [self._delta({"type": "text_delta", "text": text})]
        pending = self._pending_ws + text
        if not pending.strip():
            # Backends send "" or "\n\n" ahead of tool calls; a block of nothing but whitespace
            # is rejected by Anthropic when Claude Code replays it (anthropics/claude-code#88536).
            self._pending_ws = pending
            return []
        out = self._flush_waiting()
        out += self._close()
        out += self._begin("text", {"type": "text", "text": ""})
        self._produced.add(pending)
        out.append(self._delta({"type": "text_delta", "text": pending}))
        return out

    def _tool_fragment(self, call: dict[str, Any]) -> list[bytes]:
        raw_index = call.get("index")
        if is_int(raw_index):
            oa_index = raw_index
        else:
            oa_index = self._last_oa_index if self._last_oa_index is not None else 0
        self._last_oa_index = oa_index
        raw_id = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else None
        function = call.get("function")
        if not isinstance(function, dict):
            function = {}
        name = function.get("name") if isinstance(function.get("name"), str) else None
        args = function.get("arguments")
        if isinstance(args, dict | list):
            args = orjson.dumps(args).decode()
        elif not isinstance(args, str):
            args = ""

        tool = self._tools.get(oa_index)
        new_id = raw_id is not None and tool is not None and tool.raw_id not in (None, raw_id)
        # Without ids, a different name on a started call can only be the next call.
        new_name = (
            tool is not None
            and raw_id is None
            and tool.started
            and bool(name)
            and name != tool.name
        )
        if tool is None or new_id or new_name:
            if tool is not None and not tool.started:
                log.warning(
                    "dropping tool call fragments that never got a name: %.200s",
                    tool.arguments.text,
                )
            tool = _Tool(raw_id)
            self._tools[oa_index] = tool
        elif raw_id is not None and tool.raw_id is None and not tool.started:
            tool.raw_id = raw_id
        if name and tool.name is None:
            tool.name = name

        new = self._new_arguments(tool, args)
        args = self._released(tool, new) if tool.held else new
        out: list[bytes] = []
        if not tool.started:
            tool.buffered += args
            if tool.name is None or tool.waiting:
                return out
            open_tool = self._open.tool if self._open is not None else None
            if open_tool is not None and not open_tool.complete():
                # Another call is still streaming its arguments: some backends interleave
                # fragments of parallel calls. Hold this one until that object is whole, so
                # neither loses fragments (Claude Code rejects deltas after a block's stop).
                tool.waiting = True
                self._waiting.append(tool)
                return out
            out += self._close()
            return out + self._start_tool(tool)
        if self._open is None or self._open.tool is not tool:
            if new:
                # A call whose block is already closed: Claude Code parses a block's input at
                # content_block_stop and rejects later deltas (PROTOCOL.md §7.1).
                log.warning("dropping a late argument fragment for a closed tool call: %.200s", new)
            return out
        if args:
            out.append(self._args_delta(tool, args))
        if self._waiting and tool.complete():
            out += self._flush_waiting(until_incomplete=True)
        return out

    @staticmethod
    def _new_arguments(tool: _Tool, args: str) -> str:
        """What is new in the fragment ``args`` (`ToolArguments.add`); a fragment that
        leaves the call undecided between deltas and snapshots holds it to its close."""
        arguments = tool.arguments
        if arguments.undecided:
            return arguments.add(args)
        before = arguments.size
        args = arguments.add(args)
        if arguments.undecided:
            if not tool.held:
                tool.sent = before - len(tool.buffered)
                tool.held = True
            tool.buffered = ""
        return args

    @staticmethod
    def _released(tool: _Tool, args: str) -> str:
        """What of a held call's new text ``args`` may go out: nothing until its first
        non-blank character shows a plain object (then the text from there on), nothing
        for a call held to its close."""
        if tool.shape is not None:
            return ""
        start = args.lstrip()
        if not start:
            return ""  # leading blanks carry nothing, and all blank is no arguments: ``{}``
        if start[0] == "{":
            tool.shape = "object"
            tool.held = False
            return start
        tool.shape = "repair"
        return ""

    @staticmethod
    def _held_arguments(tool: _Tool) -> str:
        """The rest of a held call's arguments, for its block's close: the deltas' or the
        snapshots' reading, and for a call of another shape than an object what
        `parse_arguments` makes of it, as the whole answer has it."""
        text = tool.arguments.settled(is_object if tool.shape == "object" else _holds_object)
        if tool.shape == "repair":
            return orjson.dumps(parse_arguments(text)).decode()
        return text[tool.sent :] if tool.shape == "object" else ""

    def _args_delta(self, tool: _Tool, args: str) -> bytes:
        tool.got_args = True
        tool.streamed.append(args)
        return self._delta({"type": "input_json_delta", "partial_json": args})

    def _start_tool(self, tool: _Tool) -> list[bytes]:
        out = self._begin_tool(tool)
        args, tool.buffered = tool.buffered, ""
        if args:
            out.append(self._args_delta(tool, args))
        return out

    def _flush_waiting(self, *, until_incomplete: bool = False) -> list[bytes]:
        """Start the held calls in order; with ``until_incomplete``, stop at one still
        receiving its arguments."""
        out: list[bytes] = []
        while self._waiting:
            tool = self._waiting.pop(0)
            tool.waiting = False
            out += self._close()
            out += self._start_tool(tool)
            if until_incomplete and not tool.complete():
                break
        return out

    # -- blocks ------------------------------------------------------------------------------

    def _delta(self, delta: dict[str, Any]) -> bytes:
        assert self._open is not None
        return anthropic_event(
            "content_block_delta",
            {"type": "content_block_delta", "index": self._open.index, "delta": delta},
        )

    def _begin(self, kind: str, block: dict[str, Any], tool: _Tool | None = None) -> list[bytes]:
        index = self._next_index
        self._next_index += 1
        self._open = _Open(kind, index, tool)
        self._pending_ws = ""
        return [
            anthropic_event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": block},
            )
        ]

    def _begin_tool(self, tool: _Tool) -> list[bytes]:
        assert tool.name is not None
        tool.started = True
        self._had_tool_block = True
        # The call's name is output too: a call without arguments is not 0 tokens (§9 item 3).
        self._produced.add(tool.name)
        block = {
            "type": "tool_use",
            "id": sanitize_tool_id(tool.raw_id) if tool.raw_id else new_tool_id(),
            "name": self.ctx.names.to_client(tool.name),
            "input": {},
        }
        return self._begin("tool", block, tool)

    def _close(self) -> list[bytes]:
        if self._open is None:
            return []
        out: list[bytes] = []
        tool = self._open.tool
        if tool is not None and tool.held:
            args = self._held_arguments(tool)
            if args:
                out.append(self._args_delta(tool, args))
        if tool is not None:
            if not tool.got_args:
                # Claude Code JSON-parses the concatenated fragments at content_block_stop; an
                # empty string is not an object.
                out.append(self._delta({"type": "input_json_delta", "partial_json": "{}"}))
            # Counted as the whole answer counts json.dumps(input): the object the client
            # makes of the fragments, without the backend's blanks.
            given = arguments_object("".join(tool.streamed))
            try:
                counted = orjson.dumps(given if given is not None else {}).decode()
            except TypeError:  # nested past the 254 levels orjson writes: relayed, not counted
                counted = "{}"
            self._produced.add(counted)
        out.append(
            anthropic_event(
                "content_block_stop", {"type": "content_block_stop", "index": self._open.index}
            )
        )
        self._open = None
        return out

    # -- message -----------------------------------------------------------------------------

    def _start(self) -> list[bytes]:
        self.started = True
        upstream = self._upstream
        if upstream is not None and upstream.prompt_tokens > 0:
            usage = Usage(
                input_tokens=upstream.input_tokens,
                cache_read_tokens=upstream.cache_read_tokens,
                cache_write_tokens=upstream.cache_write_tokens,
            )
        else:
            # A 0 here breaks Claude Code's context meter (router-for-me/CLIProxyAPI#1700).
            usage = Usage(input_tokens=self.ctx.input_estimate)
        message: dict[str, Any] = {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.ctx.client_model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": to_anthropic(usage),
        }
        return [anthropic_event("message_start", {"type": "message_start", "message": message})]

    def _finalize(self) -> list[bytes]:
        out = [] if self.started else self._start()
        if self._tags.state != PLAIN:  # [DONE] without a finish_reason
            out += self._pieces(self._tags.finish())
        out += self._close()
        if self._next_index == 0:
            # A stream without any block makes Claude Code re-issue the request without
            # streaming (PROTOCOL.md §7.1); this empty block is dropped again on ingress.
            out += self._begin("text", {"type": "text", "text": ""})
            out += self._close()
        reason, sequence = stop_reason(self._finish, self._had_tool_block, self._matched)
        self.stop_reason = reason
        self.stop_sequence = sequence
        out.append(
            anthropic_event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": to_anthropic(self.usage),
                },
            )
        )
        out.append(anthropic_event("message_stop", {"type": "message_stop"}))
        self.done = True
        return out

    def _fail(self, err: GatewayError) -> list[bytes]:
        self.error = err
        self.done = True
        return [anthropic_event("error", error_event(err))]
