"""Exactly one usage event per request over a mixed run (successes, errors, limits, a
cancelled stream), exported by ``bridgekeeper usage export`` equal to what the fake
upstreams reported; the daily roll-up equal to the raw totals."""

from __future__ import annotations

import asyncio
import csv
import io
from collections import defaultdict
from typing import Any

import aiohttp
import orjson
import pytest

from app import cli
from app.db.usage import EXPORT_COLUMNS
from app.dialects.sse import openai_chunk
from app.dialects.tokens import estimate_anthropic_input, estimate_openai_input
from tests.conftest import TEST_KEY, http
from tests.fakes import (
    JsonReply,
    SSEReply,
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_stream,
)
from tests.team.support import FakeClock, daily_rows, usage_events, wait_until

pytestmark = pytest.mark.gen_test(timeout=60)

LIMITED_KEY = "bk-limited-key-11111111111"
A_HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
O_HEADERS = {"Authorization": f"Bearer {TEST_KEY}"}


def config(claude, local, flaky) -> str:  # type: ignore[no-untyped-def]
    return f"""
[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{claude.url}"
keys = ["sk-ant-0001"]

[[upstreams]]
name = "local"
kind = "openai"
base_url = "{local.url}"
keys = ["sk-local-0001"]

[[upstreams]]
name = "flaky"
kind = "openai"
base_url = "{flaky.url}"
keys = ["sk-flaky-0001"]

[[models]]
name = "claude-x"
upstream = "claude"
target = "claude-real"

[[models]]
name = "local-x"
upstream = "local"
target = "qwen-real"

[[models]]
name = "flaky-x"
upstream = "flaky"
target = "flaky-real"

[[keys]]
name = "limited"
key = "{LIMITED_KEY}"
rpm = 1
"""


def a_body(model: str, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": text}],
    } | extra


def o_body(model: str, text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]} | extra


def row(**values: Any) -> dict[str, Any]:
    base = {
        "key_name": "tester",
        "stream": False,
        "status": "ok",
        "http_status": 200,
        "error_type": "",
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "tokens_estimated": False,
    }
    return base | values


async def export(url: str, *args: str) -> str:
    out = io.StringIO()
    argv = ["usage", "export", "--database-url", url, *args]
    code = await asyncio.get_running_loop().run_in_executor(None, lambda: cli.main(argv, out=out))
    assert code == 0
    return out.getvalue()


async def test_export_equals_what_the_upstreams_reported(gateway, make_fake):  # type: ignore[no-untyped-def]
    claude, local, flaky = (
        await make_fake("anthropic"),
        await make_fake("openai"),
        await make_fake("openai"),
    )
    live = await gateway(config(claude, local, flaky), clock=FakeClock())
    expected: list[dict[str, Any]] = []
    ids: list[str] = []

    async def send(path: str, headers: dict[str, str], body: dict[str, Any], want: int) -> Any:
        resp = await http("POST", live.url + path, headers=headers, json=body)
        assert resp.status == want, resp.content
        ids.append(resp.headers["request-id"])
        return resp

    # 1. Anthropic passthrough with all four token counts.
    message = anthropic_message(input_tokens=100, output_tokens=20)
    message["usage"] |= {"cache_read_input_tokens": 30, "cache_creation_input_tokens": 40}
    claude.push(JsonReply(body=message))
    await send("/v1/messages", A_HEADERS, a_body("claude-x"), 200)
    expected.append(
        row(
            client_dialect="anthropic",
            requested_model="claude-x",
            upstream="claude",
            target_model="claude-real",
            input_tokens=100,
            output_tokens=20,
            cache_read_tokens=30,
            cache_write_tokens=40,
        )
    )

    # 2. OpenAI passthrough stream; prompt_tokens include the cached ones.
    chunks = openai_stream(["a", "b"], usage=False)
    usage = {
        "prompt_tokens": 50,
        "completion_tokens": 5,
        "total_tokens": 55,
        "prompt_tokens_details": {"cached_tokens": 10},
    }
    chunks.insert(
        -1,
        openai_chunk(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [],
                "usage": usage,
            }
        ),
    )
    local.push(SSEReply(chunks))
    await send("/v1/chat/completions", O_HEADERS, o_body("local-x", stream=True), 200)
    expected.append(
        row(
            client_dialect="openai",
            requested_model="local-x",
            upstream="local",
            target_model="qwen-real",
            stream=True,
            input_tokens=40,
            output_tokens=5,
            cache_read_tokens=10,
        )
    )

    # 3. Anthropic client, OpenAI backend, streamed (translated).
    local.push(SSEReply(openai_stream(["x", "y"], prompt=70, completion=9)))
    await send("/v1/messages", A_HEADERS, a_body("local-x", stream=True), 200)
    expected.append(
        row(
            client_dialect="anthropic",
            requested_model="local-x",
            upstream="local",
            target_model="qwen-real",
            stream=True,
            input_tokens=70,
            output_tokens=9,
        )
    )

    # 4. OpenAI client, Anthropic backend (translated), with a cache read.
    message = anthropic_message(input_tokens=15, output_tokens=3)
    message["usage"]["cache_read_input_tokens"] = 2
    claude.push(JsonReply(body=message))
    resp = await send("/v1/chat/completions", O_HEADERS, o_body("claude-x"), 200)
    assert resp.json()["usage"]["prompt_tokens"] == 17
    expected.append(
        row(
            client_dialect="openai",
            requested_model="claude-x",
            upstream="claude",
            target_model="claude-real",
            input_tokens=15,
            output_tokens=3,
            cache_read_tokens=2,
        )
    )

    # 5. The backend reports no usage: an estimate, flagged.
    completion = openai_completion()
    del completion["usage"]
    local.push(JsonReply(body=completion))
    body = o_body("local-x", text="how many tokens is this " * 5)
    await send("/v1/chat/completions", O_HEADERS, body, 200)
    expected.append(
        row(
            client_dialect="openai",
            requested_model="local-x",
            upstream="local",
            target_model="qwen-real",
            input_tokens=estimate_openai_input(body),
            output_tokens=0,
            tokens_estimated=True,
        )
    )

    # 6. The client's own mistake, relayed from the backend.
    claude.push(
        JsonReply(
            400, {"type": "error", "error": {"type": "invalid_request_error", "message": "bad"}}
        )
    )
    body = a_body("claude-x", text="bad request")
    await send("/v1/messages", A_HEADERS, body, 400)
    expected.append(
        row(
            client_dialect="anthropic",
            requested_model="claude-x",
            upstream="claude",
            target_model="claude-real",
            status="error",
            http_status=400,
            error_type="invalid_request_error",
            input_tokens=estimate_anthropic_input(body),
            output_tokens=0,
            tokens_estimated=True,
        )
    )

    # 7. The only key of an upstream is rate limited: the client is told when to retry.
    flaky.push(
        JsonReply(429, {"error": {"message": "slow", "type": "rate_limit"}}, {"retry-after": "7"})
    )
    body = a_body("flaky-x")
    resp = await send("/v1/messages", A_HEADERS, body, 429)
    assert resp.headers["retry-after"] == "7"
    expected.append(
        row(
            client_dialect="anthropic",
            requested_model="flaky-x",
            upstream="flaky",
            target_model="flaky-real",
            status="rate_limited",
            http_status=429,
            error_type="rate_limit_error",
            input_tokens=estimate_anthropic_input(body),
            output_tokens=0,
            tokens_estimated=True,
        )
    )

    # 8. A key over its RPM: the first passes, the second is refused before any upstream call.
    limited = {"x-api-key": LIMITED_KEY}
    await send("/v1/messages", limited, a_body("claude-x"), 200)
    expected.append(
        row(
            key_name="limited",
            client_dialect="anthropic",
            requested_model="claude-x",
            upstream="claude",
            target_model="claude-real",
            input_tokens=11,
            output_tokens=7,
        )
    )
    body = a_body("claude-x", text="again")
    await send("/v1/messages", limited, body, 429)
    expected.append(
        row(
            key_name="limited",
            client_dialect="anthropic",
            requested_model="claude-x",
            upstream="claude",
            target_model="claude-real",
            status="rate_limited",
            http_status=429,
            error_type="rate_limit_error",
            input_tokens=0,  # never sent: no tokens (it used to count the estimate)
            output_tokens=0,
        )
    )

    # 9. Unknown proxy key (the row names the model its body asked for).
    await send(
        "/v1/chat/completions", {"Authorization": "Bearer bk-nobody"}, o_body("local-x"), 401
    )
    expected.append(
        row(
            key_name="",
            client_dialect="openai",
            requested_model="local-x",
            upstream="",
            target_model="",
            status="error",
            http_status=401,
            error_type="authentication_error",
            input_tokens=0,
            output_tokens=0,
        )
    )

    # 10. The client goes away mid-stream: the upstream call is closed, usage so far recorded.
    claude.push(SSEReply(anthropic_stream(["a"] * 20, input_tokens=64), delay=0.2))
    async with aiohttp.ClientSession() as session:
        async with session.post(
            live.url + "/v1/messages", headers=A_HEADERS, json=a_body("claude-x", stream=True)
        ) as resp:
            assert resp.status == 200
            ids.append(resp.headers["request-id"])
            first = await resp.content.readany()
            assert b"message_start" in first
    await wait_until(lambda: claude.disconnects > 0, "the upstream call to be closed")
    expected.append(
        row(
            client_dialect="anthropic",
            requested_model="claude-x",
            upstream="claude",
            target_model="claude-real",
            stream=True,
            status="client_closed",
            http_status=499,
            error_type="client_closed",
            input_tokens=64,
            output_tokens=1,
        )
    )

    events = await usage_events(live, len(expected))
    assert len(events) == len(expected)  # exactly one per request
    # What reached the upstreams: nothing for the refused and unauthenticated requests.
    assert (len(claude.received), len(local.received), len(flaky.received)) == (5, 3, 1)

    url = live.services_db_url
    exported = orjson.loads(await export(url, "--format", "json"))
    assert [r["request_id"] for r in exported] == ids
    checked = [c for c in expected[0]] + [
        "client_dialect",
        "requested_model",
        "upstream",
        "target_model",
        "input_tokens",
        "output_tokens",
    ]
    assert [{c: r[c] for c in checked} for r in exported] == [
        {c: e[c] for c in checked} for e in expected
    ]
    assert list(exported[0]) == list(EXPORT_COLUMNS)
    assert all(r["time"].startswith("2025-06-15T12:00:00") for r in exported)
    for r in exported:
        if r["status"] == "ok":
            assert r["ttft_ms"] is not None and r["latency_ms"] >= r["ttft_ms"] >= 0
        elif r["http_status"] in (400, 401, 429):
            assert r["ttft_ms"] is None
    assert exported[-1]["ttft_ms"] is not None  # the cancelled stream had sent its first bytes

    text = await export(url)  # CSV by default, the same rows
    table = list(csv.reader(io.StringIO(text)))
    assert table[0] == list(EXPORT_COLUMNS)
    assert len(table) == len(expected) + 1
    for line, data in zip(table[1:], exported, strict=True):
        assert line == ["" if data[c] is None else str(data[c]) for c in EXPORT_COLUMNS]

    only = orjson.loads(await export(url, "--format", "json", "--key", "limited"))
    assert [r["request_id"] for r in only] == ids[7:9]
    assert orjson.loads(await export(url, "--format", "json", "--since", "2025-06-16")) == []
    assert orjson.loads(await export(url, "--format", "json", "--until", "2025-06-14")) == []
    assert len(
        orjson.loads(
            await export(url, "--format", "json", "--since", "2025-06-15", "--until", "2025-06-15")
        )
    ) == len(expected)

    # The daily roll-up holds the same totals as the raw events.
    totals: dict[tuple[str, str, str], list[float]] = defaultdict(lambda: [0] * 7)
    for e in events:
        bucket = totals[(e.key_name or "", e.requested_model or "", e.upstream or "")]
        for i, value in enumerate(
            (
                1,
                e.status != "ok",
                e.input_tokens,
                e.output_tokens,
                e.cache_read_tokens,
                e.cache_write_tokens,
                e.latency_ms,
            )
        ):
            bucket[i] += value
    rollup = {
        (d.key_name, d.model, d.upstream): [
            d.requests,
            d.errors,
            d.input_tokens,
            d.output_tokens,
            d.cache_read_tokens,
            d.cache_write_tokens,
            d.latency_ms_total,
        ]
        for d in await daily_rows(live)
    }
    assert {d.day.isoformat() for d in await daily_rows(live)} == {"2025-06-15"}
    assert rollup.keys() == totals.keys()
    for bucket, values in totals.items():
        assert rollup[bucket][:6] == values[:6], bucket
        assert rollup[bucket][6] == pytest.approx(values[6])
