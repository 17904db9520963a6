"""Per-key RPM/TPM through the live gateway (injected clock), refusals and limit headers in
both dialects, and the key constraints: expired, revoked, models outside the key's globs."""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime, timedelta

import anthropic
import openai
import pytest
from sqlalchemy import update

from app import cli
from app.db.models import ProxyKey
from tests.conftest import TEST_KEY, http
from tests.fakes import (
    FakeUpstream,
    JsonReply,
    SSEReply,
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_stream,
)
from tests.team.support import FakeClock, anthropic_body, openai_body, usage_events

pytestmark = pytest.mark.gen_test(timeout=30)

ANTHROPIC = {"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"}
OPENAI = {"Authorization": f"Bearer {TEST_KEY}"}


def routes(fake: FakeUpstream) -> str:
    return f"""
[[upstreams]]
name = "up"
kind = "{fake.dialect}"
base_url = "{fake.url}"
keys = ["sk-up"]

[[models]]
name = "team-model"
upstream = "up"
target = "real-model"

[[models]]
name = "secret-model"
upstream = "up"
"""


def key_entry(**limits: object) -> str:
    text = f'\n[[keys]]\nname = "tester"\nkey = "{TEST_KEY}"\n'
    for name, value in limits.items():
        text += f"{name} = {value!r}\n".replace("'", '"')
    return text


async def post(live, dialect: str, key: str = TEST_KEY, **extra):  # type: ignore[no-untyped-def]
    if dialect == "anthropic":
        return await http(
            "POST",
            live.url + "/v1/messages",
            headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
            json=anthropic_body(**extra),
        )
    return await http(
        "POST",
        live.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json=openai_body(**extra),
    )


async def run_cli(*argv: str) -> str:
    out = io.StringIO()
    code = await asyncio.get_running_loop().run_in_executor(
        None, lambda: cli.main(list(argv), out=out)
    )
    assert code == 0, out.getvalue()
    return out.getvalue()


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
async def test_rpm_from_the_key_refuses_the_n_plus_first_in_the_dialect(
    gateway, fake_openai, dialect
):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = await gateway(routes(fake_openai) + key_entry(rpm=2), clock=clock, with_key=False)
    first = await post(live, dialect)
    clock.advance(30)
    second = await post(live, dialect)
    clock.advance(29)
    refused = await post(live, dialect)
    assert (first.status, second.status, refused.status) == (200, 200, 429)
    assert refused.headers["retry-after"] == "1"
    body = refused.json()
    if dialect == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
        assert first.headers["anthropic-ratelimit-requests-limit"] == "2"
        assert first.headers["anthropic-ratelimit-requests-remaining"] == "1"
        assert second.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert refused.headers["anthropic-ratelimit-requests-remaining"] == "0"
        assert refused.headers["anthropic-ratelimit-requests-reset"] == "2025-06-15T12:01:00Z"
        assert "x-ratelimit-remaining-requests" not in refused.headers
    else:
        assert body["error"]["type"] == "rate_limit_error"
        assert body["error"]["code"] == "rate_limit_exceeded"
        assert first.headers["x-ratelimit-limit-requests"] == "2"
        assert first.headers["x-ratelimit-remaining-requests"] == "1"
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        assert refused.headers["x-ratelimit-reset-requests"] == "1s"
        assert "anthropic-ratelimit-requests-remaining" not in refused.headers
    assert "2 requests per minute" in body["error"]["message"]
    assert len(fake_openai.received) == 2  # the refused one never went upstream
    clock.advance(1)  # the first request leaves the window
    assert (await post(live, dialect)).status == 200
    rows = await usage_events(live, 4)
    assert [(r.key_name, r.status, r.http_status) for r in rows] == [
        ("tester", "ok", 200),
        ("tester", "ok", 200),
        ("tester", "rate_limited", 429),
        ("tester", "ok", 200),
    ]


async def test_official_sdks_see_a_rate_limit_error(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(
        routes(fake_anthropic) + key_entry(rpm=1), clock=FakeClock(), with_key=False
    )
    async with anthropic.AsyncAnthropic(
        base_url=live.url, api_key=TEST_KEY, max_retries=0
    ) as client:
        await client.messages.create(**anthropic_body())
        with pytest.raises(anthropic.RateLimitError) as info:
            await client.messages.create(**anthropic_body())
    assert info.value.response.headers["retry-after"] == "60"
    async with openai.AsyncOpenAI(
        base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=0
    ) as oai:
        with pytest.raises(openai.RateLimitError) as oinfo:
            await oai.chat.completions.create(**openai_body())
    assert oinfo.value.response.headers["x-ratelimit-remaining-requests"] == "0"


async def test_concurrent_requests_are_limited_exactly(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(routes(fake_openai) + key_entry(rpm=3), clock=FakeClock(), with_key=False)
    results = await asyncio.gather(*(post(live, "openai") for _ in range(10)))
    assert sorted(r.status for r in results) == [200] * 3 + [429] * 7
    assert len(fake_openai.received) == 3


async def test_default_rpm_from_the_environment(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(
        routes(fake_openai), clock=FakeClock(), environ={"REQUESTS_PER_MINUTE": "1"}
    )
    assert (await post(live, "openai")).status == 200
    assert (await post(live, "openai")).status == 429


@pytest.mark.parametrize(
    "server,environ",
    [
        ("default_rpm = 3\ndefault_tpm = 700\n", {}),
        ("", {"REQUESTS_PER_MINUTE": "3", "TOKENS_PER_MINUTE": "700"}),
        (
            "default_rpm = 50\ndefault_tpm = 50\n",
            {"REQUESTS_PER_MINUTE": "3", "TOKENS_PER_MINUTE": "700"},
        ),
    ],
)
async def test_defaults_for_keys_without_their_own(gateway, fake_anthropic, server, environ):  # type: ignore[no-untyped-def]
    live = await gateway(server + routes(fake_anthropic), clock=FakeClock(), environ=environ)
    resp = await post(live, "anthropic")
    assert resp.headers["anthropic-ratelimit-requests-limit"] == "3"
    assert resp.headers["anthropic-ratelimit-tokens-limit"] == "700"


async def test_limit_headers_on_a_relayed_upstream_error(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(
        routes(fake_anthropic) + key_entry(rpm=5), clock=FakeClock(), with_key=False
    )
    fake_anthropic.push(
        JsonReply(
            400, {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}
        )
    )
    resp = await post(live, "anthropic")
    assert resp.status == 400
    assert resp.headers["anthropic-ratelimit-requests-remaining"] == "4"


async def test_default_tpm_from_the_server_table_and_key_override(gateway, fake_openai):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = await gateway(
        "default_tpm = 100\n" + routes(fake_openai) + key_entry(tpm=1000),
        clock=clock,
        with_key=False,
    )
    fake_openai.push(JsonReply(body=openai_completion(prompt_tokens=300, completion_tokens=200)))
    assert (await post(live, "openai")).status == 200  # 500 of the key's own 1000
    resp = await post(live, "openai")
    assert resp.status == 200
    assert resp.headers["x-ratelimit-limit-tokens"] == "1000"
    out = await run_cli(
        "keys", "create", "bob", "--tpm", "20", "--rpm", "5", "--database-url", live.services_db_url
    )
    bob = out.strip().splitlines()[-1]
    first = await post(live, "openai", key=bob)
    assert first.headers["x-ratelimit-limit-tokens"] == "20"
    assert first.headers["x-ratelimit-limit-requests"] == "5"


async def test_tpm_charges_the_reported_usage_when_the_request_ends(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = await gateway(routes(fake_anthropic) + key_entry(tpm=1000), clock=clock, with_key=False)
    # Estimated at a handful of tokens; the upstream reports 900 in all.
    fake_anthropic.push(JsonReply(body=anthropic_message(input_tokens=700, output_tokens=200)))
    first = await post(live, "anthropic")
    assert first.status == 200
    remaining = int(first.headers["anthropic-ratelimit-tokens-remaining"])
    assert 1000 - 20 < remaining < 1000  # only the small estimate was reserved up front
    clock.advance(10)
    second = await post(live, "anthropic", text="x" * 1000)  # ~290 estimated: 900 + 290 > 1000
    assert second.status == 429
    assert "1000 tokens per minute" in second.json()["error"]["message"]
    assert second.headers["retry-after"] == "50"
    clock.advance(50)  # the 900 were charged at t=0 (the request ended at once)
    assert (await post(live, "anthropic", text="x" * 1000)).status == 200


async def test_tpm_is_trued_up_for_streams_too(gateway, fake_openai):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = await gateway(routes(fake_openai) + key_entry(tpm=500), clock=clock, with_key=False)
    fake_openai.push(SSEReply(openai_stream(["a", "b"], prompt=300, completion=150)))
    resp = await post(live, "openai", stream=True)
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers["x-ratelimit-limit-tokens"] == "500"
    assert int(resp.headers["x-ratelimit-remaining-tokens"]) > 480
    await usage_events(live, 1)  # the stream's end has been accounted
    assert (await post(live, "openai", text="x" * 300)).status == 429  # 450 + ~90 > 500
    assert (await post(live, "openai", text="x")).status == 200  # 450 + ~6 fits


async def test_rate_limit_headers_on_a_successful_anthropic_stream(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(
        routes(fake_anthropic) + key_entry(rpm=10, tpm=5000), clock=FakeClock(), with_key=False
    )
    fake_anthropic.push(SSEReply(anthropic_stream(["x"])))
    resp = await post(live, "anthropic", stream=True)
    assert resp.status == 200
    assert resp.headers["anthropic-ratelimit-requests-remaining"] == "9"
    assert resp.headers["anthropic-ratelimit-tokens-limit"] == "5000"
    assert resp.headers["anthropic-ratelimit-tokens-reset"] == "2025-06-15T12:01:00Z"


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
async def test_expired_key_is_401_in_the_dialect(gateway, fake_openai, dialect):  # type: ignore[no-untyped-def]
    clock = FakeClock()  # 2025-06-15 12:00 UTC
    live = await gateway(
        routes(fake_openai) + key_entry(expires="2025-06-15"), clock=clock, with_key=False
    )
    assert (await post(live, dialect)).status == 200  # works through its last day
    clock.advance(12 * 3600)
    resp = await post(live, dialect)
    assert resp.status == 401
    error = resp.json()["error"]
    assert "has expired (its last day was 2025-06-15)" in error["message"]
    if dialect == "anthropic":
        assert error["type"] == "authentication_error"
    else:
        assert error["code"] == "invalid_api_key"
    assert len(fake_openai.received) == 1


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
async def test_revoked_key_is_401_in_the_dialect(gateway, fake_openai, dialect):  # type: ignore[no-untyped-def]
    live = await gateway(routes(fake_openai), clock=FakeClock())
    out = await run_cli("keys", "create", "carol", "--database-url", live.services_db_url)
    carol = out.strip().splitlines()[-1]
    assert (await post(live, dialect, key=carol)).status == 200
    await run_cli("keys", "revoke", "carol", "--database-url", live.services_db_url)
    await live.services.reload()
    resp = await post(live, dialect, key=carol)
    assert resp.status == 401
    assert "revoked" in resp.json()["error"]["message"]
    if dialect == "anthropic":
        assert resp.json()["error"]["type"] == "authentication_error"
    assert len(fake_openai.received) == 1
    rows = await usage_events(live, 2)
    model = (anthropic_body() if dialect == "anthropic" else openai_body())["model"]
    # Who still sends the revoked key (it was recorded nameless), and for which model (the
    # body is looked at only for the row: the key was refused before it was read).
    assert [(r.key_name, r.requested_model, r.status, r.http_status) for r in rows] == [
        ("carol", model, "ok", 200),
        ("carol", model, "error", 401),
    ]


async def test_revocation_by_the_cli_reaches_a_running_gateway(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(routes(fake_openai))
    out = await run_cli("keys", "create", "dave", "--database-url", live.services_db_url)
    dave = out.strip().splitlines()[-1]
    assert (await post(live, "openai", key=dave)).status == 200
    await run_cli("keys", "revoke", "dave", "--database-url", live.services_db_url)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while (status := (await post(live, "openai", key=dave)).status) == 200:
        assert loop.time() < deadline, "the revocation never reached the gateway"
        await asyncio.sleep(0.2)
    assert status == 401


async def test_the_key_refresh_interval_is_the_configured_one(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """``key_refresh_seconds = 3600``: a revocation from the command line is not looked
    for before then (the default, 2 s, would have found it)."""
    live = await gateway(routes(fake_openai), server="key_refresh_seconds = 3600")
    out = await run_cli("keys", "create", "erin", "--database-url", live.services_db_url)
    erin = out.strip().splitlines()[-1]
    assert (await post(live, "openai", key=erin)).status == 200
    await run_cli("keys", "revoke", "erin", "--database-url", live.services_db_url)
    await asyncio.sleep(3.0)
    assert (await post(live, "openai", key=erin)).status == 200
    await live.services.reload()  # what the refresh would do, or a config reload
    assert (await post(live, "openai", key=erin)).status == 401


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
async def test_model_outside_the_key_globs_is_403_naming_it(gateway, fake_openai, dialect):  # type: ignore[no-untyped-def]
    live = await gateway(
        routes(fake_openai) + key_entry(models=["team-*", "other"]),
        clock=FakeClock(),
        with_key=False,
    )
    assert (await post(live, dialect)).status == 200
    resp = await post(live, dialect, model="secret-model")
    assert resp.status == 403
    error = resp.json()["error"]
    assert "secret-model" in error["message"]
    assert error["type"] == "permission_error"
    assert len(fake_openai.received) == 1
    rows = await usage_events(live, 2)
    assert [(r.requested_model, r.status, r.http_status, r.error_type) for r in rows][1] == (
        "secret-model",
        "error",
        403,
        "permission_error",
    )


async def test_cli_key_models_and_expiry_are_enforced(gateway, fake_openai):  # type: ignore[no-untyped-def]
    # The CLI refuses an expiry already past by the real calendar: the gateway's clock
    # starts now, and the key's last day is tomorrow.
    clock = FakeClock(time.time())
    live = await gateway(routes(fake_openai), clock=clock)
    tomorrow = datetime.fromtimestamp(clock(), UTC).date() + timedelta(days=1)
    out = await run_cli(
        "keys",
        "create",
        "erin",
        "--models",
        "team-*",
        "--expires",
        tomorrow.isoformat(),
        "--database-url",
        live.services_db_url,
    )
    erin = out.strip().splitlines()[-1]
    assert (await post(live, "anthropic", key=erin)).status == 200
    assert (await post(live, "anthropic", key=erin, model="secret-model")).status == 403
    clock.advance(3 * 86400)
    assert (await post(live, "anthropic", key=erin)).status == 401
    async with live.services.db.session() as session, session.begin():
        await session.execute(
            update(ProxyKey).where(ProxyKey.name == "erin").values(expires_at=None)
        )
    await live.services.reload()
    assert (await post(live, "anthropic", key=erin)).status == 200


OPENAI_LIMITS = {
    "x-ratelimit-limit-requests": "500",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-tokens": "29000",
    "x-ratelimit-reset-tokens": "6m0s",
}


async def test_the_backend_s_limit_headers_reach_the_client_in_its_dialect(  # type: ignore[no-untyped-def]
    gateway, fake_openai
):
    """PROTOCOL.md §6.11: the backend's rate-limit headers, translated; a key's own limits
    go over those of the kind it limits (here requests), the others still show."""
    live = await gateway(routes(fake_openai), clock=FakeClock())  # a key without limits
    fake_openai.push(JsonReply(body=openai_completion("hi"), headers=OPENAI_LIMITS))
    resp = await post(live, "anthropic")
    assert resp.status == 200
    assert {k: v for k, v in resp.headers.items() if k.startswith("anthropic-ratelimit-")} == {
        "anthropic-ratelimit-requests-limit": "500",
        "anthropic-ratelimit-requests-remaining": "499",
        "anthropic-ratelimit-requests-reset": "2025-06-15T12:00:01Z",
        "anthropic-ratelimit-tokens-limit": "30000",
        "anthropic-ratelimit-tokens-remaining": "29000",
        "anthropic-ratelimit-tokens-reset": "2025-06-15T12:06:00Z",
    }
    fake_openai.push(SSEReply(openai_stream(["a"]), headers=OPENAI_LIMITS))
    relayed = await post(live, "openai", stream=True)  # same dialect: as they came
    assert {k: v for k, v in relayed.headers.items() if k.startswith("x-ratelimit-")} == (
        OPENAI_LIMITS
    )

    limited = await gateway(
        routes(fake_openai) + key_entry(rpm=10), clock=FakeClock(), with_key=False
    )
    fake_openai.push(SSEReply(openai_stream(["a"]), headers=OPENAI_LIMITS))
    resp = await post(limited, "anthropic", stream=True)
    assert resp.status == 200
    assert resp.headers["anthropic-ratelimit-requests-limit"] == "10"  # the key's own
    assert resp.headers["anthropic-ratelimit-requests-remaining"] == "9"
    assert resp.headers["anthropic-ratelimit-tokens-limit"] == "30000"  # the backend's
    assert resp.headers["anthropic-ratelimit-tokens-reset"] == "2025-06-15T12:06:00Z"


async def test_a_relayed_backend_error_keeps_its_limit_headers(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(routes(fake_openai), clock=FakeClock())
    refusal = {"error": {"message": "bad", "type": "invalid_request_error", "code": None}}
    fake_openai.push(JsonReply(status=400, body=refusal, headers=OPENAI_LIMITS))
    resp = await post(live, "openai")
    assert resp.status == 400
    assert resp.headers["x-ratelimit-remaining-tokens"] == "29000"


async def test_a_key_s_globs_hold_for_inline_names_fallbacks_and_model_lookups(  # type: ignore[no-untyped-def]
    gateway, fake_openai
):
    """A key held to ``*-mini`` and ``team-model``: an inline name's parameters are not
    matched (``up:gpt-4o?a=-mini`` got through), a fallback outside its globs is not tried
    for it, and ``/v1/models/{id}`` knows nothing it may not use."""
    config = routes(fake_openai).replace(
        'target = "real-model"', 'target = "real-model"\nfallbacks = ["pricey"]'
    )
    config += (
        f'\n[[upstreams]]\nname = "up2"\nkind = "openai"\nbase_url = "{fake_openai.url}"\n'
        'keys = ["sk-up2"]\n\n[[models]]\nname = "pricey"\nupstream = "up2"\n'
        'target = "expensive"\n'
    )
    live = await gateway(
        config + key_entry(models=["*-mini", "team-model"]), clock=FakeClock(), with_key=False
    )
    assert (await post(live, "openai", model="up:gpt-4o?a=-mini")).status == 403
    assert (await post(live, "openai", model="up:gpt-4o-mini?temperature=0.2")).status == 200
    assert fake_openai.received[-1].json["model"] == "gpt-4o-mini"

    fake_openai.push(JsonReply(500, {"error": {"message": "down", "type": "server_error"}}))
    resp = await post(live, "openai", model="team-model")
    assert resp.status == 500  # the upstream's failure, not pricey's answer
    assert [r.json["model"] for r in fake_openai.received[-1:]] == ["real-model"]

    for name in ("pricey", "up:anything"):
        found = await http("GET", live.url + f"/v1/models/{name}", headers=OPENAI)
        assert found.status == 404
    assert (await http("GET", live.url + "/v1/models/team-model", headers=OPENAI)).status == 200
