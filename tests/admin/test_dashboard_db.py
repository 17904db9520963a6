"""app/db/dashboard.py against a seeded database: roll-up totals agree with raw events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime, timedelta

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import dashboard
from app.db.usage import UsageFilter
from app.services import Services
from tests.admin.conftest import record, seed_usage

BASE = datetime(2024, 5, 1, 23, 59, 0)


@pytest.fixture
def seeded(services: Services) -> Services:
    seed_usage(
        services,
        [
            record(
                BASE + timedelta(minutes=i),
                key=["alice", "bob", None][i % 3],
                model=["m1", "m2"][i % 2],
                upstream=["u1", "u2", "u3"][i % 3],
                status="ok" if i % 4 else "error",
                input_tokens=i,
                output_tokens=2 * i,
            )
            for i in range(200)
        ],
    )
    return services


FILTERS = [
    UsageFilter(),
    UsageFilter(key_name="alice"),
    UsageFilter(model="m2", upstream="u2"),
    UsageFilter(since=date(2024, 5, 2)),
    UsageFilter(until=date(2024, 5, 1)),
    UsageFilter(key_name="bob", since=date(2024, 5, 2), until=date(2024, 5, 2)),
    UsageFilter(key_name="nobody"),
    # Model globs: the roll-up's model column matched as the events' is.
    UsageFilter(model="m*"),
    UsageFilter(model="?2", upstream="u2"),
    UsageFilter(model="*", key_name="alice", since=date(2024, 5, 2)),
    UsageFilter(model="M*"),  # case counts
    UsageFilter(model="m_"),  # "_" is no wildcard
]


async def event_query_plans(
    seeded: Services, run: Callable[[AsyncSession], Awaitable[None]]
) -> list[tuple[str, str]]:
    """SQLite's query plan (its details joined) of each ``usage_events`` query ``run`` makes;
    the test is skipped on another database."""
    if seeded.db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's query plans")
    seen: list[tuple[str, object]] = []

    def capture(_conn: object, _cursor: object, sql: str, params: object, *_: object) -> None:
        if "FROM usage_events" in sql:
            seen.append((sql, params))

    engine = seeded.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", capture)
    try:
        async with seeded.db.session() as session:
            await run(session)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    plans = []
    async with seeded.db.engine.connect() as conn:
        for sql, params in seen:
            plan = await conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)  # type: ignore[arg-type]
            plans.append((sql, " | ".join(str(row[-1]) for row in plan)))
    return plans


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("flt", FILTERS)
async def test_rollup_totals_match_the_events(seeded: Services, flt: UsageFilter) -> None:
    async with seeded.db.session() as session:
        from_rollup = await dashboard.filter_totals(session, flt)
        from_events = await dashboard._event_totals(session, flt)
    assert from_rollup == from_events


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("flt", [*FILTERS, UsageFilter(upstream="u2", until=date(2024, 5, 1))])
async def test_ok_totals_are_the_rollup_minus_failures(seeded: Services, flt: UsageFilter) -> None:
    ok = UsageFilter(**{**dashboard._fields(flt), "status": "ok"})
    async with seeded.db.session() as session:
        derived = await dashboard.filter_totals(session, ok)
        counted = await dashboard._event_totals(session, ok)
    assert derived == counted


@pytest.mark.gen_test(timeout=30)
async def test_status_filter_reads_events(seeded: Services) -> None:
    async with seeded.db.session() as session:
        totals = await dashboard.filter_totals(session, UsageFilter(status="error"))
    assert totals.requests == totals.errors == 50
    assert totals.input_tokens == sum(range(0, 200, 4))
    assert totals.error_rate == 100.0


@pytest.mark.gen_test(timeout=30)
async def test_keyset_pages_walk_every_row_once(seeded: Services) -> None:
    flt = UsageFilter(upstream="u1")
    seen: list[int] = []
    async with seeded.db.session() as session:
        page = await dashboard.events_page(session, flt, limit=7)
        assert page.newer is None
        while True:
            seen += [row.id for row in page.rows]
            if page.older is None:
                break
            page = await dashboard.events_page(session, flt, before=page.older, limit=7)
            assert page.newer is not None
        assert len(seen) == len(set(seen)) == 67
        assert seen == sorted(seen, reverse=True)
        back = await dashboard.events_page(session, flt, after=seen[20], limit=7)
    assert [row.id for row in back.rows] == seen[13:20]
    assert (back.newer, back.older) == (seen[13], seen[19])


@pytest.mark.gen_test(timeout=30)
async def test_window_totals_and_series(seeded: Services) -> None:
    async with seeded.db.session() as session:
        series = await dashboard.daily_series(session, date(2024, 4, 30), date(2024, 5, 2))
        pairs = await dashboard.key_model_usage(session, date(2024, 4, 30))
    activity = dashboard.key_activity(pairs)
    windows = dashboard.window_totals(series, activity, date(2024, 5, 2), (1, 2))
    assert [(m.name, m.requests) for m in dashboard.model_ranking(pairs)] == [
        ("m1", 100),
        ("m2", 100),
    ]
    assert windows[2].requests == 200 and windows[1].requests == 199
    assert windows[2].keys == 2  # keyless requests are not a key
    # The one request on May 1st (i == 0) was alice's: bob was only seen on the 2nd.
    assert windows[1].keys == 2
    assert [(k.name, k.last_day, k.requests) for k in activity] == [
        ("alice", date(2024, 5, 2), 67),
        ("bob", date(2024, 5, 2), 67),
    ]
    assert [(p.day.day, p.requests) for p in series] == [(30, 0), (1, 1), (2, 199)]
    assert series[0].error_rate == 0.0 and series[1].error_rate == 100.0


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("status", ["error", "rate_limited", None])
async def test_failures_are_read_through_their_partial_index(
    seeded: Services, status: str | None
) -> None:
    """A failure status's page and totals, and the failures subtracted for "ok", all walk
    the failures' partial index: SQLite uses it only when the query states its condition."""

    async def run(session: AsyncSession) -> None:
        if status is None:  # "ok": the roll-up minus the failures
            await dashboard.filter_totals(session, UsageFilter(status="ok"))
        else:
            await dashboard.filter_totals(session, UsageFilter(status=status))
            await dashboard.events_page(session, UsageFilter(status=status), limit=7)

    plans = await event_query_plans(seeded, run)
    assert plans
    for sql, details in plans:
        assert "ix_usage_events_failure_time" in details, (sql, details)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("flt", "index"),
    [
        (UsageFilter(model="m*"), "ix_usage_events_time"),
        (UsageFilter(model="*2"), "ix_usage_events_time"),
        (UsageFilter(model="m?", key_name="alice"), "ix_usage_events_key_time"),
    ],
)
async def test_a_model_glob_walks_a_time_ordered_index(
    seeded: Services, flt: UsageFilter, index: str
) -> None:
    """A glob's page and export pages stop after their rows: given the literal prefix of
    "m*", SQLite took a range of the model's index and sorted all of it by time, for every
    page (an export's pages in all, quadratic in their number)."""
    from app.db.usage import export_page

    async def run(session: AsyncSession) -> None:
        page = await dashboard.events_page(session, flt, limit=7)
        await dashboard.events_page(session, flt, before=page.older, limit=7)
        await session.execute(export_page(flt, None, 7))

    plans = await event_query_plans(seeded, run)
    assert len(plans) >= 3
    for sql, details in plans:
        if "ORDER BY" not in sql:
            continue  # the page's own position, read by id
        assert index in details and "TEMP B-TREE" not in details, (sql, details)
