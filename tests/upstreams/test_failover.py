"""Key rotation and failover through the live gateway: which fake upstream got which
request with which key, cooldowns on the injected clock, auto-disable persisted, the
client's error when nothing is left, and no second upstream call after the first byte."""

from __future__ import annotations

import socket

import anthropic
import openai
import pytest

from app.db.models import UpstreamKey
from app.db.upstreams_admin import set_key_enabled
from tests.conftest import TEST_KEY, http
from tests.fakes import (
    FakeUpstream,
    HangReply,
    JsonReply,
    SSEReply,
    anthropic_message,
    anthropic_stream,
    openai_stream,
)
from tests.team.support import (
    FakeClock,
    anthropic_body,
    auth_of,
    openai_body,
    upstream_key_rows,
    usage_events,
)

pytestmark = pytest.mark.gen_test(timeout=30)

ANTHROPIC_HEADERS = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
OPENAI_HEADERS = {"Authorization": f"Bearer {TEST_KEY}"}


def upstream(name: str, fake: FakeUpstream | str, keys: list[str], **extra: object) -> str:
    url = fake if isinstance(fake, str) else fake.url
    kind = "openai" if isinstance(fake, str) else fake.dialect
    lines = [
        "[[upstreams]]",
        f'name = "{name}"',
        f'kind = "{extra.pop("kind", kind)}"',
        f'base_url = "{url}"',
        "keys = [" + ", ".join(f'"{k}"' for k in keys) + "]",
    ]
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def model(name: str, upstream_name: str, target: str, fallbacks: tuple[str, ...] = ()) -> str:
    text = f'[[models]]\nname = "{name}"\nupstream = "{upstream_name}"\ntarget = "{target}"\n'
    if fallbacks:
        text += "fallbacks = [" + ", ".join(f'"{f}"' for f in fallbacks) + "]\n"
    return text


async def anthropic_call(live, **extra):  # type: ignore[no-untyped-def]
    return await http(
        "POST", live.url + "/v1/messages", headers=ANTHROPIC_HEADERS, json=anthropic_body(**extra)
    )


async def openai_call(live, **extra):  # type: ignore[no-untyped-def]
    return await http(
        "POST",
        live.url + "/v1/chat/completions",
        headers=OPENAI_HEADERS,
        json=openai_body(**extra),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_ordered_uses_the_first_key_every_time(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(
        upstream("main", fake_openai, ["sk-one", "sk-two", "sk-three"])
        + model("team-model", "main", "qwen")
    )
    for _ in range(3):
        assert (await openai_call(live)).status == 200
    assert auth_of(fake_openai) == ["sk-one"] * 3


async def test_round_robin_spreads_requests_over_the_keys(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(
        upstream("main", fake_anthropic, ["sk-one", "sk-two", "sk-three"], rotation="round_robin")
        + model("team-model", "main", "claude-x")
    )
    for _ in range(4):
        assert (await anthropic_call(live)).status == 200
    assert auth_of(fake_anthropic) == ["sk-one", "sk-two", "sk-three", "sk-one"]


async def test_429_moves_to_the_next_key_in_the_same_request_and_cools_for_retry_after(
    gateway, fake_openai
):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = await gateway(
        upstream("main", fake_openai, ["sk-one", "sk-two"]) + model("team-model", "main", "qwen"),
        clock=clock,
    )
    fake_openai.push(
        JsonReply(
            429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"retry-after": "20"}
        )
    )
    resp = await openai_call(live)
    assert resp.status == 200
    assert resp.json()["choices"][0]["message"]["content"] == "fake reply"
    assert auth_of(fake_openai) == ["sk-one", "sk-two"]
    assert (await openai_call(live)).status == 200  # sk-one still cooling
    clock.advance(19)
    assert (await openai_call(live)).status == 200
    clock.advance(1)
    assert (await openai_call(live)).status == 200  # back in front
    assert auth_of(fake_openai) == ["sk-one", "sk-two", "sk-two", "sk-two", "sk-one"]
    rows = await usage_events(live, 4)
    assert [(r.status, r.upstream_key) for r in rows] == [
        ("ok", "…-two"),
        ("ok", "…-two"),
        ("ok", "…-two"),
        ("ok", "…-one"),
    ]
    keys = await upstream_key_rows(live)
    assert [(k.last4, k.error_count, k.last_error) for k in keys] == [
        ("-one", 1, "slow down"),
        ("-two", 0, None),
    ]


@pytest.mark.parametrize("status", [500, 502, 503, 529])
async def test_server_errors_cool_the_key_briefly_and_the_next_key_answers(
    gateway, fake_anthropic, status
):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = await gateway(
        upstream("main", fake_anthropic, ["sk-one", "sk-two"])
        + model("team-model", "main", "claude-x"),
        clock=clock,
    )
    fake_anthropic.push(
        JsonReply(status, {"type": "error", "error": {"type": "api_error", "message": "boom"}})
    )
    assert (await anthropic_call(live)).status == 200
    assert (await anthropic_call(live)).status == 200
    clock.advance(5)
    assert (await anthropic_call(live)).status == 200
    assert auth_of(fake_anthropic) == ["sk-one", "sk-two", "sk-two", "sk-one"]


async def test_one_server_error_does_not_shut_a_single_key_upstream(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """A keyless local server answers one 500: the next request is sent to it all the same
    (its only key is cooling, from a failure), not refused with a 429 for five seconds."""
    clock = FakeClock()
    live = await gateway(
        upstream("local", fake_openai, []) + model("team-model", "local", "qwen"), clock=clock
    )
    fake_openai.push(JsonReply(500, {"error": {"message": "boom"}}))
    assert (await openai_call(live)).status == 500
    assert (await openai_call(live)).status == 200
    assert (await anthropic_call(live)).status == 200
    assert len(fake_openai.received) == 3


async def test_timeout_moves_to_the_next_key(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(
        upstream("main", fake_openai, ["sk-one", "sk-two"], timeout=0.3)
        + model("team-model", "main", "qwen")
    )
    fake_openai.push(HangReply(3))
    resp = await openai_call(live)
    assert resp.status == 200
    assert auth_of(fake_openai) == ["sk-one", "sk-two"]
    rows = await upstream_key_rows(live)
    assert (rows[0].error_count, rows[1].error_count) == (1, 0)
    assert rows[0].last_error and rows[0].cooldown_until is not None


async def test_connection_error_fails_over_to_the_fallback_route(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    dead = f"http://127.0.0.1:{free_port()}/v1"
    live = await gateway(
        upstream("dead", dead, ["sk-dead"])
        + upstream("backup", fake_anthropic, ["sk-backup"])
        + model("team-model", "dead", "qwen", fallbacks=("backup-model",))
        + model("backup-model", "backup", "claude-backup")
    )
    resp = await openai_call(live)
    assert resp.status == 200
    assert resp.json()["choices"][0]["message"]["content"] == "fake reply"
    assert [r.json["model"] for r in fake_anthropic.received] == ["claude-backup"]
    assert auth_of(fake_anthropic) == ["sk-backup"]
    rows = await usage_events(live, 1)
    assert [(r.requested_model, r.upstream, r.target_model, r.status) for r in rows] == [
        ("team-model", "backup", "claude-backup", "ok")
    ]


async def test_401_disables_the_key_persists_it_and_an_admin_re_enables_it(gateway, fake_openai):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = await gateway(
        upstream("main", fake_openai, ["sk-revoked", "sk-good"])
        + model("team-model", "main", "qwen"),
        clock=clock,
    )
    fake_openai.push(
        JsonReply(
            401,
            {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}},
        )
    )
    assert (await openai_call(live)).status == 200
    clock.advance(7 * 86400)  # no cooldown: it stays off until an admin acts
    assert (await openai_call(live)).status == 200
    assert auth_of(fake_openai) == ["sk-revoked", "sk-good", "sk-good"]
    rows = await upstream_key_rows(live)
    assert [(k.last4, k.enabled) for k in rows] == [("oked", False), ("good", True)]
    assert rows[0].disabled_reason == "HTTP 401: Incorrect API key provided"
    assert rows[0].disabled_at is not None
    metrics = (await http("GET", live.url + "/metrics")).content.decode()
    assert (
        'bridgekeeper_upstream_key_state{key="…oked",state="disabled",upstream="main"} 1.0'
        in metrics
    )
    assert (
        'bridgekeeper_upstream_key_state{key="…good",state="active",upstream="main"} 1.0' in metrics
    )

    async with live.services.db.session() as session, session.begin():
        row = await session.get(UpstreamKey, rows[0].id)
        assert row is not None
        set_key_enabled(row, True)  # what the dashboard's "Enable" does
    await live.services.reload()
    assert (await openai_call(live)).status == 200
    assert auth_of(fake_openai)[-1] == "sk-revoked"
    rows = await upstream_key_rows(live)
    assert (rows[0].enabled, rows[0].disabled_reason) == (True, None)


async def test_403_moves_to_the_next_key_and_leaves_the_key_on(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    """A 403 is about the request (a beta, a model, a region the account lacks) more often
    than the key: another key may be allowed, and the refused one stays in rotation (it
    used to be disabled for good, taking a one-key upstream offline for everyone)."""
    live = await gateway(
        upstream("main", fake_anthropic, ["sk-one", "sk-two"])
        + model("team-model", "main", "claude-x")
    )
    fake_anthropic.push(
        JsonReply(403, {"type": "error", "error": {"type": "permission_error", "message": "nope"}})
    )
    assert (await anthropic_call(live)).status == 200
    assert (await anthropic_call(live)).status == 200
    assert auth_of(fake_anthropic) == ["sk-one", "sk-two", "sk-one"]
    rows = await upstream_key_rows(live)
    assert [(k.enabled, k.disabled_reason, k.error_count, k.cooldown_until) for k in rows] == [
        (True, None, 1, None),
        (True, None, 0, None),
    ]
    assert rows[0].last_error == "nope"


@pytest.mark.parametrize("client", ["anthropic", "openai"])
async def test_a_403_from_every_key_reaches_the_client_as_that_403(gateway, fake_anthropic, client):  # type: ignore[no-untyped-def]
    live = await gateway(
        upstream("main", fake_anthropic, ["sk-one", "sk-two"])
        + model("team-model", "main", "claude-x")
    )
    refusal = {
        "type": "error",
        "error": {"type": "permission_error", "message": "This beta is not enabled"},
    }
    fake_anthropic.push(JsonReply(403, refusal), JsonReply(403, refusal))
    call = anthropic_call if client == "anthropic" else openai_call
    resp = await call(live)
    assert resp.status == 403
    if client == "anthropic":
        assert resp.json()["error"] == refusal["error"]
    else:
        error = resp.json()["error"]
        assert (error["type"], error["message"]) == ("permission_error", "This beta is not enabled")
    assert auth_of(fake_anthropic) == ["sk-one", "sk-two"]
    assert (await call(live)).status == 200  # nothing was disabled or cooled


async def test_a_key_a_401_disabled_is_tried_again_when_the_file_names_it_at_a_restart(
    gateway, fake_openai
):  # type: ignore[no-untyped-def]
    """The file wins for what it names: a config key the gateway disabled is on again
    after a restart (a 401 then disables it again at once); one an admin disabled is not."""
    config = upstream("main", fake_openai, ["sk-revoked", "sk-good", "sk-spare"]) + model(
        "team-model", "main", "qwen"
    )
    first = await gateway(config)
    fake_openai.push(
        JsonReply(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
    )
    assert (await openai_call(first)).status == 200
    rows = await upstream_key_rows(first)
    async with first.services.db.session() as session, session.begin():
        row = await session.get(UpstreamKey, rows[2].id)
        assert row is not None
        set_key_enabled(row, False, "disabled by admin")  # what the dashboard's "Disable" does
    await first.services.recorder.flush()
    assert [k.enabled for k in await upstream_key_rows(first)] == [False, True, False]

    second = await gateway(config)  # the same database: a restart
    rows = await upstream_key_rows(second)
    assert [(k.enabled, k.disabled_reason) for k in rows] == [
        (True, None),
        (True, None),
        (False, "disabled by admin"),
    ]
    assert (await openai_call(second)).status == 200
    assert auth_of(fake_openai)[-1] == "sk-revoked"


async def test_failover_order_is_keys_first_then_fallbacks_in_order(gateway, make_fake):  # type: ignore[no-untyped-def]
    first, second, third = [await make_fake("openai") for _ in range(3)]
    live = await gateway(
        upstream("a", first, ["sk-a1", "sk-a2"])
        + upstream("b", second, ["sk-b1"])
        + upstream("c", third, ["sk-c1", "sk-c2"])
        + model("team-model", "a", "model-a", fallbacks=("model-b", "model-c"))
        + model("model-b", "b", "model-b")
        + model("model-c", "c", "model-c")
    )
    overloaded = JsonReply(503, {"error": {"message": "busy", "type": "server_error"}})
    first.push(overloaded, overloaded)
    second.push(JsonReply(429, {"error": {"message": "rl", "type": "rate_limit"}}))
    third.push(JsonReply(500, {"error": {"message": "oops", "type": "server_error"}}))
    resp = await openai_call(live)
    assert resp.status == 200
    assert auth_of(first) == ["sk-a1", "sk-a2"]
    assert auth_of(second) == ["sk-b1"]
    assert auth_of(third) == ["sk-c1", "sk-c2"]
    assert [r.json["model"] for r in first.received + second.received + third.received] == [
        "model-a",
        "model-a",
        "model-b",
        "model-c",
        "model-c",
    ]
    rows = await usage_events(live, 1)
    assert [(r.upstream, r.upstream_key, r.target_model, r.status) for r in rows] == [
        ("c", "…k-c2", "model-c", "ok")
    ]


async def test_cooling_upstream_is_skipped_without_a_call_and_fallback_answers(gateway, make_fake):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    primary, backup = await make_fake("anthropic"), await make_fake("anthropic")
    live = await gateway(
        upstream("primary", primary, ["sk-p"])
        + upstream("backup", backup, ["sk-b"])
        + model("team-model", "primary", "big", fallbacks=("small",))
        + model("small", "backup", "small"),
        clock=clock,
    )
    primary.push(
        JsonReply(
            429,
            {"type": "error", "error": {"type": "rate_limit_error", "message": "rl"}},
            {"retry-after": "30"},
        )
    )
    assert (await anthropic_call(live)).status == 200
    assert (await anthropic_call(live)).status == 200
    assert (len(primary.received), len(backup.received)) == (1, 2)
    clock.advance(30)
    assert (await anthropic_call(live)).status == 200
    assert (len(primary.received), len(backup.received)) == (2, 2)


async def test_everything_rate_limited_gives_429_with_the_soonest_recovery(gateway, make_fake):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    primary, backup = await make_fake("openai"), await make_fake("openai")
    live = await gateway(
        upstream("primary", primary, ["sk-p1", "sk-p2"])
        + upstream("backup", backup, ["sk-b"])
        + model("team-model", "primary", "big", fallbacks=("small",))
        + model("small", "backup", "small"),
        clock=clock,
    )
    primary.push(
        JsonReply(429, {"error": {"message": "rl1"}}, {"retry-after": "40"}),
        JsonReply(429, {"error": {"message": "rl2"}}, {"retry-after": "25"}),
    )
    backup.push(JsonReply(429, {"error": {"message": "rl3"}}, {"retry-after": "33"}))
    for call, dialect in ((anthropic_call, "anthropic"), (openai_call, "openai")):
        resp = await call(live)
        assert resp.status == 429, dialect
        assert resp.headers["retry-after"] == "25"
        if dialect == "anthropic":
            assert resp.json()["error"]["type"] == "rate_limit_error"
        else:
            assert resp.json()["error"]["code"] == "rate_limit_exceeded"
    assert (len(primary.received), len(backup.received)) == (2, 1)  # the 2nd call sent nothing
    clock.advance(10)
    resp = await anthropic_call(live)
    assert resp.status == 429 and resp.headers["retry-after"] == "15"
    clock.advance(15)
    assert (await anthropic_call(live)).status == 200
    assert auth_of(primary)[-1] == "sk-p2"
    rows = await usage_events(live, 4)
    assert [(r.status, r.http_status, r.error_type) for r in rows] == [
        ("rate_limited", 429, "rate_limit_error"),
        ("rate_limited", 429, "rate_limit_error"),
        ("rate_limited", 429, "rate_limit_error"),
        ("ok", 200, None),
    ]


async def test_everything_overloaded_gives_529_to_anthropic_and_503_to_openai(
    gateway, fake_anthropic
):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = await gateway(
        upstream("main", fake_anthropic, ["sk-one", "sk-two"])
        + model("team-model", "main", "claude-x"),
        clock=clock,
    )
    overloaded = JsonReply(
        529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    fake_anthropic.push(overloaded, overloaded)
    resp = await anthropic_call(live)
    assert resp.status == 529
    assert resp.json()["error"]["type"] == "overloaded_error"
    assert resp.headers["retry-after"] == "5"
    clock.advance(5)
    fake_anthropic.push(overloaded, overloaded)
    resp = await openai_call(live)
    assert resp.status == 503
    assert resp.headers["retry-after"] == "5"
    assert auth_of(fake_anthropic) == ["sk-one", "sk-two"] * 2


async def test_no_failover_after_the_first_byte_of_a_relayed_stream(gateway, make_fake):  # type: ignore[no-untyped-def]
    primary, backup = await make_fake("anthropic"), await make_fake("anthropic")
    live = await gateway(
        upstream("primary", primary, ["sk-p1", "sk-p2"])
        + upstream("backup", backup, ["sk-b"])
        + model("team-model", "primary", "big", fallbacks=("small",))
        + model("small", "backup", "small")
    )
    chunks = anthropic_stream(["Hel", "lo", " world"])
    primary.push(SSEReply(chunks[:4], cut=True))
    resp = await anthropic_call(live, stream=True)
    assert resp.status == 200
    assert resp.content.startswith(b"".join(chunks[:4]))
    assert b"event: error" in resp.content[len(b"".join(chunks[:4])) :]
    assert (len(primary.received), len(backup.received)) == (1, 0)
    rows = await usage_events(live, 1)
    assert [(r.status, r.stream) for r in rows] == [("error", True)]


async def test_no_failover_after_the_first_byte_of_a_translated_stream(gateway, make_fake):  # type: ignore[no-untyped-def]
    primary, backup = await make_fake("openai"), await make_fake("openai")
    live = await gateway(
        upstream("primary", primary, ["sk-p1", "sk-p2"])
        + upstream("backup", backup, ["sk-b"])
        + model("team-model", "primary", "big", fallbacks=("small",))
        + model("small", "backup", "small")
    )
    chunks = openai_stream(["Hel", "lo", " world"])
    primary.push(SSEReply(chunks[:3], cut=True))
    resp = await anthropic_call(live, stream=True)
    assert resp.status == 200
    assert b"Hel" in resp.content
    assert b"event: error" in resp.content
    assert b"message_stop" not in resp.content
    assert (len(primary.received), len(backup.received)) == (1, 0)
    rows = await usage_events(live, 1)
    assert [(r.status, r.stream) for r in rows] == [("error", True)]


# -- a whole answer that breaks after its headers ------------------------------------------------


@pytest.mark.parametrize("client", ["anthropic", "openai"])
async def test_a_whole_answer_cut_mid_body_moves_to_the_next_key(gateway, fake_openai, client):  # type: ignore[no-untyped-def]
    """Nothing reached the client yet: the next key answers, the cut key cools, and what
    the key's record says is the gateway's own sentence, not aiohttp's."""
    live = await gateway(
        upstream("main", fake_openai, ["sk-one", "sk-two"]) + model("team-model", "main", "qwen")
    )
    fake_openai.push(
        SSEReply(
            [b'{"id": "chatcmpl-1", "choi'],
            cut=True,
            headers={"Content-Type": "application/json", "Content-Length": "500"},
        )
    )
    resp = await (anthropic_call(live) if client == "anthropic" else openai_call(live))
    assert resp.status == 200
    assert b"fake reply" in resp.content
    assert auth_of(fake_openai) == ["sk-one", "sk-two"]
    rows = await upstream_key_rows(live)
    assert [(k.error_count, k.last_error) for k in rows] == [
        (1, "upstream answer ended before completion: connection closed"),
        (0, None),
    ]
    assert rows[0].cooldown_until is not None


async def test_a_whole_answer_slower_than_the_timeout_moves_to_the_next_key(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(
        upstream("main", fake_openai, ["sk-one", "sk-two"], timeout=0.4)
        + model("team-model", "main", "qwen")
    )
    fake_openai.push(
        SSEReply(
            [b'{"id": "chatcmpl-1", '], end_delay=3, headers={"Content-Type": "application/json"}
        )
    )
    resp = await openai_call(live)
    assert resp.status == 200
    assert resp.json()["choices"][0]["message"]["content"] == "fake reply"
    assert auth_of(fake_openai) == ["sk-one", "sk-two"]
    rows = await upstream_key_rows(live)
    assert [k.error_count for k in rows] == [1, 0]
    assert "within 0.4 s" in (rows[0].last_error or "")


async def test_a_stream_answered_with_a_whole_json_body_moves_to_the_next_key(
    gateway, fake_anthropic
):  # type: ignore[no-untyped-def]
    """A backend that ignored ``"stream": true``: the client used to get a 200 with one error
    event; the next key streams instead."""
    live = await gateway(
        upstream("main", fake_anthropic, ["sk-one", "sk-two"])
        + model("team-model", "main", "claude-x")
    )
    fake_anthropic.push(JsonReply(200, anthropic_message("whole")))
    resp = await openai_call(live, stream=True)
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert b'"finish_reason":"stop"' in resp.content and b"whole" not in resp.content
    assert auth_of(fake_anthropic) == ["sk-one", "sk-two"]
    rows = await upstream_key_rows(live)
    assert "ignored" in (rows[0].last_error or "")


# -- the backend's own verdict on a last failure -------------------------------------------------


@pytest.mark.parametrize(
    ("client", "fake_dialect", "status"),
    [
        ("openai", "openai", 500),
        ("openai", "anthropic", 529),
        ("anthropic", "anthropic", 500),
        ("anthropic", "openai", 503),
    ],
)
async def test_the_backends_x_should_retry_reaches_the_client(  # type: ignore[no-untyped-def]
    gateway, make_fake, client, fake_dialect, status
):
    """Both SDKs obey ``x-should-retry`` over the status: a backend that says not to retry
    its 5xx is not asked three times more by the client's SDK."""
    fake = await make_fake(fake_dialect)
    live = await gateway(upstream("main", fake, ["sk-one"]) + model("team-model", "main", "m"))
    body: dict[str, object] = (
        {"type": "error", "error": {"type": "api_error", "message": "no"}}
        if fake_dialect == "anthropic"
        else {"error": {"message": "no", "type": "server_error", "code": None}}
    )
    fake.push(JsonReply(status, body, {"x-should-retry": "false"}))
    if client == "openai":
        sdk = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=2)
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(
                model="team-model", messages=[{"role": "user", "content": "hi"}]
            )
        await sdk.close()
        headers = caught.value.response.headers
    else:
        client_sdk = anthropic.AsyncAnthropic(base_url=live.url, api_key=TEST_KEY, max_retries=2)
        with pytest.raises(anthropic.APIStatusError) as caught_a:
            await client_sdk.messages.create(
                model="team-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
        await client_sdk.close()
        headers = caught_a.value.response.headers
    assert headers["x-should-retry"] == "false"
    assert len(fake.received) == 1  # one attempt, no retries


async def test_a_same_dialect_backends_last_429_reaches_the_client_as_it_came(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """``insufficient_quota`` is not a rate limit to wait out: code that reads ``e.code``
    must see it, and the SDK must not retry it."""
    live = await gateway(
        upstream("main", fake_openai, ["sk-one", "sk-two"]) + model("team-model", "main", "gpt")
    )
    quota = {
        "error": {
            "message": "You exceeded your current quota",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }
    fake_openai.push(*[JsonReply(429, quota, {"x-should-retry": "false"})] * 2)
    sdk = openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=2)
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(
            model="team-model", messages=[{"role": "user", "content": "hi"}]
        )
    await sdk.close()
    assert (caught.value.code, caught.value.type) == ("insufficient_quota", "insufficient_quota")
    assert caught.value.body == quota["error"]
    assert caught.value.request_id and caught.value.request_id.startswith("req_")
    assert auth_of(fake_openai) == ["sk-one", "sk-two"]  # both keys, then no SDK retry
    rows = await usage_events(live, 1)
    assert [(r.status, r.http_status) for r in rows] == [("rate_limited", 429)]
