"""The usage tables: the daily roll-up kept as batches are written, retention deleting raw
events in small batches and nothing else, and retention through a running gateway."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.db.engine import make_sync_engine, upgrade
from app.db.models import ProxyKey, UsageDaily, UsageEvent
from app.db.usage import UsageRecord, delete_older_than, insert_events
from app.services import make_writer
from tests.conftest import TEST_KEY, http
from tests.databases import database_url
from tests.team.support import START, FakeClock, eventually

NOON = datetime(2025, 6, 15, 12, 0)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    url = database_url(tmp_path, "usage.db")
    upgrade(url)
    engine = make_sync_engine(url)
    yield engine
    engine.dispose()


def rec(
    when: datetime, key: str = "alice", model: str = "m1", upstream: str = "u1", **kw
) -> UsageRecord:  # type: ignore[no-untyped-def]
    return UsageRecord(
        time=when,
        request_id=f"req_{when.isoformat()}_{key}_{model}",
        key_name=key,
        requested_model=model,
        upstream=upstream,
        **{"client_dialect": "openai"} | kw,
    )


def write(engine: Engine, records: list[UsageRecord]) -> None:
    with Session(engine) as session, session.begin():
        insert_events(session, records)


def rollup(engine: Engine) -> dict[tuple[str, str, str, str], tuple[int, ...]]:
    with Session(engine) as session:
        return {
            (d.day.isoformat(), d.key_name, d.model, d.upstream): (
                d.requests,
                d.errors,
                d.input_tokens,
                d.output_tokens,
                d.cache_read_tokens,
                d.cache_write_tokens,
                round(d.latency_ms_total, 3),
            )
            for d in session.scalars(select(UsageDaily))
        }


def raw_totals(engine: Engine) -> dict[tuple[str, str, str, str], tuple[int, ...]]:
    sums: dict[tuple[str, str, str, str], list[float]] = defaultdict(lambda: [0] * 7)
    with Session(engine) as session:
        for e in session.scalars(select(UsageEvent)):
            bucket = sums[
                (
                    e.time.date().isoformat(),
                    e.key_name or "",
                    e.requested_model or "",
                    e.upstream or "",
                )
            ]
            values = (
                1,
                e.status != "ok",
                e.input_tokens,
                e.output_tokens,
                e.cache_read_tokens,
                e.cache_write_tokens,
                e.latency_ms,
            )
            for i, value in enumerate(values):
                bucket[i] += value
    return {k: (*(int(x) for x in v[:6]), round(v[6], 3)) for k, v in sums.items()}


def test_rollup_is_kept_across_batches_per_day_key_model_upstream(engine: Engine) -> None:
    write(
        engine,
        [
            rec(NOON, input_tokens=10, output_tokens=2, latency_ms=100.5),
            rec(NOON + timedelta(minutes=1), input_tokens=5, cache_read_tokens=3, latency_ms=1.25),
            rec(NOON, model="m2", status="error", http_status=502, input_tokens=7),
        ],
    )
    write(
        engine,
        [
            rec(NOON + timedelta(hours=1), input_tokens=1, output_tokens=1, cache_write_tokens=9),
            rec(NOON + timedelta(hours=12), input_tokens=4),  # the next day (UTC)
            rec(NOON, key="bob", upstream="u2", status="rate_limited", http_status=429),
            rec(NOON, key=None, model=None, upstream=None, status="error", http_status=401),  # type: ignore[arg-type]
        ],
    )
    write(engine, [rec(NOON, status="client_closed", http_status=499, output_tokens=3)])
    assert rollup(engine) == {
        ("2025-06-15", "alice", "m1", "u1"): (4, 1, 16, 6, 3, 9, 101.75),
        ("2025-06-15", "alice", "m2", "u1"): (1, 1, 7, 0, 0, 0, 0.0),
        ("2025-06-16", "alice", "m1", "u1"): (1, 0, 4, 0, 0, 0, 0.0),
        ("2025-06-15", "bob", "m1", "u2"): (1, 1, 0, 0, 0, 0, 0.0),
        ("2025-06-15", "", "", ""): (1, 1, 0, 0, 0, 0, 0.0),
    }
    assert rollup(engine) == raw_totals(engine)


def test_insert_bumps_last_used_of_the_key(engine: Engine) -> None:
    with Session(engine) as session, session.begin():
        session.add(
            ProxyKey(id=1, name="alice", key_hash="h", prefix="bk-", created_at=NOON, models=[])
        )
    write(engine, [rec(NOON + timedelta(minutes=5), key_id=1), rec(NOON, key_id=1)])
    write(engine, [rec(NOON - timedelta(days=1), key_id=1)])  # an older batch does not go back
    with Session(engine) as session:
        assert session.get(ProxyKey, 1).last_used_at == NOON + timedelta(minutes=5)  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", range(6))
def test_random_batches_keep_the_rollup_and_last_used(engine: Engine, seed: int) -> None:
    """Batches of one bucket (told apart by counts over the columns) and of several, across
    midnight, with and without keys, with a model None and "" (one bucket): the roll-up
    equals the raw events' sums and each key's ``last_used_at`` its latest request."""
    import random

    rng = random.Random(seed)
    with Session(engine) as session, session.begin():
        for key_id in (1, 2):
            session.add(
                ProxyKey(id=key_id, name=f"k{key_id}", key_hash=f"h{key_id}", prefix="bk-",
                         created_at=NOON, models=[])
            )  # fmt: skip
    latest: dict[int, datetime] = {}
    for batch in range(8):
        uniform = rng.random() < 0.5
        records = []
        for i in range(rng.choice([1, 3, 40, 300])):
            when = NOON + timedelta(hours=rng.choice([0, 0, 11.99, 12.01]), microseconds=i)
            key_id = 1 if uniform else rng.choice([1, 2, None])
            if uniform and batch % 2:
                when = NOON + timedelta(minutes=batch, microseconds=i)  # one day too
            records.append(
                rec(
                    when,
                    key=f"k{key_id}" if key_id else None,  # type: ignore[arg-type]
                    model="m1" if uniform else rng.choice(["m1", "m2", None, ""]),  # type: ignore[arg-type]
                    key_id=key_id,
                    status=rng.choice(["ok", "ok", "error", "rate_limited"]),
                    input_tokens=rng.randint(0, 99),
                    output_tokens=rng.randint(0, 99),
                    cache_read_tokens=rng.randint(0, 9),
                    cache_write_tokens=rng.randint(0, 9),
                    latency_ms=rng.randint(1, 4000) / 8,
                )
            )
            if key_id is not None:
                latest[key_id] = max(latest.get(key_id, when), when)
        write(engine, records)
    assert rollup(engine) == raw_totals(engine)
    with Session(engine) as session:
        assert {k.id: k.last_used_at for k in session.scalars(select(ProxyKey))} == {
            key_id: latest.get(key_id) for key_id in (1, 2)
        }


def test_retention_deletes_only_older_events_in_batches_and_keeps_the_rollup(
    engine: Engine,
) -> None:
    cutoff = NOON - timedelta(days=30)
    old = [rec(cutoff - timedelta(seconds=i + 1), input_tokens=1) for i in range(1203)]
    kept = [rec(cutoff, input_tokens=100), rec(cutoff + timedelta(seconds=1), input_tokens=100)]
    for start in range(0, len(old), 400):
        write(engine, old[start : start + 400])
    write(engine, kept)
    before = rollup(engine)
    deleted = []
    while True:
        with Session(engine) as session, session.begin():
            n = delete_older_than(session, cutoff, batch=500)
        deleted.append(n)
        if not n:
            break
    assert deleted == [500, 500, 203, 0]
    with Session(engine) as session:
        times = list(session.scalars(select(UsageEvent.time).order_by(UsageEvent.time)))
        assert times == [cutoff, cutoff + timedelta(seconds=1)]
        assert session.scalar(select(func.count(UsageDaily.id))) == len(before)
    assert rollup(engine) == before


@pytest.mark.gen_test(timeout=30)
async def test_retention_days_purges_a_running_gateway(gateway, fake_openai):  # type: ignore[no-untyped-def]
    day = 86400.0
    clock = FakeClock(START - 40 * day)
    live = await gateway(
        f"""retention_days = 30

[[upstreams]]
name = "local"
kind = "openai"
base_url = "{fake_openai.url}"
keys = ["sk-1"]

[[models]]
name = "team-model"
upstream = "local"
""",
        clock=clock,
    )
    recorder = live.services.recorder

    async def request() -> None:
        resp = await http(
            "POST",
            live.url + "/v1/chat/completions",
            headers={"Authorization": f"Bearer {TEST_KEY}"},
            json={"model": "team-model", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert resp.status == 200

    async def count(model: type) -> int:
        await recorder.flush()
        async with live.services.db.session() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    for _ in range(3):
        await request()  # 40 days ago
    clock.now = START - 29 * day
    for _ in range(2):
        await request()  # 29 days ago
    assert await count(UsageEvent) == 5
    clock.now = START  # an hour and more since the last purge: the next tick purges

    async def purged() -> bool:
        return await count(UsageEvent) == 2

    await eventually(purged, "the retention purge")
    async with live.services.db.session() as session:
        times = list(await session.scalars(select(UsageEvent.time)))
        days = {d.day: d.requests for d in await session.scalars(select(UsageDaily))}
    expected_time = datetime.fromtimestamp(START - 29 * day, UTC).replace(tzinfo=None)
    assert times == [expected_time, expected_time]
    assert sorted(days.values()) == [2, 3]  # roll-ups of both days kept


def test_a_large_batch_is_stored_row_for_row(engine: Engine) -> None:
    """Rows go in several multi-row INSERTs; none may be lost, doubled or shifted."""
    from datetime import timedelta

    records = [
        rec(
            NOON + timedelta(microseconds=7 * i, seconds=i % 3),
            key=f"k{i % 7}",
            input_tokens=i,
            output_tokens=2 * i,
            latency_ms=i / 10,
            ttft_ms=None if i % 2 else i / 20,
            stream=bool(i % 2),
            status="error" if i % 11 == 0 else "ok",
        )
        for i in range(1234)
    ]
    write(engine, records)
    with Session(engine) as session:
        stored = list(session.scalars(select(UsageEvent).order_by(UsageEvent.id)))
    assert len(stored) == len(records)
    for record, event in zip(records, stored, strict=True):
        assert (event.time, event.key_name, event.input_tokens, event.output_tokens) == (
            record.time,
            record.key_name,
            record.input_tokens,
            record.output_tokens,
        )
        assert (event.latency_ms, event.ttft_ms, event.stream, event.status) == (
            record.latency_ms,
            record.ttft_ms,
            record.stream,
            record.status,
        )
    assert rollup(engine) == raw_totals(engine)


@pytest.mark.parametrize("shape", ["all ok", "all streamed", "one error", "mixed", "odd words"])
def test_columns_one_value_over_a_chunk_are_stored_as_bound(engine: Engine, shape: str) -> None:
    """Columns None (or one flag value, or one of the gateway's words) in every row of a
    chunk are written as literals instead of bound: every field must read back as it was
    recorded, in chunks where they are constant, where one row differs, where they vary,
    and where the one value is not a plain word (a quote in it: bound after all)."""
    rng = __import__("random").Random(shape)
    records = []
    for i in range(300):  # chunks of 256, 32, 8 and 4
        failed = shape == "mixed" and rng.random() < 0.3 or shape == "one error" and i == 200
        status = "error" if failed else "ok"
        dialect, endpoint = "openai", "chat/completions"
        if shape == "mixed":
            dialect = rng.choice(["openai", "anthropic"])
            endpoint = "messages" if dialect == "anthropic" else endpoint
        elif shape == "one error" and i == 40:
            dialect, endpoint = "anthropic", "count_tokens"
        elif shape == "odd words":
            status, endpoint = "o'k", "Chat Completions"
        records.append(
            rec(
                NOON + timedelta(microseconds=i),
                client_dialect=dialect,
                endpoint=endpoint,
                key=f"k{i % 3}",
                key_id=(i % 3) + 1 if shape != "all ok" or i % 2 else None,
                upstream_key=None if shape == "all ok" else "...abcd",
                status=status,
                error_type="api_error" if failed else None,
                error_message="upstream said no" if failed else None,
                ttft_ms=i / 7 if shape == "all streamed" or shape == "mixed" and i % 2 else None,
                stream=shape == "all streamed" or shape == "mixed" and bool(i % 3),
                tokens_estimated=shape == "all streamed" or shape != "all ok" and i % 5 == 0,
                input_tokens=i,
            )
        )
    write(engine, records)
    fields = (
        "time", "request_id", "key_id", "key_name", "upstream_key", "status", "error_type",
        "error_message", "ttft_ms", "stream", "tokens_estimated", "input_tokens",
        "client_dialect", "endpoint",
    )  # fmt: skip
    with Session(engine) as session:
        stored = list(session.scalars(select(UsageEvent).order_by(UsageEvent.id)))
    assert [tuple(getattr(e, f) for f in fields) for e in stored] == [
        tuple(getattr(r, f) for f in fields) for r in records
    ]
    assert rollup(engine) == raw_totals(engine)


@pytest.mark.parametrize("shape", ["one key", "one row differs", "no key", "odd names"])
def test_who_and_where_one_value_over_a_chunk_is_bound_once(engine: Engine, shape: str) -> None:
    """Key, model, upstream and HTTP status one value over a chunk (one key's traffic) are
    bound once for the chunk as numbered parameters every row refers to: each row must
    read back as recorded, where one row differs, where the one value is None, and where
    names hold quotes, question marks and non-ASCII text."""
    from sqlalchemy import event

    key, model, upstream = "alice", "claude-x", "an"
    if shape == "odd names":
        key, model, upstream = "o'neil ?1 ü", "m'1; DROP TABLE x", "?"
    records = []
    for i in range(300):  # chunks of 256, 32, 8 and 4
        other = shape == "one row differs" and i in (100, 290)
        records.append(
            UsageRecord(
                time=NOON + timedelta(microseconds=i),
                request_id=f"req_{i}",
                client_dialect="anthropic",
                key_id=None if shape == "no key" else 7 + other,
                key_name=None if shape == "no key" else key + "2" * other,
                requested_model=model,
                upstream=None if shape == "no key" else upstream,
                upstream_key=None if shape == "no key" else "...wxyz",
                target_model=None if shape == "no key" else model + "-target" * other,
                http_status=401 if shape == "no key" else 200 + 302 * other,
                status="error" if shape == "no key" or other else "ok",
                input_tokens=i,
                output_tokens=2 * i,
                latency_ms=i / 4,
            )
        )
    statements: list[tuple[str, int]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def seen(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.startswith("INSERT INTO usage_events"):
            statements.append((statement, len(parameters)))

    write(engine, records)
    fields = UsageRecord._fields
    with Session(engine) as session:
        stored = list(session.scalars(select(UsageEvent).order_by(UsageEvent.id)))
    assert [tuple(getattr(e, f) for f in fields) for e in stored] == [tuple(r) for r in records]
    assert rollup(engine) == raw_totals(engine)
    if engine.dialect.name != "sqlite":
        return
    # Per chunk (256, 32, 8, 4 rows): the parameters bound once, and those bound a row (time,
    # request id and the five numbers, and where rows differ the shared kind and status).
    # None in key_id and upstream_key is written as NULL, as before.
    once = {
        "one key": [(7, 7)] * 4,
        "one row differs": [(3, 12), (7, 7), (3, 12), (7, 7)],
        "no key": [(5, 7)] * 4,
        "odd names": [(7, 7)] * 4,
    }[shape]
    rows = (256, 32, 8, 4)
    assert [bound for _s, bound in statements] == [
        s + n * r for (s, r), n in zip(once, rows, strict=True)
    ]
    assert all(
        statement.count("?1,") == n for (statement, _b), n in zip(statements, rows, strict=True)
    )


def test_the_time_text_is_what_sqlalchemy_stores() -> None:
    """Usage rows bypass SQLAlchemy's parameter processing; their DATETIME text must be the
    one its SQLite dialect writes, or time filters and ordering would compare unlike text."""
    import random

    from sqlalchemy.dialects import sqlite

    from app.db.usage import sqlite_datetime

    process = sqlite.DATETIME().bind_processor(sqlite.dialect())
    assert process is not None
    rng = random.Random(7)
    whens = [datetime(9, 1, 2, 3, 4, 5, 7), NOON, NOON.replace(tzinfo=UTC)]
    whens += [
        datetime(2026, 1, 1)
        + timedelta(
            seconds=rng.randrange(10**8), microseconds=rng.choice([0, 1, rng.randrange(10**6)])
        )
        for _ in range(300)
    ]
    for when in whens:
        assert sqlite_datetime(when) == process(when), when


def test_sqlite_rows_go_to_the_driver_in_the_records_own_order() -> None:
    """The SQLite insert sends the records' tuples as they are: the model's columns must
    stay in UsageRecord's order (else rows would go the slower generic way, silently)."""
    from sqlalchemy.dialects import sqlite

    from app.db.usage import _sqlite_insert

    plan = _sqlite_insert(sqlite.dialect())
    assert plan is not None
    assert plan[1] == UsageRecord._fields


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param({"status": None}, id="not-null"),
        # SQLite's driver refuses it with an OverflowError, no DBAPI error at all.
        pytest.param({"input_tokens": 2**70}, id="integer-past-the-column"),
    ],
)
def test_a_row_the_database_refuses_is_dropped_alone(tmp_path: Path, broken: dict) -> None:
    """The recorder's writer: a batch the database refuses for one row's sake (a NOT NULL
    broken, an integer past the column; PostgreSQL's VARCHAR limits in life) goes row by
    row, and only that row is lost; otherwise the batch would be kept and retried, and
    refused, for good."""
    url = database_url(tmp_path, "refused.db")
    upgrade(url)
    write_batch, _, close = make_writer(url)
    when = datetime(2025, 6, 15, 12, 0)
    good = [rec(when + timedelta(seconds=i), model=f"m{i}") for i in range(3)]
    bad = rec(when, model="bad")._replace(**broken)
    try:
        write_batch([good[0], bad, good[1], good[2]], [])
    finally:
        close()
    engine = make_sync_engine(url)
    with Session(engine) as session:
        stored = session.scalars(select(UsageEvent.requested_model).order_by(UsageEvent.id))
        assert list(stored) == ["m0", "m1", "m2"]
    engine.dispose()


@pytest.mark.gen_test
async def test_a_model_name_past_the_column_is_recorded_cut(gateway) -> None:  # type: ignore[no-untyped-def]
    live = await gateway("")
    long_name = "m" * 300
    resp = await http(
        "POST",
        live.url + "/v1/chat/completions",
        json={"model": long_name, "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    assert resp.status == 200  # the echo backend answers any name
    await live.services.recorder.flush()
    async with live.services.db.session() as session:
        (row,) = await session.scalars(select(UsageEvent))
    assert row.requested_model == long_name[:200]
    assert live.services.recorder.pending == 0
