"""Upstream key state between the live ring and the ``upstream_keys`` rows: an automatic
disable survives a reload, and an admin's change is never overwritten by live counters."""

from __future__ import annotations

import pytest
from sqlalchemy import update

from app.db.models import UpstreamKey
from tests.conftest import TEST_KEY, http
from tests.fakes import JsonReply
from tests.team.support import auth_of, upstream_key_rows

pytestmark = pytest.mark.gen_test(timeout=30)


def config(fake) -> str:  # type: ignore[no-untyped-def]
    return f"""
[[upstreams]]
name = "main"
kind = "openai"
base_url = "{fake.url}"
keys = ["sk-first-key", "sk-second-key"]

[[models]]
name = "team-model"
upstream = "main"
"""


async def call(live) -> int:  # type: ignore[no-untyped-def]
    resp = await http(
        "POST",
        live.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {TEST_KEY}"},
        json={"model": "team-model", "messages": [{"role": "user", "content": "hi"}]},
    )
    return resp.status


async def set_enabled(live, key_id: int, enabled: bool) -> None:  # type: ignore[no-untyped-def]
    async with live.services.db.session() as session, session.begin():
        await session.execute(
            update(UpstreamKey)
            .where(UpstreamKey.id == key_id)
            .values(enabled=enabled, disabled_reason=None if enabled else "by admin")
        )


async def test_a_reload_right_after_an_automatic_disable_keeps_the_key_off(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    fake_openai.push(JsonReply(401, {"error": {"message": "bad key"}}))
    assert await call(live) == 200
    await live.services.reload()  # e.g. an admin saved a route in the dashboard just now
    assert await call(live) == 200
    assert auth_of(fake_openai) == ["sk-first-key", "sk-second-key", "sk-second-key"]
    rows = await upstream_key_rows(live)
    assert [(r.enabled, r.disabled_reason) for r in rows] == [
        (False, "HTTP 401: bad key"),
        (True, None),
    ]


async def test_an_admin_disable_is_not_overwritten_by_live_counters(gateway, fake_openai):  # type: ignore[no-untyped-def]
    live = await gateway(config(fake_openai))
    first = (await upstream_key_rows(live))[0]
    await set_enabled(live, first.id, False)
    assert await call(live) == 200  # served before the gateway reloaded: counts change
    await live.services.recorder.flush()
    await live.services.reload()
    assert await call(live) == 200
    assert auth_of(fake_openai) == ["sk-first-key", "sk-second-key"]
    rows = await upstream_key_rows(live)
    assert (rows[0].enabled, rows[0].disabled_reason, rows[0].request_count) == (
        False,
        "by admin",
        1,
    )
