"""Config sync: an upstream the file names reaches the database, and the catalog the pool
runs on, with the file's settings (the file wins at every start)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select

from app.db.catalog import load_catalog, sync_config
from app.db.engine import Database, upgrade
from app.db.models import ModelRoute, Upstream
from app.secretbox import SecretBox
from app.settings import ModelConfig, UpstreamConfig
from tests.databases import database_url


@pytest.mark.gen_test(timeout=30)
async def test_the_file_s_upstream_switches_win_at_each_sync(tmp_path: Path) -> None:
    url = database_url(tmp_path, "catalog.db")
    upgrade(url)
    db = Database(url)
    box = SecretBox(Fernet.generate_key())
    try:
        for top_k, switch in ((True, True), (False, False), (False, True)):
            cfg = UpstreamConfig(
                name="local",
                kind="openai",
                base_url="http://127.0.0.1:9/v1",
                keys=("sk-local-0001",),
                top_k=top_k,
                chat_template_thinking=switch,
            )
            async with db.session() as session:
                await sync_config(session, [cfg], [], box)
                await session.commit()
            async with db.session() as session:
                catalog = await load_catalog(session, box)
            (spec,) = catalog.upstreams
            assert (spec.name, spec.top_k, spec.chat_template_thinking) == ("local", top_k, switch)
            assert [k.secret for k in catalog.keys["local"]] == ["sk-local-0001"]
    finally:
        await db.close()


@pytest.mark.gen_test(timeout=30)
async def test_what_the_file_no_longer_names_stays_as_the_dashboard_s(tmp_path: Path) -> None:
    """Removed from the file, an upstream and its route keep working, no longer labelled
    "defined in the config file" (the dashboard may now edit them for good)."""
    url = database_url(tmp_path, "catalog.db")
    upgrade(url)
    db = Database(url)
    box = SecretBox(Fernet.generate_key())
    old = UpstreamConfig(name="old", kind="openai", base_url="http://127.0.0.1:9/v1")
    kept = UpstreamConfig(name="kept", kind="openai", base_url="http://127.0.0.1:8/v1")
    routes = [ModelConfig(name="old-model", upstream="old"), ModelConfig(name="m", upstream="kept")]
    try:
        async with db.session() as session:
            await sync_config(session, [old, kept], routes, box)
            await session.commit()
        async with db.session() as session:
            await sync_config(session, [kept], routes[1:], box)
            await session.commit()
        async with db.session() as session:
            upstreams = {u.name: u.source for u in await session.scalars(select(Upstream))}
            models = {r.name: r.source for r in await session.scalars(select(ModelRoute))}
            catalog = await load_catalog(session, box)
        assert upstreams == {"old": "dashboard", "kept": "config"}
        assert models == {"old-model": "dashboard", "m": "config"}
        assert {spec.name for spec in catalog.upstreams} == {"old", "kept"}
    finally:
        await db.close()
