"""Per-model settings on every path: what the fake upstream received for both client
dialects against both backend dialects (passthrough and translated)."""

from __future__ import annotations

from typing import Any

import pytest

from app.dialects.tokens import estimate_anthropic_input, estimate_openai_input
from tests.conftest import TEST_KEY, http
from tests.fakes import FakeUpstream
from tests.reliability.conftest import usage_rows

pytestmark = pytest.mark.gen_test(timeout=30)

PATHS = [
    ("anthropic", "anthropic"),
    ("anthropic", "openai"),
    ("openai", "openai"),
    ("openai", "anthropic"),
]


def config(fake: FakeUpstream, route: str, *, window: int | None = None) -> str:
    text = f"""
[[upstreams]]
name = "up"
kind = "{fake.dialect}"
base_url = "{fake.url}"
keys = ["sk-up"]

[[models]]
name = "team-model"
upstream = "up"
target = "real-model-v2"
temperature = 0.2
max_tokens = 300
{route}
"""
    if window is not None:
        text += f"context_window = {window}\n"
    text += """
[[models]]
name = "retired-model"
upstream = "up"
enabled = false
"""
    return text


async def call(live, client: str, body: dict[str, Any]):  # type: ignore[no-untyped-def]
    if client == "anthropic":
        body = {"max_tokens": 100} | body
        return await http(
            "POST",
            live.url + "/v1/messages",
            headers={"x-api-key": TEST_KEY, "anthropic-version": "2023-06-01"},
            json=body,
        )
    return await http(
        "POST",
        live.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        json=body,
    )


def request(text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"model": "team-model", "messages": [{"role": "user", "content": text}]} | extra


def sent_max_tokens(sent: dict[str, Any]) -> Any:
    return sent.get("max_tokens", sent.get("max_completion_tokens"))


def fake_for(backend: str, fake_openai: FakeUpstream, fake_anthropic: FakeUpstream) -> FakeUpstream:
    return fake_openai if backend == "openai" else fake_anthropic


@pytest.mark.parametrize("client,backend", PATHS)
async def test_target_default_temperature_and_cap(
    gateway, fake_openai, fake_anthropic, client, backend
):  # type: ignore[no-untyped-def]
    fake = fake_for(backend, fake_openai, fake_anthropic)
    live = await gateway(config(fake, ""))
    assert (await call(live, client, request(max_tokens=1000))).status == 200
    assert (await call(live, client, request(max_tokens=120, temperature=0.9))).status == 200
    first, second = (r.json for r in fake.received)
    assert (first["model"], first["temperature"], sent_max_tokens(first)) == (
        "real-model-v2",
        0.2,
        300,
    )
    assert (second["model"], second["temperature"], sent_max_tokens(second)) == (
        "real-model-v2",
        0.9,
        120,
    )


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
async def test_openai_client_without_max_tokens_gets_the_cap(
    gateway, fake_openai, fake_anthropic, backend
):  # type: ignore[no-untyped-def]
    fake = fake_for(backend, fake_openai, fake_anthropic)
    live = await gateway(config(fake, ""))
    assert (await call(live, "openai", request())).status == 200
    assert sent_max_tokens(fake.received[0].json) == 300


@pytest.mark.parametrize("client,backend", PATHS)
async def test_forced_params_reach_the_upstream(
    gateway, fake_openai, fake_anthropic, client, backend
):  # type: ignore[no-untyped-def]
    fake = fake_for(backend, fake_openai, fake_anthropic)
    extra = "repetition_penalty = 1.1" if backend == "openai" else "top_k = 7"
    live = await gateway(config(fake, f"params = {{ top_p = 0.5, {extra} }}"))
    assert (await call(live, client, request(top_p=0.95))).status == 200
    sent = fake.received[0].json
    assert sent["top_p"] == 0.5
    if backend == "openai":
        assert sent["repetition_penalty"] == 1.1
    else:
        assert sent["top_k"] == 7


@pytest.mark.parametrize(
    ("client", "backend", "params", "sent"),
    [
        ("anthropic", "openai", 'service_tier = "flex"', {"service_tier": "flex"}),
        ("openai", "anthropic", "metadata = { user_id = 7 }", {"metadata": {"user_id": 7}}),
    ],
)
async def test_backend_params_are_not_checked_as_the_clients_fields(  # type: ignore[no-untyped-def]
    gateway, fake_openai, fake_anthropic, client, backend, params, sent
):
    """A translated route's ``params`` speak the backend's dialect: ``service_tier = "flex"``
    is OpenAI's, not a wrong Anthropic ``service_tier``. The client's own fields still are
    checked (`tests/reliability/test_field_types.py`)."""
    fake = fake_for(backend, fake_openai, fake_anthropic)
    live = await gateway(config(fake, f"params = {{ {params} }}"))
    resp = await call(live, client, request())
    assert resp.status == 200, resp.content[:300]
    assert sent.items() <= fake.received[0].json.items()


@pytest.mark.parametrize("client,backend", PATHS)
async def test_context_window_lowers_max_tokens_to_what_fits(
    gateway, fake_openai, fake_anthropic, client, backend
):  # type: ignore[no-untyped-def]
    fake = fake_for(backend, fake_openai, fake_anthropic)
    live = await gateway(config(fake, "", window=400))
    body = request("word " * 200, max_tokens=290)
    estimate = (estimate_anthropic_input if client == "anthropic" else estimate_openai_input)(body)
    assert 110 < estimate < 390  # the cap (300) does not fit beside it; some room is left
    assert (await call(live, client, body)).status == 200
    assert sent_max_tokens(fake.received[0].json) == 400 - estimate


@pytest.mark.parametrize("client,backend", PATHS)
async def test_input_that_cannot_fit_is_a_clear_400_and_never_sent(
    gateway, fake_openai, fake_anthropic, client, backend
):  # type: ignore[no-untyped-def]
    fake = fake_for(backend, fake_openai, fake_anthropic)
    live = await gateway(config(fake, "", window=400))
    body = request("word " * 2000, max_tokens=100)
    estimate = (estimate_anthropic_input if client == "anthropic" else estimate_openai_input)(body)
    resp = await call(live, client, body)
    assert resp.status == 400
    error = resp.json()["error"]
    assert error["type"] == ("invalid_request_error")
    assert error["message"] == (
        f"input length and `max_tokens` exceed context limit: {estimate} + 100 > 400, "
        "decrease input length or `max_tokens` and try again"
    )
    if client == "anthropic":
        assert resp.json()["type"] == "error"
    assert fake.received == []
    (row,) = await usage_rows(live)  # recorded, with no tokens: nothing was sent
    assert (row.http_status, row.input_tokens, row.output_tokens) == (400, 0, 0)


@pytest.mark.parametrize("client,backend", PATHS)
async def test_disabled_model_is_not_routed(gateway, fake_openai, fake_anthropic, client, backend):  # type: ignore[no-untyped-def]
    fake = fake_for(backend, fake_openai, fake_anthropic)
    live = await gateway(config(fake, ""))
    resp = await call(live, client, request() | {"model": "retired-model"})
    assert resp.status == 404
    assert "retired-model" in resp.json()["error"]["message"]
    if client == "anthropic":
        assert resp.json()["error"]["type"] == "not_found_error"
    assert fake.received == []


@pytest.mark.parametrize("client,backend", PATHS)
async def test_inline_model_parameters(gateway, fake_openai, fake_anthropic, client, backend):  # type: ignore[no-untyped-def]
    fake = fake_for(backend, fake_openai, fake_anthropic)
    live = await gateway(config(fake, ""))
    body = request(max_tokens=500) | {"model": "up:inline-model?temperature=0.7&max_tokens=64"}
    assert (await call(live, client, body)).status == 200
    sent = fake.received[0].json
    assert (sent["model"], sent["temperature"], sent_max_tokens(sent)) == ("inline-model", 0.7, 64)
