"""Two gateways on one database: a key edited through one's database functions is enforced
by the other at its next key refresh (`keys_fingerprint`), for edits that left the old
fingerprint's counts, maxima and sums as they were."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from app.db import keys
from tests.conftest import ECHO_CONFIG, Live, StartGateway, http
from tests.db.test_keys import edit as edit_row
from tests.team.support import eventually, openai_body

pytestmark = pytest.mark.gen_test(timeout=30)

# key_refresh_seconds is 0.5 by default: a few refreshes, never a restart or a reload.
REFRESHED = 2.0


async def status(live: Live, key: str, model: str = "echo-model") -> int:
    response = await http(
        "POST",
        live.url + "/v1/chat/completions",
        json=openai_body(model=model),
        headers={"Authorization": f"Bearer {key}"},
    )
    return response.status


async def all_answer(expected: int, *gateways: Live, key: str, model: str = "echo-model") -> bool:
    return all([await status(live, key, model) == expected for live in gateways])


async def edit(live: Live, name: str, **changes: Any) -> None:
    """What the dashboard's form does to a key, without its handler's own reload."""
    async with live.services.db.session() as session, session.begin():
        await edit_row(session, name, **changes)


async def test_an_edit_in_one_gateway_is_enforced_by_the_other(gateway: StartGateway) -> None:
    first = await gateway(ECHO_CONFIG)
    second = await gateway(ECHO_CONFIG)  # the same database
    async with first.services.db.session() as session, session.begin():
        _, alice = await keys.create_key(
            session, "alice", models=["echo-*", "other"], expires=date(2998, 1, 1)
        )
        # The latest expiry: alice's, moved below, is never the maximum.
        await keys.create_key(session, "bob", expires=date(2999, 1, 1))
    await eventually(
        lambda: all_answer(200, first, second, key=alice), "alice's key in both gateways"
    )

    await edit(first, "alice", models=["other"])
    await eventually(
        lambda: all_answer(403, second, key=alice),
        "the narrowed models in the other gateway",
        limit=REFRESHED,
    )

    await edit(first, "alice", expires=date(2020, 1, 1))
    await eventually(
        lambda: all_answer(401, second, key=alice, model="other"),
        "the earlier expiry in the other gateway",
        limit=REFRESHED,
    )
