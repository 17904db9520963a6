"""A stream that ended as it should gives its upstream connection back for the next request,
even when the body's last bytes come after the answer's own end marker; a stream that did
not (client gone, upstream never ending its body) closes it."""

from __future__ import annotations

import asyncio

import pytest

from app.upstreams import base
from tests.fakes import SSEReply, anthropic_stream, openai_stream
from tests.upstreams.test_failover import anthropic_call, model, openai_call, upstream

pytestmark = pytest.mark.gen_test(timeout=30)


def _config(fake_openai, fake_anthropic):  # type: ignore[no-untyped-def]
    return (
        upstream("oa", fake_openai, ["sk-oa"])
        + upstream("an", fake_anthropic, ["sk-an"])
        + model("via-oa", "oa", "qwen")
        + model("via-an", "an", "claude-x")
    )


@pytest.mark.parametrize("end_delay", [0.0, 0.3])
async def test_finished_streams_reuse_one_connection_per_upstream(  # type: ignore[no-untyped-def]
    gateway, fake_openai, fake_anthropic, end_delay
):
    live = await gateway(_config(fake_openai, fake_anthropic))
    for _ in range(4):
        fake_openai.push(SSEReply(openai_stream(["a", "b"]), end_delay=end_delay))
        fake_anthropic.push(SSEReply(anthropic_stream(["a", "b"]), end_delay=end_delay))
        # Both translated directions and both passthroughs, streamed.
        for call, name in ((anthropic_call, "via-oa"), (openai_call, "via-an")):
            resp = await call(live, model=name, stream=True)
            assert resp.status == 200
            await asyncio.sleep(end_delay * 1.5)  # the body's end arrives in the background
        fake_openai.push(SSEReply(openai_stream(["a", "b"]), end_delay=end_delay))
        fake_anthropic.push(SSEReply(anthropic_stream(["a", "b"]), end_delay=end_delay))
        for call, name in ((openai_call, "via-oa"), (anthropic_call, "via-an")):
            resp = await call(live, model=name, stream=True)
            assert resp.status == 200
            await asyncio.sleep(end_delay * 1.5)
    for fake in (fake_openai, fake_anthropic):
        assert len(fake.received) == 8
        assert len({r.peer for r in fake.received}) == 1, "every stream opened a new connection"


async def test_a_body_that_never_ends_is_not_waited_for(  # type: ignore[no-untyped-def]
    gateway, fake_openai, fake_anthropic, monkeypatch
):
    monkeypatch.setattr(base, "DRAIN_SECONDS", 0.2)
    live = await gateway(_config(fake_openai, fake_anthropic))
    loop = asyncio.get_running_loop()
    fake_openai.push(SSEReply(openai_stream(["a", "b"]), end_delay=3.0))
    started = loop.time()
    resp = await anthropic_call(live, model="via-oa", stream=True)
    assert resp.status == 200 and b"message_stop" in resp.content
    assert loop.time() - started < 1.5  # the client's answer ends at the upstream's [DONE]
    await asyncio.sleep(0.4)  # past DRAIN_SECONDS: that connection was given up
    fake_openai.push(SSEReply(openai_stream(["c"])))
    assert (await anthropic_call(live, model="via-oa", stream=True)).status == 200
    assert len({r.peer for r in fake_openai.received}) == 2
