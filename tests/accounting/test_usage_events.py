"""One usage event per request in the harder cases: cancellations before and during a
translated stream, count_tokens, and a failover that tried several keys."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import TEST_KEY, http
from tests.fakes import HangReply, JsonReply, SSEReply, openai_stream
from tests.team.support import usage_events, wait_until

pytestmark = pytest.mark.gen_test(timeout=30)

HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}


def config(fake, keys: str = '["sk-1"]') -> str:  # type: ignore[no-untyped-def]
    return f"""
[[upstreams]]
name = "local"
kind = "openai"
base_url = "{fake.url}"
keys = {keys}

[[models]]
name = "team-model"
upstream = "local"
"""


def body(**extra):  # type: ignore[no-untyped-def]
    return {
        "model": "team-model",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "hi"}],
    } | extra


async def test_client_gone_while_waiting_for_the_upstream(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(HangReply(5))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            await session.post(
                live.url + "/v1/messages",
                headers=HEADERS,
                json=body(),
                timeout=aiohttp.ClientTimeout(total=0.5),
            )
    events = await usage_events(live, 1)
    assert [(e.status, e.http_status, e.error_type, e.ttft_ms) for e in events] == [
        ("client_closed", 499, "client_closed", None)
    ]
    assert events[0].tokens_estimated
    await wait_until(lambda: fake_openai.disconnects > 0, "the upstream call to be closed")


async def test_client_gone_during_a_translated_stream(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(SSEReply(openai_stream(["zebra"] * 30, prompt=33, completion=30), delay=0.1))
    async with aiohttp.ClientSession() as session:
        async with session.post(
            live.url + "/v1/messages", headers=HEADERS, json=body(stream=True)
        ) as resp:
            assert resp.status == 200
            seen = b""
            while b"zebra" not in seen:
                seen += await resp.content.readany()
    events = await usage_events(live, 1)
    assert len(events) == 1
    event = events[0]
    assert (event.status, event.http_status, event.stream) == ("client_closed", 499, True)
    assert event.ttft_ms is not None
    # The backend had not reported usage yet: an estimate, flagged.
    assert event.tokens_estimated and event.output_tokens >= 1
    await wait_until(lambda: fake_openai.disconnects > 0, "the upstream call to be closed")


async def test_count_tokens_records_one_event(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    resp = await http("POST", live.url + "/v1/messages/count_tokens", headers=HEADERS, json=body())
    assert resp.status == 200
    events = await usage_events(live, 1)
    assert [(e.endpoint, e.status, e.key_name) for e in events] == [
        ("count_tokens", "ok", "tester")
    ]


async def test_a_request_that_tried_three_keys_is_one_event(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, '["sk-key-1", "sk-key-2", "sk-key-3"]'))
    fake_openai.push(
        JsonReply(500, {"error": {"message": "a"}}), JsonReply(429, {"error": {"message": "b"}})
    )
    resp = await http("POST", live.url + "/v1/messages", headers=HEADERS, json=body())
    assert resp.status == 200
    events = await usage_events(live, 1)
    assert [(e.status, e.upstream_key, e.input_tokens, e.output_tokens) for e in events] == [
        ("ok", "…ey-3", 11, 7)
    ]
