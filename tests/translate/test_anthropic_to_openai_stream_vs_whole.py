"""An OpenAI backend's stream, to an Anthropic client, adds up to the whole answer's text and
usage (`anthropic_to_openai.translate_response`): content and refusal joined by one blank
line, reasoning fields and inline ``<think>`` tags split into the same thinking block, and
the output estimated from the same text when the backend reports no usage.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from app.dialects.sse import SSEEvent
from app.translate.anthropic_to_openai import RequestContext, translate_response
from app.translate.anthropic_to_openai_stream import StreamTranslator
from tests.translate.test_anthropic_to_openai import (
    FIXTURES,
    MESSAGE_ID,
    _ctx,
    check_stream_grammar,
    context_for,
    load_json,
    sdk_final_message,
)


def _streamed(deltas: list[dict[str, Any]], finish: str, **ctx: Any) -> tuple[bytes, Any]:
    """The Anthropic stream of chunks with ``deltas``, then ``finish``; no usage."""
    translator = StreamTranslator(_ctx(**ctx), message_id=MESSAGE_ID)
    out: list[bytes] = []
    for delta in [*deltas, {}]:
        choice = {"index": 0, "delta": delta, "finish_reason": None if delta else finish}
        out += translator.feed(SSEEvent(None, orjson.dumps({"choices": [choice]}).decode()))
    out += translator.feed(SSEEvent(None, "[DONE]"))
    return b"".join(out), translator


def _whole(message: dict[str, Any], finish: str, **ctx: Any) -> dict[str, Any]:
    answer = {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    return translate_response(answer, _ctx(stream=False, **ctx), message_id=MESSAGE_ID)


def _texts(stream: bytes) -> list[str]:
    return [b.text for b in sdk_final_message(stream).content if b.type == "text"]


# -- content and refusal ---------------------------------------------------------------------


def test_content_then_refusal_is_one_text_with_a_blank_line_between() -> None:
    stream, _ = _streamed([{"content": "Sure"}, {"content": "."}, {"refusal": "No."}], "stop")
    start, *events, stop = check_stream_grammar(stream)
    assert [start[0], stop[0]] == ["message_start", "message_stop"]
    assert events == [
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        ),
        *[
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text},
                },
            )
            for text in ("Sure", ".", "\n\nNo.")
        ],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {
                    "input_tokens": 10,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 3,
                },
            },
        ),
    ]
    whole = _whole({"content": "Sure.", "refusal": "No."}, "stop")
    assert whole["content"] == [{"type": "text", "text": "Sure.\n\nNo."}]
    assert _texts(stream) == ["Sure.\n\nNo."]


@pytest.mark.parametrize(
    ("deltas", "message", "text"),
    [
        pytest.param(
            [{"content": "Hi", "refusal": "No"}],
            {"content": "Hi", "refusal": "No"},
            "Hi\n\nNo",
            id="one_chunk",
        ),
        pytest.param(
            [{"content": "\n"}, {"refusal": " No."}],
            {"content": "\n", "refusal": " No."},
            " No.",
            id="blank_content_dropped",
        ),
        pytest.param(
            [{"content": "Hi "}, {"refusal": " "}, {"refusal": "No"}],
            {"content": "Hi ", "refusal": " No"},
            "Hi \n\n No",
            id="refusal_blank_start_after_the_blank_line",
        ),
        pytest.param(
            [{"content": "Hi"}, {"refusal": "  "}],
            {"content": "Hi", "refusal": "  "},
            "Hi",
            id="blank_refusal_dropped",
        ),
        pytest.param(
            [{"refusal": "No"}],
            {"content": "", "refusal": "No"},
            "No",
            id="refusal_only",
        ),
    ],
)
def test_the_streamed_text_is_the_whole_answer_s(
    deltas: list[dict[str, Any]], message: dict[str, Any], text: str
) -> None:
    stream, _ = _streamed(deltas, "stop")
    assert _texts(stream) == [text]
    assert _whole(message, "stop")["content"] == [{"type": "text", "text": text}]


def test_content_after_a_refusal_comes_after_one_blank_line() -> None:
    """A stream cannot put the content first, as the whole answer does; it still gets the
    blank line between them, and the content's blank start after it."""
    stream, _ = _streamed([{"refusal": "No."}, {"content": "\n"}, {"content": "Sure."}], "stop")
    assert _texts(stream) == ["No.\n\n\nSure."]


def test_a_refusal_after_inline_thinking_follows_it_as_in_the_whole_answer() -> None:
    deltas = [{"content": "<think>Hmm</think>"}, {"refusal": "No."}]
    stream, _ = _streamed(deltas, "stop", thinking=True)
    message = sdk_final_message(stream)
    whole = _whole({"content": "<think>Hmm</think>", "refusal": "No."}, "stop", thinking=True)
    assert [b.model_dump(exclude_none=True) for b in message.content] == whole["content"]
    assert whole["content"] == [
        {"type": "thinking", "thinking": "Hmm", "signature": ""},
        {"type": "text", "text": "No."},
    ]


# -- reasoning fields and inline <think> tags ------------------------------------------------

# Golden whole answers (``response_in.json`` → ``response_out.json``) with a reasoning field,
# ``<think>…</think>`` at the start of the content, or both, thinking asked for or not: their
# streams, cut any way, must assemble into the same message.
THINKING_CASES = [
    "resp_reasoning_thinking",
    "resp_reasoning_field_vllm",
    "resp_reasoning_dropped",
    "resp_inline_think_tags",
    "resp_inline_think_tags_cut",
    "resp_inline_think_tags_dropped",
    "resp_reasoning_and_think_tags",
    "resp_reasoning_field_and_think_tags",
    "resp_reasoning_and_think_tags_cut",
    "resp_reasoning_and_think_tags_dropped",
    "resp_reasoning_and_think_tags_cut_dropped",
    "resp_reasoning_and_think_tags_then_tool",
    "resp_reasoning_and_think_tags_then_tool_dropped",
]
_USAGE_KEYS = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "output_tokens",
)


def _pieces(text: str, size: int | None) -> list[str]:
    step = size or max(len(text), 1)
    return [text[i : i + step] for i in range(0, len(text), step)]


def _deltas_of(message: dict[str, Any], size: int | None) -> list[dict[str, Any]]:
    """``message`` as a backend streams it: its reasoning, then its content, in pieces of
    ``size`` characters (each whole when None), then each tool call, named first."""
    deltas: list[dict[str, Any]] = []
    for key in ("reasoning_content", "reasoning", "content"):
        value = message.get(key)
        if isinstance(value, str):
            deltas += [{key: piece} for piece in _pieces(value, size)]
    for index, call in enumerate(message.get("tool_calls") or []):
        function = call["function"]
        named = {"name": function["name"], "arguments": ""}
        first = {"index": index, "id": call["id"], "type": "function", "function": named}
        rest = {"index": index, "function": {"arguments": function["arguments"]}}
        deltas += [{"tool_calls": [first]}, {"tool_calls": [rest]}]
    return deltas


def _stream_of(resp: dict[str, Any], ctx: RequestContext, size: int | None) -> bytes:
    """The Anthropic stream of the whole answer ``resp`` sent as chunks, usage last."""
    translator = StreamTranslator(ctx, message_id=MESSAGE_ID)
    choice = resp["choices"][0]
    chunks: list[dict[str, Any]] = [
        {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
        for delta in _deltas_of(choice["message"], size)
    ]
    chunks.append(
        {"choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]}
    )
    if resp.get("usage") is not None:
        chunks.append({"choices": [], "usage": resp["usage"]})
    out: list[bytes] = []
    for chunk in chunks:
        out += translator.feed(SSEEvent(None, orjson.dumps(chunk).decode()))
    out += translator.feed(SSEEvent(None, "[DONE]"))
    return b"".join(out)


def _assembled(stream: bytes) -> dict[str, Any]:
    """The message the anthropic SDK assembles from ``stream``, in the whole answer's shape.

    A stream without content gets one empty text block (PROTOCOL.md §7.1, finalisation
    step 3), which the whole answer must not invent (§6.14 item 3): it counts as none.
    """
    check_stream_grammar(stream)
    message = sdk_final_message(stream)
    content = [block.model_dump(exclude_none=True) for block in message.content]
    if content == [{"type": "text", "text": ""}]:
        content = []
    return {
        "id": message.id,
        "model": message.model,
        "content": content,
        "stop_reason": message.stop_reason,
        "stop_sequence": message.stop_sequence,
        "usage": {key: getattr(message.usage, key) for key in _USAGE_KEYS},
    }


@pytest.mark.parametrize("size", [None, 1, 5], ids=["whole_fields", "by_char", "by_5"])
@pytest.mark.parametrize("case", THINKING_CASES)
def test_the_stream_of_a_thinking_answer_assembles_into_the_whole_answer(
    case: str, size: int | None
) -> None:
    """Thinking blocks, then text, then tool calls: same texts, same order, ``signature``
    ``""``, the same thinking dropped when the client did not ask for it, and the same
    usage estimate when the backend reports none."""
    folder = FIXTURES / case
    resp = load_json(folder / "response_in.json")
    whole = load_json(folder / "response_out.json")  # pinned by test_response
    ctx = context_for(folder)
    assert translate_response(resp, ctx, message_id=MESSAGE_ID) == whole
    stream = _stream_of(resp, dataclasses.replace(ctx, stream=True), size)
    expected = {
        key: whole[key] for key in ("id", "model", "content", "stop_reason", "stop_sequence")
    }
    expected["usage"] = {key: whole["usage"][key] for key in _USAGE_KEYS}
    assert _assembled(stream) == expected


@pytest.mark.parametrize("thinking", [True, False])
def test_inline_thinking_after_a_reasoning_field_continues_its_thinking_block(
    thinking: bool,
) -> None:
    """A backend that sends a reasoning field and ``<think>`` tags at the start of the
    content: the stream has the tagged part follow the reasoning in its open thinking block,
    so the whole answer joins the two, and neither shows the tags as text."""
    deltas = [{"reasoning_content": "Plan."}, {"content": "<think>Inline.</think>\n\nAnswer."}]
    stream, translator = _streamed(deltas, "stop", thinking=thinking)
    message = {"reasoning_content": "Plan.", "content": "<think>Inline.</think>\n\nAnswer."}
    whole = _whole(message, "stop", thinking=thinking)
    thought = [{"type": "thinking", "thinking": "Plan.Inline.", "signature": ""}]
    assert whole["content"] == [*(thought if thinking else []), {"type": "text", "text": "Answer."}]
    assert _assembled(stream)["content"] == whole["content"]
    assert whole["usage"]["output_tokens"] == translator.usage.output_tokens == 6


# -- usage estimated when the backend reports none -------------------------------------------


def _call(arguments: str, *, first: bool) -> dict[str, Any]:
    call: dict[str, Any] = {"index": 0, "function": {"arguments": arguments}}
    if first:
        call.update(id="call_1", type="function")
        call["function"]["name"] = "get_weather"
    return {"tool_calls": [call]}


def _tool_message(arguments: str, **fields: Any) -> dict[str, Any]:
    function = {"name": "get_weather", "arguments": arguments}
    return {"tool_calls": [{"id": "call_1", "type": "function", "function": function}], **fields}


_ARGS = '{"city": "Paris",  "unit": "celsius", "days": [1, 2, 3]}'


@pytest.mark.parametrize(
    ("deltas", "message", "finish", "tokens"),
    [
        # The arguments as the client's input: json.dumps without the backend's blanks
        # (get_weather + {"city":"Paris","unit":"celsius","days":[1,2,3]}: 59 characters).
        pytest.param(
            [_call(_ARGS[:9], first=True), _call(_ARGS[9:], first=False)],
            _tool_message(_ARGS),
            "tool_calls",
            17,
            id="arguments_with_blanks",
        ),
        # Blank text before a call is no text: only get_weather and {}.
        pytest.param(
            [{"content": "\n\n"}, _call("", first=True)],
            _tool_message("", content="\n\n"),
            "tool_calls",
            4,
            id="blank_text_before_a_call",
        ),
        # The thinking and the text, without the tags and the blanks after them.
        pytest.param(
            [{"content": "<think>The user says hello.</think>\n\n"}, {"content": "Hello!"}],
            {"content": "<think>The user says hello.</think>\n\nHello!"},
            "stop",
            8,
            id="inline_think_tags",
        ),
        # Content, the blank line, the refusal.
        pytest.param(
            [{"content": "Sure."}, {"refusal": "I can't help with that."}],
            {"content": "Sure.", "refusal": "I can't help with that."},
            "stop",
            9,
            id="content_and_refusal",
        ),
        pytest.param(
            [{"reasoning_content": "Weather."}, {"content": "Checking."}, _call(_ARGS, first=True)],
            _tool_message(_ARGS, content="Checking.", reasoning_content="Weather."),
            "tool_calls",
            22,
            id="reasoning_text_and_call",
        ),
    ],
)
def test_the_estimated_output_is_the_whole_answer_s(
    deltas: list[dict[str, Any]], message: dict[str, Any], finish: str, tokens: int
) -> None:
    stream, translator = _streamed(deltas, finish)
    assert sdk_final_message(stream).usage.output_tokens == tokens
    assert (translator.usage.output_tokens, translator.usage.estimated) == (tokens, True)
    assert _whole(message, finish)["usage"]["output_tokens"] == tokens
