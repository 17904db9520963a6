"""``GET /metrics``: Prometheus text with requests, tokens, errors, latency and TTFT by
route/upstream/status and upstream key states; bearer token, or loopback only when not
behind a proxy."""

from __future__ import annotations

import socket

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.dialects.tokens import estimate_anthropic_input
from tests.conftest import TEST_KEY, http
from tests.fakes import JsonReply, SSEReply, anthropic_message, openai_stream
from tests.team.support import FakeClock

pytestmark = pytest.mark.gen_test(timeout=30)


def config(anthropic_fake, openai_fake, token: str | None = None) -> str:  # type: ignore[no-untyped-def]
    text = f'metrics_token = "{token}"\n' if token else ""
    return (
        text
        + f"""
[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{anthropic_fake.url}"
keys = ["sk-ant-key-0001", "sk-ant-key-0002", "sk-ant-key-0003"]

[[upstreams]]
name = "local"
kind = "openai"
base_url = "{openai_fake.url}"

[[models]]
name = "claude-x"
upstream = "claude"

[[models]]
name = "local-x"
upstream = "local"
"""
    )


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(data, name: str, **labels: str) -> float:  # type: ignore[no-untyped-def]
    return data.get((name, frozenset(labels.items())), 0.0)  # type: ignore[no-any-return]


async def test_metrics_after_a_mixed_run(gateway, fake_anthropic, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic, fake_openai), clock=FakeClock())
    a_headers = {"x-api-key": TEST_KEY}
    o_headers = {"Authorization": f"Bearer {TEST_KEY}"}
    a_body = {"model": "claude-x", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]}
    o_body = {"model": "local-x", "messages": [{"role": "user", "content": "hi"}]}

    message = anthropic_message(input_tokens=100, output_tokens=20)
    message["usage"]["cache_read_input_tokens"] = 30
    fake_anthropic.push(
        JsonReply(
            401, {"type": "error", "error": {"type": "authentication_error", "message": "x"}}
        ),
        JsonReply(
            429,
            {"type": "error", "error": {"type": "rate_limit_error", "message": "y"}},
            {"retry-after": "60"},
        ),
        JsonReply(body=message),
        JsonReply(
            400, {"type": "error", "error": {"type": "invalid_request_error", "message": "z"}}
        ),
    )
    assert (
        await http("POST", live.url + "/v1/messages", headers=a_headers, json=a_body)
    ).status == 200
    assert (
        await http("POST", live.url + "/v1/messages", headers=a_headers, json=a_body)
    ).status == 400
    fake_openai.push(SSEReply(openai_stream(["a"], prompt=5, completion=2)))
    resp = await http(
        "POST", live.url + "/v1/chat/completions", headers=o_headers, json=o_body | {"stream": True}
    )
    assert resp.status == 200
    resp = await http(
        "POST",
        live.url + "/v1/chat/completions",
        headers={"Authorization": "Bearer nope"},
        json=o_body,
    )
    assert resp.status == 401
    await live.services.recorder.flush()

    resp = await http("GET", live.url + "/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    data = samples(resp.content.decode())

    requests = "bridgekeeper_requests_total"
    assert (
        value(data, requests, dialect="anthropic", model="claude-x", upstream="claude", status="ok")
        == 1
    )
    assert (
        value(
            data, requests, dialect="anthropic", model="claude-x", upstream="claude", status="error"
        )
        == 1
    )
    assert (
        value(data, requests, dialect="openai", model="local-x", upstream="local", status="ok") == 1
    )
    assert value(data, requests, dialect="openai", model="", upstream="", status="error") == 1
    assert sum(v for (n, _), v in data.items() if n == requests) == 4

    tokens = "bridgekeeper_tokens_total"
    assert value(
        data, tokens, model="claude-x", upstream="claude", direction="input"
    ) == 100 + estimate_anthropic_input(a_body)
    assert value(data, tokens, model="claude-x", upstream="claude", direction="output") == 20
    assert value(data, tokens, model="claude-x", upstream="claude", direction="cache_read") == 30
    assert value(data, tokens, model="local-x", upstream="local", direction="input") == 5
    assert value(data, tokens, model="local-x", upstream="local", direction="output") == 2

    errors = "bridgekeeper_errors_total"
    assert value(data, errors, upstream="claude", error_type="invalid_request_error") == 1
    assert value(data, errors, upstream="", error_type="authentication_error") == 1

    latency = "bridgekeeper_request_seconds_count"
    assert value(data, latency, model="claude-x", upstream="claude", status="ok") == 1
    assert value(data, latency, model="claude-x", upstream="claude", status="error") == 1
    assert value(data, latency, model="local-x", upstream="local", status="ok") == 1
    assert (
        value(
            data,
            "bridgekeeper_request_seconds_bucket",
            model="local-x",
            upstream="local",
            status="ok",
            le="+Inf",
        )
        == 1
    )
    ttft = "bridgekeeper_time_to_first_token_seconds_count"
    assert (
        value(data, ttft, model="claude-x", upstream="claude") == 1
    )  # the 400 sent no first token
    assert value(data, ttft, model="local-x", upstream="local") == 1
    assert value(data, latency, model="", upstream="", status="error") == 1  # the unknown key

    state = "bridgekeeper_upstream_key_state"
    assert value(data, state, upstream="claude", key="…0001", state="disabled") == 1
    assert value(data, state, upstream="claude", key="…0002", state="cooling") == 1
    assert value(data, state, upstream="claude", key="…0003", state="active") == 1
    assert not [k for k in data if k[0] == state and dict(k[1])["upstream"] == "local"]
    assert "sk-ant-key" not in resp.content.decode()


async def test_metrics_token_is_required_when_set(gateway, fake_anthropic, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_anthropic, fake_openai, token="prom-secret"))
    assert (await http("GET", live.url + "/metrics")).status == 401
    wrong = {"Authorization": "Bearer prom-wrong"}
    assert (await http("GET", live.url + "/metrics", headers=wrong)).status == 401
    proxy_key = {"Authorization": f"Bearer {TEST_KEY}"}
    assert (await http("GET", live.url + "/metrics", headers=proxy_key)).status == 401
    right = {"Authorization": "Bearer prom-secret"}
    resp = await http("GET", live.url + "/metrics", headers=right)
    assert resp.status == 200
    assert b"bridgekeeper_upstream_key_state" in resp.content


def outside_address() -> str | None:
    """This machine's non-loopback IPv4 address, if it has one."""
    for target in ("10.255.255.255", "192.0.2.1", "8.8.8.8"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.connect((target, 9))  # picks a route; no packet is sent
            except OSError:
                continue
            address = str(sock.getsockname()[0])
        if not address.startswith("127.") and address != "0.0.0.0":
            return address
    return None


async def test_without_a_token_only_loopback_clients_may_read(gateway, fake_anthropic, fake_openai):  # type: ignore[no-untyped-def]
    address = outside_address()
    if address is None:
        pytest.skip("no non-loopback address to connect from")
    live = await gateway(config(fake_anthropic, fake_openai))
    assert (await http("GET", live.url + "/metrics")).status == 200
    live.server.listen(address, 0)
    outside = f"http://{address}:{live.server.ports[-1]}"
    assert (await http("GET", outside + "/metrics")).status == 403
    assert (await http("GET", outside + "/health")).status == 200  # the listener itself works


async def test_with_a_token_non_loopback_clients_may_read(gateway, fake_anthropic, fake_openai):  # type: ignore[no-untyped-def]
    address = outside_address()
    if address is None:
        pytest.skip("no non-loopback address to connect from")
    live = await gateway(config(fake_anthropic, fake_openai, token="prom-secret"))
    live.server.listen(address, 0)
    outside = f"http://{address}:{live.server.ports[-1]}"
    resp = await http("GET", outside + "/metrics", headers={"Authorization": "Bearer prom-secret"})
    assert resp.status == 200


async def test_forged_loopback_does_not_open_metrics(gateway, fake_anthropic, fake_openai):  # type: ignore[no-untyped-def]
    """Behind a proxy, X-Real-IP / X-Forwarded-For are the client's own words, and the
    socket's peer is the proxy (loopback here too): only the token lets anyone read."""
    direct = await gateway(config(fake_anthropic, fake_openai))
    # Without a proxy the socket's peer decides: a real local call works.
    assert (await http("GET", direct.url + "/metrics")).status == 200
    await direct.server.stop(1)
    proxied = await gateway(config(fake_anthropic, fake_openai), server="behind_proxy = true")
    for forged in (
        {"X-Real-IP": "127.0.0.1"},
        {"X-Forwarded-For": "127.0.0.1"},
        {"X-Real-IP": "::1", "X-Forwarded-For": "::1"},
        {},
    ):
        assert (await http("GET", proxied.url + "/metrics", headers=forged)).status == 403
    await proxied.server.stop(1)
    with_token = await gateway(
        config(fake_anthropic, fake_openai, token="prom-secret"), server="behind_proxy = true"
    )
    forged = {"X-Real-IP": "127.0.0.1"}
    assert (await http("GET", with_token.url + "/metrics", headers=forged)).status == 401
    right = {"Authorization": "Bearer prom-secret", "X-Forwarded-For": "203.0.113.9"}
    assert (await http("GET", with_token.url + "/metrics", headers=right)).status == 200


def test_metrics_buckets_and_the_model_label_cap() -> None:
    """Unit level: ``le`` is inclusive, and any-name routing cannot grow the label set."""
    from datetime import datetime

    from app.db.usage import UsageRecord
    from app.metrics import MAX_MODELS, Metrics
    from app.upstreams.pool import UpstreamPool

    metrics = Metrics(UpstreamPool())

    def record(model: str, latency_ms: float) -> UsageRecord:
        return UsageRecord(
            time=datetime(2026, 1, 1),
            request_id="req_1",
            client_dialect="openai",
            requested_model=model,
            upstream="u",
            latency_ms=latency_ms,
            ttft_ms=latency_ms / 2,
            input_tokens=3,
        )

    metrics.observe(record("m", 5.0))  # exactly on the 0.005 s bound
    metrics.observe(record("m", 7.0))
    for i in range(MAX_MODELS + 5):
        metrics.observe(record(f"any-{i}", 1.0))
    data = samples(metrics.render().decode())
    bucket = "bridgekeeper_request_seconds_bucket"
    assert value(data, bucket, model="m", upstream="u", status="ok", le="0.005") == 1
    assert value(data, bucket, model="m", upstream="u", status="ok", le="0.01") == 2
    assert value(data, bucket, model="m", upstream="u", status="ok", le="+Inf") == 2
    assert value(
        data, "bridgekeeper_request_seconds_sum", model="m", upstream="u", status="ok"
    ) == (pytest.approx(0.012))
    requests = "bridgekeeper_requests_total"
    models = {dict(labels)["model"] for (name, labels) in data if name == requests}
    assert len(models) == MAX_MODELS + 1  # "m" and the first 499 others, then "other"
    assert value(data, requests, dialect="openai", model="other", upstream="u", status="ok") == 6
    assert value(data, "bridgekeeper_tokens_total", model="m", upstream="u", direction="input") == 6
