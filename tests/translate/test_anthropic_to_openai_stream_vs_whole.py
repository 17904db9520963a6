"""An OpenAI backend's stream, to an Anthropic client, adds up to the whole answer's text and
usage (`anthropic_to_openai.translate_response`): content and refusal joined by one blank
line, and the output estimated from the same text when the backend reports no usage.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.dialects.sse import SSEEvent
from app.translate.anthropic_to_openai import translate_response
from app.translate.anthropic_to_openai_stream import StreamTranslator
from tests.translate.test_anthropic_to_openai import (
    MESSAGE_ID,
    _ctx,
    check_stream_grammar,
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
