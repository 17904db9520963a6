"""Anthropic Messages SSE events -> OpenAI ``chat.completion.chunk`` stream (PROTOCOL.md §7.2).

`StreamTranslator` is fed one upstream event at a time and returns the framed chunks to
write, ending with ``data: [DONE]`` or an in-band ``data: {"error": ...}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from app.dialects.openai import error_object
from app.dialects.sse import OPENAI_DONE, OPENAI_KEEPALIVE, SSEEvent, openai_chunk
from app.dialects.usage import OutputMeter, Usage, from_anthropic, to_openai
from app.errors import (
    BillingError,
    ForbiddenError,
    GatewayError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthorizedError,
    UpstreamError,
    UpstreamTimeoutError,
    nested_answer,
    nested_too_deeply,
)
from app.translate.ids import new_tool_id
from app.translate.openai_to_anthropic import (
    FinishReason,
    RequestContext,
    completion_id_for,
    finish_reason,
    json_text,
)
from app.translate.stream_pipeline import TextSlot, plain_run

log = logging.getLogger(__name__)

# Anthropic error type of an ``event: error`` -> the error the OpenAI client sees.
_STREAM_ERRORS: dict[str, type[GatewayError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": UnauthorizedError,
    "billing_error": BillingError,
    "permission_error": ForbiddenError,
    "not_found_error": NotFoundError,
    "request_too_large": PayloadTooLargeError,
    "rate_limit_error": RateLimitedError,
    "api_error": UpstreamError,
    "timeout_error": UpstreamTimeoutError,
    "overloaded_error": OverloadedError,
}
_KNOWN_EVENTS = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "ping",
        "error",
    }
)
CUT_MESSAGE = "upstream stream ended before completion"
# Events that carry nothing for the client (`feed`), framed as Anthropic sends them.
_STOP_NAME = b"event: content_block_stop"
_SILENT_NAMES = frozenset({b"event: ping", _STOP_NAME})
_SILENT = tuple(name + b"\n" for name in _SILENT_NAMES)
_DELTA_EVENT = b"event: content_block_delta\ndata: {"
_BARE_DELTA = b'data: {"type":"content_block_delta"'
_HOLE = "\x00"  # stands for the text while a chunk's constant head and tail are cut out
_FIELDS = {"text_delta": "content", "thinking_delta": "reasoning_content"}
_TEXT_OF = {"text_delta": "text", "thinking_delta": "thinking"}


def _locator(key: str) -> Callable[[Any], Any]:
    return lambda event: event["delta"][key]


ANTHROPIC_TEXT_AT = {kind: _locator(key) for kind, key in _TEXT_OF.items()}


def anthropic_text_delta(part: bytes) -> tuple[str, str, int] | None:
    """``(delta type, text, where the JSON starts)`` when ``part`` is a text or thinking
    ``content_block_delta`` whose delta holds nothing else."""
    if part.startswith(_DELTA_EVENT):
        body_at = len(_DELTA_EVENT) - 1
    elif part.startswith(_BARE_DELTA):
        body_at = 6
    else:
        return None
    try:
        event = orjson.loads(part[body_at:])
    except orjson.JSONDecodeError:
        return None
    delta = event.get("delta")
    if type(delta) is not dict or len(delta) != 2:
        return None
    kind = delta.get("type")
    key = _TEXT_OF.get(kind) if type(kind) is str else None
    text = delta.get(key) if key is not None else None
    if type(text) is not str:
        return None
    return kind, text, body_at  # type: ignore[return-value]


BlockKind = Literal["text", "thinking", "tool", "json", "other"]
# `StreamTranslator._argless` value for the JSON tool's block: its input is the content.
_JSON_ANSWER = -1


@dataclass(slots=True)
class _Block:
    kind: BlockKind
    tool_index: int = -1


class StreamTranslator:
    """One Anthropic stream in, one OpenAI chunk stream out.

    Drops ``ping`` events, ``citations_delta`` and server-tool blocks; ``thinking_delta``
    becomes ``reasoning_content`` only when ``ctx.reasoning``, and then each thinking block
    (at its ``signature_delta``, or unsigned at its end) and each redacted one also comes
    whole as a LiteLLM-style ``thinking_blocks`` entry, with an ``index`` for the ``openai``
    SDK's accumulator, so a client can send it back on the next turn (the non-streamed
    answer's ``thinking_blocks``). Invents the role chunk, sent at ``message_start`` with
    ``content: ""`` (PROTOCOL.md §7.2; the client's first byte goes with the upstream's
    first event), ``logprobs: null``, ``usage: null`` on every chunk and the
    final usage chunk when ``ctx.include_usage``, and ``toolu_`` ids for tool blocks that
    arrive without one. A legacy functions client (``ctx.legacy_functions``) gets the first
    tool call as ``delta.function_call`` fragments and finish_reason ``function_call``;
    later calls are dropped, as in the whole answer.

    In JSON mode (``ctx.json_tool``) the content is the first JSON tool's input alone, as
    in the whole answer: its ``partial_json`` goes out as it comes (Anthropic's spacing, not
    the whole answer's compact re-serialisation: the same JSON), later JSON tools are
    dropped, and text is held back until the answer comes (then dropped) or the stream
    ends without one (then sent whole, before the finish chunk).
    """

    def __init__(
        self, ctx: RequestContext, *, completion_id: str | None = None, created: int | None = None
    ) -> None:
        self.ctx = ctx
        self._id = completion_id
        self._created = created if created is not None else int(time.time())
        self.usage = Usage()
        self.finish_reason: FinishReason | None = None
        self.error: GatewayError | None = None
        self.done = False
        self.started = False  # the role chunk was sent
        self._begun = False  # message_start came
        self._blocks: dict[int, _Block] = {}
        self._next_tool = 0
        self._delta_seen = False
        self._frames: dict[str, tuple[bytes, bytes]] = {}  # delta field -> (head, tail)
        self._slots = {"text_delta": TextSlot(), "thinking_delta": TextSlot()}
        self._thinking: list[str] = []  # the open thinking block's text, with ctx.reasoning
        self._thinking_blocks = 0  # thinking_blocks entries sent
        # Tool blocks that have sent no argument text yet (upstream index -> tool call
        # index, or _JSON_ANSWER): an empty input closes as "{}", the non-streamed
        # json.dumps({}) (§6.14).
        self._argless: dict[int, int] = {}
        self._unsigned: int | None = None  # the open thinking block, until its signature
        # JSON mode: the text held back while no JSON tool has answered (None once one has).
        self._held: list[str] | None = [] if ctx.json_tool is not None else None

    # -- framing ---------------------------------------------------------------------------

    def _chunk(self, delta: dict[str, Any], finish: FinishReason | None = None) -> bytes:
        if self._id is None:
            self._id = completion_id_for(None)
        data: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.ctx.client_model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if self.ctx.include_usage:
            data["usage"] = None
        return openai_chunk(data)

    def _frame(self, field_name: str) -> tuple[bytes, bytes] | None:
        """The bytes of ``self._chunk({field_name: text})`` before and after the text."""
        frame = self._frames.get(field_name)
        if frame is None:
            whole = self._chunk({field_name: _HOLE})
            head, hole, tail = whole.partition(orjson.dumps(_HOLE))
            if not hole or hole in tail:  # a model name holding the stand-in
                return None
            frame = self._frames[field_name] = (head, tail)
        return frame

    def _open(self, out: list[bytes], text: bool) -> None:
        """The role chunk onto ``out``, once: at ``message_start``, or before the first
        chunk of a stream that came without one (`_send`, `_fail`).

        OpenAI opens a text answer with ``"content": ""`` and one that starts with a tool
        call with ``"content": null`` (tests/fixtures/responses_answer/c08_one_tool_call);
        the ``openai`` SDK's accumulator keeps that null unless text follows, as the whole
        answer's content is null without text.
        """
        if not self.started:
            self.started = True
            out.append(self._chunk({"role": "assistant", "content": "" if text else None}))

    def _send(
        self, out: list[bytes], delta: dict[str, Any], finish: FinishReason | None = None
    ) -> None:
        """``delta``'s chunk onto ``out``, after the role chunk when it is the first."""
        if not self.started:
            self._open(out, "content" in delta)
        out.append(self._chunk(delta, finish))

    def _text(self, out: list[bytes], text: str) -> None:
        """Text as content, or in JSON mode held back (`_held`) or dropped, as the whole
        answer has it (`translate_response_parts`)."""
        if self._held is not None:
            self._held.append(text)
        elif self.ctx.json_tool is None:
            self._send(out, {"content": text})
        # else: text after the JSON tool's answer is no part of it

    def _fail(self, err: GatewayError) -> list[bytes]:
        self.error = err
        self.done = True
        out: list[bytes] = []
        if self._begun:
            # The answer had begun (message_start): the client sees a stream that began
            # and failed, its role chunk before the error, though nothing came in between.
            self._open(out, False)
        out.append(openai_chunk({"error": error_object(err)}))
        return out

    def _finish_chunk(self, stop_reason: Any) -> list[bytes]:
        out: list[bytes] = []
        for index in [*self._argless, self._unsigned]:
            if index is not None:
                out += self._close(index)
        if self._held:
            # JSON mode without the JSON tool's answer: the text is the answer.
            self._send(out, {"content": "".join(self._held)})
        self._held = None
        self.finish_reason = finish_reason(
            stop_reason, tool_calls=self._next_tool > 0, legacy=self.ctx.legacy_functions
        )
        self._send(out, {}, self.finish_reason)
        return out

    def _close(self, index: int) -> list[bytes]:
        """What the block at ``index`` still owes at its end: ``"{}"`` for a tool block
        that sent no argument text (the ``openai`` SDK accumulates the fragments, and ``""``
        is no JSON for its caller; for the JSON tool, the content), and the
        ``thinking_blocks`` entry of a thinking block no signature came for (the whole
        answer lists it with ``signature: ""``)."""
        out: list[bytes] = []
        k = self._argless.pop(index, None)
        if k == _JSON_ANSWER:
            self._send(out, {"content": "{}"})
        elif k is not None:
            self._send(out, self._arguments(k, "{}"))
        if index == self._unsigned:
            self._unsigned = None
            block = {"type": "thinking", "thinking": "".join(self._thinking), "signature": ""}
            self._thinking_block(out, block)
            self._thinking = []
        return out

    def _end(self) -> list[bytes]:
        out: list[bytes] = []
        if self.finish_reason is None:
            out.extend(self._finish_chunk(None))
        if self.ctx.include_usage:
            data: dict[str, Any] = {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self.ctx.client_model,
                "choices": [],
                "usage": to_openai(self.usage),
            }
            out.append(openai_chunk(data))
        out.append(OPENAI_DONE)
        self.done = True
        return out

    # -- public ----------------------------------------------------------------------------

    def feed(self, event: SSEEvent) -> list[bytes]:
        """The chunks for one upstream event (none for pings and unrepresentable blocks)."""
        if self.done:
            return []
        name = event.event
        if name is not None and name not in _KNOWN_EVENTS:
            return []
        try:
            data = event.json()
        except orjson.JSONDecodeError:
            if name is None:
                return []
            return self._fail(UpstreamError(f"upstream sent malformed {name} event data"))
        if not isinstance(data, dict):
            return []
        if name is None:
            name = data.get("type") if isinstance(data.get("type"), str) else None
        if name == "message_start":
            message = data.get("message")
            message = message if isinstance(message, dict) else {}
            from_anthropic(message.get("usage"), into=self.usage)
            self._begun = True
            if self._id is None:
                self._id = completion_id_for(message.get("id"))
            # The role chunk at once (PROTOCOL.md §7.2), so the client's first byte leaves
            # with the upstream's first event, as OpenAI opens a text answer: with
            # ``"content": ""`` (a tool call's answer would open with null; the SDK then
            # assembles "" where the whole answer has null).
            out: list[bytes] = []
            self._open(out, True)
            return out
        if name == "content_block_start":
            try:
                return self._block_start(data)
            except TypeError as exc:  # a tool input nested past the 254 levels orjson writes
                if not nested_too_deeply(exc):
                    raise
                return self._fail(nested_answer())
        if name == "content_block_delta":
            return self._block_delta(data)
        if name == "message_delta":
            return self._message_delta(data)
        if name == "message_stop":
            return self._end()
        if name == "error":
            return self._error(data.get("error"))
        if name == "content_block_stop":
            index = data.get("index")
            return self._close(index) if type(index) is int else []
        # ping and unknown types carry nothing for the client.
        return []

    def fast_event(self, part: bytes, meter: OutputMeter) -> bytes | None:
        """One event's bytes (``part``, without its blank line) framed for the client, when it
        is the bulk of every stream: a text or thinking ``content_block_delta``. None for
        anything else, which then goes through `feed`.

        Gives exactly what `feed` would (a test compares them over every stream fixture)
        without an SSEEvent or a chunk dict per event, usually without parsing more than
        the text (`TextSlot`); the chunk's constant head and tail are made once (issue 7:
        this translation cost ~7 µs an event).
        """
        if self.done:
            return None
        if part.startswith(_SILENT):
            return self._silent(part)
        kind = "text_delta"
        text = self._slots["text_delta"].text(part)
        if text is None:
            kind = "thinking_delta"
            text = self._slots["thinking_delta"].text(part)
        if text is None:
            found = anthropic_text_delta(part)
            if found is None:
                return None
            kind, text, body_at = found
            if kind == "text_delta" and self.ctx.json_tool is not None:
                return None  # JSON mode holds text back (`_text`): never framed here
            self._slots[kind].learn(part, body_at, text, ANTHROPIC_TEXT_AT[kind])
        field_name = _FIELDS[kind]
        shown = text and (field_name == "content" or self.ctx.reasoning)
        if shown and not self.started:
            return None  # the role chunk goes first (`_send`)
        if text.isascii():
            meter.chars += len(text)
        else:
            meter.add(text)
        if not shown:
            return b""
        if field_name == "reasoning_content":
            self._thinking.append(text)  # sent whole again in thinking_blocks
        frame = self._frame(field_name)
        if frame is None:
            return None
        return frame[0] + orjson.dumps(text) + frame[1]

    def _silent(self, part: bytes) -> bytes | None:
        """A named ``ping`` or ``content_block_stop`` with one line of valid JSON: nothing for
        the client, as `feed` says, without an SSEEvent (~3 µs each through it). None for
        anything else (malformed data fails the stream there)."""
        at = part.find(b"\ndata: ")
        if at < 0 or part.find(b"\n", at + 1) >= 0 or part[:at] not in _SILENT_NAMES:
            return None
        if (self._argless or self._unsigned is not None) and part[:at] == _STOP_NAME:
            # It may close a tool block with no arguments or an unsigned thinking block:
            # `feed` sends what that block still owes (`_close`).
            return None
        try:
            orjson.loads(part[at + 7 :])
        except orjson.JSONDecodeError:
            return None
        return b""

    def fast_run(self, parts: list[bytes], at: int, out: list[bytes], meter: OutputMeter) -> int:
        """The text (or shown thinking) deltas at ``parts[at:]`` in a learned shape, framed
        onto ``out`` (`plain_run`); returns where they stop."""
        if not self.started or self.done:
            return at
        for kind in ("text_delta", "thinking_delta"):
            ends = self._slots[kind].ends
            field_name = _FIELDS[kind]
            if ends is None or field_name == "reasoning_content":
                # Shown thinking goes event by event (`fast_event`), which keeps its text for
                # the block's thinking_blocks entry.
                continue
            frame = self._frame(field_name)
            if frame is None:
                continue
            end, chars, extra = plain_run(parts, at, ends, frame, out)
            if end > at:
                meter.add_counts(chars, extra)
                return end
        return at

    def finish(self) -> list[bytes]:
        """Upstream EOF: finish normally after a message_delta, else report the cut stream."""
        if self.done:
            return []
        if self._delta_seen:
            return self._end()
        return self._fail(UpstreamError(CUT_MESSAGE))

    def ping(self) -> list[bytes]:
        """A keep-alive comment for a silent upstream (never a ``data:`` payload, §5.3)."""
        return [] if self.done else [OPENAI_KEEPALIVE]

    # -- events ----------------------------------------------------------------------------

    def _block_start(self, data: dict[str, Any]) -> list[bytes]:
        index = data.get("index")
        block = data.get("content_block")
        if not isinstance(block, dict) or not isinstance(index, int):
            return []
        out = self._close(index)  # a block at the index of one never stopped
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _Block("text")
            text = block.get("text")
            if isinstance(text, str) and text:
                self._text(out, text)
        elif kind == "thinking":
            self._blocks[index] = _Block("thinking")
            thinking = block.get("thinking")
            if self._unsigned is not None:
                out += self._close(self._unsigned)  # one never stopped
            self._thinking = []
            if self.ctx.reasoning:
                self._unsigned = index
                if isinstance(thinking, str) and thinking:
                    self._thinking.append(thinking)
                    self._send(out, {"reasoning_content": thinking})
        elif kind == "redacted_thinking":
            self._blocks[index] = _Block("other")
            redacted = block.get("data")
            if self.ctx.reasoning and isinstance(redacted, str) and redacted:
                self._thinking_block(out, {"type": "redacted_thinking", "data": redacted})
        elif kind == "tool_use":
            raw_name = block.get("name")
            name = raw_name if isinstance(raw_name, str) else ""
            tool_input = block.get("input")
            if self.ctx.json_tool is not None and name == self.ctx.json_tool:
                if self._held is None:
                    # The answer is the first JSON tool's input (translate_response_parts).
                    self._blocks[index] = _Block("other")
                    return out
                self._held = None  # the text before it is no part of the answer
                self._blocks[index] = _Block("json")
                if isinstance(tool_input, dict) and tool_input:
                    self._send(out, {"content": json_text(tool_input)})
                else:
                    self._argless[index] = _JSON_ANSWER
                return out
            k = self._next_tool
            if self.ctx.legacy_functions and k > 0:
                # The legacy answer has room for one call (translate_response drops the same).
                log.warning("legacy function_call stream: a tool call after the first dropped")
                self._blocks[index] = _Block("other")
                return out
            self._next_tool += 1
            self._blocks[index] = _Block("tool", k)
            client_name = self.ctx.names.to_client(name)
            if self.ctx.legacy_functions:
                legacy = {"name": client_name, "arguments": ""}
                self._send(out, {"function_call": legacy})
            else:
                tool_id = block.get("id")
                call = {
                    "index": k,
                    "id": tool_id if isinstance(tool_id, str) and tool_id else new_tool_id(),
                    "type": "function",
                    "function": {"name": client_name, "arguments": ""},
                }
                self._send(out, {"tool_calls": [call]})
            if isinstance(tool_input, dict) and tool_input:
                self._send(out, self._arguments(k, json_text(tool_input)))
            else:
                self._argless[index] = k
        else:
            self._blocks[index] = _Block("other")
        return out

    def _arguments(self, k: int, fragment: str) -> dict[str, Any]:
        if self.ctx.legacy_functions:
            return {"function_call": {"arguments": fragment}}
        return {"tool_calls": [{"index": k, "function": {"arguments": fragment}}]}

    def _block_delta(self, data: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return out
        index = data.get("index")
        block = self._blocks.get(index) if isinstance(index, int) else None
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            if isinstance(text, str) and text:
                self._text(out, text)
        elif kind == "thinking_delta":
            thinking = delta.get("thinking")
            if self.ctx.reasoning and isinstance(thinking, str) and thinking:
                self._thinking.append(thinking)
                self._send(out, {"reasoning_content": thinking})
        elif kind == "signature_delta" and block is not None and block.kind == "thinking":
            signature = delta.get("signature")
            if self.ctx.reasoning and isinstance(signature, str) and signature:
                whole = {"type": "thinking", "thinking": "".join(self._thinking)}
                self._thinking_block(out, whole | {"signature": signature})
                self._thinking = []
                if self._unsigned == index:
                    self._unsigned = None
        elif kind == "input_json_delta" and block is not None:
            fragment = delta.get("partial_json")
            if not isinstance(fragment, str) or not fragment:
                return out
            if block.kind in ("json", "tool"):
                self._argless.pop(data["index"], None)  # an int: there is a block
            if block.kind == "json":
                self._send(out, {"content": fragment})
            elif block.kind == "tool":
                self._send(out, self._arguments(block.tool_index, fragment))
        # citations_delta and server-tool input have no OpenAI form.
        return out

    def _thinking_block(self, out: list[bytes], block: dict[str, Any]) -> None:
        """One whole thinking block as a ``thinking_blocks`` entry of its own index."""
        entry = {"index": self._thinking_blocks, **block}
        self._thinking_blocks += 1
        delta: dict[str, Any] = {"thinking_blocks": [entry]}
        if block["type"] == "thinking" and not block["thinking"]:
            # The whole answer's reasoning_content is "" for thinking without text (display
            # "omitted"): the SDK accumulates the same, and nothing after any text.
            delta = {"reasoning_content": "", **delta}
        self._send(out, delta)

    def _message_delta(self, data: dict[str, Any]) -> list[bytes]:
        out: list[bytes] = []
        from_anthropic(data.get("usage"), into=self.usage)
        self._delta_seen = True
        delta = data.get("delta")
        stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        if stop_reason is not None and self.finish_reason is None:
            out.extend(self._finish_chunk(stop_reason))
        return out

    def _error(self, raw: Any) -> list[bytes]:
        err = raw if isinstance(raw, dict) else {}
        message = err.get("message")
        cls = _STREAM_ERRORS.get(str(err.get("type")), UpstreamError)
        return self._fail(
            cls(message if isinstance(message, str) and message else "upstream stream error")
        )
