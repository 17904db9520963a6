"""Anthropic clients in front of an OpenAI-kind upstream, end to end (issue 3).

The official ``anthropic`` SDK talks to the real server, which translates to a fake
OpenAI-compatible backend. Every test pins both sides: the exact Chat Completions body the
fake received and the exact result the SDK hands back.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import anthropic
import orjson
import pytest
from sqlalchemy import select

from app.db.models import UsageEvent
from app.dialects.sse import OPENAI_DONE, openai_chunk
from app.dialects.tokens import estimate_anthropic_input
from tests.conftest import TEST_KEY, Live, flushed, http
from tests.fakes import FakeUpstream, JsonReply, SSEReply, openai_completion, openai_stream

pytestmark = pytest.mark.gen_test(timeout=30)

MODEL = "claude-team-large"
TARGET = "qwen3-coder"
UPSTREAM_KEY = "sk-local-upstream"
# A 1x1 PNG.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER_TOOL: Any = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
WEATHER_FUNCTION = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
# Claude Code's own regex for the context-limit 400 it answers by lowering max_tokens.
CLAUDE_CODE_CONTEXT_RE = re.compile(
    r"input length and `max_tokens` exceed context limit: (\d+) \+ (\d+) > (\d+)"
)
CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "captures"


def config(fake: FakeUpstream, *, upstream: str = "", model: str = "") -> str:
    return f"""
[[upstreams]]
name = "local"
kind = "openai"
base_url = "{fake.url}"
keys = ["{UPSTREAM_KEY}"]
{upstream}

[[models]]
name = "claude-*"
upstream = "local"
target = "{TARGET}"
{model}
"""


def client(live: Live) -> anthropic.AsyncAnthropic:
    # An explicit timeout: without one the SDK refuses non-streaming calls with a large
    # max_tokens ("Streaming is required for operations that may take longer than 10 minutes").
    return anthropic.AsyncAnthropic(
        base_url=live.url, api_key=TEST_KEY, max_retries=0, timeout=30.0
    )


async def usage_rows(live: Live) -> list[UsageEvent]:
    await flushed(live)
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UsageEvent).order_by(UsageEvent.id)))


BASE_CHUNK = {
    "id": "chatcmpl-e2e",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": TARGET,
}


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return openai_chunk(
        dict(BASE_CHUNK, choices=[{"index": 0, "delta": delta, "finish_reason": finish}])
    )


def usage_chunk(prompt: int, completion: int, cached: int = 0) -> bytes:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return openai_chunk(dict(BASE_CHUNK, choices=[], usage=usage))


def completion(message: dict[str, Any], finish: str, **extra: Any) -> dict[str, Any]:
    body = openai_completion(model=TARGET)
    body["choices"][0]["message"] = dict({"role": "assistant"}, **message)
    body["choices"][0]["finish_reason"] = finish
    body["choices"][0].update(extra)
    return body


def dump(obj: Any) -> Any:
    """An SDK model as plain JSON data (what the wire carried, None fields included)."""
    return obj.model_dump(mode="json", exclude_unset=True)


# -- messages.create -----------------------------------------------------------------------------


async def test_create_with_system_and_multi_turn(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(JsonReply(body=openai_completion("Fine, thanks.", TARGET)))
    async with client(live) as sdk:
        message = await sdk.messages.create(
            model=MODEL,
            max_tokens=200,
            system=[
                {"type": "text", "text": "You are terse."},
                {
                    "type": "text",
                    "text": "Answer in English.",
                    "cache_control": {"type": "ephemeral"},
                },
            ],
            # This SDK release has no temperature argument; the API still takes the field.
            extra_body={"temperature": 0.2},
            messages=[
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
                {"role": "user", "content": [{"type": "text", "text": "How are you?"}]},
            ],
        )
    sent = fake_openai.received[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert TEST_KEY not in orjson.dumps(sent.headers).decode()
    assert sent.json == {
        "model": TARGET,
        "messages": [
            {"role": "system", "content": "You are terse.\n\nAnswer in English."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "How are you?"},
        ],
        "max_tokens": 200,
        "temperature": 0.2,
    }
    assert message.id.startswith("msg_")
    assert (message._request_id or "").startswith("req_")
    assert (message.type, message.role, message.model) == ("message", "assistant", MODEL)
    assert [dump(b) for b in message.content] == [{"type": "text", "text": "Fine, thanks."}]
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    assert dump(message.usage) == {
        "input_tokens": 11,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 7,
    }
    rows = await usage_rows(live)
    assert [
        (r.client_dialect, r.requested_model, r.target_model, r.upstream, r.status) for r in rows
    ] == [("anthropic", MODEL, TARGET, "local", "ok")]


async def test_stream_get_final_message(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(
        SSEReply(openai_stream(["Hel", "lo", " there"], TARGET, prompt=20, completion=3))
    )
    async with client(live) as sdk:
        async with sdk.messages.stream(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            texts = [t async for t in stream.text_stream]
            final = await stream.get_final_message()
    assert fake_openai.received[0].json == {
        "model": TARGET,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 50,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert texts == ["Hel", "lo", " there"]
    assert [dump(b) for b in final.content] == [{"type": "text", "text": "Hello there"}]
    assert (final.stop_reason, final.model) == ("end_turn", MODEL)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 3)
    rows = await usage_rows(live)
    assert [(r.stream, r.input_tokens, r.output_tokens, r.tokens_estimated) for r in rows] == [
        (True, 20, 3, False)
    ]


# -- tools ---------------------------------------------------------------------------------------


async def test_tool_use_round_trip_non_streaming(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(
        JsonReply(
            body=completion(
                {
                    "content": "Let me check.",
                    "tool_calls": [
                        {
                            "id": "call_abc123",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        }
                    ],
                },
                "tool_calls",
            )
        ),
        JsonReply(body=openai_completion("It is sunny in Paris.", TARGET)),
    )
    question: Any = {"role": "user", "content": "Weather in Paris?"}
    async with client(live) as sdk:
        first = await sdk.messages.create(
            model=MODEL,
            max_tokens=300,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "auto"},
            messages=[question],
        )
        assert [dump(b) for b in first.content] == [
            {"type": "text", "text": "Let me check."},
            {
                "type": "tool_use",
                "id": "call_abc123",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ]
        assert first.stop_reason == "tool_use"
        tool_use = first.content[1]
        assert isinstance(tool_use, anthropic.types.ToolUseBlock)
        second = await sdk.messages.create(
            model=MODEL,
            max_tokens=300,
            tools=[WEATHER_TOOL],
            messages=[
                question,
                {"role": "assistant", "content": first.content},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": tool_use.id,
                            "content": "sunny, 24C",
                        },
                        {"type": "text", "text": "Thanks!"},
                    ],
                },
            ],
        )
    assert fake_openai.received[0].json == {
        "model": TARGET,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "max_tokens": 300,
        "tools": [WEATHER_FUNCTION],
        "tool_choice": "auto",
    }
    assert fake_openai.received[1].json == {
        "model": TARGET,
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_abc123", "content": "sunny, 24C"},
            {"role": "user", "content": "Thanks!"},
        ],
        "max_tokens": 300,
        "tools": [WEATHER_FUNCTION],
    }
    assert [dump(b) for b in second.content] == [{"type": "text", "text": "It is sunny in Paris."}]
    assert second.stop_reason == "end_turn"


async def test_tool_use_streamed(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    call = {"index": 0, "id": "call_s1", "type": "function"}
    fake_openai.push(
        SSEReply(
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": "Checking."}),
                chunk(
                    {"tool_calls": [dict(call, function={"name": "get_weather", "arguments": ""})]}
                ),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Rome"}'}}]}),
                chunk({}, "tool_calls"),
                usage_chunk(40, 12),
                OPENAI_DONE,
            ]
        )
    )
    async with client(live) as sdk:
        async with sdk.messages.stream(
            model=MODEL,
            max_tokens=300,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            messages=[{"role": "user", "content": "Weather in Rome?"}],
        ) as stream:
            events = [e.type async for e in stream]
            final = await stream.get_final_message()
    assert fake_openai.received[0].json == {
        "model": TARGET,
        "messages": [{"role": "user", "content": "Weather in Rome?"}],
        "max_tokens": 300,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [WEATHER_FUNCTION],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }
    assert [dump(b) for b in final.content] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_s1", "name": "get_weather", "input": {"city": "Rome"}},
    ]
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 12)
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "input_json" in events


# -- content -------------------------------------------------------------------------------------


async def test_base64_image_becomes_data_url(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(JsonReply(body=openai_completion("A single pixel.", TARGET)))
    async with client(live) as sdk:
        message = await sdk.messages.create(
            model=MODEL,
            max_tokens=100,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                    ],
                }
            ],
        )
    assert fake_openai.received[0].json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
            ],
        }
    ]
    assert [dump(b) for b in message.content] == [{"type": "text", "text": "A single pixel."}]


async def test_thinking_from_a_reasoning_upstream(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, upstream='reasoning = "replay"'))
    fake_openai.push(
        JsonReply(
            body=completion({"content": "42.", "reasoning_content": "6 times 7 is 42."}, "stop")
        )
    )
    async with client(live) as sdk:
        message = await sdk.messages.create(
            model=MODEL,
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 2048},
            messages=[
                {"role": "user", "content": "What is 2+2?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "Simple sum.", "signature": ""},
                        {"type": "text", "text": "4."},
                    ],
                },
                {"role": "user", "content": "And 6*7?"},
            ],
        )
    assert fake_openai.received[0].json == {
        "model": TARGET,
        "messages": [
            {"role": "user", "content": "What is 2+2?"},
            # reasoning = "replay": earlier thinking goes back as reasoning_content.
            {"role": "assistant", "content": "4.", "reasoning_content": "Simple sum."},
            {"role": "user", "content": "And 6*7?"},
        ],
        "max_tokens": 4096,
        "reasoning_effort": "medium",
    }
    assert [dump(b) for b in message.content] == [
        {"type": "thinking", "thinking": "6 times 7 is 42.", "signature": ""},
        {"type": "text", "text": "42."},
    ]


async def test_thinking_streamed_from_vllm_reasoning_field(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, upstream='reasoning = "replay"'))
    fake_openai.push(
        SSEReply(
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"reasoning": "Think "}),
                chunk({"reasoning": "hard."}),
                chunk({"content": "Done."}),
                chunk({}, "stop"),
                usage_chunk(30, 9),
                OPENAI_DONE,
            ]
        )
    )
    async with client(live) as sdk:
        async with sdk.messages.stream(
            model=MODEL,
            max_tokens=8000,
            thinking={"type": "enabled", "budget_tokens": 5000},
            messages=[{"role": "user", "content": "Go"}],
        ) as stream:
            final = await stream.get_final_message()
    assert fake_openai.received[0].json["reasoning_effort"] == "high"
    assert [dump(b) for b in final.content] == [
        {"type": "thinking", "thinking": "Think hard.", "signature": ""},
        {"type": "text", "text": "Done."},
    ]


@pytest.mark.parametrize(
    ("policy", "effort", "assistant"),
    [
        ("strip", "low", {"role": "assistant", "content": "4."}),
        ("off", None, {"role": "assistant", "content": "4."}),
    ],
)
async def test_reasoning_policy_shapes_the_request(gateway, fake_openai, policy, effort, assistant):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, upstream=f'reasoning = "{policy}"'))
    async with client(live) as sdk:
        await sdk.messages.create(
            model=MODEL,
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=[
                {"role": "user", "content": "What is 2+2?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "Simple sum.", "signature": ""},
                        {"type": "text", "text": "4."},
                    ],
                },
                {"role": "user", "content": "Sure?"},
            ],
        )
    sent = fake_openai.received[0].json
    assert sent["messages"][1] == assistant
    assert sent.get("reasoning_effort") == effort


@pytest.mark.parametrize("switch", [True, False], ids=["chat_template_thinking", "unset"])
async def test_chat_template_thinking_tells_the_template_per_request(gateway, fake_openai, switch):  # type: ignore[no-untyped-def]
    """Qwen3, GLM-4.5 and DeepSeek-V3.1 behind vLLM, SGLang or llama.cpp ignore
    reasoning_effort and think as their chat template says (Qwen3: unless told not to). With
    the upstream's chat_template_thinking, a request that asks for thinking tells the
    template to think and one that does not (Claude Code's background calls) tells it not to;
    without the setting nothing is added."""
    setting = "chat_template_thinking = true" if switch else ""
    live = await gateway(config(fake_openai, upstream=setting))
    async with client(live) as sdk:
        await sdk.messages.create(
            model=MODEL,
            max_tokens=4096,
            thinking={"type": "enabled", "budget_tokens": 2048},
            messages=[{"role": "user", "content": "Plan the refactor."}],
        )
        await sdk.messages.create(
            model=MODEL,
            max_tokens=50,
            messages=[{"role": "user", "content": "A title for this session, please."}],
        )
    sent = [r.json for r in fake_openai.received]
    assert [s.get("reasoning_effort") for s in sent] == ["medium", None]
    if switch:
        assert [s["chat_template_kwargs"] for s in sent] == [
            {"enable_thinking": True, "thinking": True},
            {"enable_thinking": False, "thinking": False},
        ]
    else:
        assert ["chat_template_kwargs" in s for s in sent] == [False, False]


async def test_a_route_s_own_chat_template_kwargs_win(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(
        config(
            fake_openai,
            upstream="chat_template_thinking = true",
            model='params = { chat_template_kwargs = { enable_thinking = true, mode = "fast" } }',
        )
    )
    async with client(live) as sdk:
        await sdk.messages.create(
            model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    sent = fake_openai.received[0].json
    assert sent["chat_template_kwargs"] == {"enable_thinking": True, "mode": "fast"}


async def twice_after_a_refusal(
    live: Live, fake: FakeUpstream, refusal: Any, body: dict[str, Any]
) -> list[dict[str, Any]]:
    """``body`` sent twice while the backend refuses the first try with ``refusal``: both
    answers come back ("first" and "second"); what the backend received, three bodies."""
    fake.push(
        JsonReply(400, refusal),
        JsonReply(200, openai_completion("first")),
        JsonReply(200, openai_completion("second")),
    )
    async with client(live) as sdk:
        first = await sdk.messages.create(**body)
        second = await sdk.messages.create(**body)
    assert [b.text for b in first.content if b.type == "text"] == ["first"]
    assert [b.text for b in second.content if b.type == "text"] == ["second"]
    return [r.json for r in fake.received]


async def test_a_backend_that_refuses_chat_template_kwargs_is_asked_again_without_it(
    gateway, fake_openai
):  # type: ignore[no-untyped-def]
    """A strict OpenAI-compatible server (FastAPI, extra="forbid") refuses the field: the
    request goes again without it, and that upstream and model are not sent it again."""
    live = await gateway(config(fake_openai, upstream="chat_template_thinking = true"))
    refusal = {"detail": [{"type": "extra_forbidden", "loc": ["body", "chat_template_kwargs"],
                           "msg": "Extra inputs are not permitted",
                           "input": {"enable_thinking": False, "thinking": False}}]}  # fmt: skip
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "hi"}],
    }
    sent = await twice_after_a_refusal(live, fake_openai, refusal, body)
    assert [s.get("chat_template_kwargs") for s in sent] == [
        {"enable_thinking": False, "thinking": False},
        None,
        None,
    ]
    assert sent[0] | {"chat_template_kwargs": None} == sent[1] | {"chat_template_kwargs": None}


async def test_stop_sequence_reported_by_vllm(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(JsonReply(body=completion({"content": "1, 2, 3"}, "stop", stop_reason="END")))
    async with client(live) as sdk:
        message = await sdk.messages.create(
            model=MODEL,
            max_tokens=100,
            stop_sequences=["END", "STOP"],
            messages=[{"role": "user", "content": "Count"}],
        )
    assert fake_openai.received[0].json["stop"] == ["END", "STOP"]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")


# -- max_tokens ----------------------------------------------------------------------------------


async def test_max_tokens_clamped_by_route_cap(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, model="max_tokens = 1000"))
    async with client(live) as sdk:
        await sdk.messages.create(
            model=MODEL, max_tokens=32000, messages=[{"role": "user", "content": "hi"}]
        )
        await sdk.messages.create(
            model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "hi"}]
        )
    assert [r.json["max_tokens"] for r in fake_openai.received] == [1000, 200]


async def test_a_route_cap_below_the_thinking_budget_keeps_the_reasoning(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """The cap limits the output; the reasoning_effort still comes from the client's budget
    (PROTOCOL.md §6.7), as without the cap."""
    live = await gateway(config(fake_openai, model="max_tokens = 1000"))
    async with client(live) as sdk:
        await sdk.messages.create(
            model=MODEL,
            max_tokens=5000,
            thinking={"type": "enabled", "budget_tokens": 2000},
            messages=[{"role": "user", "content": "hi"}],
        )
    sent = fake_openai.received[0].json
    assert (sent["max_tokens"], sent.get("reasoning_effort")) == (1000, "medium")


async def test_max_tokens_zero_is_a_400_naming_the_field(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """Anthropic takes max_tokens 0 to pre-warm its prompt cache without an answer; no
    OpenAI-compatible backend can, so the client hears so in its own dialect."""
    live = await gateway(config(fake_openai))
    async with client(live) as sdk:
        with pytest.raises(anthropic.BadRequestError) as info:
            await sdk.messages.create(
                model=MODEL, max_tokens=0, messages=[{"role": "user", "content": "hi"}]
            )
    assert fake_openai.received == []
    assert info.value.type == "invalid_request_error"
    assert (info.value.api_message or "").startswith(
        "max_tokens: Input should be greater than or equal to 1"
    )


async def test_max_tokens_clamped_to_fit_context_window(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, model="context_window = 4096"))
    async with client(live) as sdk:
        await sdk.messages.create(
            model=MODEL, max_tokens=32000, messages=[{"role": "user", "content": "hi"}]
        )
    # The input "hi" is estimated at 5 tokens (1 of text, 4 of message overhead).
    assert fake_openai.received[0].json["max_tokens"] == 4096 - 5


async def test_input_that_cannot_fit_is_a_400_with_counts(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, model="context_window = 100"))
    async with client(live) as sdk:
        with pytest.raises(anthropic.BadRequestError) as info:
            await sdk.messages.create(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "x" * 1000}]
            )
    assert fake_openai.received == []
    assert info.value.type == "invalid_request_error"
    found = CLAUDE_CODE_CONTEXT_RE.search(info.value.api_message or "")
    assert found is not None
    # 1000 ASCII characters at 3.5 a token, plus 4 of message overhead.
    assert found.groups() == ("290", "64", "100")


# -- count_tokens --------------------------------------------------------------------------------


async def test_count_tokens_via_backend_tokenizer(gateway, fake_openai):  # type: ignore[no-untyped-def]
    tokenize = f"http://127.0.0.1:{fake_openai.port}/tokenize"
    live = await gateway(config(fake_openai, upstream=f'tokenize_url = "{tokenize}"'))
    fake_openai.push(JsonReply(body={"count": 321, "max_model_len": 32768, "tokens": [1] * 321}))
    async with client(live) as sdk:
        counted = await sdk.messages.count_tokens(
            model=MODEL,
            system="Be brief.",
            tools=[WEATHER_TOOL],
            messages=[{"role": "user", "content": "Weather in Oslo?"}],
        )
    assert counted.input_tokens == 321
    sent = fake_openai.received[0]
    assert sent.path == "/tokenize"
    assert sent.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert sent.json == {
        "model": TARGET,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo?"},
        ],
        "tools": [WEATHER_FUNCTION],
    }


async def test_count_tokens_local_estimate(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    body = {
        "model": MODEL,
        "system": "Be brief.",
        "tools": [WEATHER_TOOL],
        "messages": [{"role": "user", "content": "Weather in Oslo?"}],
    }
    async with client(live) as sdk:
        counted = await sdk.messages.count_tokens(**body)  # type: ignore[arg-type]
    assert fake_openai.received == []
    assert counted.input_tokens == estimate_anthropic_input(body) > 0


async def test_count_tokens_falls_back_to_estimate_when_tokenizer_fails(gateway, fake_openai):  # type: ignore[no-untyped-def]
    tokenize = f"http://127.0.0.1:{fake_openai.port}/tokenize"
    live = await gateway(config(fake_openai, upstream=f'tokenize_url = "{tokenize}"'))
    fake_openai.push(JsonReply(500, {"error": "tokenizer crashed"}))
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}]}
    async with client(live) as sdk:
        counted = await sdk.messages.count_tokens(**body)  # type: ignore[arg-type]
    assert [r.path for r in fake_openai.received] == ["/tokenize"]
    assert counted.input_tokens == estimate_anthropic_input(body) > 0


# -- errors --------------------------------------------------------------------------------------


async def test_vllm_context_length_400_in_anthropic_wording(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    vllm_message = (
        "'max_tokens' or 'max_completion_tokens' is too large: 32000. This model's maximum "
        "context length is 32768 tokens and your request has 1200 input tokens "
        "(32000 > 32768 - 1200). (parameter=max_tokens, value=32000)"
    )
    fake_openai.push(
        JsonReply(
            400,
            {
                "object": "error",
                "message": vllm_message,
                "type": "BadRequestError",
                "param": None,
                "code": 400,
            },
        )
    )
    async with client(live) as sdk:
        with pytest.raises(anthropic.BadRequestError) as info:
            await sdk.messages.create(
                model=MODEL, max_tokens=32000, messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.status_code == 400
    assert info.value.type == "invalid_request_error"
    assert info.value.api_message == (
        "input length and `max_tokens` exceed context limit: 1200 + 32000 > 32768"
    )
    found = CLAUDE_CODE_CONTEXT_RE.search(info.value.api_message)
    assert found is not None and found.groups() == ("1200", "32000", "32768")
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type) for r in rows] == [
        ("error", 400, "invalid_request_error")
    ]


async def test_an_output_limit_400_in_the_wording_claude_code_retries_on(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """OpenAI's "supports at most 16384 completion tokens" names no context: with the
    gateway's own input estimate it reads as Anthropic's context-limit error, on which
    Claude Code lowers its max_tokens (32,000) under the model's limit and asks again."""
    live = await gateway(config(fake_openai))
    message = (
        "max_tokens is too large: 32000. This model supports at most 16384 completion tokens, "
        "whereas you provided 32000."
    )
    error = {"message": message, "type": "invalid_request_error", "param": "max_tokens"}
    fake_openai.push(JsonReply(400, {"error": error | {"code": "invalid_value"}}))
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 32000,
        "messages": [{"role": "user", "content": "hello " * 400}],
    }
    async with client(live) as sdk:
        with pytest.raises(anthropic.BadRequestError) as info:
            await sdk.messages.create(**body)
    found = CLAUDE_CODE_CONTEXT_RE.search(info.value.api_message)
    assert found is not None
    estimate = estimate_anthropic_input(body)
    assert found.groups() == (str(estimate), "32000", str(estimate + 16384))
    assert fake_openai.received[0].json["max_tokens"] == 32000


@pytest.mark.parametrize(
    "refusal",
    [
        {"error": {"message": "Unrecognized request argument supplied: reasoning_effort",
                   "type": "invalid_request_error", "param": None, "code": None}},
        {"error": {"message": "Unsupported parameter: 'reasoning_effort' is not supported with "
                   "this model.", "type": "invalid_request_error", "param": "reasoning_effort",
                   "code": "unsupported_parameter"}},
        {"error": '"llama3.2:latest" does not support thinking'},  # Ollama
    ],
)  # fmt: skip
async def test_a_backend_that_refuses_reasoning_effort_is_asked_again_without_it(
    gateway, fake_openai, refusal
):  # type: ignore[no-untyped-def]
    """Claude Code always asks for thinking; a backend without it refuses the
    ``reasoning_effort`` the gateway adds. The request goes again without it, and later
    requests to that upstream and model leave it out from the start."""
    live = await gateway(config(fake_openai))
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": [{"role": "user", "content": "hi"}],
    }
    sent = await twice_after_a_refusal(live, fake_openai, refusal, body)
    assert ["reasoning_effort" in s for s in sent] == [True, False, False]
    assert sent[0] | {"reasoning_effort": None} == sent[1] | {"reasoning_effort": None}
    rows = await usage_rows(live)
    assert [(r.status, r.http_status) for r in rows] == [("ok", 200), ("ok", 200)]


async def test_a_backend_that_refuses_null_content_gets_empty_strings(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """A turn that only called a tool goes with ``"content": null`` (OpenAI's form); Ollama
    refuses it ("invalid message content type: <nil>"). Sent again with ``""``, and so from
    then on for that upstream and model."""
    live = await gateway(config(fake_openai))
    refusal = {"error": {"message": "invalid message content type: <nil>",
                         "type": "invalid_request_error", "param": None, "code": None}}  # fmt: skip
    call = {
        "type": "tool_use",
        "id": "toolu_01W",
        "name": "get_weather",
        "input": {"city": "Paris"},
    }
    body: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 256,
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [call]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_01W", "content": "21C"}],
            },
        ],
    }
    sent = [s["messages"][1] for s in await twice_after_a_refusal(live, fake_openai, refusal, body)]
    assert [m["content"] for m in sent] == [None, "", ""]
    assert all(m["tool_calls"][0]["id"] == "toolu_01W" for m in sent)
    rows = await usage_rows(live)
    assert [(r.status, r.http_status) for r in rows] == [("ok", 200), ("ok", 200)]


async def test_any_other_400_is_the_client_s_and_not_sent_again(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    error = {"message": "messages.0.content: unsupported content", "type": "invalid_request_error"}
    fake_openai.push(JsonReply(400, {"error": error}))
    async with client(live) as sdk:
        with pytest.raises(anthropic.BadRequestError) as info:
            await sdk.messages.create(
                model=MODEL,
                max_tokens=2048,
                thinking={"type": "enabled", "budget_tokens": 1024},
                messages=[{"role": "user", "content": "hi"}],
            )
    assert info.value.api_message == "messages.0.content: unsupported content"
    assert len(fake_openai.received) == 1


async def test_upstream_429_is_rate_limit_error_with_retry_after(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(
        JsonReply(
            429,
            {
                "error": {
                    "message": "Rate limit reached for requests",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            },
            headers={"retry-after": "7"},
        )
    )
    async with client(live) as sdk:
        with pytest.raises(anthropic.RateLimitError) as info:
            await sdk.messages.create(
                model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.status_code == 429
    assert info.value.type == "rate_limit_error"
    assert info.value.api_message == "Rate limit reached for requests"
    assert info.value.response.headers["retry-after"] == "7"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_upstream_503_is_529_overloaded(gateway, fake_openai, stream):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(
        JsonReply(503, {"error": {"message": "Server is overloaded", "type": "server_error"}})
    )
    async with client(live) as sdk:
        with pytest.raises(anthropic.OverloadedError) as info:
            if stream:
                async with sdk.messages.stream(
                    model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
                ) as events:
                    await events.get_final_message()
            else:
                await sdk.messages.create(
                    model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
                )
    assert fake_openai.received[0].json.get("stream") is (True if stream else None)
    assert info.value.status_code == 529
    assert info.value.type == "overloaded_error"
    assert info.value.api_message == "Server is overloaded"


@pytest.mark.parametrize("cut", [False, True], ids=["ended-cleanly", "connection-dropped"])
async def test_stream_without_done_raises_in_stream_error(gateway, fake_openai, cut):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    # Neither finish_reason nor [DONE]: the answer is incomplete, not an end_turn.
    fake_openai.push(
        SSEReply(
            [chunk({"role": "assistant", "content": ""}), chunk({"content": "Partial"})], cut=cut
        )
    )
    seen: list[str] = []
    async with client(live) as sdk:
        with pytest.raises(anthropic.APIStatusError) as info:
            async with sdk.messages.stream(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                async for text in stream.text_stream:
                    seen.append(text)
    assert seen == ["Partial"]
    assert info.value.status_code == 200  # raised from the in-stream error event
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "api_error"
    if cut:
        # In words a user can read (Claude Code prints it), not aiohttp's.
        message = "upstream stream ended before completion: connection closed"
        assert body["error"]["message"] == message
    else:
        assert body["error"]["message"] == "upstream stream ended before completion"
    rows = await usage_rows(live)
    assert [(r.status, r.error_type, r.stream) for r in rows] == [("error", "api_error", True)]


async def test_mid_stream_error_payload_becomes_error_event(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    vllm_error = {
        "error": {
            "message": "The engine is overloaded, try again",
            "type": "ServiceUnavailableError",
            "code": 503,
        }
    }
    fake_openai.push(
        SSEReply(
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": "Hi"}),
                openai_chunk(vllm_error),
                OPENAI_DONE,
            ]
        )
    )
    seen: list[str] = []
    async with client(live) as sdk:
        with pytest.raises(anthropic.APIStatusError) as info:
            async with sdk.messages.stream(
                model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]
            ) as stream:
                async for text in stream.text_stream:
                    seen.append(text)
    assert seen == ["Hi"]
    # Claude Code retries a mid-stream error only when it is an overloaded_error.
    assert info.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "The engine is overloaded, try again"},
    }
    rows = await usage_rows(live)
    assert [(r.status, r.error_type) for r in rows] == [("error", "overloaded_error")]


# -- usage ---------------------------------------------------------------------------------------


async def test_usage_with_cache_read_non_streaming(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    body = openai_completion("ok", TARGET)
    body["usage"] = {
        "prompt_tokens": 1000,
        "completion_tokens": 5,
        "total_tokens": 1005,
        "prompt_tokens_details": {"cached_tokens": 600},
    }
    fake_openai.push(JsonReply(body=body))
    async with client(live) as sdk:
        message = await sdk.messages.create(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        )
    assert dump(message.usage) == {
        "input_tokens": 400,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 600,
        "output_tokens": 5,
    }
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
    ] == [(400, 600, 0, 5, False)]


async def test_usage_with_cache_read_streaming(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(
        SSEReply(
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"content": "ok"}),
                chunk({}, "stop"),
                usage_chunk(900, 4, cached=512),
                OPENAI_DONE,
            ]
        )
    )
    async with client(live) as sdk:
        async with sdk.messages.stream(
            model=MODEL, max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = await stream.get_final_message()
    assert (
        final.usage.input_tokens,
        final.usage.cache_read_input_tokens,
        final.usage.output_tokens,
    ) == (388, 512, 4)
    rows = await usage_rows(live)
    assert [
        (r.input_tokens, r.cache_read_tokens, r.output_tokens, r.tokens_estimated) for r in rows
    ] == [(388, 512, 4, False)]


# -- a real Claude Code request ------------------------------------------------------------------


def parse_sse(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    """(event name, data) per SSE event; independent of the gateway's own parser."""
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            events.append((name, orjson.loads("\n".join(data))))
    return events


def assert_anthropic_grammar(events: list[tuple[str | None, dict[str, Any]]]) -> None:
    """message_start, blocks one at a time with contiguous indices, message_delta, message_stop."""
    names = [name for name, _ in events]
    assert all(name == data["type"] for name, data in events), names
    assert names[0] == "message_start" and names.count("message_start") == 1
    assert names[-2:] == ["message_delta", "message_stop"]
    open_index: int | None = None
    next_index = 0
    kinds: dict[int, str] = {}
    for name, data in events[1:-2]:
        if name == "ping":
            continue
        if name == "content_block_start":
            assert open_index is None, "a block started while another was open"
            assert data["index"] == next_index
            kinds[next_index] = data["content_block"]["type"]
            open_index, next_index = next_index, next_index + 1
        elif name == "content_block_delta":
            assert data["index"] == open_index
            expected = {
                "text": "text_delta",
                "thinking": "thinking_delta",
                "tool_use": "input_json_delta",
            }[kinds[data["index"]]]
            assert data["delta"]["type"] == expected
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        else:
            raise AssertionError(f"unexpected {name} between message_start and message_delta")
    assert open_index is None and next_index > 0


async def test_claude_code_capture_replayed(gateway, fake_openai):  # type: ignore[no-untyped-def]
    path = CAPTURES / "claude-code" / "04-tool-bash" / "0002_POST_v1_messages.json"
    if not path.exists():
        pytest.skip(f"no Claude Code capture at {path}")
    capture = orjson.loads(path.read_bytes())
    body = capture["body"]
    headers = {name.lower(): value for name, value in capture["headers"]}
    live = await gateway(config(fake_openai))
    fake_openai.push(
        SSEReply(
            [
                chunk({"role": "assistant", "content": ""}),
                chunk({"reasoning_content": "The tool worked; run one more."}),
                chunk({"content": "It printed hello-from-tool."}),
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_bash2",
                                "type": "function",
                                "function": {"name": "Bash", "arguments": '{"command": "ec'},
                            }
                        ]
                    }
                ),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ho done"}'}}]}),
                chunk({}, "tool_calls"),
                usage_chunk(31000, 25, cached=30000),
                OPENAI_DONE,
            ]
        )
    )
    resp = await http(
        "POST",
        live.url + "/v1/messages?beta=true",
        headers={
            "x-api-key": TEST_KEY,
            "anthropic-beta": headers["anthropic-beta"],
            "anthropic-version": headers["anthropic-version"],
            "accept": "application/json",
            "user-agent": headers["user-agent"],
        },
        data=orjson.dumps(body),
    )
    assert resp.status == 200, resp.content[:500]
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert b"[DONE]" not in resp.content
    events = parse_sse(resp.content)
    assert_anthropic_grammar(events)
    start = events[0][1]["message"]
    assert start["model"] == body["model"]
    assert isinstance(start["usage"]["input_tokens"], int) and start["usage"]["input_tokens"] > 0
    blocks = [d["content_block"] for n, d in events if n == "content_block_start"]
    assert [b["type"] for b in blocks] == ["thinking", "text", "tool_use"]
    assert (blocks[2]["id"], blocks[2]["name"]) == ("call_bash2", "Bash")
    args = "".join(
        d["delta"]["partial_json"]
        for n, d in events
        if n == "content_block_delta" and d["index"] == 2
    )
    assert orjson.loads(args) == {"command": "echo done"}
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"] == {
        "input_tokens": 1000,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 30000,
        "output_tokens": 25,
    }

    sent = fake_openai.received[0].json
    assert sent["model"] == TARGET
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == body["max_tokens"]
    assert sent["reasoning_effort"] == "high"  # budget 31999
    assert sent["user"] == hashlib.sha256(body["metadata"]["user_id"].encode()).hexdigest()
    for dropped in ("thinking", "context_management", "metadata", "system"):
        assert dropped not in sent
    assert [t["function"]["name"] for t in sent["tools"]] == [t["name"] for t in body["tools"]]
    assert all(set(t) == {"type", "function"} for t in sent["tools"])
    roles = [m["role"] for m in sent["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    tool_use = body["messages"][1]["content"][0]
    assert sent["messages"][2]["tool_calls"] == [
        {
            "id": tool_use["id"],
            "type": "function",
            "function": {"name": "Bash", "arguments": orjson.dumps(tool_use["input"]).decode()},
        }
    ]
    assert sent["messages"][3] == {
        "role": "tool",
        "tool_call_id": tool_use["id"],
        "content": "hello-from-tool",
    }
    assert "x-anthropic-billing-header" not in sent["messages"][0]["content"]
    rows = await usage_rows(live)
    assert [(r.status, r.input_tokens, r.cache_read_tokens, r.output_tokens) for r in rows] == [
        ("ok", 1000, 30000, 25)
    ]


async def test_claude_code_count_tokens_capture_replayed(gateway, fake_openai):  # type: ignore[no-untyped-def]
    path = CAPTURES / "claude-code" / "20-interactive" / "0016_POST_v1_messages_count_tokens.json"
    if not path.exists():
        pytest.skip(f"no Claude Code capture at {path}")
    capture = orjson.loads(path.read_bytes())
    body = capture["body"]
    headers = {name.lower(): value for name, value in capture["headers"]}
    tokenize = f"http://127.0.0.1:{fake_openai.port}/tokenize"
    live = await gateway(config(fake_openai, upstream=f'tokenize_url = "{tokenize}"'))
    fake_openai.push(JsonReply(body={"count": 13500}), JsonReply(503, {"error": "busy"}))
    claude_code_headers = {
        "x-api-key": TEST_KEY,
        "anthropic-beta": headers["anthropic-beta"],
        "anthropic-version": headers["anthropic-version"],
    }
    url = live.url + "/v1/messages/count_tokens?beta=true"
    counted = await http("POST", url, headers=claude_code_headers, data=orjson.dumps(body))
    estimated = await http("POST", url, headers=claude_code_headers, data=orjson.dumps(body))
    assert (counted.status, counted.json()) == (200, {"input_tokens": 13500})
    # The tokenizer failed the second time: the local estimate, never 0.
    assert (estimated.status, estimated.json()) == (
        200,
        {"input_tokens": estimate_anthropic_input(body)},
    )
    assert estimated.json()["input_tokens"] > 1000
    sent = fake_openai.received[0]
    assert sent.path == "/tokenize"
    assert set(sent.json) == {"model", "messages", "tools"}
    assert sent.json["model"] == TARGET
    assert sent.json["messages"] == [{"role": "user", "content": "foo"}]
    assert [t["function"]["name"] for t in sent.json["tools"]] == [t["name"] for t in body["tools"]]
