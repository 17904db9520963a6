"""Same-dialect passthrough through the real server, with the official SDKs as clients."""

from __future__ import annotations

import anthropic
import openai
import orjson
import pytest
from sqlalchemy import select

from app.db.models import UsageEvent
from tests.conftest import TEST_KEY, flushed, http
from tests.fakes import FakeUpstream, JsonReply, SSEReply, anthropic_stream, openai_stream

pytestmark = pytest.mark.gen_test(timeout=30)


def openai_config(fake: FakeUpstream) -> str:
    return f"""
[[upstreams]]
name = "local"
kind = "openai"
base_url = "{fake.url}"
keys = ["sk-upstream-one"]

[[models]]
name = "gpt-test"
upstream = "local"
target = "qwen2.5:7b"
"""


def anthropic_config(fake: FakeUpstream) -> str:
    return f"""
[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{fake.url}"
keys = ["sk-ant-upstream-one"]

[[models]]
name = "claude-*"
upstream = "claude"
"""


async def usage_rows(live) -> list[UsageEvent]:  # type: ignore[no-untyped-def]
    await flushed(live)
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UsageEvent).order_by(UsageEvent.id)))


async def test_openai_sdk_passthrough_rewrites_model_and_key(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(openai_config(fake_openai))
    async with openai.AsyncOpenAI(
        base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=0
    ) as client:
        completion = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], temperature=0.3
        )
    assert completion.choices[0].message.content == "fake reply"
    sent = fake_openai.received[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.json == {
        "model": "qwen2.5:7b",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.3,
    }
    assert sent.headers["Authorization"] == "Bearer sk-upstream-one"
    assert TEST_KEY not in orjson.dumps(sent.headers).decode()
    rows = await usage_rows(live)
    assert [
        (r.key_name, r.requested_model, r.target_model, r.upstream, r.status) for r in rows
    ] == [("tester", "gpt-test", "qwen2.5:7b", "local", "ok")]
    assert (rows[0].input_tokens, rows[0].output_tokens, rows[0].tokens_estimated) == (11, 7, False)


async def test_openai_stream_relayed_and_usage_chunk_hidden_when_not_asked(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(openai_config(fake_openai))
    chunks = openai_stream(["Hel", "lo"], prompt=20, completion=3)
    fake_openai.push(SSEReply(chunks))
    if True:
        resp = await http(
            "POST",
            live.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {TEST_KEY}"},
            json={
                "model": "gpt-test",
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    usage_chunk = chunks[-2]
    assert resp.content == b"".join(c for c in chunks if c != usage_chunk)
    assert fake_openai.received[0].json["stream_options"] == {"include_usage": True}
    rows = await usage_rows(live)
    assert (rows[0].input_tokens, rows[0].output_tokens, rows[0].stream) == (20, 3, True)


async def test_openai_usage_chunk_cut_across_reads_is_still_hidden(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """The usage chunk the gateway asked for arrives in two reads: neither half may reach
    the client (half of it, then [DONE], made one broken JSON line for the SDK)."""
    live = await gateway(openai_config(fake_openai))
    chunks = openai_stream(["Hel", "lo"], prompt=20, completion=3)
    usage_chunk = chunks[-2]
    raw = b"".join(chunks)
    cut = raw.index(usage_chunk) + len(usage_chunk) // 2
    fake_openai.push(SSEReply([raw[:cut], raw[cut:]], delay=0.05))
    async with openai.AsyncOpenAI(
        base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        got = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "Hello"
    assert all(c.usage is None for c in got)
    rows = await usage_rows(live)
    assert (rows[0].input_tokens, rows[0].output_tokens) == (20, 3)


async def test_openai_stream_ending_without_a_blank_line_loses_nothing(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """An event without its blank line is held back (it may be a usage chunk to drop, or
    cut off); the body's end lets it through, ended, when it is whole."""
    live = await gateway(openai_config(fake_openai))
    chunks = openai_stream(["Hel", "lo"], prompt=20, completion=3)
    assert chunks[-1] == b"data: [DONE]\n\n"
    chunks[-1] = b"data: [DONE]\n"
    fake_openai.push(SSEReply(chunks, delay=0.02))
    resp = await http(
        "POST",
        live.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        json={"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status == 200
    assert resp.content == b"".join(c for c in chunks[:-2]) + b"data: [DONE]\n\n"
    rows = await usage_rows(live)
    assert (rows[0].status, rows[0].input_tokens, rows[0].output_tokens) == ("ok", 20, 3)


async def test_openai_sdk_stream_with_include_usage(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(openai_config(fake_openai))
    fake_openai.push(SSEReply(openai_stream(["a", "b", "c"], prompt=5, completion=3)))
    async with openai.AsyncOpenAI(
        base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=0
    ) as client:
        stream = await client.chat.completions.create(
            model="gpt-test",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage:
                usage = chunk.usage
    assert text == "abc"
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 3)


async def test_anthropic_sdk_passthrough_forwards_version_and_beta(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(anthropic_config(fake_anthropic))
    async with anthropic.AsyncAnthropic(
        base_url=live.url, api_key=TEST_KEY, max_retries=0
    ) as client:
        message = await client.messages.create(
            model="claude-team-large",
            max_tokens=100,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={
                "anthropic-beta": "prompt-caching-2024-07-31,oauth-2025-04-20",
                "anthropic-version": "2023-06-01",
            },
        )
    assert message.content[0].text == "fake reply"  # type: ignore[union-attr]
    sent = fake_anthropic.received[0]
    assert sent.path == "/v1/messages"
    assert sent.headers["X-Api-Key"] == "sk-ant-upstream-one"
    assert sent.headers["Anthropic-Version"] == "2023-06-01"
    assert sent.headers["Anthropic-Beta"] == "prompt-caching-2024-07-31,oauth-2025-04-20"
    assert "Authorization" not in sent.headers
    assert sent.json == {
        "model": "claude-team-large",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
    }


async def test_anthropic_sdk_stream_bytes_relayed_untouched(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(anthropic_config(fake_anthropic))
    chunks = anthropic_stream(["Hi", " there"], input_tokens=30, output_tokens=4)
    fake_anthropic.push(SSEReply(chunks))
    async with anthropic.AsyncAnthropic(
        base_url=live.url, auth_token=TEST_KEY, max_retries=0
    ) as client:
        async with client.messages.stream(
            model="claude-team-small", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            final = await stream.get_final_message()
    assert final.content[0].text == "Hi there"  # type: ignore[union-attr]
    assert final.usage.input_tokens == 30 and final.usage.output_tokens == 4
    rows = await usage_rows(live)
    assert (rows[0].input_tokens, rows[0].output_tokens, rows[0].status) == (30, 4, "ok")


async def test_anthropic_raw_stream_is_byte_identical(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(anthropic_config(fake_anthropic))
    chunks = anthropic_stream(["x"])
    fake_anthropic.push(SSEReply(chunks))
    if True:
        resp = await http(
            "POST",
            live.url + "/anthropic/v1/messages?beta=true",
            headers={"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"},
            json={
                "model": "claude-x",
                "max_tokens": 5,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    assert resp.content == b"".join(chunks)


async def test_unsigned_thinking_blocks_are_stripped_for_anthropic_upstreams(
    gateway, fake_anthropic
):  # type: ignore[no-untyped-def]
    live = await gateway(anthropic_config(fake_anthropic))
    history = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "from a local model", "signature": ""},
                {"type": "thinking", "thinking": "genuine", "signature": "EqQBsig"},
                {"type": "text", "text": "answer"},
            ],
        },
        {"role": "user", "content": "next"},
        # A reasoning-only answer from an OpenAI backend: nothing left once stripped.
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": ""}]},
        {"role": "user", "content": "and?"},
    ]
    resp = await http(
        "POST",
        live.url + "/v1/messages",
        headers={"x-api-key": TEST_KEY},
        json={"model": "claude-x", "max_tokens": 5, "messages": history},
    )
    assert resp.status == 200
    sent = fake_anthropic.received[0].json["messages"]
    assert sent[1]["content"] == [
        {"type": "thinking", "thinking": "genuine", "signature": "EqQBsig"},
        {"type": "text", "text": "answer"},
    ]
    # The emptied assistant message is gone (Anthropic refuses empty content): the two
    # user turns around it go as they are, which Anthropic takes as one.
    assert sent[2:] == [{"role": "user", "content": "next"}, {"role": "user", "content": "and?"}]


SIGNATURE_400 = {
    "type": "error",
    "error": {
        "type": "invalid_request_error",
        "message": "messages.1.content.0: Invalid `signature` in `thinking` block",
    },
}


async def test_a_refused_signature_is_sent_again_without_the_history_s_thinking(
    gateway, fake_anthropic
):  # type: ignore[no-untyped-def]
    """Signatures made by another Anthropic-compatible backend (a session moved between
    backends): one 400 naming them, then the history goes without thinking. The last turn
    calls a tool, and with thinking on Anthropic wants it to start with genuine thinking,
    so this one request goes without thinking."""
    from tests.fakes import JsonReply

    live = await gateway(anthropic_config(fake_anthropic))
    call = {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}
    history = [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "elsewhere", "signature": "c2lnLW90aGVy"},
                {"type": "redacted_thinking", "data": "cmVkYWN0ZWQ="},
                {"type": "text", "text": "answer"},
            ],
        },
        {"role": "user", "content": "list files"},
        {
            "role": "assistant",
            "content": [{"type": "thinking", "thinking": "ls", "signature": "c2ln"}, call],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"}],
        },
    ]
    body = {
        "model": "claude-x",
        "max_tokens": 2048,
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "messages": history,
    }
    fake_anthropic.push(JsonReply(400, SIGNATURE_400))
    async with anthropic.AsyncAnthropic(
        base_url=live.url, api_key=TEST_KEY, max_retries=0
    ) as client:
        message = await client.messages.create(**body)
    assert message.content[0].text == "fake reply"
    first, second = (r.json for r in fake_anthropic.received)
    assert first == body
    assert second == {
        "model": "claude-x",
        "max_tokens": 2048,
        "messages": [
            history[0],
            {"role": "assistant", "content": [{"type": "text", "text": "answer"}]},
            history[2],
            {"role": "assistant", "content": [call]},
            history[4],
        ],
    }
    rows = await usage_rows(live)
    assert [(r.status, r.http_status) for r in rows] == [("ok", 200)]


async def test_a_signature_400_with_no_thinking_to_drop_is_the_client_s(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    from tests.fakes import JsonReply

    live = await gateway(anthropic_config(fake_anthropic))
    fake_anthropic.push(JsonReply(400, SIGNATURE_400))
    resp = await http(
        "POST",
        live.url + "/v1/messages",
        headers={"x-api-key": TEST_KEY},
        json={"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]},
    )
    assert (resp.status, resp.json()) == (400, SIGNATURE_400)
    assert len(fake_anthropic.received) == 1


async def test_upstream_client_error_is_relayed_verbatim_in_passthrough(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    from tests.fakes import JsonReply

    live = await gateway(anthropic_config(fake_anthropic))
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": "messages: bad"}}
    fake_anthropic.push(JsonReply(400, body))
    async with anthropic.AsyncAnthropic(
        base_url=live.url, api_key=TEST_KEY, max_retries=0
    ) as client:
        with pytest.raises(anthropic.BadRequestError) as info:
            await client.messages.create(
                model="claude-x", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.body == body
    rows = await usage_rows(live)
    assert (rows[0].status, rows[0].http_status, rows[0].error_type) == (
        "error",
        400,
        "invalid_request_error",
    )


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
async def test_a_stream_cut_mid_event_ends_with_an_error_the_sdk_reads(
    gateway, fake_anthropic, fake_openai, dialect
):  # type: ignore[no-untyped-def]
    """The upstream drops the connection halfway through an event: the client gets every
    whole event, then the gateway's error event, which its SDK raises as an API error
    (glued to half an event, it raised a JSON decoding error)."""
    fake = fake_anthropic if dialect == "anthropic" else fake_openai
    live = await gateway(anthropic_config(fake) if dialect == "anthropic" else openai_config(fake))
    if dialect == "anthropic":
        chunks = anthropic_stream(["Hel", "lo"], "claude-sonnet-4-5")
    else:
        chunks = openai_stream(["Hel", "lo"])
    fake.push(SSEReply([*chunks[:4], chunks[4][:20]], cut=True))
    if dialect == "anthropic":
        async with anthropic.AsyncAnthropic(
            base_url=live.url, api_key=TEST_KEY, max_retries=0
        ) as client:
            with pytest.raises(anthropic.APIStatusError) as raised:
                async with client.messages.stream(
                    model="claude-sonnet-4-5",
                    max_tokens=20,
                    messages=[{"role": "user", "content": "hi"}],
                ) as stream:
                    async for _ in stream:
                        pass
    else:
        async with openai.AsyncOpenAI(
            base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=0
        ) as oclient:
            with pytest.raises(openai.APIError) as raised:
                stream = await oclient.chat.completions.create(
                    model="gpt-test",
                    messages=[{"role": "user", "content": "hi"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for _ in stream:
                    pass
    assert "ended before completion" in str(raised.value)
    rows = await usage_rows(live)
    assert [r.status for r in rows] == ["error"]


@pytest.mark.parametrize(
    ("dialect", "status", "reply", "message"),
    [
        ("openai", 400, b"<html><title>400 Bad Request</title></html>", "400 Bad Request"),
        (
            "openai",
            404,
            b'{"error":"model \\"qwen9\\" not found, try pulling it first"}',
            "not found",
        ),
        (
            "openai",
            422,
            b'{"detail":[{"loc":["body","messages"],"msg":"field required"}]}',
            "field required",
        ),
        (
            "anthropic",
            400,
            b'{"error":{"message":"bad thing","type":"invalid_request_error"}}',
            "bad thing",
        ),
    ],
    ids=["html", "ollama", "fastapi", "openai-shaped-to-anthropic"],
)
async def test_a_backend_error_outside_the_clients_envelope_is_put_in_it(
    gateway, fake_anthropic, fake_openai, dialect, status, reply, message
):  # type: ignore[no-untyped-def]
    """Relayed as it came only when the client's SDK can read it; else its message in the
    client's own envelope, with the backend's status when it is a client error."""
    fake = fake_anthropic if dialect == "anthropic" else fake_openai
    live = await gateway(anthropic_config(fake) if dialect == "anthropic" else openai_config(fake))
    headers = {"Content-Type": "text/html" if reply.startswith(b"<") else "application/json"}
    fake.push(JsonReply(status, raw=reply, headers=headers))
    if dialect == "anthropic":
        path = "/v1/messages"
        body = {
            "model": "claude-x",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "hi"}],
        }
    else:
        path = "/v1/chat/completions"
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    resp = await http("POST", live.url + path, json=body, headers={"x-api-key": TEST_KEY})
    assert resp.headers["Content-Type"].startswith("application/json")
    error = resp.json()["error"]
    assert message in error["message"]
    if dialect == "anthropic":
        assert resp.json()["type"] == "error" and error["type"] == "invalid_request_error"
    else:
        assert error["type"] == "invalid_request_error" and "param" in error
    assert resp.status == (404 if status == 404 else 400)
