"""A client that goes away mid-request: the upstream call is cancelled at once (the fake
upstream sees its connection close) and the usage event says ``client_closed`` with the
tokens seen so far.

"At once" is asserted as within 3 s: the gateway cancels in well under a second, and the
slack is for a loaded 2-core CI machine, not for the gateway.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.fakes import FakeUpstream, HangReply, SSEReply, anthropic_stream, openai_stream
from tests.reliability.conftest import auth, body_for, path_for, two_upstreams, usage_rows, wait_for

pytestmark = pytest.mark.gen_test(timeout=60)

CANCEL_BOUND = 3.0  # seconds; see the module docstring

COMBOS = [
    pytest.param("anthropic", "m-an", id="anthropic-passthrough"),
    pytest.param("anthropic", "m-oa", id="anthropic-translated"),
    pytest.param("openai", "m-oa", id="openai-passthrough"),
    pytest.param("openai", "m-an", id="openai-translated"),
]
PIECES = [f"word{i} " for i in range(40)]  # 40 pieces, 0.25 s apart: a 10 s answer


def slow_stream(model: str) -> SSEReply:
    if model == "m-oa":
        chunks = openai_stream(PIECES, prompt=123, completion=40)
    else:
        chunks = anthropic_stream(PIECES, input_tokens=123, output_tokens=40)
    return SSEReply(chunks, delay=0.25)


async def gateway_with_fakes(gateway, fake_openai, fake_anthropic):  # type: ignore[no-untyped-def]
    return await gateway(two_upstreams(fake_openai.url, fake_anthropic.url))


async def open_and_abandon(url: str, body: dict[str, Any], *, after: bytes) -> float:
    """Send ``body``, read the stream until ``after`` shows up, then drop the connection;
    returns the moment it was dropped."""
    session = aiohttp.ClientSession()
    try:
        resp = await session.post(url, json=body, headers=auth())
        assert resp.status == 200
        seen = b""
        while after not in seen:
            chunk = await asyncio.wait_for(resp.content.readany(), 10)
            assert chunk, "the stream ended before the client left"
            seen += chunk
        resp.close()
    finally:
        dropped = time.monotonic()
        await session.close()
    return dropped


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_client_leaving_mid_stream_cancels_the_upstream(  # type: ignore[no-untyped-def]
    gateway, fake_openai, fake_anthropic, dialect, model
):
    live = await gateway_with_fakes(gateway, fake_openai, fake_anthropic)
    fake: FakeUpstream = fake_openai if model == "m-oa" else fake_anthropic
    fake.push(slow_stream(model))
    dropped = await open_and_abandon(
        live.url + path_for(dialect), body_for(dialect, model, stream=True), after=b"word2"
    )
    await asyncio.wait_for(fake.disconnected.wait(), CANCEL_BOUND + 5)
    assert time.monotonic() - dropped < CANCEL_BOUND
    recorder = live.services.recorder
    assert await wait_for(lambda: recorder.written + recorder.pending >= 1, CANCEL_BOUND)
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type, r.stream) for r in rows] == [
        ("client_closed", 499, "client_closed", True)
    ]
    row = rows[0]
    assert row.ttft_ms is not None  # content had reached the client
    # What was seen before the client left: the input (from the upstream when it said so
    # at the start, else the gateway's estimate) and the output relayed so far, never the
    # whole answer's 40.
    if model == "m-an":
        assert row.input_tokens == 123
    else:
        assert row.input_tokens > 0 and row.tokens_estimated
    assert 3 <= row.output_tokens < 40, row.output_tokens


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_client_leaving_before_the_answer_cancels_the_upstream(  # type: ignore[no-untyped-def]
    gateway, fake_openai, fake_anthropic, dialect, model
):
    live = await gateway_with_fakes(gateway, fake_openai, fake_anthropic)
    fake: FakeUpstream = fake_openai if model == "m-oa" else fake_anthropic
    fake.push(HangReply(20))
    session = aiohttp.ClientSession()
    request = asyncio.ensure_future(
        session.post(live.url + path_for(dialect), json=body_for(dialect, model), headers=auth())
    )
    assert await wait_for(lambda: len(fake.received) == 1, 5)
    request.cancel()
    await session.close()
    dropped = time.monotonic()
    await asyncio.wait_for(fake.disconnected.wait(), CANCEL_BOUND + 5)
    assert time.monotonic() - dropped < CANCEL_BOUND
    recorder = live.services.recorder
    assert await wait_for(lambda: recorder.written + recorder.pending >= 1, CANCEL_BOUND)
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.stream, r.output_tokens) for r in rows] == [
        ("client_closed", 499, False, 0)
    ]
    assert rows[0].input_tokens > 0


async def test_other_clients_are_unaffected(gateway, fake_openai, fake_anthropic):  # type: ignore[no-untyped-def]
    """One client leaving mid-stream while another streams from the same upstream."""
    live = await gateway_with_fakes(gateway, fake_openai, fake_anthropic)
    fake_anthropic.push(slow_stream("m-an"), SSEReply(anthropic_stream(["a", "b", "c"]), delay=0.3))
    leaving = asyncio.ensure_future(
        open_and_abandon(
            live.url + "/v1/messages", body_for("anthropic", "m-an", stream=True), after=b"word1"
        )
    )
    async with aiohttp.ClientSession() as session:
        await asyncio.sleep(0.1)
        async with session.post(
            live.url + "/v1/messages",
            json=body_for("anthropic", "m-an", stream=True),
            headers=auth(),
        ) as resp:
            staying = await resp.read()
    await leaving
    assert b"message_stop" in staying and b'"text":"b"' in staying
    recorder = live.services.recorder
    assert await wait_for(lambda: recorder.written + recorder.pending >= 2, CANCEL_BOUND)
    rows = await usage_rows(live)
    assert sorted(r.status for r in rows) == ["client_closed", "ok"]


async def test_client_leaving_a_token_count_is_recorded(gateway, fake_openai, fake_anthropic):  # type: ignore[no-untyped-def]
    """``count_tokens`` asks an Anthropic backend; the client leaves first: its usage row
    says so, as for any request."""
    live = await gateway_with_fakes(gateway, fake_openai, fake_anthropic)
    fake_anthropic.push(HangReply(20))
    session = aiohttp.ClientSession()
    body = {"model": "m-an", "messages": [{"role": "user", "content": "count me"}]}
    request = asyncio.ensure_future(
        session.post(live.url + "/v1/messages/count_tokens", json=body, headers=auth())
    )
    assert await wait_for(lambda: len(fake_anthropic.received) == 1, 5)
    request.cancel()
    await session.close()
    recorder = live.services.recorder
    assert await wait_for(lambda: recorder.written + recorder.pending >= 1, CANCEL_BOUND)
    rows = await usage_rows(live)
    assert [(r.endpoint, r.status, r.http_status) for r in rows] == [
        ("count_tokens", "client_closed", 499)
    ]
