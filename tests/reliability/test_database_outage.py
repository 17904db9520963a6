"""A busy, locked or unreachable database never fails an API request that could otherwise
succeed: keys are checked from memory, usage waits in the recorder's buffer and is
retried, and lands once the database is back.

The lock is real: another SQLite connection holds ``BEGIN EXCLUSIVE`` on the gateway's
file (writers wait ``busy_timeout`` and fail). An unreachable database is simulated on top
of it by making every statement of the gateway's own async engine fail, through
SQLAlchemy's public event hooks.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from app.db.engine import sqlite_path
from tests.conftest import Live, http
from tests.databases import POSTGRES
from tests.reliability.conftest import (
    auth,
    body_for,
    path_for,
    two_upstreams,
    usage_rows,
    wait_for,
)

pytestmark = pytest.mark.gen_test(timeout=90)

COMBOS = [("anthropic", "m-an"), ("anthropic", "m-oa"), ("openai", "m-oa"), ("openai", "m-an")]


class Holder:
    """Another connection to the gateway's SQLite file, holding its write lock."""

    def __init__(self, live: Live) -> None:
        path = sqlite_path(live.services.settings.database_url)
        assert path is not None
        self.db = sqlite3.connect(path, isolation_level=None, timeout=0)
        self.db.execute("BEGIN EXCLUSIVE")
        self.open = True

    def rows(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM usage_events").fetchone()[0])

    def release(self) -> None:
        if self.open:
            self.db.execute("ROLLBACK")
            self.db.close()
            self.open = False


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    made: list[Holder] = []
    yield made
    for holder in made:
        holder.release()


async def every_kind(live: Live) -> int:
    """One request of every kind, each must succeed; returns how many usage events they make."""
    made = 0
    for dialect, model in COMBOS:
        for stream in (False, True):
            resp = await http(
                "POST",
                live.url + path_for(dialect),
                json=body_for(dialect, model, stream=stream),
                headers=auth(),
            )
            assert resp.status == 200, resp.content
            if stream:
                assert b"message_stop" in resp.content or b"[DONE]" in resp.content
            made += 1
    count = await http(
        "POST",
        live.url + "/v1/messages/count_tokens",
        json={"model": "m-an", "messages": [{"role": "user", "content": "hi"}]},
        headers=auth(),
    )
    assert count.status == 200
    models = await http("GET", live.url + "/v1/models", headers=auth())
    assert models.status == 200 and models.json()["data"]
    return made + 1  # count_tokens is recorded too; the model list is not


async def start(gateway: Any, fake_openai: Any, fake_anthropic: Any) -> Live:
    return await gateway(two_upstreams(fake_openai.url, fake_anthropic.url))  # type: ignore[no-any-return]


@pytest.mark.skipif(
    bool(POSTGRES), reason="holds SQLite's file lock (the outage below is any database's)"
)
async def test_a_locked_database_delays_usage_but_no_request(  # type: ignore[no-untyped-def]
    gateway, fake_openai, fake_anthropic, holders
):
    live = await start(gateway, fake_openai, fake_anthropic)
    holder = Holder(live)
    holders.append(holder)
    recorder = live.services.recorder

    started = time.monotonic()
    made = await every_kind(live)
    # The usage writer is stuck in SQLite's 5 s busy wait meanwhile; requests never wait on it.
    assert time.monotonic() - started < 4.5
    assert holder.rows() == 0 and recorder.pending == made

    # Held past the busy timeout: the write fails, everything stays queued, serving goes on.
    assert await wait_for(lambda: recorder.failures >= 1, 15)
    made += await every_kind(live)
    health = await http("GET", live.url + "/health")
    assert health.json()["usage_pending"] == made

    holder.release()
    assert await wait_for(lambda: recorder.pending == 0, 40), recorder.pending
    rows = await usage_rows(live)
    assert len(rows) == made and {r.status for r in rows} == {"ok"}


@pytest.fixture
def broken_reads(io_loop: Any) -> Iterator[dict[str, bool]]:
    """``state["down"] = True`` makes every statement on a hooked engine fail."""
    state = {"down": False}
    yield state
    state["down"] = False


def break_engine(live: Live, state: dict[str, bool]) -> None:
    def refuse(*_: Any) -> None:
        if state["down"]:
            raise OperationalError("SELECT", {}, Exception("unable to open database file"))

    event.listen(live.services.db.engine.sync_engine, "before_cursor_execute", refuse)


@pytest.mark.skipif(bool(POSTGRES), reason="holds SQLite's file lock while it is down")
async def test_an_unreachable_database_is_not_the_clients_problem(  # type: ignore[no-untyped-def]
    gateway, fake_openai, fake_anthropic, holders, broken_reads
):
    live = await start(gateway, fake_openai, fake_anthropic)
    break_engine(live, broken_reads)
    broken_reads["down"] = True
    holder = Holder(live)
    holders.append(holder)

    made = await every_kind(live)
    # An unknown key needs a database lookup, which fails: still a 401 in the client's
    # dialect, not a 500.
    for dialect in ("anthropic", "openai"):
        resp = await http(
            "POST",
            live.url + path_for(dialect),
            json=body_for(dialect, "m-an"),
            headers=auth("bk-unknown-while-db-is-down"),
        )
        assert resp.status == 401, resp.content
        error = resp.json()["error"]
        assert error["type"] == (
            "authentication_error" if dialect == "anthropic" else "invalid_request_error"
        )
        made += 1
    # The key refresh keeps failing in the background; serving does not care.
    await wait_for(lambda: False, 2.5)
    made += await every_kind(live)

    broken_reads["down"] = False
    holder.release()
    assert await wait_for(lambda: live.services.recorder.pending == 0, 40)
    rows = await usage_rows(live)
    assert len(rows) == made
    assert sorted({(r.status, r.http_status) for r in rows}) == [("error", 401), ("ok", 200)]
