"""A Responses API client on an OpenAI-compatible backend whose stream has a quirk (an emoji
cut between its UTF-16 halves, parallel calls sharing index 0, argument snapshots): through
the real server and the ``openai`` SDK, the streamed answer is the whole answer's, item for
item, in the exact events the SDK expects.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.test_responses_e2e import client, config
from tests.fakes import JsonReply, SSEReply
from tests.translate.test_responses_answer import without_parsed
from tests.translate.test_responses_stream_quirks import chat_sse, whole_answer

pytestmark = pytest.mark.gen_test(timeout=30)

EMOJI_TEXT = "Hi \U0001f600 there"
ADDED, DONE = "response.output_item.added", "response.output_item.done"
ARGS_DELTA = "response.function_call_arguments.delta"
ARGS_DONE = "response.function_call_arguments.done"


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


CASES: list[Any] = [
    pytest.param(
        [
            '{"role":"assistant","content":""}',
            '{"content":"Hi \\ud83d"}',
            '{"content":"\\ude00 there"}',
        ],
        {"role": "assistant", "content": EMOJI_TEXT},
        [
            ADDED,
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            DONE,
        ],
        ["Hi ", "\U0001f600 there"],
        id="split_surrogates",
    ),
    pytest.param(
        [
            '{"tool_calls":[{"index":0,"id":"call_1","type":"function",'
            '"function":{"name":"lookup","arguments":"{\\"q\\": 1}"}}]}',
            '{"tool_calls":[{"index":0,"id":"call_2","type":"function",'
            '"function":{"name":"get_weather","arguments":"{\\"city\\": \\"Rome\\"}"}}]}',
        ],
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                call("call_1", "lookup", '{"q": 1}'),
                call("call_2", "get_weather", '{"city": "Rome"}'),
            ],
        },
        [ADDED, ARGS_DELTA, ARGS_DONE, DONE] * 2,
        ['{"q": 1}', '{"city": "Rome"}'],
        id="same_index_parallel",
    ),
    pytest.param(
        [
            '{"tool_calls":[{"index":0,"id":"call_1","type":"function",'
            '"function":{"name":"lookup","arguments":"{\\"city\\": "}}]}',
            '{"tool_calls":[{"index":0,"function":{"arguments":"{\\"city\\": \\"Paris\\"}"}}]}',
        ],
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [call("call_1", "lookup", '{"city": "Paris"}')],
        },
        [ADDED, ARGS_DELTA, ARGS_DELTA, ARGS_DONE, DONE],
        ['{"city": ', '"Paris"}'],
        id="cumulative_args",
    ),
]


@pytest.mark.parametrize(("deltas", "message", "middle", "said"), CASES)
async def test_streamed_answer_is_the_whole_one(  # type: ignore[no-untyped-def]
    gateway, fake_openai, deltas, message, middle, said
):
    live = await gateway(config(fake_openai, None))
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    events_sent = chat_sse(deltas, finish).split(b"\n\n")[:-1]
    fake_openai.push(
        JsonReply(body=whole_answer(message, finish)),
        SSEReply([event + b"\n\n" for event in events_sent]),
    )
    asked: Any = {"model": "gpt-local", "input": "go"}
    async with client(live) as sdk:
        whole = await sdk.responses.create(**asked)
        async with sdk.responses.stream(**asked) as stream:
            events = [event async for event in stream]
            streamed = await stream.get_final_response()
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        *middle,
        "response.completed",
    ]
    assert [e.delta for e in events if e.type.endswith(".delta")] == said
    # Item ids are made of the response's id; apart from that, the same items.
    same_ids = whole.id.removeprefix("resp_"), streamed.id.removeprefix("resp_")
    # (The stream helper's own None ``parsed``/``parsed_arguments`` left out.)
    assert [without_parsed(item.to_dict()) for item in streamed.output] == [
        {**item.to_dict(), "id": item.id.replace(*same_ids)} for item in whole.output
    ]
    assert streamed.output_text == whole.output_text
