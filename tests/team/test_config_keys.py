"""Proxy keys named in the config file across restarts: the file wins for what it names,
but a revocation of the same secret outlives a restart (a leaked key stays dead)."""

from __future__ import annotations

import pytest

from app.db import keys as key_queries
from tests.conftest import TEST_KEY, http

pytestmark = pytest.mark.gen_test(timeout=30)

ECHO = '[[upstreams]]\nname = "echo"\nkind = "echo"\n\n[[models]]\nname = "m"\nupstream = "echo"\n'
NEW_KEY = "bk-a-new-secret-for-the-tester-0123456789"


async def ask(live, key: str) -> int:  # type: ignore[no-untyped-def]
    resp = await http(
        "POST",
        live.url + "/v1/messages",
        json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": key},
    )
    return resp.status


async def test_a_revoked_config_key_stays_revoked_until_the_file_gives_a_new_secret(gateway):  # type: ignore[no-untyped-def]
    first = await gateway(ECHO)
    assert await ask(first, TEST_KEY) == 200
    async with first.services.db.session() as session, session.begin():
        assert await key_queries.revoke_key(session, "tester") is not None  # the dashboard's Revoke
    await first.services.reload()
    assert await ask(first, TEST_KEY) == 401

    restarted = await gateway(ECHO)  # the same file and database
    assert await ask(restarted, TEST_KEY) == 401  # it used to work again here

    renewed = await gateway(ECHO, with_key=False)
    # (no [[keys]] entry: the database still holds the revoked key; nothing changes)
    assert await ask(renewed, TEST_KEY) == 401

    text = ECHO + f'\n[[keys]]\nname = "tester"\nkey = "{NEW_KEY}"\n'
    replaced = await gateway(text, with_key=False)
    assert await ask(replaced, NEW_KEY) == 200
    assert await ask(replaced, TEST_KEY) == 401


async def test_a_key_the_file_no_longer_names_keeps_working_as_the_dashboard_s(gateway):  # type: ignore[no-untyped-def]
    first = await gateway(ECHO)
    async with first.services.db.session() as session:
        row = await key_queries.get_key_by_name(session, "tester")
        assert row is not None and row.source == "config"
    later = await gateway(ECHO, with_key=False)
    assert await ask(later, TEST_KEY) == 200
    async with later.services.db.session() as session:
        row = await key_queries.get_key_by_name(session, "tester")
        assert row is not None and row.source == "dashboard"
