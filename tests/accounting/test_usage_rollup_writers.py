"""The daily roll-up with more than one writer on a database (two gateway processes on one
PostgreSQL database): a bucket both add at once counted once, every event kept; and a
roll-up the database refuses never costs the raw events."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from app.accounting import UsageRecorder
from app.db.engine import make_sync_engine, upgrade
from app.db.models import UsageDaily, UsageEvent
from app.db.usage import insert_events
from app.services import make_writer
from tests.accounting.test_usage_db import raw_totals, rec, rollup, write
from tests.databases import POSTGRES, database_url

NOON = datetime(2025, 6, 15, 12, 0)


@pytest.fixture
def url(tmp_path: Path) -> str:
    made = database_url(tmp_path, "writers.db")
    upgrade(made)
    return made


@pytest.fixture
def engines(url: str) -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one database: two processes' writers."""
    first, second = make_sync_engine(url), make_sync_engine(url)
    yield first, second
    first.dispose()
    second.dispose()


def wait_for_lock_wait(engine: Engine, limit: float = 10.0) -> None:
    """Until a session of the database waits for another's lock (PostgreSQL). On SQLite
    the second writer waits for the database's write lock before its first row."""
    if not POSTGRES:
        return
    deadline = time.monotonic() + limit
    with engine.connect() as conn:
        while True:
            waiting = conn.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            )
            if waiting:
                return
            if time.monotonic() > deadline:
                raise AssertionError("the second writer never waited for the first")
            time.sleep(0.01)
            conn.rollback()  # a fresh snapshot of pg_stat_activity


def test_two_writers_adding_the_same_new_bucket_at_once_both_count(
    engines: tuple[Engine, Engine],
) -> None:
    """The second writer adds to the bucket row the first made while the first had not
    committed: it waits for it and adds to its row. It used to find no row to update,
    insert one too, and fail on uq_usage_daily_bucket once the first committed."""
    first, second = engines
    errors: list[BaseException] = []

    def other() -> None:
        try:
            write(second, [rec(NOON + timedelta(seconds=1), input_tokens=20, latency_ms=2.0)])
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    with Session(first) as session, session.begin():
        insert_events(session, [rec(NOON, input_tokens=10, latency_ms=1.0)])
        thread = threading.Thread(target=other)
        thread.start()
        wait_for_lock_wait(first)
    thread.join(30)
    assert not thread.is_alive()
    assert errors == []
    assert rollup(first) == {("2025-06-15", "alice", "m1", "u1"): (2, 0, 30, 0, 0, 0, 3.0)}
    assert rollup(first) == raw_totals(first)


@pytest.mark.gen_test(timeout=120)
async def test_two_recorders_flushing_the_same_new_buckets_count_every_event_once(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two recorders with writers of their own (two processes), flushing at the same moment
    batches of the same new buckets, named in opposite orders: every event is stored once,
    the roll-up equals the raw events, and no batch was refused, retried or dropped."""
    caplog.set_level(logging.WARNING)
    recorders = []
    for _ in range(2):
        write_batch, _purge, close = make_writer(url)
        recorders.append(UsageRecorder(write_batch, interval=3600, on_close=close))
    sent: list[str] = []
    try:
        for batch in range(30):
            models = [f"m{batch}-{n}" for n in range(4)]
            for number, recorder in enumerate(recorders):
                for i, model in enumerate(models if number == 0 else models[::-1]):
                    for copy in range(3):
                        record = rec(
                            NOON + timedelta(seconds=batch),
                            model=model,
                            key=["alice", "bob"][copy % 2],
                            input_tokens=i + copy,
                            output_tokens=number,
                            latency_ms=1.5,
                        )
                        record = record._replace(request_id=f"r{batch}-{number}-{i}-{copy}")
                        sent.append(record.request_id)
                        await recorder.record(record)
            flushed = await asyncio.gather(*(r.flush() for r in recorders))
            assert flushed == [True, True]
    finally:
        for recorder in recorders:
            await recorder.close()
    assert [r.failures for r in recorders] == [0, 0]
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == []
    engine = make_sync_engine(url)
    try:
        with Session(engine) as session:
            stored = list(session.scalars(select(UsageEvent.request_id)))
        assert sorted(stored) == sorted(sent)  # each once
        totals = rollup(engine)
        assert totals == raw_totals(engine)
        assert sum(requests for requests, *_ in totals.values()) == len(sent)
    finally:
        engine.dispose()


def refuse_rollup(engine: Engine) -> None:
    """A trigger that refuses every write to usage_daily, as PostgreSQL refuses a total past
    its INTEGER column (numeric_value_out_of_range)."""
    with engine.begin() as conn:
        if POSTGRES:
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_rollup() RETURNS trigger AS $$ BEGIN"
                    " RAISE EXCEPTION 'integer out of range'"
                    " USING ERRCODE = 'numeric_value_out_of_range'; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_rollup BEFORE INSERT OR UPDATE ON usage_daily"
                    " FOR EACH ROW EXECUTE FUNCTION refuse_rollup()"
                )
            )
        else:
            for when in ("INSERT", "UPDATE"):
                conn.execute(
                    text(
                        f"CREATE TRIGGER refuse_rollup_{when.lower()} BEFORE {when} ON usage_daily"
                        " BEGIN SELECT RAISE(ABORT, 'integer out of range'); END"
                    )
                )


def allow_rollup(engine: Engine) -> None:
    with engine.begin() as conn:
        if POSTGRES:
            conn.execute(text("DROP TRIGGER refuse_rollup ON usage_daily"))
        else:
            for when in ("insert", "update"):
                conn.execute(text(f"DROP TRIGGER refuse_rollup_{when}"))


def test_a_rollup_the_database_refuses_keeps_the_raw_events(
    url: str, engines: tuple[Engine, Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """The roll-up refused (a total past its column): the batch's raw events are stored all
    the same and the refusal logged. They used to be retried row by row, each refused again
    for its bucket, and all dropped."""
    engine, _ = engines
    write_batch, _purge, close = make_writer(url)
    first = [rec(NOON + timedelta(seconds=i), model=f"m{i % 2}", input_tokens=i) for i in range(5)]
    later = [rec(NOON + timedelta(minutes=1), input_tokens=7)]
    try:
        refuse_rollup(engine)
        with caplog.at_level(logging.ERROR):
            write_batch(first, [])
        assert [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()] == []
        assert any("roll-up refused" in r.getMessage() for r in caplog.records)
        allow_rollup(engine)
        write_batch(later, [])
    finally:
        close()
    with Session(engine) as session:
        stored = list(session.scalars(select(UsageEvent.request_id).order_by(UsageEvent.id)))
        assert stored == [r.request_id for r in first + later]
        assert session.scalar(select(func.count(UsageDaily.id))) == 1
    assert rollup(engine) == {("2025-06-15", "alice", "m1", "u1"): (1, 0, 7, 0, 0, 0, 0.0)}


def test_a_refused_rollup_is_rolled_back_alone(engines: tuple[Engine, Engine]) -> None:
    """Under the savepoint, what the refused roll-up statement had done is undone while the
    raw rows written before it in the same transaction stay."""
    engine, _ = engines
    write(engine, [rec(NOON, input_tokens=1)])
    refuse_rollup(engine)
    with Session(engine) as session, session.begin():
        insert_events(session, [rec(NOON + timedelta(seconds=1), input_tokens=2)])
        insert_events(session, [rec(NOON + timedelta(seconds=2), model="m2", input_tokens=4)])
    allow_rollup(engine)
    with Session(engine) as session:
        assert session.scalar(select(func.count(UsageEvent.id))) == 3
    assert rollup(engine) == {("2025-06-15", "alice", "m1", "u1"): (1, 0, 1, 0, 0, 0, 0.0)}
