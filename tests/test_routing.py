"""Routing: exact name, globs in order, inline ``upstream:model?params``, default upstream."""

from __future__ import annotations

import re

import pytest

from app.errors import InvalidRequestError, NotFoundError
from app.routing import Router, RouteSettings, RouteSpec

ROUTES = [
    RouteSpec(
        "claude-3-haiku", "local", target="qwen2.5:7b", settings=RouteSettings(max_tokens=4096)
    ),
    RouteSpec("claude-*", "anthropic", fallbacks=("claude-3-haiku",)),
    RouteSpec("claude-3-*", "never"),  # shadowed by the glob above: order matters
    RouteSpec("gpt-4o", "openai", enabled=False),
    RouteSpec("gpt-*", "openai", target="gpt-4.1"),
]
UPSTREAMS = ["local", "anthropic", "openai", "never"]


@pytest.mark.parametrize(
    ("model", "upstream", "target", "matched"),
    [
        ("claude-3-haiku", "local", "qwen2.5:7b", "claude-3-haiku"),
        ("claude-3-opus", "anthropic", "claude-3-opus", "claude-*"),
        ("gpt-4o", "openai", "gpt-4.1", "gpt-*"),
        ("local:llama3", "local", "llama3", "inline"),
    ],
)
def test_resolution_order(model: str, upstream: str, target: str, matched: str) -> None:
    route = Router(ROUTES, UPSTREAMS).resolve(model)
    assert (route.upstream, route.target, route.matched) == (upstream, target, matched)


def test_inline_parameters() -> None:
    route = Router([], UPSTREAMS).resolve("local:qwen3?temperature=0.7&max_tokens=512&top_p=0.9")
    assert (route.upstream, route.target) == ("local", "qwen3")
    assert route.settings.temperature == 0.7 and route.settings.max_tokens == 512
    assert dict(route.settings.params) == {"top_p": 0.9}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("local:qwen3?temperature=hot", "parameter temperature='hot' is not a number"),
        ("local:qwen3?temperature=nan", "temperature='nan' is not a finite number"),
        ("local:qwen3?max_tokens=99999999999999999999999", "is out of range"),
        ("local:qwen3?max_tokens=0", "max_tokens='0' is out of range"),
        ("local:qwen3?stream=true", "parameter 'stream' cannot be set in a model name"),
        ("local:qwen3?messages=x", "parameter 'messages' cannot be set"),
    ],
)
def test_inline_bad_parameter_is_the_clients_400(name: str, message: str) -> None:
    """A client's mistake in its model name: a 400 naming ``model``, never a 404 or (a
    number past 64 bits, once) a 500."""
    with pytest.raises(InvalidRequestError, match=re.escape(message)) as raised:
        Router([], UPSTREAMS).resolve(name)
    assert (raised.value.status, raised.value.param) == (400, "model")


def test_default_upstream_and_model() -> None:
    router = Router([], UPSTREAMS, default_upstream="local", default_model="qwen3")
    route = router.resolve("anything")
    assert (route.upstream, route.target, route.matched) == ("local", "qwen3", "default")


def test_unknown_model_names_what_exists() -> None:
    with pytest.raises(NotFoundError) as info:
        Router(ROUTES, UPSTREAMS).resolve("mistral-large")
    assert info.value.message == (
        "model 'mistral-large' not found; available models: claude-3-haiku, "
        "or names matching claude-*, claude-3-*, gpt-*"
    )
    with pytest.raises(NotFoundError) as info:
        Router([RouteSpec("gpt-*", "openai")], UPSTREAMS).resolve("mistral-large")
    assert info.value.message.endswith("available models: names matching gpt-*")
    with pytest.raises(NotFoundError) as info:
        Router([], UPSTREAMS).resolve("mistral-large")
    assert info.value.message.endswith("available models: none are configured")


def test_defaults_fill_unset_settings() -> None:
    router = Router(ROUTES, UPSTREAMS, defaults=RouteSettings(temperature=0.3, max_tokens=1000))
    assert router.resolve("claude-3-haiku").settings.max_tokens == 4096
    assert router.resolve("claude-3-haiku").settings.temperature == 0.3
    assert router.resolve("gpt-5").settings.max_tokens == 1000


def test_public_names_skip_globs_and_disabled() -> None:
    assert Router(ROUTES, UPSTREAMS).public_names() == ["claude-3-haiku"]


def test_public_names_end_with_the_default_model() -> None:
    """``ANTHROPIC_MODEL`` with only glob routes (the environment's bootstrap) listed
    nothing: clients that pick from /v1/models had no name to pick."""
    router = Router(ROUTES, UPSTREAMS, default_upstream="local", default_model="qwen3")
    assert router.public_names() == ["claude-3-haiku", "qwen3"]
    same = Router(ROUTES, UPSTREAMS, default_upstream="local", default_model="claude-3-haiku")
    assert same.public_names() == ["claude-3-haiku"]
    assert Router(ROUTES, UPSTREAMS, default_model="qwen3").public_names() == ["claude-3-haiku"]


def test_a_name_resolves_once_per_router_and_unknown_names_are_not_kept() -> None:
    """A resolved name is kept (its Route is frozen; the router never changes), up to a
    bound a client sending made-up names under a glob cannot pass; an unknown name is
    never kept, so it stays a NotFoundError."""
    import app.routing

    router = Router(ROUTES, UPSTREAMS)
    first = router.resolve("claude-3-opus")
    assert router.resolve("claude-3-opus") is first
    assert router.resolve("claude-3-haiku") is not first
    for _ in range(2):
        with pytest.raises(NotFoundError):
            router.resolve("mistral-large")
    for i in range(app.routing._REMEMBERED + 10):
        assert router.resolve(f"claude-x-{i}").target == f"claude-x-{i}"
    assert len(router._resolved) == app.routing._REMEMBERED
    assert Router(ROUTES, UPSTREAMS).resolve("claude-3-opus") == first  # equal, not kept
