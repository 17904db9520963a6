"""Model routes: add, edit, match order, enable/disable, delete, and the resolve box."""

from __future__ import annotations

import html

import pytest
from sqlalchemy import select

from app.db import admins
from app.db import routes_admin as ra
from app.db.models import Upstream
from app.errors import NotFoundError
from app.services import Services
from tests.admin.conftest import Client, body

CONFIG = """
[[upstreams]]
name = "echo"
kind = "echo"

[[upstreams]]
name = "other"
kind = "echo"
"""


@pytest.fixture
def config_body() -> str:
    return CONFIG


async def upstream_id(services: Services, name: str) -> int:
    async with services.db.session() as session:
        found = await session.scalar(select(Upstream.id).where(Upstream.name == name))
    assert found is not None
    return int(found)


async def add_route(client: Client, services: Services, **fields: str) -> None:
    form = {
        "name": "claude-*",
        "upstream": str(await upstream_id(services, "echo")),
        "enabled": "on",
    } | fields
    response = await client.post("/admin/models", form)
    assert response.code == 303, body(response)


async def route_ids(services: Services) -> dict[str, int]:
    async with services.db.session() as session:
        return {r.name: r.id for r in await ra.list_routes(session)}


async def audit_rows(services: Services) -> list[tuple[str, str, str]]:
    async with services.db.session() as session:
        rows = await admins.list_audit(session, limit=200)
    return [(r.action, r.target, r.detail) for r in reversed(rows)]


@pytest.mark.gen_test(timeout=30)
async def test_add_route_and_resolve(client: Client, services: Services) -> None:
    await client.login()
    page = body(await client.get("/admin/models"))
    for label in (
        "Public name or glob",
        "Upstream",
        "Target model",
        "Default temperature",
        "Max-token cap",
        "Context window",
        "Model name",
    ):
        assert f">{label}</label>" in page
    await add_route(
        client,
        services,
        target="echo-target",
        temperature="0.2",
        max_tokens="100",
        context_window="2000",
        fallbacks="a, b\nc",
        prompt_cache="on",
    )
    route = services.router.resolve("claude-3-opus")
    assert (route.upstream, route.target, route.matched) == ("echo", "echo-target", "claude-*")
    assert route.settings.temperature == 0.2 and route.settings.max_tokens == 100
    assert route.settings.context_window == 2000 and route.settings.prompt_cache
    assert route.fallbacks == ("a", "b", "c")
    assert (
        "route_added",
        "claude-*",
        "upstream=echo target=echo-target temperature=0.2 max_tokens=100 context_window=2000 "
        "fallbacks=a,b,c prompt_cache=on enabled=on",
    ) in await audit_rows(services)
    page = body(await client.get("/admin/models?resolve=claude-3-opus"))
    resolution = page[page.index('data-testid="resolution"') :]
    assert "<dd>echo</dd>" in resolution and "<code>echo-target</code>" in resolution
    assert "<code>claude-*</code>" in resolution and "<dd>a, b, c</dd>" in resolution
    missing = body(await client.get("/admin/models?resolve=gpt-4o"))
    resolution = missing[missing.index('data-testid="resolution"') :]
    assert "model &#39;gpt-4o&#39; not found" in resolution


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temperature": "3"}, "Default temperature must be between 0 and 2."),
        ({"max_tokens": "0"}, "Max-token cap must be at least 1."),
        # Past a signed 64-bit column: was a 500 (OverflowError).
        (
            {"max_tokens": "99999999999999999999999"},
            "Max-token cap must be between 1 and 2147483647.",
        ),
        (
            {"context_window": "2147483648"},
            "Context window must be between 1 and 2147483647.",
        ),
        ({"context_window": "big"}, "Context window must be a whole number."),
        ({"upstream": "999"}, "Choose a valid Upstream."),
        ({"name": ""}, "Public name or glob is required."),
    ],
)
async def test_route_validation(
    client: Client, services: Services, fields: dict[str, str], message: str
) -> None:
    await client.login()
    form = {"name": "m", "upstream": str(await upstream_id(services, "echo"))} | fields
    response = await client.post("/admin/models", form)
    assert response.code == 400
    assert html.escape(message, quote=False) in body(response)
    assert await route_ids(services) == {}


@pytest.mark.gen_test(timeout=30)
async def test_match_order_moves_and_whole_orders(client: Client, services: Services) -> None:
    await client.login()
    await add_route(client, services, name="claude-*", target="first")
    await add_route(client, services, name="claude-3*", target="second")
    duplicate = await client.post(
        "/admin/models", {"name": "claude-*", "upstream": str(await upstream_id(services, "echo"))}
    )
    assert duplicate.code == 400 and "A route named claude-* already exists." in body(duplicate)
    assert services.router.resolve("claude-3-opus").target == "first"
    ids = await route_ids(services)
    response = await client.post(f"/admin/models/{ids['claude-3*']}/up")
    assert response.headers["Location"] == "/admin/models?msg=route_moved"
    assert services.router.resolve("claude-3-opus").target == "second"
    await client.post("/admin/models/order", {"order": f"{ids['claude-*']},{ids['claude-3*']}"})
    assert services.router.resolve("claude-3-opus").target == "first"
    bad = await client.post("/admin/models/order", {"order": str(ids["claude-*"])})
    assert bad.code == 400
    reorders = [r for r in await audit_rows(services) if r[0] == "routes_reordered"]
    assert [r[2] for r in reorders] == ["order=claude-3*,claude-*", "order=claude-*,claude-3*"]


@pytest.mark.gen_test(timeout=30)
async def test_disable_enable_edit_delete(client: Client, services: Services) -> None:
    await client.login()
    await add_route(client, services, name="gpt-*", target="t1")
    route_id = (await route_ids(services))["gpt-*"]
    await client.post(f"/admin/models/{route_id}/disable")
    with pytest.raises(NotFoundError):
        services.router.resolve("gpt-4o")
    await client.post(f"/admin/models/{route_id}/enable")
    assert services.router.resolve("gpt-4o").target == "t1"
    page = body(await client.get(f"/admin/models/{route_id}"))
    assert 'value="gpt-*"' in page and 'value="t1"' in page
    other = await upstream_id(services, "other")
    response = await client.post(
        f"/admin/models/{route_id}",
        {"name": "gpt-*", "upstream": str(other), "target": "t2", "enabled": "on"},
    )
    assert response.headers["Location"] == f"/admin/models/{route_id}?msg=route_updated"
    route = services.router.resolve("gpt-4o")
    assert (route.upstream, route.target) == ("other", "t2")
    await client.post(f"/admin/models/{route_id}/delete")
    assert await route_ids(services) == {}
    actions = [r[0] for r in await audit_rows(services)]
    assert actions[-4:] == ["route_disabled", "route_enabled", "route_edited", "route_deleted"]


@pytest.mark.gen_test(timeout=30)
async def test_route_names_are_escaped(client: Client, services: Services) -> None:
    await client.login()
    await add_route(client, services, name="<script>x</script>")
    page = body(await client.get("/admin/models"))
    assert "<script>x</script>" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page
