"""Read-only queries behind the dashboard: overview and chart series from the ``usage_daily``
roll-up, per-key statistics, and the usage page (``usage_events`` in keyset pages).

Charts and totals read the roll-up (days x keys x models x upstreams); the usage
table walks one of ``usage_events``' ``(column, time)`` indexes newest first (for a
failure status the failures' partial one, for a model glob the time index or another
filter's), so no page sorts the events table.
Independent queries of one page can run side by side on separate connections with
`in_parallel`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Select, case, distinct, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.engine import Database
from app.db.models import UsageDaily, UsageEvent
from app.db.usage import OK, UsageFilter, model_match

CHOICE_DAYS = 7


async def in_parallel(
    db: Database, *queries: Callable[[AsyncSession], Awaitable[Any]]
) -> list[Any]:
    """Runs each query in a session of its own, concurrently; results in the same order.

    Read-only pages use it so their roll-up scans overlap instead of adding up
    (SQLite reads in WAL mode run in parallel; aiosqlite gives each its own thread).
    """

    async def run(query: Callable[[AsyncSession], Awaitable[Any]]) -> Any:
        async with db.session() as session:
            return await query(session)

    return list(await asyncio.gather(*(run(q) for q in queries)))


@dataclass(frozen=True, slots=True)
class Totals:
    """Sums over some requests."""

    requests: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    keys: int = 0

    @property
    def error_rate(self) -> float:
        """Errors as a percentage of requests."""
        return 100.0 * self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class DayPoint:
    day: date
    requests: int
    errors: int
    input_tokens: int
    output_tokens: int
    latency_ms_total: float = 0.0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def error_rate(self) -> float:
        return 100.0 * self.errors / self.requests if self.requests else 0.0

    @property
    def mean_latency_ms(self) -> float:
        return self.latency_ms_total / self.requests if self.requests else 0.0


@dataclass(frozen=True, slots=True)
class Ranked:
    """One entry of a top-N list."""

    name: str
    requests: int
    tokens: int


@dataclass(frozen=True, slots=True)
class KeyActivity:
    """One key's requests and tokens over a period, and the last day it was used in it."""

    name: str
    last_day: date
    requests: int
    tokens: int


_SUMS = (
    func.coalesce(func.sum(UsageDaily.requests), 0),
    func.coalesce(func.sum(UsageDaily.errors), 0),
    func.coalesce(func.sum(UsageDaily.input_tokens), 0),
    func.coalesce(func.sum(UsageDaily.output_tokens), 0),
    func.coalesce(func.sum(UsageDaily.cache_read_tokens), 0),
    func.coalesce(func.sum(UsageDaily.cache_write_tokens), 0),
)


def _totals(sums: Sequence[Any], keys: int) -> Totals:
    """Totals from the six `_SUMS` columns, in their order."""
    return Totals(
        requests=int(sums[0]),
        errors=int(sums[1]),
        input_tokens=int(sums[2]),
        output_tokens=int(sums[3]),
        cache_read_tokens=int(sums[4]),
        cache_write_tokens=int(sums[5]),
        keys=keys,
    )


async def daily_series(
    session: AsyncSession, since: date, until: date, *, key_name: str | None = None
) -> list[DayPoint]:
    """One point per day from ``since`` to ``until`` inclusive, zero-filled."""
    stmt = (
        select(UsageDaily.day, *_SUMS, func.coalesce(func.sum(UsageDaily.latency_ms_total), 0.0))
        .where(UsageDaily.day >= since, UsageDaily.day <= until)
        .group_by(UsageDaily.day)
    )
    if key_name is not None:
        stmt = stmt.where(UsageDaily.key_name == key_name)
    found = {row[0]: row for row in (await session.execute(stmt)).all()}
    points = []
    day = since
    while day <= until:
        row = found.get(day)
        if row is None:
            points.append(DayPoint(day, 0, 0, 0, 0))
        else:
            t = _totals(row[1:7], 0)
            points.append(
                DayPoint(
                    day,
                    t.requests,
                    t.errors,
                    t.input_tokens,
                    t.output_tokens,
                    float(row[7]),
                    t.cache_read_tokens,
                    t.cache_write_tokens,
                )
            )
        day += timedelta(days=1)
    return points


Pair = tuple[str, str, date, int, int]


async def key_model_usage(session: AsyncSession, since: date) -> list[Pair]:
    """(key, model, last day, requests, tokens) for every pair used since ``since``.

    One grouped scan of the roll-up feeds both the top keys (with the keys per
    window) and the top models of the overview.
    """
    stmt = (
        select(
            UsageDaily.key_name,
            UsageDaily.model,
            func.max(UsageDaily.day),
            func.sum(UsageDaily.requests),
            func.sum(UsageDaily.input_tokens + UsageDaily.output_tokens),
        )
        .where(UsageDaily.day >= since)
        .group_by(UsageDaily.key_name, UsageDaily.model)
    )
    return [
        (row[0], row[1], _as_date(row[2]), int(row[3]), int(row[4]))
        for row in (await session.execute(stmt)).all()
    ]


def key_activity(pairs: Sequence[Pair]) -> list[KeyActivity]:
    """Per key from `key_model_usage`, busiest first; keyless requests are not a key."""
    by_key: dict[str, KeyActivity] = {}
    for key, _, last_day, requests, tokens in pairs:
        if not key:
            continue
        seen = by_key.get(key)
        if seen is not None:
            last_day = max(last_day, seen.last_day)
            requests += seen.requests
            tokens += seen.tokens
        by_key[key] = KeyActivity(key, last_day, requests, tokens)
    return sorted(by_key.values(), key=lambda k: (-k.requests, k.name))


def model_ranking(pairs: Sequence[Pair], limit: int = 8) -> list[Ranked]:
    """Per model from `key_model_usage`, busiest first."""
    totals: dict[str, tuple[int, int]] = {}
    for _, model, _, requests, tokens in pairs:
        if model:
            before = totals.get(model, (0, 0))
            totals[model] = (before[0] + requests, before[1] + tokens)
    ranked = [Ranked(name, r, t) for name, (r, t) in totals.items()]
    return sorted(ranked, key=lambda m: (-m.requests, m.name))[:limit]


def _as_date(value: Any) -> date:
    # max() of a Date column comes back as text on SQLite.
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def window_totals(
    series: Sequence[DayPoint],
    activity: Sequence[KeyActivity],
    today: date,
    windows: Sequence[int] = (1, 7, 30),
) -> dict[int, Totals]:
    """Totals for the last N days (today included) for each N, from the series and activity."""
    out: dict[int, Totals] = {}
    for days in windows:
        start = today - timedelta(days=days - 1)
        points = [p for p in series if start <= p.day <= today]
        out[days] = Totals(
            requests=sum(p.requests for p in points),
            errors=sum(p.errors for p in points),
            input_tokens=sum(p.input_tokens for p in points),
            output_tokens=sum(p.output_tokens for p in points),
            cache_read_tokens=sum(p.cache_read_tokens for p in points),
            cache_write_tokens=sum(p.cache_write_tokens for p in points),
            keys=sum(1 for k in activity if k.last_day >= start),
        )
    return out


async def top_models(
    session: AsyncSession, since: date, limit: int = 8, *, key_name: str | None = None
) -> list[Ranked]:
    requests = func.sum(UsageDaily.requests)
    stmt = (
        select(
            UsageDaily.model,
            requests,
            func.sum(UsageDaily.input_tokens + UsageDaily.output_tokens),
        )
        .where(UsageDaily.day >= since, UsageDaily.model != "")
        .group_by(UsageDaily.model)
        .order_by(requests.desc(), UsageDaily.model)
        .limit(limit)
    )
    if key_name is not None:
        stmt = stmt.where(UsageDaily.key_name == key_name)
    return [Ranked(row[0], int(row[1]), int(row[2])) for row in (await session.execute(stmt)).all()]


async def key_totals(session: AsyncSession) -> dict[str, Totals]:
    """All-time totals per key name (the keys list)."""
    stmt = select(UsageDaily.key_name, *_SUMS).group_by(UsageDaily.key_name)
    return {row[0]: _totals(row[1:], 0) for row in (await session.execute(stmt)).all()}


async def key_summary(session: AsyncSession, key_name: str) -> Totals:
    """All-time totals of one key."""
    stmt = select(*_SUMS).where(UsageDaily.key_name == key_name)
    return _totals((await session.execute(stmt)).one(), 1)


async def _seen(session: AsyncSession, column: Any, since: date) -> list[str]:
    stmt = select(column).distinct().where(UsageDaily.day >= since, column != "").order_by(column)
    return list(await session.scalars(stmt))


async def filter_choices(
    session: AsyncSession, today: date
) -> tuple[list[str], list[str], list[str]]:
    """Key, model and upstream names used in the last week, to suggest in the usage filters."""
    since = today - timedelta(days=CHOICE_DAYS - 1)
    return (
        await _seen(session, UsageDaily.key_name, since),
        await _seen(session, UsageDaily.model, since),
        await _seen(session, UsageDaily.upstream, since),
    )


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of the usage table, newest first, with the ids to page on."""

    rows: list[UsageEvent]
    newer: int | None  # pass as ``after`` to see the page before this one
    older: int | None  # pass as ``before`` to see the page after this one


async def _position(session: AsyncSession, event_id: int | None) -> tuple[datetime, int] | None:
    if event_id is None:
        return None
    when = await session.scalar(select(UsageEvent.time).where(UsageEvent.id == event_id))
    return (when, event_id) if when is not None else None


_ORDER = tuple_(UsageEvent.time, UsageEvent.id)


async def events_page(
    session: AsyncSession,
    flt: UsageFilter,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
) -> EventPage:
    """Keyset pagination, newest first: ``before`` an event id walks to older rows,
    ``after`` one walks back to newer ones.

    The order is (time, id), so every filter walks its own ``(column, time)`` index
    and stops after one page; the id breaks ties and names the page boundary.
    """
    stmt: Select[Any] = flt.apply(select(UsageEvent))
    pivot_after = await _position(session, after)
    pivot_before = await _position(session, before) if pivot_after is None else None
    if pivot_after is not None:
        stmt = stmt.where(_ORDER > pivot_after).order_by(UsageEvent.time, UsageEvent.id)
    else:
        if pivot_before is not None:
            stmt = stmt.where(_ORDER < pivot_before)
        stmt = stmt.order_by(UsageEvent.time.desc(), UsageEvent.id.desc())
    rows = list(await session.scalars(stmt.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    if pivot_after is not None:
        rows.reverse()
        newer = rows[0].id if more and rows else None
        older = rows[-1].id if rows and await _exists(session, flt, below=rows[-1]) else None
    else:
        older = rows[-1].id if more else None
        newer = None
        if pivot_before is not None and rows and await _exists(session, flt, above=rows[0]):
            newer = rows[0].id
    return EventPage(rows, newer, older)


async def _exists(
    session: AsyncSession,
    flt: UsageFilter,
    *,
    below: UsageEvent | None = None,
    above: UsageEvent | None = None,
) -> bool:
    stmt: Select[Any] = flt.apply(select(UsageEvent.id))
    if below is not None:
        stmt = stmt.where(_ORDER < (below.time, below.id))
    if above is not None:
        stmt = stmt.where(_ORDER > (above.time, above.id))
    return await session.scalar(stmt.limit(1)) is not None


async def filter_totals(session: AsyncSession, flt: UsageFilter) -> Totals:
    """Totals for the usage page's filter.

    Without a status filter the roll-up answers exactly (its buckets are whole
    days x key x model x upstream, the filter's own grain). Failures are few, so a
    failure status is summed from the events through the status index, and "ok"
    is the roll-up minus the failures.
    """
    if not flt.status:
        return await _rollup_totals(session, flt)
    if flt.status != "ok":
        return await _event_totals(session, flt)
    everything = await _rollup_totals(session, flt, ok_keys=True)
    failed = await _event_totals(session, flt, failures=True)
    return Totals(
        requests=everything.requests - failed.requests,
        errors=0,
        input_tokens=everything.input_tokens - failed.input_tokens,
        output_tokens=everything.output_tokens - failed.output_tokens,
        cache_read_tokens=everything.cache_read_tokens - failed.cache_read_tokens,
        cache_write_tokens=everything.cache_write_tokens - failed.cache_write_tokens,
        keys=everything.keys,
    )


async def _rollup_totals(
    session: AsyncSession, flt: UsageFilter, *, ok_keys: bool = False
) -> Totals:
    """Roll-up sums for the filter's key, model, upstream and days (its status aside).

    ``ok_keys`` counts only keys with a successful request: a bucket had one when
    it holds more requests than errors.
    """
    # Keyless requests sit under key_name "" in the roll-up and NULL in the events.
    named = UsageDaily.key_name != ""
    if ok_keys:
        named = named & (UsageDaily.requests > UsageDaily.errors)
    stmt = select(*_SUMS, func.count(distinct(case((named, UsageDaily.key_name)))))
    if flt.key_name:
        stmt = stmt.where(UsageDaily.key_name == flt.key_name)
    if flt.model:
        stmt = stmt.where(model_match(UsageDaily.model, flt.model))  # as the events match
    if flt.upstream:
        stmt = stmt.where(UsageDaily.upstream == flt.upstream)
    if flt.since:
        stmt = stmt.where(UsageDaily.day >= flt.since)
    if flt.until:
        stmt = stmt.where(UsageDaily.day <= flt.until)
    row = (await session.execute(stmt)).one()
    return _totals(row[:6], int(row[6]))


async def _event_totals(
    session: AsyncSession, flt: UsageFilter, *, failures: bool = False
) -> Totals:
    """Sums over the events; ``failures`` sums every status but "ok" (the filter's status aside)."""
    stmt = select(
        func.count(UsageEvent.id),
        func.coalesce(func.sum(case((UsageEvent.status != "ok", 1), else_=0)), 0),
        func.coalesce(func.sum(UsageEvent.input_tokens), 0),
        func.coalesce(func.sum(UsageEvent.output_tokens), 0),
        func.coalesce(func.sum(UsageEvent.cache_read_tokens), 0),
        func.coalesce(func.sum(UsageEvent.cache_write_tokens), 0),
        func.count(distinct(UsageEvent.key_name)),
    )
    if failures:
        # Every entry of the failures' partial index, which needs its own condition stated.
        stmt = UsageFilter(**{**_fields(flt), "status": None}).apply(stmt)
        stmt = stmt.where(UsageEvent.status != OK)
    else:
        stmt = flt.apply(stmt)
    row = (await session.execute(stmt)).one()
    return _totals(row[:6], int(row[6]))


def _fields(flt: UsageFilter) -> dict[str, Any]:
    return {
        "key_name": flt.key_name,
        "model": flt.model,
        "upstream": flt.upstream,
        "status": flt.status,
        "since": flt.since,
        "until": flt.until,
    }
