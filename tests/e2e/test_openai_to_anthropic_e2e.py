"""OpenAI clients in front of an Anthropic-kind upstream, end to end (issue 4).

The official ``openai`` SDK talks to the real server, which translates to a fake Anthropic
backend. Every test pins both sides: the exact Messages body the fake received and the exact
result the SDK hands back.
"""

from __future__ import annotations

from typing import Any

import openai
import orjson
import pytest
from openai.lib._pydantic import to_strict_json_schema
from pydantic import BaseModel
from sqlalchemy import select

from app.db.models import UsageEvent
from app.dialects.sse import anthropic_event
from app.translate.openai_to_anthropic import JSON_TOOL_DESCRIPTION
from tests.conftest import TEST_KEY, Live, flushed, http
from tests.fakes import FakeUpstream, JsonReply, SSEReply, anthropic_message, anthropic_stream

pytestmark = pytest.mark.gen_test(timeout=30)

TARGET = "claude-sonnet-4-5"
UPSTREAM_KEY = "sk-ant-upstream"
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def config(fake: FakeUpstream, *, model: str = "") -> str:
    """``gpt-claude`` has a 2048-token cap (also its default), ``gpt-claude-plain`` none,
    ``gpt-claude-window`` a 3000-token context window."""
    return f"""
[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{fake.url}"
keys = ["{UPSTREAM_KEY}"]

[[models]]
name = "gpt-claude"
upstream = "claude"
target = "{TARGET}"
max_tokens = 2048
{model}

[[models]]
name = "gpt-claude-plain"
upstream = "claude"
target = "{TARGET}"

[[models]]
name = "gpt-claude-window"
upstream = "claude"
target = "{TARGET}"
context_window = 3000
"""


def one_model(fake: FakeUpstream, name: str, target: str) -> str:
    """The fake Anthropic backend with one model ``name`` sent to it as ``target``."""
    return f"""
[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{fake.url}"
keys = ["{UPSTREAM_KEY}"]

[[models]]
name = "{name}"
upstream = "claude"
target = "{target}"
"""


def client(live: Live) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=0)


async def usage_rows(live: Live) -> list[UsageEvent]:
    await flushed(live)
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UsageEvent).order_by(UsageEvent.id)))


def message(content: list[dict[str, Any]], stop_reason: str, **usage: int) -> dict[str, Any]:
    body = anthropic_message(model=TARGET)
    body["content"] = content
    body["stop_reason"] = stop_reason
    body["usage"].update(usage)
    return body


def start_event(**usage: int) -> bytes:
    msg = anthropic_message(model=TARGET)
    msg.update(content=[], stop_reason=None)
    msg["usage"].update(dict({"output_tokens": 1}, **usage))
    return anthropic_event("message_start", {"type": "message_start", "message": msg})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return anthropic_event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def block_delta(index: int, delta: dict[str, Any]) -> bytes:
    return anthropic_event(
        "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
    )


def block_stop(index: int) -> bytes:
    return anthropic_event("content_block_stop", {"type": "content_block_stop", "index": index})


def end_events(stop_reason: str, output_tokens: int) -> list[bytes]:
    return [
        anthropic_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        anthropic_event("message_stop", {"type": "message_stop"}),
    ]


def tool_block(index: int, tool_id: str, name: str, fragments: list[str]) -> list[bytes]:
    out = [block_start(index, {"type": "tool_use", "id": tool_id, "name": name, "input": {}})]
    out += [block_delta(index, {"type": "input_json_delta", "partial_json": f}) for f in fragments]
    return out + [block_stop(index)]


def text_block(index: int, text: str) -> list[bytes]:
    return [
        block_start(index, {"type": "text", "text": ""}),
        block_delta(index, {"type": "text_delta", "text": text}),
        block_stop(index),
    ]


class GetWeather(BaseModel):
    """Current weather for a city."""

    city: str


class Weather(BaseModel):
    city: str
    temperature_c: float


# -- chat.completions.create ---------------------------------------------------------------------


async def test_create_translates_both_ways(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(JsonReply(body=anthropic_message("Hello there!", TARGET, 11, 7)))
    async with client(live) as sdk:
        completion = await sdk.chat.completions.create(
            model="gpt-claude",
            max_tokens=100,
            temperature=0.5,
            stop="END",
            messages=[
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Again?"},
            ],
        )
    sent = fake_anthropic.received[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["X-Api-Key"] == UPSTREAM_KEY
    assert sent.headers["Anthropic-Version"] == "2023-06-01"
    assert "Authorization" not in sent.headers
    assert TEST_KEY not in orjson.dumps(sent.headers).decode()
    assert sent.json == {
        "model": TARGET,
        "max_tokens": 100,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Again?"},
        ],
        "stop_sequences": ["END"],
        "temperature": 0.5,
    }
    assert completion.id == "chatcmpl-fake"
    assert (completion._request_id or "").startswith("req_")
    assert (completion.object, completion.model) == ("chat.completion", "gpt-claude")
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert (choice.index, choice.finish_reason) == (0, "stop")
    assert (choice.message.role, choice.message.content) == ("assistant", "Hello there!")
    assert choice.message.tool_calls is None
    assert completion.usage is not None
    assert (
        completion.usage.prompt_tokens,
        completion.usage.completion_tokens,
        completion.usage.total_tokens,
    ) == (11, 7, 18)
    rows = await usage_rows(live)
    assert [
        (r.client_dialect, r.requested_model, r.target_model, r.upstream, r.status) for r in rows
    ] == [("openai", "gpt-claude", TARGET, "claude", "ok")]


async def test_default_max_tokens_per_model(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    hi: Any = [{"role": "user", "content": "hi"}]
    async with client(live) as sdk:
        await sdk.chat.completions.create(model="gpt-claude", messages=hi)
        await sdk.chat.completions.create(model="gpt-claude", messages=hi, max_tokens=9000)
        await sdk.chat.completions.create(
            model="gpt-claude", messages=hi, max_completion_tokens=300
        )
        await sdk.chat.completions.create(model="gpt-claude-plain", messages=hi)
        await sdk.chat.completions.create(model="gpt-claude-window", messages=hi)
    # The route's max_tokens is the default and the cap; without one, 4096, but no more than
    # the context window leaves: "hi" is estimated at 5 tokens (1 + 4 of message overhead).
    assert [r.json["max_tokens"] for r in fake_anthropic.received] == [
        2048,
        2048,
        300,
        4096,
        3000 - 5,
    ]


# -- streaming -----------------------------------------------------------------------------------


async def test_stream_with_include_usage(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(
        SSEReply(anthropic_stream(["Hel", "lo"], TARGET, input_tokens=20, output_tokens=3))
    )
    async with client(live) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-claude",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
    sent = fake_anthropic.received[0].json
    assert sent == {
        "model": TARGET,
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    assert {c.id for c in chunks} == {"chatcmpl-fake"}
    assert {c.model for c in chunks} == {"gpt-claude"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.role for c in chunks[1:] if c.choices] == [None] * (len(chunks) - 2)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert [c.usage for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (
        20,
        3,
        23,
    )
    fake_anthropic.push(SSEReply(anthropic_stream(["x"], TARGET, 5, 1)))
    raw = await http(
        "POST",
        live.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        json={
            "model": "gpt-claude",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    frames = [f for f in raw.content.decode().split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    payloads = [orjson.loads(f.removeprefix("data: ")) for f in frames[:-1]]
    # "usage": null on every chunk, then one choices-less usage chunk (PROTOCOL.md §5.3).
    assert [p["usage"] for p in payloads[:-1]] == [None] * (len(payloads) - 1)
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["total_tokens"] == 6
    rows = await usage_rows(live)
    assert [(r.stream, r.input_tokens, r.output_tokens, r.tokens_estimated) for r in rows] == [
        (True, 20, 3, False),
        (True, 5, 1, False),
    ]


async def test_stream_without_include_usage_has_no_usage(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(SSEReply(anthropic_stream(["a", "b"], TARGET, 20, 3)))
    fake_anthropic.push(SSEReply(anthropic_stream(["a", "b"], TARGET, 20, 3)))
    body = {"model": "gpt-claude", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with client(live) as sdk:
        stream = await sdk.chat.completions.create(**body)  # type: ignore[call-overload]
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "ab"
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    raw = await http(
        "POST",
        live.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        json=body,
    )
    frames = [f for f in raw.content.decode().split("\n\n") if f]
    assert frames[-1] == "data: [DONE]"
    payloads = [orjson.loads(f.removeprefix("data: ")) for f in frames[:-1]]
    # Not even "usage": null when the client did not ask for usage (PROTOCOL.md §7.2).
    assert all("usage" not in p for p in payloads)
    assert all(p["object"] == "chat.completion.chunk" for p in payloads)
    rows = await usage_rows(live)
    assert [(r.input_tokens, r.output_tokens, r.tokens_estimated) for r in rows] == [
        (20, 3, False),
        (20, 3, False),
    ]


async def test_stream_helper_with_tools(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(
        SSEReply(
            [start_event(input_tokens=50)]
            + text_block(0, "Checking.")
            + tool_block(1, "toolu_01Abc", "GetWeather", ['{"city":', ' "Paris"}'])
            + end_events("tool_use", 21)
        )
    )
    tool = openai.pydantic_function_tool(GetWeather)
    async with client(live) as sdk:
        async with sdk.chat.completions.stream(
            model="gpt-claude",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[tool],
            tool_choice="required",
            parallel_tool_calls=False,
        ) as stream:
            kinds = [e.type async for e in stream]
            final = await stream.get_final_completion()
    assert fake_anthropic.received[0].json == {
        "model": TARGET,
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [
            {
                "name": "GetWeather",
                "description": "Current weather for a city.",
                "input_schema": to_strict_json_schema(GetWeather),
            }
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "stream": True,
    }
    assert "tool_calls.function.arguments.done" in kinds
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    assert (calls[0].id, calls[0].type) == ("toolu_01Abc", "function")
    assert calls[0].function.name == "GetWeather"
    assert orjson.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert calls[0].function.parsed_arguments == GetWeather(city="Paris")


async def test_parallel_tool_calls_streamed_and_whole(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(
        SSEReply(
            [start_event()]
            + text_block(0, "Both.")
            + tool_block(1, "toolu_A", "get_weather", ['{"city":"Paris"}'])
            + tool_block(2, "toolu_B", "get_weather", ['{"city":', '"Rome"}'])
            + end_events("tool_use", 30)
        ),
        JsonReply(
            body=message(
                [
                    {
                        "type": "tool_use",
                        "id": "toolu_A",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {
                        "type": "tool_use",
                        "id": "toolu_B",
                        "name": "get_weather",
                        "input": {"city": "Rome"},
                    },
                ],
                "tool_use",
            )
        ),
    )
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    messages: Any = [{"role": "user", "content": "Paris and Rome?"}]
    async with client(live) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-claude",
            messages=messages,
            tools=tools,
            stream=True,
        )
        deltas = [
            tc.model_dump(exclude_none=True)
            async for c in stream
            for tc in (c.choices[0].delta.tool_calls or [])
        ]
        whole = await sdk.chat.completions.create(
            model="gpt-claude",
            messages=messages,
            tools=tools,
        )
    # The OpenAI index counts tool calls only, not the Anthropic block index.
    assert deltas == [
        {
            "index": 0,
            "id": "toolu_A",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {"index": 0, "function": {"arguments": '{"city":"Paris"}'}},
        {
            "index": 1,
            "id": "toolu_B",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {"index": 1, "function": {"arguments": '{"city":'}},
        {"index": 1, "function": {"arguments": '"Rome"}'}},
    ]
    assert fake_anthropic.received[0].json["tools"] == [
        {
            "name": "get_weather",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ]
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert [c.type for c in choice.message.tool_calls or []] == ["function", "function"]
    assert [
        (c.id, c.function.name, orjson.loads(c.function.arguments))
        for c in choice.message.tool_calls or []
        if c.type == "function"
    ] == [
        ("toolu_A", "get_weather", {"city": "Paris"}),
        ("toolu_B", "get_weather", {"city": "Rome"}),
    ]


async def test_tool_result_round_trip(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    async with client(live) as sdk:
        await sdk.chat.completions.create(
            model="gpt-claude",
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "toolu_A",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "toolu_A", "content": "sunny"},
                {"role": "user", "content": "Thanks"},
            ],
            tools=[{"type": "function", "function": {"name": "get_weather"}}],
        )
    assert fake_anthropic.received[0].json["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_A",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_A", "content": "sunny"},
                {"type": "text", "text": "Thanks"},
            ],
        },
    ]


# -- content -------------------------------------------------------------------------------------


async def test_images_become_image_blocks(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    async with client(live) as sdk:
        await sdk.chat.completions.create(
            model="gpt-claude",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare these."},
                        {
                            "type": "image_url",
                            "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"},
                        },
                        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                    ],
                }
            ],
        )
    assert fake_anthropic.received[0].json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare these."},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ],
        }
    ]


async def test_parse_with_pydantic_response_format(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(
        JsonReply(
            body=message(
                [
                    {
                        "type": "tool_use",
                        "id": "toolu_json",
                        "name": "Weather",
                        "input": {"city": "Paris", "temperature_c": 21.5},
                    }
                ],
                "tool_use",
            )
        )
    )
    async with client(live) as sdk:
        completion = await sdk.chat.completions.parse(
            model="gpt-claude",
            messages=[{"role": "user", "content": "Weather in Paris as JSON"}],
            response_format=Weather,
        )
    sent = fake_anthropic.received[0].json
    assert sent == {
        "model": TARGET,
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": "Weather in Paris as JSON"}],
        "tools": [
            {
                "name": "Weather",
                "description": JSON_TOOL_DESCRIPTION,
                "input_schema": to_strict_json_schema(Weather),
            }
        ],
        "tool_choice": {"type": "tool", "name": "Weather"},
    }
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert orjson.loads(choice.message.content or "") == {"city": "Paris", "temperature_c": 21.5}
    assert choice.message.parsed == Weather(city="Paris", temperature_c=21.5)


async def test_stream_helper_with_pydantic_response_format(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(
        SSEReply(
            [start_event()]
            + tool_block(0, "toolu_json", "Weather", ['{"city": "Oslo", ', '"temperature_c": -3}'])
            + end_events("tool_use", 15)
        )
    )
    async with client(live) as sdk:
        async with sdk.chat.completions.stream(
            model="gpt-claude",
            messages=[{"role": "user", "content": "Weather in Oslo as JSON"}],
            response_format=Weather,
        ) as stream:
            final = await stream.get_final_completion()
    sent = fake_anthropic.received[0].json
    assert sent["stream"] is True
    assert sent["tool_choice"] == {"type": "tool", "name": "Weather"}
    choice = final.choices[0]
    # The forced JSON tool streams out as content, finishing with "stop" (PROTOCOL.md §7.2).
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls in (None, [])
    assert choice.message.content == '{"city": "Oslo", "temperature_c": -3}'
    assert choice.message.parsed == Weather(city="Oslo", temperature_c=-3)


async def test_reasoning_effort_becomes_thinking(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(
        JsonReply(
            body=message(
                [
                    {"type": "thinking", "thinking": "Six sevens.", "signature": "EqQBsig"},
                    {"type": "text", "text": "42"},
                ],
                "end_turn",
            )
        )
    )
    async with client(live) as sdk:
        completion = await sdk.chat.completions.create(
            model="gpt-claude-plain",
            messages=[{"role": "user", "content": "6*7?"}],
            reasoning_effort="medium",
            temperature=0.3,
        )
    sent = fake_anthropic.received[0].json
    assert sent == {
        "model": TARGET,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "6*7?"}],
        # temperature is dropped: Anthropic accepts only 1 with thinking on.
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }
    assert sent["thinking"]["budget_tokens"] < sent["max_tokens"]
    msg = completion.choices[0].message
    assert msg.content == "42"
    assert (msg.model_extra or {})["reasoning_content"] == "Six sevens."


async def test_reasoning_effort_on_a_model_that_thinks_adaptively(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    """Claude 4.6 and later are asked to think as Claude Code asks them: adaptive thinking
    with an effort, no budget."""
    live = await gateway(one_model(fake_anthropic, "gpt-claude-plain", "claude-opus-4-8"))
    thought = {"type": "thinking", "thinking": "Six sevens.", "signature": "EqQBsig"}
    fake_anthropic.push(
        JsonReply(body=message([thought, {"type": "text", "text": "42"}], "end_turn"))
    )
    async with client(live) as sdk:
        completion = await sdk.chat.completions.create(
            model="gpt-claude-plain",
            messages=[{"role": "user", "content": "6*7?"}],
            reasoning_effort="high",
        )
    assert fake_anthropic.received[0].json == {
        "model": "claude-opus-4-8",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "6*7?"}],
        "thinking": {"type": "adaptive", "display": "summarized"},
        "output_config": {"effort": "high"},
    }
    msg = completion.choices[0].message
    assert msg.content == "42"
    assert (msg.model_extra or {})["reasoning_content"] == "Six sevens."


async def test_a_model_that_refuses_budgets_is_asked_adaptively_from_then_on(
    gateway, fake_anthropic
):  # type: ignore[no-untyped-def]
    """A Claude model the gateway cannot tell by name (here behind a custom name) answers a
    budget with Opus 4.7's 400: the request goes again adaptively, and so does every later
    one for that upstream and model, a client's own thinking budget included."""
    live = await gateway(one_model(fake_anthropic, "house-model", "house-model-v2"))
    message = (
        '"thinking.type.enabled" is not supported for this model. Use "thinking.type.adaptive" '
        'and "output_config.effort" to control thinking behavior.'
    )
    fake_anthropic.push(
        JsonReply(
            400, {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
        )
    )
    asked: list[dict[str, Any]] = [
        {"reasoning_effort": "high"},
        {"extra_body": {"thinking": {"type": "enabled", "budget_tokens": 1024}}},
    ]
    async with client(live) as sdk:
        for extra in asked:
            completion = await sdk.chat.completions.create(
                model="house-model", messages=[{"role": "user", "content": "6*7?"}], **extra
            )
            assert completion.choices[0].message.content == "fake reply"
    sent = [(r.json.get("thinking"), r.json.get("output_config")) for r in fake_anthropic.received]
    adaptive = {"type": "adaptive", "display": "summarized"}
    assert sent == [
        ({"type": "enabled", "budget_tokens": 4096}, None),
        (adaptive, {"effort": "high"}),
        (adaptive, {"effort": "low"}),
    ]
    rows = await usage_rows(live)
    assert [(r.status, r.http_status) for r in rows] == [("ok", 200), ("ok", 200)]


async def test_replayed_thinking_blocks_another_backend_signed_are_left_out(
    gateway, fake_anthropic
):  # type: ignore[no-untyped-def]
    """LiteLLM-style ``thinking_blocks`` signed elsewhere: Anthropic's 400 names the
    signature, and the request goes again without them (and, as the last turn is plain
    text, still with thinking)."""
    live = await gateway(config(fake_anthropic))
    refusal = {
        "type": "error",
        "error": {
            "type": "invalid_request_error",
            "message": "messages.1.content.0: Invalid `signature` in `thinking` block",
        },
    }
    fake_anthropic.push(JsonReply(400, refusal))
    history: Any = [
        {"role": "user", "content": "6*7?"},
        {
            "role": "assistant",
            "content": "42",
            "thinking_blocks": [
                {"type": "thinking", "thinking": "Six sevens.", "signature": "c2lnLWVsc2V3aGVyZQ=="}
            ],
        },
        {"role": "user", "content": "and 6*8?"},
    ]
    async with client(live) as sdk:
        completion = await sdk.chat.completions.create(
            model="gpt-claude-plain", messages=history, reasoning_effort="medium"
        )
    first, second = (r.json for r in fake_anthropic.received)
    assert first["messages"][1]["content"][0]["signature"] == "c2lnLWVsc2V3aGVyZQ=="
    assert second == dict(
        first,
        messages=[
            {"role": "user", "content": "6*7?"},
            {"role": "assistant", "content": [{"type": "text", "text": "42"}]},
            {"role": "user", "content": "and 6*8?"},
        ],
    )
    assert second["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert completion.choices[0].message.content == "fake reply"


async def test_reasoning_effort_streamed_as_reasoning_content(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(
        SSEReply(
            [
                start_event(),
                block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
                block_delta(0, {"type": "thinking_delta", "thinking": "Need "}),
                block_delta(0, {"type": "thinking_delta", "thinking": "care."}),
                block_delta(0, {"type": "signature_delta", "signature": "EqQBsig"}),
                block_stop(0),
                *text_block(1, "Done."),
                *end_events("end_turn", 40),
            ]
        )
    )
    async with client(live) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-claude-plain",
            messages=[{"role": "user", "content": "Go"}],
            reasoning_effort="low",
            max_completion_tokens=3000,
            stream=True,
        )
        deltas = [c.choices[0].delta async for c in stream]
    sent = fake_anthropic.received[0].json
    assert (sent["max_tokens"], sent["thinking"]) == (
        3000,
        {"type": "enabled", "budget_tokens": 1024},
    )
    reasoning = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert reasoning == "Need care."
    assert "".join(d.content or "" for d in deltas) == "Done."


async def test_streamed_thinking_blocks_keep_thinking_on_through_a_tool_loop(
    gateway, fake_anthropic
):  # type: ignore[no-untyped-def]
    """The ``openai`` SDK's stream helper gathers the signed thinking block into
    ``thinking_blocks``; sent back with the call (as LiteLLM-style clients do), it lets the
    next turn keep thinking on: without it, Anthropic's rule for a turn that called a tool
    turns thinking off."""
    live = await gateway(config(fake_anthropic))
    call = {"type": "tool_use", "id": "toolu_01W", "name": "get_weather", "input": {}}
    fake_anthropic.push(
        SSEReply(
            [
                start_event(),
                block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
                block_delta(0, {"type": "thinking_delta", "thinking": "Need the "}),
                block_delta(0, {"type": "thinking_delta", "thinking": "weather."}),
                block_delta(0, {"type": "signature_delta", "signature": "EqQBsig"}),
                block_stop(0),
                block_start(1, call),
                block_delta(1, {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'}),
                block_stop(1),
                *end_events("tool_use", 40),
            ]
        ),
        SSEReply(anthropic_stream(["Sunny."], TARGET)),
    )
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    history: Any = [{"role": "user", "content": "Weather in Paris?"}]
    async with client(live) as sdk:
        async with sdk.chat.completions.stream(
            model="gpt-claude-plain", messages=history, tools=tools, reasoning_effort="low"
        ) as stream:
            first = (await stream.get_final_completion()).choices[0].message
        blocks = (first.model_extra or {})["thinking_blocks"]
        assert blocks == [
            {
                "index": 0,
                "type": "thinking",
                "thinking": "Need the weather.",
                "signature": "EqQBsig",
            }
        ]
        history += [
            first.model_dump(include={"role", "content", "tool_calls"})
            | {"thinking_blocks": blocks},
            {"role": "tool", "tool_call_id": "toolu_01W", "content": "Sunny, 21C"},
        ]
        second = await sdk.chat.completions.create(
            model="gpt-claude-plain", messages=history, tools=tools, reasoning_effort="low",
            stream=True,
        )  # fmt: skip
        assert "".join([c.choices[0].delta.content or "" async for c in second]) == "Sunny."
    sent = fake_anthropic.received[1].json
    assert sent["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assistant = sent["messages"][1]
    assert assistant["content"][0] == {
        "type": "thinking",
        "thinking": "Need the weather.",
        "signature": "EqQBsig",
    }
    assert assistant["content"][1]["type"] == "tool_use"


async def test_thinking_budget_fits_under_the_route_cap(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    async with client(live) as sdk:
        await sdk.chat.completions.create(
            model="gpt-claude",
            messages=[{"role": "user", "content": "Think hard"}],
            reasoning_effort="high",
        )
    sent = fake_anthropic.received[0].json
    # The route caps output at 2048 tokens: "high" (a 4096-token budget) cannot fit under it,
    # so the budget shrinks instead of max_tokens being raised past the cap.
    assert (sent["max_tokens"], sent["thinking"]) == (
        2048,
        {"type": "enabled", "budget_tokens": 1024},
    )


async def test_prompt_cache_breakpoints(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic, model="prompt_cache = true"))
    async with client(live) as sdk:
        await sdk.chat.completions.create(
            model="gpt-claude",
            messages=[
                {"role": "system", "content": "Long instructions."},
                {"role": "user", "content": "one"},
                {"role": "assistant", "content": "two"},
                {"role": "user", "content": "three"},
            ],
        )
    sent = fake_anthropic.received[0].json
    mark = {"type": "ephemeral"}
    assert sent["system"] == [{"type": "text", "text": "Long instructions.", "cache_control": mark}]
    assert sent["messages"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": [{"type": "text", "text": "two", "cache_control": mark}]},
        {"role": "user", "content": "three"},
    ]


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_anthropic_529_is_503_overloaded(gateway, fake_anthropic, stream):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(
        JsonReply(
            529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
        )
    )
    async with client(live) as sdk:
        with pytest.raises(openai.InternalServerError) as info:
            await sdk.chat.completions.create(
                model="gpt-claude", messages=[{"role": "user", "content": "hi"}], stream=stream
            )
    assert fake_anthropic.received[0].json.get("stream") is (True if stream else None)
    assert info.value.status_code == 503
    assert info.value.body == {
        "message": "Overloaded",
        "type": "server_error",
        "param": None,
        "code": "overloaded",
    }
    rows = await usage_rows(live)
    assert [(r.status, r.error_type) for r in rows] == [("error", "overloaded_error")]


async def test_anthropic_429_keeps_retry_after(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    text = "Number of request tokens has exceeded your per-minute rate limit"
    fake_anthropic.push(
        JsonReply(
            429,
            {"type": "error", "error": {"type": "rate_limit_error", "message": text}},
            headers={"retry-after": "12"},
        )
    )
    async with client(live) as sdk:
        with pytest.raises(openai.RateLimitError) as info:
            await sdk.chat.completions.create(
                model="gpt-claude", messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "12"
    assert info.value.body == {
        "message": text,
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }


async def test_anthropic_400_message_verbatim(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    text = "prompt is too long: 215000 tokens > 200000 maximum"
    fake_anthropic.push(
        JsonReply(
            400, {"type": "error", "error": {"type": "invalid_request_error", "message": text}}
        )
    )
    async with client(live) as sdk:
        with pytest.raises(openai.BadRequestError) as info:
            await sdk.chat.completions.create(
                model="gpt-claude", messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.status_code == 400
    # OpenAI's code for it, which OpenAI clients test for.
    assert info.value.code == "context_length_exceeded"
    assert info.value.body == {
        "message": text,
        "type": "invalid_request_error",
        "param": None,
        "code": "context_length_exceeded",
    }
    # A client error is not retried on another key or upstream.
    assert len(fake_anthropic.received) == 1


async def test_in_stream_error_event_raises_in_sdk(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(
        SSEReply(
            [
                start_event(),
                *text_block(0, "Par"),
                anthropic_event(
                    "error",
                    {
                        "type": "error",
                        "error": {"type": "overloaded_error", "message": "Overloaded"},
                    },
                ),
            ]
        )
    )
    seen: list[str] = []
    async with client(live) as sdk:
        stream = await sdk.chat.completions.create(
            model="gpt-claude", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError) as info:
            async for c in stream:
                seen.append(c.choices[0].delta.content or "")
    assert "".join(seen) == "Par"
    assert info.value.message == "Overloaded"
    assert info.value.body == {
        "message": "Overloaded",
        "type": "server_error",
        "param": None,
        "code": "overloaded",
    }
    rows = await usage_rows(live)
    assert [(r.status, r.error_type) for r in rows] == [("error", "overloaded_error")]


# -- models and usage ----------------------------------------------------------------------------


async def test_models_list_in_openai_shape(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    async with client(live) as sdk:
        page = await sdk.models.list()
        one = await sdk.models.retrieve("gpt-claude")
    assert [m.id for m in page.data] == ["gpt-claude", "gpt-claude-plain", "gpt-claude-window"]
    assert all(m.object == "model" for m in page.data)
    assert all(isinstance(m.created, int) and isinstance(m.owned_by, str) for m in page.data)
    assert (one.id, one.object) == ("gpt-claude", "model")
    raw = await http(
        "GET", live.url + "/v1/models", headers={"Authorization": f"Bearer {TEST_KEY}"}
    )
    assert raw.json()["object"] == "list"
    assert fake_anthropic.received == []


async def test_usage_counts_cache_in_prompt_tokens(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic))
    fake_anthropic.push(
        JsonReply(
            body=message(
                [{"type": "text", "text": "ok"}],
                "end_turn",
                input_tokens=10,
                cache_read_input_tokens=100,
                cache_creation_input_tokens=50,
                output_tokens=7,
            )
        ),
        SSEReply(
            [
                start_event(
                    input_tokens=10, cache_read_input_tokens=100, cache_creation_input_tokens=50
                ),
                *text_block(0, "ok"),
                *end_events("end_turn", 9),
            ]
        ),
    )
    async with client(live) as sdk:
        whole = await sdk.chat.completions.create(
            model="gpt-claude", messages=[{"role": "user", "content": "hi"}]
        )
        stream = await sdk.chat.completions.create(
            model="gpt-claude",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        streamed = [c.usage async for c in stream if c.usage is not None]
    usage = whole.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (160, 7, 167)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 100
    assert len(streamed) == 1
    assert (streamed[0].prompt_tokens, streamed[0].completion_tokens) == (160, 9)
    assert streamed[0].prompt_tokens_details is not None
    assert streamed[0].prompt_tokens_details.cached_tokens == 100
    rows = await usage_rows(live)
    assert [
        (
            r.input_tokens,
            r.cache_read_tokens,
            r.cache_write_tokens,
            r.output_tokens,
            r.tokens_estimated,
        )
        for r in rows
    ] == [(10, 100, 50, 7, False), (10, 100, 50, 9, False)]
