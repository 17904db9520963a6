"""OpenAI Responses API clients (``client.responses``) through the gateway, end to end.

The official ``openai`` SDK calls ``POST /v1/responses`` on the real server, which runs the
request as a Chat Completions one: as is to a fake OpenAI-compatible backend, translated to a
fake Anthropic one. Each test pins the exact body the backend received and what the SDK made
of the answer, streamed (through the SDK's own event accumulator) or whole.
"""

from __future__ import annotations

import time
from typing import Any

import openai
import orjson
import pytest
from sqlalchemy import select

from app.db.models import UsageEvent
from app.dialects.sse import OPENAI_DONE, anthropic_event
from app.translate.anthropic_to_openai_messages import IMAGE_MARKER
from tests.conftest import TEST_KEY, Live, flushed, http
from tests.fakes import (
    FakeUpstream,
    JsonReply,
    SSEReply,
    anthropic_block,
    anthropic_end,
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_delta,
    openai_stream,
    openai_usage,
)

pytestmark = pytest.mark.gen_test(timeout=30)

LOCAL = "qwen3-coder"
CLAUDE = "claude-sonnet-4-5"
WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "Get weather",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
        "additionalProperties": False,
    },
    "strict": True,
}
CHAT_WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get weather",
        "parameters": WEATHER_TOOL["parameters"],
        "strict": True,
    },
}
SIGNATURE = "EqQBCkYIARgCIkD" + "s" * 40
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def config(fake_openai: FakeUpstream | None, fake_anthropic: FakeUpstream | None) -> str:
    """``gpt-local`` on the OpenAI-compatible fake, ``gpt-claude`` on the Anthropic one."""
    out = ""
    if fake_openai is not None:
        out += f"""
[[upstreams]]
name = "local"
kind = "openai"
base_url = "{fake_openai.url}"
keys = ["sk-local"]

[[models]]
name = "gpt-local"
upstream = "local"
target = "{LOCAL}"
"""
    if fake_anthropic is not None:
        out += f"""
[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{fake_anthropic.url}"
keys = ["sk-ant"]

[[models]]
name = "gpt-claude"
upstream = "claude"
target = "{CLAUDE}"
max_tokens = 2048
"""
    return out


def client(live: Live) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=0)


async def usage_rows(live: Live) -> list[UsageEvent]:
    await flushed(live)
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UsageEvent).order_by(UsageEvent.id)))


def chat_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return openai_delta(delta, finish, LOCAL)


def chat_usage(prompt: int, completion: int, cached: int = 0) -> bytes:
    return openai_usage(prompt, completion, LOCAL, cached)


def anthropic_tool_stream(*, thinking: bool) -> list[bytes]:
    """Claude thinking (signed), then calling get_weather, its input in three fragments."""
    start = anthropic_message("", CLAUDE, 30, 1)
    start.update(content=[], stop_reason=None)
    out = [anthropic_event("message_start", {"type": "message_start", "message": start})]
    index = 0
    if thinking:
        out += anthropic_block(
            0,
            {"type": "thinking", "thinking": "", "signature": ""},
            [
                {"type": "thinking_delta", "thinking": "Paris, "},
                {"type": "thinking_delta", "thinking": "so the weather tool."},
                {"type": "signature_delta", "signature": SIGNATURE},
            ],
        )
        index = 1
    out += anthropic_block(
        index,
        {"type": "tool_use", "id": "toolu_w1", "name": "get_weather", "input": {}},
        [
            {"type": "input_json_delta", "partial_json": '{"loca'},
            {"type": "input_json_delta", "partial_json": 'tion": "Pa'},
            {"type": "input_json_delta", "partial_json": 'ris"}'},
        ],
    )
    return out + anthropic_end("tool_use", 25)


# -- an OpenAI-compatible backend: the request goes as a chat one ------------------------------


async def test_create_to_openai_backend(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, None))
    fake_openai.push(JsonReply(body=openai_completion("Hello!", LOCAL, prompt_tokens=12)))
    async with client(live) as sdk:
        response = await sdk.responses.create(
            model="gpt-local",
            instructions="be terse",
            input="say hi",
            max_output_tokens=50,
            temperature=0.2,
        )
    sent = fake_openai.received[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == "Bearer sk-local"
    assert sent.json == {
        "model": LOCAL,
        "messages": [
            {"role": "system", "content": "be terse"},
            {"role": "user", "content": "say hi"},
        ],
        "max_tokens": 50,
        "temperature": 0.2,
    }
    assert response.id.startswith("resp_")
    assert (response._request_id or "").startswith("req_")
    # The name the client asked for, in a whole answer as in every event of a stream.
    assert (response.object, response.status, response.model) == (
        "response",
        "completed",
        "gpt-local",
    )
    assert response.output_text == "Hello!"
    assert [item.type for item in response.output] == ["message"]
    assert (response.instructions, response.max_output_tokens) == ("be terse", 50)
    assert response.usage is not None
    assert (
        response.usage.input_tokens,
        response.usage.output_tokens,
        response.usage.total_tokens,
    ) == (12, 7, 19)
    rows = await usage_rows(live)
    assert [
        (r.client_dialect, r.endpoint, r.requested_model, r.target_model, r.status) for r in rows
    ] == [("openai", "responses", "gpt-local", LOCAL, "ok")]
    assert [(r.input_tokens, r.output_tokens, r.tokens_estimated) for r in rows] == [(12, 7, False)]


async def test_stream_to_openai_backend(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, None))
    fake_openai.push(SSEReply(openai_stream(["Hel", "lo", "!"], LOCAL, prompt=20, completion=3)))
    async with client(live) as sdk:
        async with sdk.responses.stream(
            model="gpt-local", input=[{"role": "user", "content": "say hi (stream)"}]
        ) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_response()
    sent = fake_openai.received[0].json
    assert sent == {
        "model": LOCAL,
        "messages": [{"role": "user", "content": "say hi (stream)"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # The order the SDK's own capture of OpenAI printed (captures/openai-python-sdk).
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # One model name from the first event to the last (it changed to the backend's at the
    # end), the one the client asked for.
    named = [e.response.model for e in events if hasattr(e, "response")]
    assert named == ["gpt-local"] * 3 and final.model == "gpt-local"
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == [
        "Hel",
        "lo",
        "!",
    ]
    assert final.output_text == "Hello!"
    assert final.status == "completed"
    assert final.usage is not None
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 3)
    rows = await usage_rows(live)
    assert [(r.endpoint, r.stream, r.input_tokens, r.output_tokens) for r in rows] == [
        ("responses", True, 20, 3)
    ]


async def test_tool_round_trip_to_openai_backend(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, None))
    call = {
        "index": 0,
        "id": "call_w1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    fake_openai.push(
        SSEReply(
            [
                chat_chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
                chat_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"loc'}}]}),
                chat_chunk(
                    {"tool_calls": [{"index": 0, "function": {"arguments": 'ation": "Paris"}'}}]}
                ),
                chat_chunk({}, "tool_calls"),
                chat_usage(40, 9, cached=32),
                OPENAI_DONE,
            ]
        ),
        JsonReply(body=openai_completion("18C and sunny in Paris.", LOCAL)),
    )
    question: Any = [{"role": "user", "content": "weather in Paris?"}]
    async with client(live) as sdk:
        async with sdk.responses.stream(
            model="gpt-local", input=question, tools=[WEATHER_TOOL]
        ) as stream:
            events = [event async for event in stream]
            first = await stream.get_final_response()
        calls = [item for item in first.output if item.type == "function_call"]
        assert len(calls) == 1
        assert (calls[0].call_id, calls[0].name, calls[0].arguments) == (
            "call_w1",
            "get_weather",
            '{"location": "Paris"}',
        )
        assert [e.delta for e in events if e.type == "response.function_call_arguments.delta"] == [
            '{"loc',
            'ation": "Paris"}',
        ]
        assert first.usage is not None
        assert first.usage.input_tokens_details.cached_tokens == 32
        second = await sdk.responses.create(
            model="gpt-local",
            input=[
                *question,
                calls[0].model_dump(exclude_none=True),
                {"type": "function_call_output", "call_id": "call_w1", "output": "18C sunny"},
            ],
            tools=[WEATHER_TOOL],
        )
    assert fake_openai.received[0].json["tools"] == [CHAT_WEATHER_TOOL]
    assert fake_openai.received[1].json["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_w1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_w1", "content": "18C sunny"},
    ]
    assert second.output_text == "18C and sunny in Paris."


# -- an Anthropic backend: the chat request is translated once more -----------------------------


async def test_create_to_anthropic_backend(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config(None, fake_anthropic))
    fake_anthropic.push(JsonReply(body=anthropic_message("Bonjour!", CLAUDE, 15, 4)))
    async with client(live) as sdk:
        response = await sdk.responses.create(
            model="gpt-claude",
            input=[
                {"role": "developer", "content": "Answer in French."},
                {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
            ],
        )
    sent = fake_anthropic.received[0]
    assert sent.path == "/v1/messages"
    assert sent.json == {
        "model": CLAUDE,
        "max_tokens": 2048,
        "system": [{"type": "text", "text": "Answer in French."}],
        "messages": [{"role": "user", "content": "hello"}],
    }
    assert response.output_text == "Bonjour!"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (15, 4)


async def test_stream_tool_loop_with_thinking_to_anthropic(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    """Claude's signed thinking comes back as a reasoning item whose ``encrypted_content``
    is the signature; sent back with the call's output, it reaches Claude as it was."""
    live = await gateway(config(None, fake_anthropic))
    fake_anthropic.push(
        SSEReply(anthropic_tool_stream(thinking=True)),
        SSEReply(anthropic_stream(["It is 18C."], CLAUDE, 60, 5)),
    )
    question: Any = [{"role": "user", "content": "weather in Paris?"}]
    async with client(live) as sdk:
        async with sdk.responses.stream(
            model="gpt-claude",
            input=question,
            tools=[WEATHER_TOOL],
            reasoning={"effort": "high", "summary": "auto"},
            include=["reasoning.encrypted_content"],
        ) as stream:
            events = [event async for event in stream]
            first = await stream.get_final_response()
        assert [item.type for item in first.output] == ["reasoning", "function_call"]
        reasoning, call = first.output
        assert reasoning.type == "reasoning" and call.type == "function_call"
        assert [s.text for s in reasoning.summary] == ["Paris, so the weather tool."]
        assert reasoning.encrypted_content == SIGNATURE
        assert (call.call_id, call.name, call.arguments) == (
            "toolu_w1",
            "get_weather",
            '{"location": "Paris"}',
        )
        assert [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"] == [
            "Paris, ",
            "so the weather tool.",
        ]
        async with sdk.responses.stream(
            model="gpt-claude",
            input=[
                *question,
                reasoning.model_dump(exclude_none=True),
                call.model_dump(exclude_none=True),
                {"type": "function_call_output", "call_id": "toolu_w1", "output": "18C"},
            ],
            tools=[WEATHER_TOOL],
            reasoning={"effort": "high", "summary": "auto"},
            include=["reasoning.encrypted_content"],
        ) as stream:
            second = await stream.get_final_response()
    first_sent, second_sent = (r.json for r in fake_anthropic.received)
    # effort "high" (4096) within the route's 2048-token cap, as for a chat client.
    assert (first_sent["max_tokens"], first_sent["thinking"]) == (
        2048,
        {"type": "enabled", "budget_tokens": 1024},
    )
    assert first_sent["tools"] == [
        {
            "name": "get_weather",
            "description": "Get weather",
            "input_schema": WEATHER_TOOL["parameters"],
        }
    ]
    assert second_sent["messages"] == [
        {"role": "user", "content": "weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "thinking",
                    "thinking": "Paris, so the weather tool.",
                    "signature": SIGNATURE,
                },
                {
                    "type": "tool_use",
                    "id": "toolu_w1",
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_w1", "content": "18C"}],
        },
    ]
    assert second.output_text == "It is 18C."
    rows = await usage_rows(live)
    assert [(r.endpoint, r.input_tokens, r.output_tokens) for r in rows] == [
        ("responses", 30, 25),
        ("responses", 60, 5),
    ]


# -- errors, in the OpenAI envelope ---------------------------------------------------------------


async def test_errors_in_openai_envelope(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, None))
    async with client(live) as sdk:
        with pytest.raises(openai.BadRequestError) as bad:
            await sdk.responses.create(model="gpt-local", input="hi", previous_response_id="resp_1")
        assert bad.value.body["param"] == "previous_response_id"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await sdk.responses.create(model="no-such-model", input="hi")
    wrong = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key="bk-wrong", max_retries=0)
    async with wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.responses.create(model="gpt-local", input="hi")
    for body in (b"[1]", b'{"model": "gpt-local", "input": 5}', b"{not json"):
        resp = await http(
            "POST",
            live.url + "/v1/responses",
            data=body,
            headers={"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"},
        )
        assert resp.status == 400
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert isinstance(error["message"], str) and error["message"]
    assert fake_openai.received == []
    rows = await usage_rows(live)
    assert [(r.endpoint, r.http_status) for r in rows] == [
        ("responses", 400),
        ("responses", 404),
        ("responses", 401),
        ("responses", 400),
        ("responses", 400),
        ("responses", 400),
    ]


@pytest.mark.parametrize("mid_event", [False, True], ids=["between-events", "mid-event"])
async def test_upstream_failure_mid_stream_is_response_failed(gateway, fake_openai, mid_event):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, None))
    second = chat_chunk({"content": "f"})
    fake_openai.push(
        SSEReply(
            [
                chat_chunk({"role": "assistant", "content": "Hal"}),
                second[: len(second) // 2] if mid_event else second,
            ],
            cut=True,
        )
    )
    async with client(live) as sdk:
        stream = await sdk.responses.create(model="gpt-local", input="hi", stream=True)
        events = [event async for event in stream]
    assert [e.type for e in events][-1] == "response.failed"
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.status == "failed"
    assert failed.response.error is not None
    assert "ended before completion" in failed.response.error.message
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == (["Hal"] if mid_event else ["Hal", "f"])
    rows = await usage_rows(live)
    assert [(r.endpoint, r.status) for r in rows] == [("responses", "error")]


async def test_raw_stream_bytes_are_sse_with_event_names(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, None))
    fake_openai.push(SSEReply(openai_stream(["ok"], LOCAL)))
    resp = await http(
        "POST",
        live.url + "/openai/v1/responses",
        json={"model": "gpt-local", "input": "hi", "stream": True},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    frames = [f for f in resp.content.split(b"\n\n") if f]
    names = [f.split(b"\n")[0] for f in frames]
    datas = [orjson.loads(f.split(b"\n")[1].removeprefix(b"data: ")) for f in frames]
    assert names == [b"event: " + d["type"].encode() for d in datas]
    assert names[0] == b"event: response.created" and names[-1] == b"event: response.completed"
    assert b"[DONE]" not in resp.content


async def test_echo_backend_answers_responses_clients(gateway):  # type: ignore[no-untyped-def]
    """``make run`` with nothing configured: the echo backend answers the Responses API too."""
    live = await gateway("")
    before = time.time()
    async with client(live) as sdk:
        response = await sdk.responses.create(model="anything", input="Hello, echo")
        async with sdk.responses.stream(model="anything", input="Hello again") as stream:
            streamed = await stream.get_final_response()
    assert (response.status, response.output_text) == ("completed", "echo: Hello, echo")
    assert (streamed.status, streamed.output_text) == ("completed", "echo: Hello again")
    for done in (response, streamed):  # when it was completed, to the second
        assert done.completed_at is not None
        assert int(before) <= done.created_at <= done.completed_at <= time.time()


async def test_tool_output_image_reaches_an_openai_backend_as_a_user_image(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """Codex's view_image answers with an image in a ``function_call_output``: a chat backend
    takes only text in a tool message, so the image follows in a user message."""
    live = await gateway(config(fake_openai, None))
    fake_openai.push(JsonReply(body=openai_completion("A red pixel.", LOCAL)))
    url = "data:image/png;base64," + PNG
    call = {"type": "function_call", "call_id": "call_v1", "name": "view_image", "arguments": "{}"}
    output = [{"type": "input_image", "image_url": url, "detail": "high"}]
    async with client(live) as sdk:
        response = await sdk.responses.create(
            model="gpt-local",
            input=[
                {"role": "user", "content": "what is in img.png?"},
                call,
                {"type": "function_call_output", "call_id": "call_v1", "output": output},
            ],
        )
    assert fake_openai.received[0].json["messages"][2:] == [
        {"role": "tool", "tool_call_id": "call_v1", "content": IMAGE_MARKER},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url, "detail": "high"}}],
        },
    ]
    assert response.output_text == "A red pixel."


async def test_a_mistake_inside_an_input_item_is_named_by_its_input_index(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, None))
    image = {"type": "input_image", "image_url": "data:image/png;base64,!!!"}
    async with client(live) as sdk:
        with pytest.raises(openai.BadRequestError) as bad:
            await sdk.responses.create(
                model="gpt-local",
                instructions="sys",
                input=[{"role": "user", "content": [image]}],
            )
    error: Any = bad.value.body
    assert error["param"] == "input[0].content[0].image_url.url"
    assert "'input[0].content[0].image_url.url'" in error["message"]
    assert "messages" not in error["message"]
    assert fake_openai.received == []


async def test_a_backend_s_400_names_the_responses_field(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """The backend saw a chat body; its ``param`` (``messages[1].content``) is put as the
    Responses field the client sent (``input[0].content``), in the message too."""
    live = await gateway(config(fake_openai, None))
    refusal = {
        "message": "Invalid 'messages[1].content': string too long.",
        "type": "invalid_request_error",
        "param": "messages[1].content",
        "code": "string_above_max_length",
    }
    fake_openai.push(JsonReply(400, {"error": refusal}))
    async with client(live) as sdk:
        with pytest.raises(openai.BadRequestError) as bad:
            await sdk.responses.create(
                model="gpt-local", instructions="sys", input=[{"role": "user", "content": "x" * 10}]
            )
    error: Any = bad.value.body
    assert error == {
        "message": "Invalid 'input[0].content': string too long.",
        "type": "invalid_request_error",
        "param": "input[0].content",
        "code": "string_above_max_length",
    }
