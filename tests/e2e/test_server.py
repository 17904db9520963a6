"""The server's public surface: health, models, auth, routing errors, echo through both SDKs."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest
from sqlalchemy import select

from app.db import keys as key_queries
from app.db.models import UsageEvent
from tests.conftest import ECHO_CONFIG, TEST_KEY, flushed, http
from tests.fakes import FakeUpstream

pytestmark = pytest.mark.gen_test(timeout=30)

ECHO = (
    ECHO_CONFIG
    + """
[[models]]
name = "claude-*"
upstream = "echo"

[[models]]
name = "limited-model"
upstream = "echo"
"""
)


async def test_health_hello_and_root_redirect(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO)
    resp = await http("GET", live.url + "/health")
    assert resp.status == 200 and resp.json()["status"] == "ok"
    resp = await http("HEAD", live.url + "/api/hello")
    assert resp.status == 200
    resp = await http("HEAD", live.url + "/health")
    assert (resp.status, resp.content) == (200, b"")
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(live.url + "/", allow_redirects=False) as r:
            assert r.status in (301, 302) and r.headers["Location"] == "/admin/"


async def test_echo_through_both_sdks_stream_and_not(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO)
    async with anthropic.AsyncAnthropic(
        base_url=live.url, api_key=TEST_KEY, max_retries=0
    ) as client:
        message = await client.messages.create(
            model="echo-model", max_tokens=50, messages=[{"role": "user", "content": "ping pong"}]
        )
        assert message.content[0].text == "echo: ping pong"  # type: ignore[union-attr]
        async with client.messages.stream(
            model="claude-team", max_tokens=50, messages=[{"role": "user", "content": "a b c"}]
        ) as stream:
            final = await stream.get_final_message()
        assert final.content[0].text == "echo: a b c"  # type: ignore[union-attr]
        assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    async with openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=0) as oc:
        completion = await oc.chat.completions.create(
            model="echo-model", messages=[{"role": "user", "content": "hello"}]
        )
        assert completion.choices[0].message.content == "echo: hello"
        stream = await oc.chat.completions.create(
            model="echo-model", messages=[{"role": "user", "content": "x y"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "echo: x y"


async def test_models_lists_what_the_key_may_use(gateway):  # type: ignore[no-untyped-def]
    """A key limited to some models is offered those (it used to be offered every route,
    most of them a 403), including exact names it is allowed that a glob route takes."""
    limited_key = "bk-limited-to-some-models-0123456789abc"
    live = await gateway(
        ECHO
        + f'\n[[keys]]\nname = "alice"\nkey = "{limited_key}"\n'
        + 'models = ["limited-*", "claude-haiku-4-5", "claude-x*", "nowhere-model"]\n'
    )
    auth = {"Authorization": f"Bearer {limited_key}"}
    body = (await http("GET", live.url + "/v1/models", headers=auth)).json()
    assert [m["id"] for m in body["data"]] == ["limited-model", "claude-haiku-4-5"]
    page = await http("GET", live.url + "/anthropic/v1/models", headers=auth)
    assert [m["id"] for m in page.json()["data"]] == ["limited-model", "claude-haiku-4-5"]


async def test_models_in_both_shapes_with_anthropic_paging(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO)
    auth = {"Authorization": f"Bearer {TEST_KEY}"}
    body = (await http("GET", live.url + "/v1/models", headers=auth)).json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["echo-model", "limited-model"]
    assert body["data"][0]["object"] == "model"
    page = (
        await http(
            "GET",
            live.url + "/v1/models?limit=1",
            headers={**auth, "anthropic-version": "2023-06-01"},
        )
    ).json()
    assert page["data"][0]["type"] == "model" and page["data"][0]["id"] == "echo-model"
    assert (page["has_more"], page["first_id"], page["last_id"]) == (
        True,
        "echo-model",
        "echo-model",
    )
    page2 = (
        await http(
            "GET", live.url + "/anthropic/v1/models?limit=1&after_id=echo-model", headers=auth
        )
    ).json()
    assert [m["id"] for m in page2["data"]] == ["limited-model"] and page2["has_more"] is False
    back = (
        await http("GET", live.url + "/anthropic/v1/models?before_id=limited-model", headers=auth)
    ).json()
    assert [m["id"] for m in back["data"]] == ["echo-model"]
    one = await http("GET", live.url + "/openai/v1/models/echo-model", headers=auth)
    assert one.json()["id"] == "echo-model"
    missing = await http("GET", live.url + "/anthropic/v1/models/nope", headers=auth)
    assert missing.status == 404 and missing.json()["error"]["type"] == "not_found_error"
    async with anthropic.AsyncAnthropic(
        base_url=live.url, api_key=TEST_KEY, max_retries=0
    ) as client:
        ids = [m.id async for m in client.models.list(limit=1)]
    assert ids == ["echo-model", "limited-model"]
    async with openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=0) as oc:
        assert [m.id async for m in oc.models.list()] == ["echo-model", "limited-model"]


async def test_auth_errors_in_each_dialect(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO)
    async with live.services.db.session() as session, session.begin():
        _, revoked = await key_queries.create_key(session, "gone")
        await key_queries.revoke_key(session, "gone")
        from datetime import date

        _, expired = await key_queries.create_key(session, "old", expires=date(2020, 1, 1))
        _, limited = await key_queries.create_key(session, "narrow", models=["limited-*"])
    await live.services.reload()
    body = {"model": "echo-model", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    for key, fragment in (
        (None, "Missing API key"),
        ("bk-wrong", "Invalid API key"),
        (revoked, "revoked"),
        (expired, "expired"),
    ):
        headers = {"x-api-key": key} if key else {}
        resp = await http("POST", live.url + "/v1/messages", json=body, headers=headers)
        assert resp.status == 401
        assert resp.json()["type"] == "error"
        assert (
            resp.json()["error"]["type"] == "authentication_error"
            and fragment in resp.json()["error"]["message"]
        )
        resp = await http(
            "POST",
            live.url + "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {key}"} if key else {},
        )
        assert resp.status == 401
        assert (
            resp.json()["error"]["code"] == "invalid_api_key"
            and fragment in resp.json()["error"]["message"]
        )
    resp = await http("POST", live.url + "/v1/messages", json=body, headers={"x-api-key": limited})
    assert resp.status == 403 and resp.json()["error"]["type"] == "permission_error"
    assert "'echo-model'" in resp.json()["error"]["message"]
    ok = await http(
        "POST",
        live.url + "/v1/messages",
        json=dict(body, model="limited-model"),
        headers={"x-api-key": limited},
    )
    assert ok.status == 200
    # An SDK given both an auth token and an API key sends both; either may be the proxy key.
    for headers in (
        {"Authorization": "Bearer sk-ant-not-ours", "x-api-key": TEST_KEY},
        {"Authorization": f"Bearer {TEST_KEY}", "x-api-key": "sk-ant-not-ours"},
    ):
        both = await http("POST", live.url + "/v1/messages", json=body, headers=headers)
        assert both.status == 200, headers
    neither = await http(
        "POST",
        live.url + "/v1/messages",
        json=body,
        headers={"Authorization": "Bearer bk-wrong-1", "x-api-key": "bk-wrong-2"},
    )
    assert neither.status == 401 and "Invalid API key" in neither.json()["error"]["message"]


async def test_unknown_model_without_default_upstream_is_404_naming_models(
    gateway, fake_openai: FakeUpstream
):  # type: ignore[no-untyped-def]
    live = await gateway(
        f'[[upstreams]]\nname = "o"\nkind = "openai"\nbase_url = "{fake_openai.url}"\n\n[[models]]\nname = "known"\nupstream = "o"\n'
    )
    resp = await http(
        "POST",
        live.url + "/v1/chat/completions",
        json={"model": "mystery", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    assert resp.status == 404
    assert resp.json()["error"]["code"] == "model_not_found"
    assert (
        "mystery" in resp.json()["error"]["message"] and "known" in resp.json()["error"]["message"]
    )
    resp = await http(
        "POST",
        live.url + "/anthropic/v1/messages",
        json={"model": "mystery", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]},
        headers={"x-api-key": TEST_KEY},
    )
    assert resp.status == 404 and resp.json()["error"]["type"] == "not_found_error"


async def test_unknown_path_and_wrong_method_in_dialect(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO)
    resp = await http("GET", live.url + "/v1/messages", headers={"x-api-key": TEST_KEY})
    assert resp.status == 405 and resp.json()["error"]["type"] == "invalid_request_error"
    resp = await http("GET", live.url + "/v1/chat/completions")
    assert (
        resp.status == 405
        and "error" in resp.json()
        and resp.json()["error"]["type"] == "invalid_request_error"
    )
    resp = await http("POST", live.url + "/anthropic/v1/nothing")
    assert resp.status == 404 and resp.json()["type"] == "error"
    resp = await http("POST", live.url + "/v1/nothing")
    assert resp.status == 404 and resp.json()["error"]["type"] == "invalid_request_error"


async def test_request_ids_on_every_response(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO)
    resp = await http(
        "POST",
        live.url + "/v1/messages",
        json={
            "model": "echo-model",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
        },
        headers={"x-api-key": TEST_KEY},
    )
    assert (
        resp.headers["request-id"].startswith("req_")
        and resp.headers["x-request-id"] == resp.headers["request-id"]
    )


async def test_count_tokens_estimate_and_anthropic_upstream(gateway, fake_anthropic: FakeUpstream):  # type: ignore[no-untyped-def]
    config = (
        ECHO
        + f'\n[[upstreams]]\nname = "real"\nkind = "anthropic"\nbase_url = "{fake_anthropic.url}"\nkeys = ["sk-ant-x"]\n\n[[models]]\nname = "real-model"\nupstream = "real"\n'
    )
    live = await gateway(config)
    body = {
        "model": "echo-model",
        "messages": [{"role": "user", "content": "count these words please"}],
    }
    resp = await http(
        "POST",
        live.url + "/v1/messages/count_tokens?beta=true",
        json=body,
        headers={"x-api-key": TEST_KEY},
    )
    assert resp.status == 200 and resp.json()["input_tokens"] > 0
    async with anthropic.AsyncAnthropic(
        base_url=live.url, api_key=TEST_KEY, max_retries=0
    ) as client:
        counted = await client.messages.count_tokens(
            model="real-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert counted.input_tokens == 42
    sent = fake_anthropic.received[-1]
    assert sent.path == "/v1/messages/count_tokens" and sent.headers["X-Api-Key"] == "sk-ant-x"


async def test_dedicated_anthropic_port(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO)
    live.server.listen("127.0.0.1", 0, 0)
    port = live.server.ports[-1]
    resp = await http(
        "POST",
        f"http://127.0.0.1:{port}/v1/messages",
        json={
            "model": "echo-model",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "root"}],
        },
        headers={"x-api-key": TEST_KEY},
    )
    assert resp.status == 200 and resp.json()["content"][0]["text"] == "echo: root"
    resp = await http(
        "POST",
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={},
        headers={"x-api-key": TEST_KEY},
    )
    assert resp.status == 404 and resp.json()["type"] == "error"


async def test_body_over_the_limit_is_413_in_dialect(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO, server="max_body_mb = 0.001")
    big = b'{"model":"echo-model","messages":[{"role":"user","content":"' + b"x" * 5000 + b'"}]}'
    resp = await http(
        "POST",
        live.url + "/v1/chat/completions",
        data=big,
        headers={"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/json"},
    )
    assert resp.status == 413 and resp.json()["error"]["code"] == "request_too_large"
    resp = await http("POST", live.url + "/v1/messages", data=big, headers={"x-api-key": TEST_KEY})
    assert resp.status == 413 and resp.json()["error"]["type"] == "request_too_large"
    await flushed(live)
    async with live.services.db.session() as session:
        rows = list(await session.scalars(select(UsageEvent).order_by(UsageEvent.id)))
    assert [
        (r.key_name, r.client_dialect, r.status, r.http_status, r.error_type) for r in rows
    ] == [
        ("tester", "openai", "error", 413, "request_too_large"),
        ("tester", "anthropic", "error", 413, "request_too_large"),
    ]


async def test_forwarded_headers_are_trusted_only_behind_a_proxy(gateway):  # type: ignore[no-untyped-def]
    forwarded = {"X-Forwarded-For": "203.0.113.9", "X-Real-Ip": "203.0.113.9"}
    direct = await gateway(ECHO)
    assert (await http("GET", direct.url + "/metrics", headers=forwarded)).status == 200
    await direct.server.stop(1)
    proxied = await gateway(ECHO, server="behind_proxy = true")
    # Behind a proxy the client's own address counts: 203.0.113.9 is not loopback.
    assert (await http("GET", proxied.url + "/metrics", headers=forwarded)).status == 403
    # Nor does a loopback peer (that is the proxy): behind one only the token opens
    # /metrics (tests/accounting/test_metrics.py).
    assert (await http("GET", proxied.url + "/metrics")).status == 403


async def test_every_upstream_key_disabled_is_a_502_not_an_overload(
    gateway, fake_openai: FakeUpstream
):  # type: ignore[no-untyped-def]
    from tests.fakes import JsonReply

    live = await gateway(
        f'[[upstreams]]\nname = "o"\nkind = "openai"\nbase_url = "{fake_openai.url}"\nkeys = ["sk-only-key"]\n\n[[models]]\nname = "m"\nupstream = "o"\n'
    )
    fake_openai.push(
        JsonReply(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    headers = {"Authorization": f"Bearer {TEST_KEY}"}
    first = await http("POST", live.url + "/v1/chat/completions", json=body, headers=headers)
    assert first.status == 502  # the upstream refused the gateway's own key
    second = await http("POST", live.url + "/v1/chat/completions", json=body, headers=headers)
    assert second.status == 502 and "retry-after" not in second.headers
    assert "every key is disabled" in second.json()["error"]["message"]
    assert len(fake_openai.received) == 1


async def test_a_client_leaving_mid_upload_frees_its_handler(gateway, monkeypatch):  # type: ignore[no-untyped-def]
    """A chunked upload abandoned halfway: the handler's wait for the body ends, so it and
    the chunks it read are freed (once, they waited forever on a body that never came)."""
    import asyncio

    from app.handlers.api import ProxyHandler

    requests: list[Any] = []
    initialize = ProxyHandler.initialize

    def tracked(self: ProxyHandler, *args: Any, **kwargs: Any) -> None:
        requests.append(self.request)
        initialize(self, *args, **kwargs)

    monkeypatch.setattr(ProxyHandler, "initialize", tracked)
    live = await gateway(ECHO)
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
        writer.write(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: application/json\r\n\r\n" + b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        )
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    for _ in range(100):
        if len(requests) == 3 and all(r._body_future.done() for r in requests):
            break
        await asyncio.sleep(0.02)
    assert len(requests) == 3
    assert all(r._body_future.done() for r in requests)
    resp = await http("GET", live.url + "/health")
    assert resp.status == 200


async def test_an_unreadable_url_is_the_clients_400_in_its_dialect(gateway):  # type: ignore[no-untyped-def]
    """Tornado refuses a path or query argument that is not UTF-8: a 400 in the dialect's
    envelope, not a 500."""
    live = await gateway(ECHO)
    auth = {"Authorization": f"Bearer {TEST_KEY}"}
    for path, shape in (
        ("/v1/models/%ff", "openai"),
        ("/openai/v1/models/%ff", "openai"),
        ("/anthropic/v1/models?limit=%ff", "anthropic"),
        ("/anthropic/v1/models?after_id=%ff", "anthropic"),
    ):
        resp = await http("GET", live.url + path, headers=auth)
        assert resp.status == 400, path
        body = resp.json()
        if shape == "anthropic":
            assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        else:
            assert body["error"]["type"] == "invalid_request_error"
        assert "could not be read" in resp.content.decode()
