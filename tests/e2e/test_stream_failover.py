"""A stream that breaks before its first byte fails over to the next key; after it, never."""

from __future__ import annotations

import pytest

from tests.conftest import TEST_KEY, http
from tests.fakes import SSEReply, openai_stream

pytestmark = pytest.mark.gen_test(timeout=30)


def config(url: str) -> str:
    return f'[[upstreams]]\nname = "u"\nkind = "openai"\nbase_url = "{url}"\nkeys = ["sk-first-aaaa", "sk-second-bbbb"]\n\n[[models]]\nname = "m"\nupstream = "u"\n'


async def test_break_before_first_byte_moves_to_the_next_key(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai.url))
    good = openai_stream(["fine"])
    # Headers go out, then the connection drops before any event.
    fake_openai.push(SSEReply([b""], cut=True), SSEReply(good))
    resp = await http(
        "POST",
        live.url + "/v1/messages",
        json={
            "model": "m",
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        },
        headers={"x-api-key": TEST_KEY},
    )
    assert resp.status == 200
    text = resp.content.decode()
    assert '"text":"fine"' in text and text.rstrip().endswith('data: {"type":"message_stop"}')
    assert [r.headers["Authorization"] for r in fake_openai.received] == [
        "Bearer sk-first-aaaa",
        "Bearer sk-second-bbbb",
    ]
    first, second = live.services.pool.key_states("u")
    assert (first.errors, second.errors, second.requests) == (1, 0, 1)


async def test_break_after_first_byte_is_an_in_stream_error_without_retry(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai.url))
    fake_openai.push(SSEReply(openai_stream(["partial"])[:2], cut=True))
    resp = await http(
        "POST",
        live.url + "/v1/messages",
        json={
            "model": "m",
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        },
        headers={"x-api-key": TEST_KEY},
    )
    text = resp.content.decode()
    assert resp.status == 200 and "event: error" in text and "message_stop" not in text
    assert len(fake_openai.received) == 1
