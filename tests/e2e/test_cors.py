"""CORS for browser clients on the API paths, and ``Allow`` on OPTIONS.

A proxy key is a bearer token, so any origin may call the API (as Anthropic's and OpenAI's
do): a preflight gets a 204 that allows the method and the headers it asked about, and every
API answer to a request with an ``Origin`` (errors and streams too, on the lean path and on
Tornado's) lets the page read it and its request id, retry and limit headers. The dashboard
is same-origin with cookies: none of it there.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import ECHO_CONFIG, TEST_KEY, RawResponse, http

pytestmark = pytest.mark.gen_test(timeout=30)


ORIGIN = "https://app.example"
ASKED = "authorization, content-type, anthropic-version, anthropic-dangerous-direct-browser-access"
EXPOSED = {
    "request-id",
    "x-request-id",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
}
AUTH = {"Authorization": f"Bearer {TEST_KEY}"}
A_BODY = {"model": "echo-model", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
O_BODY = {"model": "echo-model", "messages": [{"role": "user", "content": "x"}]}

API_PATHS = [
    ("/v1/messages", "POST, OPTIONS"),
    ("/anthropic/v1/messages", "POST, OPTIONS"),
    ("/v1/messages/count_tokens", "POST, OPTIONS"),
    ("/v1/chat/completions", "POST, OPTIONS"),
    ("/openai/v1/chat/completions", "POST, OPTIONS"),
    ("/v1/responses", "POST, OPTIONS"),
    ("/v1/models", "GET, OPTIONS"),
    ("/anthropic/v1/models/echo-model", "GET, OPTIONS"),
]


def allows_the_page(resp: RawResponse) -> None:
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    exposed = {n.strip() for n in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert exposed == EXPOSED


def no_cors(resp: RawResponse) -> None:
    assert not [name for name in resp.headers if name.lower().startswith("access-control-")]


async def chunked(url: str, body: bytes, headers: dict[str, str]) -> RawResponse:
    """A POST without Content-Length: Tornado's path (`ProxyHandler`), not the lean one."""

    async def pieces() -> Any:
        yield body

    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=pieces(), headers=headers) as resp,
    ):
        return RawResponse(resp.status, resp.headers, await resp.read())


async def test_a_preflight_is_answered_on_every_api_path(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO_CONFIG)
    for path, methods in API_PATHS:
        resp = await http(
            "OPTIONS",
            live.url + path,
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": methods.split(",")[0],
                "Access-Control-Request-Headers": ASKED,
            },
        )
        assert resp.status == 204, (path, resp.status, resp.content)
        assert resp.content == b""
        assert resp.headers["Allow"] == methods
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Access-Control-Allow-Methods"] == methods
        assert resp.headers["Access-Control-Allow-Headers"] == ASKED
        assert int(resp.headers["Access-Control-Max-Age"]) > 0


async def test_a_plain_options_says_what_the_path_allows(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO_CONFIG)
    for path, methods in API_PATHS:
        resp = await http("OPTIONS", live.url + path)
        assert (resp.status, resp.headers["Allow"]) == (204, methods), path
        no_cors(resp)


async def test_api_answers_to_a_page_let_it_read_them(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO_CONFIG)
    origin = {"Origin": ORIGIN}
    answers = {
        "messages": await http(
            "POST", live.url + "/v1/messages", json=A_BODY, headers=AUTH | origin
        ),
        "stream": await http(
            "POST",
            live.url + "/v1/chat/completions",
            json=O_BODY | {"stream": True},
            headers=AUTH | origin,
        ),
        "no key": await http("POST", live.url + "/v1/messages", json=A_BODY, headers=origin),
        "bad body": await http(
            "POST", live.url + "/v1/chat/completions", data=b"{", headers=AUTH | origin
        ),
        "chunked": await chunked(live.url + "/v1/messages", b'{"model": 1}', AUTH | origin),
        "models": await http("GET", live.url + "/v1/models", headers=AUTH | origin),
        "wrong method": await http("GET", live.url + "/v1/messages", headers=AUTH | origin),
        "unknown path": await http("POST", live.url + "/v1/nope", headers=AUTH | origin),
    }
    statuses = {name: resp.status for name, resp in answers.items()}
    assert statuses == {
        "messages": 200,
        "stream": 200,
        "no key": 401,
        "bad body": 400,
        "chunked": 400,
        "models": 200,
        "wrong method": 405,
        "unknown path": 404,
    }
    assert answers["stream"].content.rstrip().endswith(b"data: [DONE]")
    for resp in answers.values():
        allows_the_page(resp)
        assert resp.headers["request-id"].startswith("req_")


async def test_requests_without_an_origin_get_no_cors_headers(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO_CONFIG)
    for resp in (
        await http("POST", live.url + "/v1/messages", json=A_BODY, headers=AUTH),
        await http(
            "POST", live.url + "/v1/chat/completions", json=O_BODY | {"stream": True}, headers=AUTH
        ),
        await chunked(live.url + "/v1/messages", b"{}", AUTH),
        await http("GET", live.url + "/v1/models", headers=AUTH),
        await http("POST", live.url + "/v1/nope", headers=AUTH),
    ):
        no_cors(resp)


async def test_the_dashboard_gets_no_cors(gateway):  # type: ignore[no-untyped-def]
    live = await gateway(ECHO_CONFIG)
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    login = await http("GET", live.url + "/admin/login", headers={"Origin": ORIGIN})
    assert login.status == 200
    no_cors(login)
    asked = await http("OPTIONS", live.url + "/admin/login", headers=preflight)
    assert asked.status == 405
    no_cors(asked)
    missing = await http("GET", live.url + "/admin/nothing-here", headers={"Origin": ORIGIN})
    assert missing.status == 404
    no_cors(missing)
