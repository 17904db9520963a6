"""``POST /v1/embeddings`` through the real server: the official SDK as the client, a fake
OpenAI-dialect backend, and the pipeline chat goes through (keys, model globs, limits,
routes, the upstream key ring, the usage trail)."""

from __future__ import annotations

import gzip
import math
from typing import Any

import openai
import orjson
import pytest
from sqlalchemy import select

from app.db.models import UsageEvent
from app.server import build_router
from tests.conftest import TEST_KEY, Live, flushed, http
from tests.fakes import FakeUpstream, JsonReply, openai_embeddings
from tests.team.support import FakeClock

pytestmark = pytest.mark.gen_test(timeout=30)

BEARER = {"Authorization": f"Bearer {TEST_KEY}"}


async def embed(live: Live, body: object) -> Any:
    """``POST /v1/embeddings`` with ``body`` and the test key."""
    return await http("POST", live.url + "/v1/embeddings", json=body, headers=BEARER)


def config(fake: FakeUpstream, *, keys: str = '["sk-upstream-one"]', route: str = "") -> str:
    return f"""
[[upstreams]]
name = "local"
kind = "openai"
base_url = "{fake.url}"
keys = {keys}

[[models]]
name = "embed-small"
upstream = "local"
target = "nomic-embed-text"
temperature = 0.1
max_tokens = 64
context_window = 512
{route}
"""


def key_entry(**fields: object) -> str:
    text = f'\n[[keys]]\nname = "tester"\nkey = "{TEST_KEY}"\n'
    for name, value in fields.items():
        text += f"{name} = {value!r}\n".replace("'", '"')
    return text


async def usage_rows(live) -> list[UsageEvent]:  # type: ignore[no-untyped-def]
    await flushed(live)
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UsageEvent).order_by(UsageEvent.id)))


def client(live) -> openai.AsyncOpenAI:  # type: ignore[no-untyped-def]
    return openai.AsyncOpenAI(base_url=live.url + "/v1", api_key=TEST_KEY, max_retries=0)


async def test_the_sdk_embeds_a_string_and_a_list(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """The SDK asks for base64 unless told otherwise and decodes it: the vectors and the
    usage reach it as the backend sent them, either way."""
    live = await gateway(config(fake_openai))
    async with client(live) as sdk:
        one = await sdk.embeddings.create(model="embed-small", input="hello")
        many = await sdk.embeddings.create(
            model="embed-small", input=["a", "b"], encoding_format="float"
        )
    assert [d.embedding for d in one.data] == [[0.5, -0.25, 0.0]]
    assert [(d.index, d.embedding) for d in many.data] == [
        (0, [0.5, -0.25, 0.0]),
        (1, [0.5, -0.25, 1.0]),
    ]
    assert (one.usage.prompt_tokens, one.usage.total_tokens) == (5, 5)
    assert one.model == many.model == "nomic-embed-text"  # the backend's answer, as it came
    first, second = fake_openai.received
    assert (first.method, first.path) == ("POST", "/v1/embeddings")
    assert first.json == {
        "model": "nomic-embed-text",
        "input": "hello",
        "encoding_format": "base64",
    }
    assert second.json == {
        "model": "nomic-embed-text",
        "input": ["a", "b"],
        "encoding_format": "float",
    }
    assert first.headers["Authorization"] == "Bearer sk-upstream-one"
    assert TEST_KEY not in orjson.dumps(first.headers).decode()


async def test_the_answer_is_relayed_byte_for_byte_with_the_gateway_headers(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    raw = (
        b'{"object": "list", "data": [{"object": "embedding", "index": 0, '
        b'"embedding": [0.1, 0.2]}], "model": "nomic-embed-text", "id": "embd-7", '
        b'"usage": {"prompt_tokens": 3, "total_tokens": 3}}\n'
    )
    limits = {"x-ratelimit-limit-requests": "50", "x-ratelimit-remaining-requests": "41"}
    fake_openai.push(JsonReply(raw=raw, headers=limits))
    resp = await http(
        "POST",
        live.url + "/openai/v1/embeddings",
        json={"model": "embed-small", "input": "x"},
        headers={"x-api-key": TEST_KEY, "Origin": "http://localhost:3000"},
    )
    assert resp.status == 200
    assert resp.content == raw
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["request-id"].startswith("req_")
    assert resp.headers["x-request-id"] == resp.headers["request-id"]
    assert resp.headers["x-ratelimit-limit-requests"] == "50"  # the backend's, relayed
    assert resp.headers["x-ratelimit-remaining-requests"] == "41"
    assert resp.headers["Access-Control-Allow-Origin"] == "*"


async def test_the_route_s_target_is_the_only_change_upstream(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """An alias, an inline ``upstream:model`` and a default upstream each send the body as
    it came but for the model name; the route's chat settings (temperature, max_tokens,
    context window) do not apply."""
    live = await gateway(config(fake_openai), server='default_upstream = "local"')
    body = {
        "input": [[1, 2, 3], [4]],
        "dimensions": 256,
        "encoding_format": "float",
        "user": "alice",
        "truncate_prompt_tokens": 512,  # vLLM's own
        "stream": True,  # no such thing here: neither a stream nor refused
    }
    for model, target in [
        ("embed-small", "nomic-embed-text"),
        ("local:bge-m3", "bge-m3"),
        ("text-embedding-3-small", "text-embedding-3-small"),
    ]:
        resp = await embed(live, {"model": model, **body})
        assert resp.status == 200, resp.content
        assert resp.headers["Content-Type"] == "application/json"
        assert fake_openai.received[-1].json == {"model": target, **body}
    rows = await usage_rows(live)
    assert [(r.requested_model, r.target_model, r.upstream, r.stream) for r in rows] == [
        ("embed-small", "nomic-embed-text", "local", False),
        ("local:bge-m3", "bge-m3", "local", False),
        ("text-embedding-3-small", "text-embedding-3-small", "local", False),
    ]


async def test_the_usage_row_holds_the_backend_s_count(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(JsonReply(body=openai_embeddings([[1.0, 0.0]], prompt_tokens=17)))
    async with client(live) as sdk:
        await sdk.embeddings.create(model="embed-small", input="a longer text", user="u1")
    (row,) = await usage_rows(live)
    assert {
        "key_name": row.key_name,
        "client_dialect": row.client_dialect,
        "endpoint": row.endpoint,
        "requested_model": row.requested_model,
        "target_model": row.target_model,
        "upstream": row.upstream,
        "upstream_key": row.upstream_key,
        "stream": row.stream,
        "status": row.status,
        "http_status": row.http_status,
        "error_type": row.error_type,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cache_read_tokens": row.cache_read_tokens,
        "cache_write_tokens": row.cache_write_tokens,
        "tokens_estimated": row.tokens_estimated,
    } == {
        "key_name": "tester",
        "client_dialect": "openai",
        "endpoint": "embeddings",
        "requested_model": "embed-small",
        "target_model": "nomic-embed-text",
        "upstream": "local",
        "upstream_key": "…-one",
        "stream": False,
        "status": "ok",
        "http_status": 200,
        "error_type": None,
        "input_tokens": 17,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "tokens_estimated": False,
    }
    assert row.latency_ms > 0 and row.ttft_ms is not None


async def test_an_answer_without_usage_is_charged_the_estimate(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    answer = openai_embeddings([[1.0]])
    del answer["usage"]
    fake_openai.push(JsonReply(body=answer))
    resp = await embed(live, {"model": "embed-small", "input": ["x" * 35, "y" * 7]})
    assert resp.status == 200
    (row,) = await usage_rows(live)
    assert (row.input_tokens, row.output_tokens, row.tokens_estimated) == (12, 0, True)


async def test_a_model_outside_the_key_s_globs_is_403_and_an_unknown_one_404(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai) + key_entry(models=["chat-*"]), with_key=False)
    resp = await embed(live, {"model": "embed-small", "input": "x"})
    assert resp.status == 403
    assert resp.json() == {
        "error": {
            "message": "This key may not use model 'embed-small'; allowed: chat-*",
            "type": "permission_error",
            "param": None,
            "code": None,
        }
    }
    unknown = await embed(live, {"model": "chat-embed", "input": "x"})
    assert unknown.status == 404
    assert unknown.json()["error"]["type"] == "invalid_request_error"
    assert unknown.json()["error"]["code"] == "model_not_found"
    assert "'chat-embed' not found" in unknown.json()["error"]["message"]
    assert fake_openai.received == []
    rows = await usage_rows(live)
    assert [(r.requested_model, r.status, r.http_status, r.error_type) for r in rows] == [
        ("embed-small", "error", 403, "permission_error"),
        ("chat-embed", "error", 404, "not_found_error"),
    ]


async def test_a_bad_key_is_401_in_openai_s_shape(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    async with openai.AsyncOpenAI(
        base_url=live.url + "/v1", api_key="bk-not-a-key", max_retries=0
    ) as sdk:
        with pytest.raises(openai.AuthenticationError) as raised:
            await sdk.embeddings.create(model="embed-small", input="x")
    assert raised.value.status_code == 401
    assert raised.value.body == {
        "message": "Invalid API key",
        "type": "invalid_request_error",
        "param": None,
        "code": "invalid_api_key",
    }
    assert raised.value.response.headers["x-should-retry"] == "false"
    missing = await http(
        "POST", live.url + "/v1/embeddings", json={"model": "embed-small", "input": "x"}
    )
    assert missing.status == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert fake_openai.received == []
    rows = await usage_rows(live)
    assert [(r.key_name, r.requested_model, r.http_status, r.endpoint) for r in rows] == [
        (None, "embed-small", 401, "embeddings"),
        (None, "embed-small", 401, "embeddings"),
    ]


def _invalid(message: str, param: str | None) -> dict[str, object]:
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    }


INPUT_TYPES = (
    "a string, an array of strings, an array of integers (token ids) or an array of arrays "
    "of integers"
)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {"model": "embed-small"},
            _invalid("Missing required parameter: 'input'.", "input"),
        ),
        (
            {"model": "embed-small", "input": None},
            _invalid("Missing required parameter: 'input'.", "input"),
        ),
        (
            {"model": "embed-small", "input": 42},
            _invalid(f"Invalid type for 'input': expected {INPUT_TYPES}.", "input"),
        ),
        (
            {"model": "embed-small", "input": {"text": "x"}},
            _invalid(f"Invalid type for 'input': expected {INPUT_TYPES}.", "input"),
        ),
        (
            {"model": "embed-small", "input": []},
            _invalid(
                "Invalid 'input': empty array. Expected an array with minimum length 1.", "input"
            ),
        ),
        (
            {"model": "embed-small", "input": ["a", "b", 3]},
            _invalid(
                "Invalid type for 'input[2]': expected a string, as 'input[0]' is.", "input[2]"
            ),
        ),
        (
            {"model": "embed-small", "input": [1, 2.5]},
            _invalid(
                "Invalid type for 'input[1]': expected an integer (a token id), as 'input[0]' is.",
                "input[1]",
            ),
        ),
        (
            {"model": "embed-small", "input": [True]},
            _invalid(
                "Invalid type for 'input[0]': expected a string, an integer (a token id) or an "
                "array of integers.",
                "input[0]",
            ),
        ),
        (
            {"model": "embed-small", "input": [[1, 2], [3, "4"]]},
            _invalid(
                "Invalid type for 'input[1][1]': expected an integer (a token id).", "input[1][1]"
            ),
        ),
        (
            {"input": "x"},
            _invalid("you must provide a model parameter", "model"),
        ),
        (
            {"model": ["embed-small"], "input": "x"},
            _invalid("model: expected a non-empty string", "model"),
        ),
        (
            {"model": "embed-small", "input": "x", "dimensions": 0},
            _invalid(
                "Invalid 'dimensions': integer below minimum value. Expected a value >= 1, "
                "but got 0 instead.",
                "dimensions",
            ),
        ),
        (
            {"model": "embed-small", "input": "x", "dimensions": "256"},
            _invalid("Invalid type for 'dimensions': expected an integer.", "dimensions"),
        ),
        (
            {"model": "embed-small", "input": "x", "encoding_format": 1},
            _invalid("Invalid type for 'encoding_format': expected a string.", "encoding_format"),
        ),
        (
            ["embed-small", "x"],
            _invalid("Request body must be a JSON object", None),
        ),
    ],
    ids=[
        "no-input",
        "null-input",
        "number",
        "object",
        "empty-array",
        "mixed-strings",
        "float-token",
        "boolean",
        "mixed-token-arrays",
        "no-model",
        "model-not-a-string",
        "dimensions-0",
        "dimensions-string",
        "encoding-format-number",
        "not-an-object",
    ],
)
async def test_a_malformed_body_is_a_400_naming_the_field(gateway, fake_openai, body, expected):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    resp = await embed(live, body)
    assert (resp.status, resp.json()) == (400, expected)
    assert fake_openai.received == []
    (row,) = await usage_rows(live)
    assert (row.status, row.http_status, row.error_type, row.input_tokens) == (
        "error",
        400,
        "invalid_request_error",
        0,
    )


async def test_a_body_that_is_not_json_is_a_400_and_too_large_a_413(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai), server="max_body_mb = 0.5")
    broken = await http("POST", live.url + "/v1/embeddings", data=b"{input", headers=BEARER)
    assert broken.status == 400
    error = broken.json()["error"]
    assert error["message"].startswith("Request body is not valid JSON")
    assert error["type"] == "invalid_request_error"
    large = await embed(live, {"model": "embed-small", "input": "x" * 600_000})
    assert large.status == 413
    assert large.json()["error"] == {
        "message": "Request body exceeds the 0.5 MiB limit",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_too_large",
    }
    assert fake_openai.received == []


async def test_a_gzip_body_goes_the_same_way(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """A compressed body is served by the Tornado handler rather than the lean path."""
    live = await gateway(config(fake_openai))
    data = gzip.compress(orjson.dumps({"model": "embed-small", "input": ["a", "b"]}))
    resp = await http(
        "POST",
        live.url + "/v1/embeddings",
        data=data,
        headers={**BEARER, "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert resp.status == 200
    assert [d["embedding"] for d in resp.json()["data"]] == [[0.5, -0.25, 0.0], [0.5, -0.25, 1.0]]
    assert fake_openai.received[0].json == {"model": "nomic-embed-text", "input": ["a", "b"]}


async def test_the_key_s_rpm_refuses_with_a_429_and_retry_after(gateway, fake_openai):  # type: ignore[no-untyped-def]
    clock = FakeClock()
    live = await gateway(config(fake_openai) + key_entry(rpm=1), clock=clock, with_key=False)
    async with client(live) as sdk:
        await sdk.embeddings.create(model="embed-small", input="x")
        clock.advance(20)
        with pytest.raises(openai.RateLimitError) as raised:
            await sdk.embeddings.create(model="embed-small", input="x")
    headers = raised.value.response.headers
    assert headers["retry-after"] == "40"
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert raised.value.body == {
        "message": "Rate limit reached: 1 requests per minute for key 'tester'",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert len(fake_openai.received) == 1
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.input_tokens) for r in rows] == [
        ("ok", 200, 5),
        ("rate_limited", 429, 0),
    ]


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (JsonReply(500, {"error": {"message": "boom", "type": "server_error"}}), "boom"),
        (
            JsonReply(200, raw=b"<html><title>Bad Gateway</title></html>"),
            "upstream sent a response that is not a JSON object",
        ),
    ],
    ids=["500", "html-200"],
)
async def test_a_failed_answer_moves_on_to_the_next_upstream_key(
    gateway, fake_openai, failure, reason
):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, keys='["sk-upstream-one", "sk-upstream-two"]'))
    fake_openai.push(failure)
    async with client(live) as sdk:
        answer = await sdk.embeddings.create(model="embed-small", input="x")
    assert answer.data[0].embedding == [0.5, -0.25, 0.0]
    assert [r.headers["Authorization"] for r in fake_openai.received] == [
        "Bearer sk-upstream-one",
        "Bearer sk-upstream-two",
    ]
    assert fake_openai.received[0].json == fake_openai.received[1].json
    states = {k.secret: k for k in live.services.pool.key_states("local")}
    assert states["sk-upstream-one"].last_error == reason
    rows = await usage_rows(live)
    assert [(r.status, r.upstream_key) for r in rows] == [("ok", "…-two")]


async def test_an_unreachable_upstream_falls_back_to_the_route_s_fallback(
    gateway, fake_openai, fake_anthropic
):  # type: ignore[no-untyped-def]
    """The fallbacks are chat's, less those on a backend without embeddings."""
    dead = FakeUpstream("openai")
    await dead.start()
    dead_url = dead.url
    await dead.stop()  # nothing listens there any more
    live = await gateway(f"""
[[upstreams]]
name = "down"
kind = "openai"
base_url = "{dead_url}"
keys = ["sk-down"]

[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{fake_anthropic.url}"
keys = ["sk-ant"]

[[upstreams]]
name = "local"
kind = "openai"
base_url = "{fake_openai.url}"
keys = ["sk-local"]

[[models]]
name = "embed"
upstream = "down"
fallbacks = ["claude-3-haiku", "embed-backup"]

[[models]]
name = "claude-3-haiku"
upstream = "claude"

[[models]]
name = "embed-backup"
upstream = "local"
target = "bge-m3"
""")
    resp = await embed(live, {"model": "embed", "input": "x"})
    assert resp.status == 200
    assert fake_openai.received[0].json == {"model": "bge-m3", "input": "x"}
    assert fake_anthropic.received == []
    rows = await usage_rows(live)
    assert [(r.requested_model, r.upstream, r.target_model, r.status) for r in rows] == [
        ("embed", "local", "bge-m3", "ok")
    ]


async def test_an_upstream_4xx_is_relayed_as_it_came(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai, keys='["sk-upstream-one", "sk-upstream-two"]'))
    error = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    fake_openai.push(JsonReply(400, error))
    resp = await embed(live, {"model": "embed-small", "input": "x"})
    assert (resp.status, resp.json()) == (400, error)
    assert len(fake_openai.received) == 1  # the client's mistake: no other key is tried
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type) for r in rows] == [
        ("error", 400, "invalid_request_error")
    ]


async def test_a_route_to_an_anthropic_backend_is_a_400_naming_the_model(gateway, fake_anthropic):  # type: ignore[no-untyped-def]
    live = await gateway(f"""
[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{fake_anthropic.url}"
keys = ["sk-ant-upstream-one"]

[[models]]
name = "claude-*"
upstream = "claude"
""")
    async with client(live) as sdk:
        with pytest.raises(openai.BadRequestError) as raised:
            await sdk.embeddings.create(model="claude-embed", input="x")
    assert raised.value.body == {
        "message": "Model 'claude-embed' is routed to upstream 'claude', an Anthropic backend, "
        "which has no embeddings API: route embedding models to an OpenAI-compatible upstream "
        "(OpenAI, vLLM, Ollama, llama.cpp).",
        "type": "invalid_request_error",
        "param": "model",
        "code": None,
    }
    assert fake_anthropic.received == []
    rows = await usage_rows(live)
    assert [
        (r.requested_model, r.upstream, r.target_model, r.status, r.http_status, r.input_tokens)
        for r in rows
    ] == [("claude-embed", "claude", "claude-embed", "error", 400, 0)]


async def test_the_echo_backend_gives_small_deterministic_unit_vectors(gateway):  # type: ignore[no-untyped-def]
    live = await gateway()  # no upstream configured: the built-in echo, as `make run`
    async with client(live) as sdk:
        first = await sdk.embeddings.create(model="anything", input=["cat", "dog"])
        again = await sdk.embeddings.create(model="anything", input="cat", encoding_format="float")
        wide = await sdk.embeddings.create(model="anything", input=[[1, 2, 3]], dimensions=32)
    cat, dog = (d.embedding for d in first.data)
    assert len(cat) == 8 and cat != dog
    assert again.data[0].embedding == cat  # the same in base64 and as floats
    assert math.isclose(sum(v * v for v in cat), 1.0, rel_tol=1e-5)
    assert len(wide.data[0].embedding) == 32
    assert first.usage.prompt_tokens == 2
    rows = await usage_rows(live)
    assert [(r.upstream, r.status, r.input_tokens, r.tokens_estimated) for r in rows] == [
        ("echo", "ok", 2, False),
        ("echo", "ok", 1, False),
        ("echo", "ok", 3, False),
    ]


async def test_not_an_anthropic_path(gateway, fake_openai):  # type: ignore[no-untyped-def]
    """Embeddings are OpenAI's: not under /anthropic, not on the dedicated Anthropic port."""
    live = await gateway(config(fake_openai))
    resp = await http(
        "POST",
        live.url + "/anthropic/v1/embeddings",
        json={"model": "embed-small", "input": "x"},
        headers={"x-api-key": TEST_KEY},
    )
    assert resp.status == 404
    assert resp.json()["type"] == "error"  # Anthropic's envelope, as the path says
    dedicated = build_router(live.services, live.server.gateway, anthropic_only=True)
    main = build_router(live.services, live.server.gateway)
    assert "/v1/embeddings" not in dedicated.endpoints
    assert main.endpoints["/v1/embeddings"] == ("openai", "embeddings")
    assert main.endpoints["/openai/v1/embeddings"] == ("openai", "embeddings")
    assert fake_openai.received == []
