"""Chat Completions ``chat.completion.chunk`` stream -> OpenAI Responses API streaming events.

`ResponsesStream` is fed one parsed chat chunk at a time and returns the framed events for
it at once (text goes out as it comes); its final ``response.completed`` carries the same
Response `responses_answer.translate_response` makes of the equivalent whole answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from app.translate.anthropic_to_openai import reasoning_text
from app.translate.chat_deltas import ToolArguments
from app.translate.responses_answer import (
    CALL,
    MESSAGE,
    REASONING,
    ItemStatus,
    OutputItem,
    OutputText,
    Refusal,
    ResponseError,
    arguments_text,
    call_item,
    finish_status,
    item_id,
    message_item,
    output_text,
    reasoning_item,
    refusal_part,
    response_error,
    response_object,
    response_usage,
    text_of,
    thinking_block_parts,
)
from app.translate.responses_context import ResponsesContext


@dataclass(slots=True)
class _Reasoning:
    index: int
    id: str
    text: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Message:
    index: int
    id: str
    parts: list[OutputText | Refusal] = field(default_factory=list)
    kind: str | None = None  # the open part: "output_text" | "refusal"
    text: list[str] = field(default_factory=list)  # the open part's text so far

    def part(self, text: str) -> OutputText | Refusal:
        return output_text(text) if self.kind == "output_text" else refusal_part(text)


@dataclass(slots=True)
class _Call:
    index: int
    id: str
    call_id: str
    raw_id: str | None  # the backend's id for it, if it sent one
    name: str
    custom: bool
    arguments: ToolArguments = field(default_factory=ToolArguments)
    held_from: int | None = None  # characters sent before the call was held to its close


class ResponsesStream:
    """One chat chunk stream in, one Responses event stream out.

    Items are opened in the order their first piece arrives and closed when another
    kind of item opens (tool calls stay open until the end: their argument fragments
    may interleave; a call whose chat index a new call id takes over closes then).
    Drops what `translate_response` drops, plus ``logprobs`` and the chat ids, and the
    repeated start of arguments sent as cumulative snapshots (`ToolArguments`: a call it
    cannot yet tell from one sending deltas sends the rest of its arguments in one delta
    when it closes). Invents the lifecycle events, item ids and
    ``sequence_number``. A custom tool's input sits inside the call's JSON arguments, so
    it goes out whole (one ``custom_tool_call_input.delta``) when the call closes.
    """

    def __init__(self, ctx: ResponsesContext) -> None:
        self.ctx = ctx
        self.done = False
        self.started = False
        self._seq = 0
        self._output: list[OutputItem | None] = []  # by output_index; None while open
        self._reasoning: _Reasoning | None = None
        self._message: _Message | None = None
        self._calls: dict[int, _Call] = {}  # chat tool-call index -> its open call
        self._finish: Any = None
        self._usage: Any = None

    # -- framing ---------------------------------------------------------------------------

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        data = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

    def _response(self, status: Any, **kwargs: Any) -> dict[str, Any]:
        return response_object(self.ctx, status=status, **kwargs)

    # -- public ----------------------------------------------------------------------------

    def start(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``, once, before anything else."""
        if self.started:
            return []
        self.started = True
        skeleton = self._response("in_progress", output=[])
        return [
            self._event("response.created", {"response": skeleton}),
            self._event("response.in_progress", {"response": skeleton}),
        ]

    def feed(self, chunk: dict[str, Any]) -> list[bytes]:
        """The events for one chat chunk, or ``response.failed`` for an error chunk."""
        if self.done:
            return []
        out = self.start()
        error = chunk.get("error")
        if isinstance(error, dict):
            return out + self._fail(response_error(error))
        if isinstance(chunk.get("usage"), dict):
            self._usage = chunk["usage"]
        choices = chunk.get("choices")
        choice = next(
            (
                c
                for c in (choices if isinstance(choices, list) else [])
                if isinstance(c, dict) and c.get("index", 0) == 0
            ),
            None,
        )
        if choice is None:
            return out
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = reasoning_text(delta)
            if text:
                out += self._reasoning_delta(text)
            blocks = delta.get("thinking_blocks")
            for block in blocks if isinstance(blocks, list) else []:
                out += self._thinking_block(block)
            text = text_of(delta.get("content"))
            if text:
                out += self._text_delta("output_text", text)
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                out += self._text_delta("refusal", refusal)
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else []:
                if isinstance(call, dict):
                    out += self._tool_call(call)
        finish = choice.get("finish_reason")
        if isinstance(finish, str) and finish:
            self._finish = finish
        return out

    def finish(self) -> list[bytes]:
        """The chat stream ended: close every open item and send ``response.completed``
        (``response.incomplete`` after finish_reason length or content_filter)."""
        if self.done:
            return []
        out = self.start()
        status, details = finish_status(self._finish)
        last = len(self._output) - 1
        item_status: ItemStatus = "incomplete" if status == "incomplete" else "completed"
        opened: list[tuple[int, str, Any]] = [(c.index, "call", c) for c in self._calls.values()]
        if self._reasoning is not None:
            opened.append((self._reasoning.index, "reasoning", None))
        if self._message is not None:
            opened.append((self._message.index, "message", None))
        for index, kind, call in sorted(opened, key=lambda t: t[0]):
            closing: ItemStatus = item_status if index == last else "completed"
            if kind == "call":
                out += self._close_call(call, closing)
            elif kind == "reasoning":
                out += self._close_reasoning(None)
            else:
                out += self._close_message(closing)
        self._calls = {}
        response = self._response(
            status,
            output=[item for item in self._output if item is not None],
            usage=response_usage(self._usage),
            incomplete_details=details,
        )
        self.done = True
        name = "response.completed" if status == "completed" else "response.incomplete"
        return out + [self._event(name, {"response": response})]

    # -- reasoning -------------------------------------------------------------------------

    def _open_reasoning(self) -> tuple[_Reasoning, list[bytes]]:
        out = self._close_message("completed")
        index = len(self._output)
        self._output.append(None)
        item = self._reasoning = _Reasoning(index, item_id(self.ctx, REASONING, index))
        out.append(
            self._event(
                "response.output_item.added",
                {"output_index": index, "item": reasoning_item(item.id, "")},
            )
        )
        return item, out

    def _reasoning_delta(self, text: str) -> list[bytes]:
        out: list[bytes] = []
        item = self._reasoning
        if item is None:
            item, out = self._open_reasoning()
        if not item.text:
            out.append(
                self._event(
                    "response.reasoning_summary_part.added",
                    {
                        "item_id": item.id,
                        "output_index": item.index,
                        "summary_index": 0,
                        "part": {"type": "summary_text", "text": ""},
                    },
                )
            )
        item.text.append(text)
        out.append(
            self._event(
                "response.reasoning_summary_text.delta",
                {"item_id": item.id, "output_index": item.index, "summary_index": 0, "delta": text},
            )
        )
        return out

    def _thinking_block(self, block: Any) -> list[bytes]:
        """A whole thinking block (sent at its signature, after its text): it closes the
        reasoning item its text opened. A redacted block, or one whose text was not
        streamed, is an item of its own."""
        parts = thinking_block_parts(block, self.ctx)
        if parts is None:
            return []
        text, encrypted = parts
        out: list[bytes] = []
        if self._reasoning is not None:
            if block.get("type") == "thinking":
                return self._close_reasoning(encrypted)
            out += self._close_reasoning(None)
        if not text and encrypted is None:
            return out
        _, opened = self._open_reasoning()
        out += opened
        if text:
            out += self._reasoning_delta(text)
        return out + self._close_reasoning(encrypted)

    def _close_reasoning(self, encrypted: str | None) -> list[bytes]:
        item = self._reasoning
        if item is None:
            return []
        self._reasoning = None
        text = "".join(item.text)
        out: list[bytes] = []
        where = {"item_id": item.id, "output_index": item.index, "summary_index": 0}
        if text:
            out.append(self._event("response.reasoning_summary_text.done", {**where, "text": text}))
            out.append(
                self._event(
                    "response.reasoning_summary_part.done",
                    {**where, "part": {"type": "summary_text", "text": text}},
                )
            )
        done = self._output[item.index] = reasoning_item(item.id, text, encrypted)
        out.append(
            self._event("response.output_item.done", {"output_index": item.index, "item": done})
        )
        return out

    # -- message ---------------------------------------------------------------------------

    def _text_delta(self, kind: str, text: str) -> list[bytes]:
        out = self._close_reasoning(None)
        item = self._message
        if item is None:
            index = len(self._output)
            self._output.append(None)
            item = self._message = _Message(index, item_id(self.ctx, MESSAGE, index))
            added = message_item(item.id, [], "in_progress")
            out.append(
                self._event("response.output_item.added", {"output_index": index, "item": added})
            )
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind != kind:
            out += self._close_part(item)
            item.kind = kind
            out.append(
                self._event(
                    "response.content_part.added",
                    {**where, "content_index": len(item.parts), "part": item.part("")},
                )
            )
        item.text.append(text)
        where["content_index"] = len(item.parts)
        if kind == "output_text":
            return out + [
                self._event("response.output_text.delta", {**where, "delta": text, "logprobs": []})
            ]
        return out + [self._event("response.refusal.delta", {**where, "delta": text})]

    def _close_part(self, item: _Message) -> list[bytes]:
        if item.kind is None:
            return []
        text = "".join(item.text)
        where = {"item_id": item.id, "output_index": item.index, "content_index": len(item.parts)}
        if item.kind == "output_text":
            done = self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
        else:
            done = self._event("response.refusal.done", {**where, "refusal": text})
        part = item.part(text)
        item.parts.append(part)
        item.kind, item.text = None, []
        return [done, self._event("response.content_part.done", {**where, "part": part})]

    def _close_message(self, status: ItemStatus) -> list[bytes]:
        item = self._message
        if item is None:
            return []
        self._message = None
        out = self._close_part(item)
        done = self._output[item.index] = message_item(item.id, item.parts, status)
        out.append(
            self._event("response.output_item.done", {"output_index": item.index, "item": done})
        )
        return out

    # -- tool calls ------------------------------------------------------------------------

    def _tool_call(self, delta: dict[str, Any]) -> list[bytes]:
        index = delta.get("index")
        function = delta.get("function")
        function = function if isinstance(function, dict) else {}
        if not isinstance(index, int) or isinstance(index, bool):
            index = self._index_of(delta.get("id"), function.get("name"))
        out: list[bytes] = []
        raw_id = delta.get("id")
        raw_id = raw_id if isinstance(raw_id, str) and raw_id else None
        call = self._calls.get(index)
        if call is not None and raw_id is not None and call.raw_id not in (None, raw_id):
            # Some backends number every parallel call 0 and tell them apart by id alone:
            # a new id is the next call, and the one it replaces gets no more fragments.
            del self._calls[index]
            out += self._close_call(call, "completed")
            call = None
        if call is None:
            out += self._close_reasoning(None) + self._close_message("completed")
            at = len(self._output)
            self._output.append(None)
            call_id = raw_id or item_id(self.ctx, CALL, at)
            name = function.get("name")
            name = name if isinstance(name, str) else ""
            added = call_item(self.ctx, at, call_id, name, "", "in_progress")
            call = self._calls[index] = _Call(
                at, added["id"], call_id, raw_id, name, added["type"] == "custom_tool_call"
            )
            out.append(
                self._event("response.output_item.added", {"output_index": at, "item": added})
            )
        fragment = call.arguments.add(arguments_text(function.get("arguments")))
        if call.arguments.undecided:
            if call.held_from is None:  # what went out before this fragment
                call.held_from = call.arguments.size - len(fragment)
        elif fragment and not call.custom:
            where = {"item_id": call.id, "output_index": call.index}
            out.append(
                self._event("response.function_call_arguments.delta", {**where, "delta": fragment})
            )
        return out

    def _index_of(self, call_id: Any, name: Any) -> int:
        """The chat index of a tool-call fragment without one (Gemini's OpenAI layer): the
        call of its id, else a new call when it has an id or a name, else the last call."""
        for index, call in self._calls.items():
            if call.call_id == call_id:
                return index
        last = max(self._calls, default=-1)
        return last + 1 if call_id or name or last < 0 else last

    def _close_call(self, call: _Call, status: ItemStatus) -> list[bytes]:
        arguments = call.arguments.settled()
        done = call_item(self.ctx, call.index, call.call_id, call.name, arguments, status)
        self._output[call.index] = done
        where = {"item_id": done["id"], "output_index": call.index}
        out: list[bytes] = []
        rest = arguments[call.held_from :] if call.held_from is not None else ""
        if rest and not call.custom:
            out.append(
                self._event("response.function_call_arguments.delta", {**where, "delta": rest})
            )
        if done["type"] == "custom_tool_call":
            text = done["input"]
            if text:
                out.append(
                    self._event("response.custom_tool_call_input.delta", {**where, "delta": text})
                )
            out.append(
                self._event("response.custom_tool_call_input.done", {**where, "input": text})
            )
        else:
            out.append(
                self._event(
                    "response.function_call_arguments.done", {**where, "arguments": arguments}
                )
            )
        out.append(
            self._event("response.output_item.done", {"output_index": call.index, "item": done})
        )
        return out

    # -- failure ---------------------------------------------------------------------------

    def _fail(self, error: ResponseError) -> list[bytes]:
        """``response.failed`` with what was made so far: closed items as they are, open
        ones as they stand, ``incomplete``."""
        output = list(self._output)
        if self._reasoning is not None:
            item = self._reasoning
            output[item.index] = reasoning_item(item.id, "".join(item.text))
        if self._message is not None:
            msg = self._message
            parts = list(msg.parts)
            if msg.kind is not None:
                parts.append(msg.part("".join(msg.text)))
            output[msg.index] = message_item(msg.id, parts, "incomplete")
        for call in self._calls.values():
            output[call.index] = call_item(
                self.ctx,
                call.index,
                call.call_id,
                call.name,
                call.arguments.settled(),
                "incomplete",
            )
        response = self._response(
            "failed",
            output=[item for item in output if item is not None],
            usage=response_usage(self._usage),
            error=error,
        )
        self.done = True
        return [self._event("response.failed", {"response": response})]
