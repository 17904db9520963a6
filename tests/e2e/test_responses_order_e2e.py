"""A Responses API client's answer from an Anthropic backend keeps the order of Claude's
content blocks, whole as streamed: text after a tool call is a message item after the
call, thinking a reasoning item in its place (the chat answer in between has one content
string beside its tool calls, so the order rides alongside it).
"""

from __future__ import annotations

from typing import Any

import pytest

from app.dialects.sse import anthropic_event
from tests.e2e.test_responses_e2e import CLAUDE, SIGNATURE, WEATHER_TOOL, client, config
from tests.fakes import JsonReply, SSEReply, anthropic_block, anthropic_end, anthropic_message

pytestmark = pytest.mark.gen_test(timeout=30)

THINKING = "Paris, so the weather tool."
BEFORE, AFTER = "Let me check.", "…and also the forecast."
CALL: Any = {"type": "tool_use", "id": "toolu_w1", "name": "get_weather"}
INPUT = {"location": "Paris"}


def whole_answer() -> dict[str, Any]:
    message = anthropic_message("", CLAUDE, 30, 25)
    message.update(
        content=[
            {"type": "thinking", "thinking": THINKING, "signature": SIGNATURE},
            {"type": "text", "text": BEFORE},
            {**CALL, "input": INPUT},
            {"type": "text", "text": AFTER},
        ],
        stop_reason="tool_use",
    )
    return message


def streamed_answer() -> list[bytes]:
    start = anthropic_message("", CLAUDE, 30, 1)
    start.update(content=[], stop_reason=None)
    out = [anthropic_event("message_start", {"type": "message_start", "message": start})]
    out += anthropic_block(
        0,
        {"type": "thinking", "thinking": "", "signature": ""},
        [
            {"type": "thinking_delta", "thinking": THINKING},
            {"type": "signature_delta", "signature": SIGNATURE},
        ],
    )
    out += anthropic_block(
        1, {"type": "text", "text": ""}, [{"type": "text_delta", "text": BEFORE}]
    )
    out += anthropic_block(
        2,
        {**CALL, "input": {}},
        [{"type": "input_json_delta", "partial_json": '{"location": "Paris"}'}],
    )
    out += anthropic_block(3, {"type": "text", "text": ""}, [{"type": "text_delta", "text": AFTER}])
    return out + anthropic_end("tool_use", 25)


async def test_items_follow_the_content_blocks_whole_and_streamed(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(None, fake_anthropic))
    fake_anthropic.push(JsonReply(body=whole_answer()), SSEReply(streamed_answer()))
    asked: Any = {
        "model": "gpt-claude",
        "input": [{"role": "user", "content": "weather in Paris?"}],
        "tools": [WEATHER_TOOL],
        "reasoning": {"effort": "high", "summary": "auto"},
        "include": ["reasoning.encrypted_content"],
    }
    async with client(live) as sdk:
        whole = await sdk.responses.create(**asked)
        async with sdk.responses.stream(**asked) as stream:
            async for _ in stream:
                pass
            streamed = await stream.get_final_response()
    assert [item.type for item in whole.output] == [
        "reasoning",
        "message",
        "function_call",
        "message",
    ]
    reasoning, before, call, after = whole.output
    assert reasoning.type == "reasoning" and reasoning.encrypted_content == SIGNATURE
    assert [s.text for s in reasoning.summary] == [THINKING]
    assert before.type == "message" and after.type == "message"
    assert [part.type == "output_text" and part.text for part in before.content] == [BEFORE]
    assert [part.type == "output_text" and part.text for part in after.content] == [AFTER]
    assert call.type == "function_call"
    assert (call.call_id, call.name, call.arguments) == (
        "toolu_w1",
        "get_weather",
        '{"location":"Paris"}',
    )
    assert whole.output_text == BEFORE + AFTER
    # The stream opens the same items at the same output indexes (item ids end in them).
    assert [(item.type, item.id) for item in streamed.output] == [
        (
            item.type,
            item.id.replace(whole.id.removeprefix("resp_"), streamed.id.removeprefix("resp_")),
        )
        for item in whole.output
    ]
