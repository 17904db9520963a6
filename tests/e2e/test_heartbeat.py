"""Keep-alives during upstream silence: Anthropic ``ping`` events, OpenAI ``:`` comments."""

from __future__ import annotations

import pytest

from app import gateway as gateway_module
from tests.conftest import TEST_KEY, http
from tests.fakes import SSEReply, anthropic_stream, openai_stream

pytestmark = pytest.mark.gen_test(timeout=30)


@pytest.fixture(autouse=True)
def fast_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    # The real interval is 15 s; the upstream below pauses 0.4 s between chunks.
    monkeypatch.setattr(gateway_module, "HEARTBEAT_SECONDS", 0.05)


def config(kind: str, url: str) -> str:
    return f'[[upstreams]]\nname = "u"\nkind = "{kind}"\nbase_url = "{url}"\n\n[[models]]\nname = "m"\nupstream = "u"\n'


async def pinged_anthropic_stream(live) -> None:  # type: ignore[no-untyped-def]
    """An Anthropic client's stream of model ``m``: whole, with ping events in it."""
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
    events = [e.split("\n")[0] for e in resp.content.decode().split("\n\n") if e]
    assert "event: ping" in events
    assert events[0] == "event: message_start" and events[-1] == "event: message_stop"


async def test_anthropic_client_on_openai_upstream_gets_ping_events(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config("openai", fake_openai.url))
    fake_openai.push(SSEReply(openai_stream(["a", "b"]), delay=0.4))
    await pinged_anthropic_stream(live)


async def test_openai_client_on_anthropic_upstream_gets_comment_keepalives(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(config("anthropic", fake_anthropic.url))
    fake_anthropic.push(SSEReply(anthropic_stream(["a", "b"]), delay=0.4))
    resp = await http(
        "POST",
        live.url + "/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    body = resp.content.decode()
    assert ": keep-alive\n\n" in body
    assert body.endswith("data: [DONE]\n\n")
    assert all(line.startswith(("data: ", ": ")) for line in body.split("\n") if line)


async def test_passthrough_streams_get_keepalives_too(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config("openai", fake_openai.url))
    fake_openai.push(SSEReply(openai_stream(["a", "b"]), delay=0.4))
    resp = await http(
        "POST",
        live.url + "/v1/chat/completions",
        json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    assert b": keep-alive\n\n" in resp.content and resp.content.endswith(b"data: [DONE]\n\n")


async def test_upstream_keepalives_a_translation_drops_do_not_silence_the_client(  # type: ignore[no-untyped-def]
    gateway, fake_openai
):
    """An upstream pinging while it thinks: those pings mean nothing in the client's
    dialect and are dropped, but they must not stop the client's own heartbeat (it used to
    see nothing at all until the first token)."""
    live = await gateway(config("openai", fake_openai.url))
    chunks = openai_stream(["a", "b"])
    pings = [b": keep-alive\n\n"] * 12  # one every 0.03 s: never 0.05 s of upstream silence
    fake_openai.push(SSEReply(chunks[:1] + pings + chunks[1:], delay=0.03))
    await pinged_anthropic_stream(live)
