"""An upstream's redirect is never followed: aiohttp re-sent the request to the new
address with Anthropic's ``x-api-key`` (it strips only ``Authorization``), and with Basic
auth from a user name and password in that address. The answer is a failure (a 502 in the
client's dialect, the next key or route tried), never a redirect relayed to the client."""

from __future__ import annotations

import aiohttp
import pytest

from app.errors import UpstreamConnectError, UpstreamError
from app.upstreams import base
from app.upstreams.keyring import KeyState
from app.upstreams.pool import UpstreamPool, UpstreamSpec
from tests.conftest import http
from tests.fakes import FakeUpstream, JsonReply
from tests.team.support import MakeFake, auth_of, upstream_key_rows, usage_events
from tests.upstreams.test_failover import (
    ANTHROPIC_HEADERS,
    anthropic_call,
    free_port,
    model,
    openai_call,
    upstream,
)

pytestmark = pytest.mark.gen_test(timeout=30)

SECRET = "sk-upstream-secret-0123456789"


def redirect(status: int, elsewhere: FakeUpstream, path: str) -> JsonReply:
    """A redirect to ``elsewhere``, with a password and a token in its address (which the
    client must not be shown)."""
    location = f"http://user:hunter2@127.0.0.1:{elsewhere.port}{path}?token=abc#frag"
    return JsonReply(status, raw=b"", headers={"Location": location})


def error_message(client: str, resp) -> str:  # type: ignore[no-untyped-def]
    data = resp.json()
    if client == "anthropic":
        assert data["type"] == "error" and data["error"]["type"] == "api_error"
    else:
        assert data["error"]["type"] == "server_error"
    return str(data["error"]["message"])


@pytest.mark.parametrize(
    ("kind", "client", "status", "stream"),
    [
        ("anthropic", "anthropic", 307, False),
        ("anthropic", "openai", 302, True),
        ("anthropic", "anthropic", 308, True),
        ("openai", "openai", 307, True),
        ("openai", "anthropic", 302, False),
        ("openai", "openai", 301, False),
    ],
)
async def test_a_redirect_is_not_followed_and_is_a_502_in_the_clients_dialect(  # type: ignore[no-untyped-def]
    gateway, make_fake: MakeFake, kind: str, client: str, status: int, stream: bool
):
    first = await make_fake(kind)
    second = await make_fake(kind)
    path = "/v1/messages" if kind == "anthropic" else "/v1/chat/completions"
    live = await gateway(upstream("main", first, [SECRET]) + model("team-model", "main", "m"))
    first.push(redirect(status, second, path))
    call = anthropic_call if client == "anthropic" else openai_call
    resp = await call(live, stream=stream)
    assert second.received == []  # neither the request nor the key went there
    assert resp.status == 502
    assert "location" not in {name.lower() for name in resp.headers}
    message = error_message(client, resp)
    assert message == (
        f"upstream answered HTTP {status} (a redirect to http://127.0.0.1:{second.port}{path}, "
        "not followed): set the upstream's base_url to where it points"
    )
    assert SECRET not in resp.content.decode()
    assert auth_of(first) == [SECRET]
    rows = await usage_events(live, 1)
    assert [(r.status, r.http_status) for r in rows] == [("error", 502)]
    assert rows[0].error_message == message


async def test_a_redirect_moves_to_the_next_key_as_a_server_error_does(  # type: ignore[no-untyped-def]
    gateway, make_fake: MakeFake
):
    first = await make_fake("anthropic")
    second = await make_fake("anthropic")
    live = await gateway(
        upstream("main", first, ["sk-one", "sk-two"]) + model("team-model", "main", "claude-x")
    )
    first.push(redirect(307, second, "/v1/messages"))
    resp = await anthropic_call(live)
    assert resp.status == 200
    assert resp.json()["content"][0]["text"] == "fake reply"
    assert auth_of(first) == ["sk-one", "sk-two"]
    assert second.received == []
    keys = await upstream_key_rows(live)
    assert [k.error_count for k in keys] == [1, 0]
    assert keys[0].last_error is not None and "HTTP 307" in keys[0].last_error
    assert keys[0].cooldown_until is not None and keys[0].enabled


async def test_a_redirect_fails_over_to_the_fallback_route(  # type: ignore[no-untyped-def]
    gateway, make_fake: MakeFake
):
    first = await make_fake("openai")
    second = await make_fake("openai")
    backup = await make_fake("anthropic")
    live = await gateway(
        upstream("moved", first, ["sk-moved"])
        + upstream("backup", backup, ["sk-backup"])
        + model("team-model", "moved", "qwen", fallbacks=("backup-model",))
        + model("backup-model", "backup", "claude-backup")
    )
    first.push(redirect(302, second, "/v1/chat/completions"))
    resp = await openai_call(live)
    assert resp.status == 200
    assert second.received == []
    assert [r.json["model"] for r in backup.received] == ["claude-backup"]


async def test_count_tokens_does_not_follow_a_redirect(  # type: ignore[no-untyped-def]
    gateway, make_fake: MakeFake
):
    first = await make_fake("anthropic")
    second = await make_fake("anthropic")
    live = await gateway(upstream("main", first, [SECRET]) + model("team-model", "main", "m"))
    first.push(redirect(307, second, "/v1/messages/count_tokens"))
    resp = await http(
        "POST",
        live.url + "/v1/messages/count_tokens",
        headers=ANTHROPIC_HEADERS,
        json={"model": "team-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert resp.status == 200 and resp.json()["input_tokens"] > 0  # the local estimate
    assert resp.json()["input_tokens"] != 42  # what the fake that was redirected to says
    assert second.received == []


@pytest.mark.parametrize(("kind", "status"), [("anthropic", 307), ("openai", 302)])
async def test_a_model_list_behind_a_redirect_is_an_upstream_error(
    make_fake: MakeFake, kind: str, status: int
) -> None:
    first = await make_fake(kind)
    second = await make_fake(kind)
    first.push(redirect(status, second, "/v1/models"))
    pool = UpstreamPool()
    pool.update(
        [UpstreamSpec(name="u", kind=kind, base_url=first.url)],
        {"u": [KeyState(id=None, secret=SECRET)]},
    )
    try:
        with pytest.raises(UpstreamError) as info:
            await pool.get("u").model_ids()
    finally:
        await pool.close()
    assert second.received == []
    assert [r.path for r in first.received] == ["/v1/models"]
    assert str(info.value) == (
        f"upstream answered HTTP {status} (a redirect to http://127.0.0.1:{second.port}/v1/models, "
        "not followed): set the upstream's base_url to where it points"
    )


async def test_a_redirect_without_a_location_and_a_relative_one(make_fake: MakeFake) -> None:
    fake = await make_fake("openai")
    fake.push(
        JsonReply(303, raw=b""),
        JsonReply(307, raw=b"", headers={"Location": "/v2/chat/completions?key=abc"}),
    )
    async with aiohttp.ClientSession() as session:
        for where in (
            "a redirect",
            f"a redirect to http://127.0.0.1:{fake.port}/v2/chat/completions",
        ):
            with pytest.raises(UpstreamError) as info:
                await base.post(
                    session, fake.url + "/chat/completions", b"{}", {}, timeout=5, stream=False
                )
            assert where + ", not followed" in str(info.value)
            assert "abc" not in str(info.value)
    assert len(fake.received) == 2


async def test_messages_naming_an_upstream_url_leave_its_password_out() -> None:
    """A password in a URL (refused by the config file and the dashboard, but maybe stored
    before they refused it) never reaches a message: the client's error, the usage row."""
    dead = f"http://user:hunter2@127.0.0.1:{free_port()}/v1"
    async with aiohttp.ClientSession() as session:
        with pytest.raises(UpstreamConnectError) as info:
            await base.post(session, dead + "/messages", b"{}", {}, timeout=5, stream=False)
        assert str(info.value).startswith(
            f"cannot connect to upstream http://127.0.0.1:{dead.rsplit(':', 1)[1]}/messages: "
        )
        with pytest.raises(UpstreamConnectError) as info:
            await base.get_json(session, dead + "/models", {}, timeout=5)
        assert "cannot reach upstream http://127.0.0.1:" in str(info.value)
        assert "hunter2" not in str(info.value)
        for invalid in ("user:hunter2@127.0.0.1/v1", "http://user:hunter2@[::1/v1"):
            with pytest.raises(UpstreamConnectError) as info:
                await base.post(session, invalid, b"{}", {}, timeout=5, stream=False)
            assert "hunter2" not in str(info.value) and "user:" not in str(info.value)
            with pytest.raises(UpstreamConnectError) as info:
                await base.get_json(session, invalid, {}, timeout=5)
            assert "hunter2" not in str(info.value) and "user:" not in str(info.value)


async def test_a_password_in_the_url_next_to_a_bearer_key_is_an_upstream_error() -> None:
    """aiohttp refuses a URL's password with an ``Authorization`` header (a ValueError: a
    500 and a traceback for every request); an upstream stored before the config file
    and the dashboard refused one fails as an upstream, with the reason."""
    url = f"http://user:hunter2@127.0.0.1:{free_port()}/v1"
    bearer = {"Authorization": "Bearer " + SECRET}
    async with aiohttp.ClientSession() as session:
        with pytest.raises(UpstreamConnectError) as info:
            await base.post(
                session, url + "/chat/completions", b"{}", bearer, timeout=5, stream=False
            )
        assert str(info.value) == (
            f"upstream URL {base.shown_url(url)}/chat/completions carries a user name or "
            "password, which cannot go with the upstream's key: put the secret in the "
            "upstream's keys instead"
        )
        with pytest.raises(UpstreamConnectError) as info:
            await base.get_json(session, url + "/models", bearer, timeout=5)
        assert "carries a user name or password" in str(info.value)
        assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://user:pw@host:8080/v1", "http://host:8080/v1"),
        ("https://user@host/v1?x=1", "https://host/v1?x=1"),
        ("http://u:p@ss@host/v1", "http://host/v1"),
        ("http://host/v1/a@b", "http://host/v1/a@b"),
        ("user:pw@host/v1", "host/v1"),
        ("http://host:8080/v1", "http://host:8080/v1"),
    ],
)
def test_shown_url(url: str, shown: str) -> None:
    assert base.shown_url(url) == shown
