"""The built-in echo backend answers every model only while nothing is configured: not the
file, not the environment, and not the dashboard. Upstreams added in the dashboard used
to leave echo the default after a restart, so a misspelt model got a 200 echo answer,
and echo came back at each start after being deleted."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from app.db import upstreams_admin
from app.db.models import Upstream
from app.errors import NotFoundError
from app.server import build_services
from app.services import Services
from app.settings import load_settings
from tests.databases import database_url

pytestmark = pytest.mark.gen_test(timeout=60)


async def start(tmp_path: Path) -> Services:
    """The services as `serve` builds them from a config file that names no upstream."""
    path = tmp_path / "bridgekeeper.toml"
    if not path.exists():
        path.write_text(f'[server]\ndatabase_url = "{database_url(tmp_path, "echo.db")}"\n')
    services, _ = await build_services(load_settings(config_path=str(path), environ={}))
    return services


async def upstream_names(services: Services) -> list[str]:
    async with services.db.session() as session:
        return sorted(await session.scalars(select(Upstream.name)))


async def test_a_dashboard_upstream_ends_the_echo_default(tmp_path: Path) -> None:
    services = await start(tmp_path)
    try:
        assert services.settings.echo_default
        assert services.router.resolve("gtp-4.1-typo").upstream == "echo"
        async with services.db.session() as session, session.begin():
            fields = upstreams_admin.UpstreamFields(
                name="local", kind="openai", base_url="http://127.0.0.1:9/v1"
            )
            await upstreams_admin.create_upstream(session, fields)
        await services.reload()  # as the dashboard does after a change: in effect at once
        assert not services.settings.echo_default
        with pytest.raises(NotFoundError, match="'gtp-4.1-typo' not found"):
            services.router.resolve("gtp-4.1-typo")
    finally:
        await services.close()

    services = await start(tmp_path)
    try:
        assert not services.settings.echo_default
        assert services.settings.default_upstream is None
        with pytest.raises(NotFoundError, match="'gtp-4.1-typo' not found"):
            services.router.resolve("gtp-4.1-typo")
        assert services.router.resolve("local:qwen3").upstream == "local"
        # The echo row of the first start stays, the dashboard's to delete; deleted, it stays
        # deleted.
        assert await upstream_names(services) == ["echo", "local"]
        async with services.db.session() as session, session.begin():
            echo = await session.scalar(select(Upstream).where(Upstream.name == "echo"))
            assert echo is not None
            await upstreams_admin.delete_upstream(session, echo)
    finally:
        await services.close()

    services = await start(tmp_path)
    try:
        assert not services.settings.echo_default
        assert await upstream_names(services) == ["local"]
    finally:
        await services.close()


async def test_an_echo_upstream_of_the_dashboard_keeps_the_echo_default(tmp_path: Path) -> None:
    services = await start(tmp_path)
    try:
        async with services.db.session() as session, session.begin():
            fields = upstreams_admin.UpstreamFields(name="test-echo", kind="echo", base_url="")
            await upstreams_admin.create_upstream(session, fields)
        await services.reload()
        assert services.settings.echo_default
    finally:
        await services.close()
    services = await start(tmp_path)
    try:
        assert services.settings.echo_default
        assert services.router.resolve("anything").upstream == "echo"
    finally:
        await services.close()
