"""Config sync: an upstream the file names reaches the database, and the catalog the pool
runs on, with the file's settings (the file wins at every start)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from app.db.catalog import load_catalog, sync_config
from app.db.engine import Database, upgrade
from app.secretbox import SecretBox
from app.settings import UpstreamConfig
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
