"""Read-only queries behind the dashboard: overview and chart series from the ``usage_daily``
roll-up, per-key statistics, and the usage page (``usage_events`` in keyset pages).

Charts and totals read the roll-up, which stays small (days x keys x models x
upstreams), so no dashboard page scans ``usage_events`` except through an index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Select, case, distinct, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import UsageDaily, UsageEvent
from app.db.usage import UsageFilter


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


_SUMS = (
    func.coalesce(func.sum(UsageDaily.requests), 0),
    func.coalesce(func.sum(UsageDaily.errors), 0),
    func.coalesce(func.sum(UsageDaily.input_tokens), 0),
    func.coalesce(func.sum(UsageDaily.output_tokens), 0),
    func.coalesce(func.sum(UsageDaily.cache_read_tokens), 0),
    func.coalesce(func.sum(UsageDaily.cache_write_tokens), 0),
)


async def window_totals(
    session: AsyncSession, today: date, windows: tuple[int, ...] = (1, 7, 30)
) -> dict[int, Totals]:
    """Totals for the last N days (today included) for each N in ``windows``."""
    longest = max(windows)
    since = today - timedelta(days=longest - 1)
    stmt = (
        select(UsageDaily.day, UsageDaily.key_name, *_SUMS)
        .where(UsageDaily.day >= since, UsageDaily.day <= today)
        .group_by(UsageDaily.day, UsageDaily.key_name)
    )
    rows: list[Any] = list((await session.execute(stmt)).all())
    out: dict[int, Totals] = {}
    for days in windows:
        start = today - timedelta(days=days - 1)
        sums = [0] * 6
        keys: set[str] = set()
        for row in rows:
            if row[0] < start:
                continue
            for i in range(6):
                sums[i] += int(row[2 + i])
            if row[1]:
                keys.add(row[1])
        out[days] = _totals(sums, len(keys))
    return out


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
        select(
            UsageDaily.day,
            func.sum(UsageDaily.requests),
            func.sum(UsageDaily.errors),
            func.sum(UsageDaily.input_tokens),
            func.sum(UsageDaily.output_tokens),
            func.sum(UsageDaily.latency_ms_total),
        )
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
            points.append(
                DayPoint(day, int(row[1]), int(row[2]), int(row[3]), int(row[4]), float(row[5]))
            )
        day += timedelta(days=1)
    return points


async def _top(
    session: AsyncSession, column: Any, since: date, limit: int, key_name: str | None
) -> list[Ranked]:
    requests = func.sum(UsageDaily.requests)
    stmt = (
        select(column, requests, func.sum(UsageDaily.input_tokens + UsageDaily.output_tokens))
        .where(UsageDaily.day >= since, column != "")
        .group_by(column)
        .order_by(requests.desc(), column)
        .limit(limit)
    )
    if key_name is not None:
        stmt = stmt.where(UsageDaily.key_name == key_name)
    return [Ranked(row[0], int(row[1]), int(row[2])) for row in (await session.execute(stmt)).all()]


async def top_keys(session: AsyncSession, since: date, limit: int = 8) -> list[Ranked]:
    return await _top(session, UsageDaily.key_name, since, limit, None)


async def top_models(
    session: AsyncSession, since: date, limit: int = 8, *, key_name: str | None = None
) -> list[Ranked]:
    return await _top(session, UsageDaily.model, since, limit, key_name)


async def key_totals(session: AsyncSession) -> dict[str, Totals]:
    """All-time totals per key name (the keys list)."""
    stmt = select(UsageDaily.key_name, *_SUMS).group_by(UsageDaily.key_name)
    return {row[0]: _totals(row[1:], 0) for row in (await session.execute(stmt)).all()}


async def _seen(session: AsyncSession, column: Any) -> list[str]:
    stmt = select(column).distinct().where(column != "").order_by(column)
    return list(await session.scalars(stmt))


async def filter_choices(session: AsyncSession) -> tuple[list[str], list[str], list[str]]:
    """Key, model and upstream names seen in the roll-up, for the usage filters."""
    return (
        await _seen(session, UsageDaily.key_name),
        await _seen(session, UsageDaily.model),
        await _seen(session, UsageDaily.upstream),
    )


@dataclass(frozen=True, slots=True)
class EventPage:
    """One page of the usage table, newest first, with the ids to page on."""

    rows: list[UsageEvent]
    newer: int | None  # pass as ``after`` to see the page before this one
    older: int | None  # pass as ``before`` to see the page after this one


async def events_page(
    session: AsyncSession,
    flt: UsageFilter,
    *,
    before: int | None = None,
    after: int | None = None,
    limit: int = 50,
) -> EventPage:
    """Keyset pagination on id: ``before`` walks to older rows, ``after`` back to newer ones."""
    stmt: Select[Any] = flt.apply(select(UsageEvent))
    if after is not None:
        stmt = stmt.where(UsageEvent.id > after).order_by(UsageEvent.id.asc())
    else:
        if before is not None:
            stmt = stmt.where(UsageEvent.id < before)
        stmt = stmt.order_by(UsageEvent.id.desc())
    rows = list(await session.scalars(stmt.limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    if after is not None:
        rows.reverse()
        newer = rows[0].id if more and rows else None
        older = rows[-1].id if rows else None
        if older is not None and not await _exists(session, flt, below=older):
            older = None
    else:
        older = rows[-1].id if more else None
        newer = rows[0].id if before is not None and rows else None
        if newer is not None and not await _exists(session, flt, above=newer):
            newer = None
    return EventPage(rows, newer, older)


async def _exists(
    session: AsyncSession, flt: UsageFilter, *, below: int | None = None, above: int | None = None
) -> bool:
    stmt: Select[Any] = flt.apply(select(UsageEvent.id))
    if below is not None:
        stmt = stmt.where(UsageEvent.id < below)
    if above is not None:
        stmt = stmt.where(UsageEvent.id > above)
    return await session.scalar(stmt.limit(1)) is not None


async def filter_totals(session: AsyncSession, flt: UsageFilter) -> Totals:
    """Totals for the usage page's filter.

    Without a status filter the roll-up answers exactly (its buckets are whole
    days x key x model x upstream, the filter's own grain); a status filter
    needs the raw events, read through the status index.
    """
    if flt.status:
        return await _event_totals(session, flt)
    # Keyless requests sit under key_name "" in the roll-up and NULL in the events.
    named = case((UsageDaily.key_name != "", UsageDaily.key_name))
    stmt = select(*_SUMS, func.count(distinct(named)))
    if flt.key_name:
        stmt = stmt.where(UsageDaily.key_name == flt.key_name)
    if flt.model:
        stmt = stmt.where(UsageDaily.model == flt.model)
    if flt.upstream:
        stmt = stmt.where(UsageDaily.upstream == flt.upstream)
    if flt.since:
        stmt = stmt.where(UsageDaily.day >= flt.since)
    if flt.until:
        stmt = stmt.where(UsageDaily.day <= flt.until)
    row = (await session.execute(stmt)).one()
    return _totals(row[:6], int(row[6]))


async def _event_totals(session: AsyncSession, flt: UsageFilter) -> Totals:
    stmt = flt.apply(
        select(
            func.count(UsageEvent.id),
            func.coalesce(func.sum(case((UsageEvent.status != "ok", 1), else_=0)), 0),
            func.coalesce(func.sum(UsageEvent.input_tokens), 0),
            func.coalesce(func.sum(UsageEvent.output_tokens), 0),
            func.coalesce(func.sum(UsageEvent.cache_read_tokens), 0),
            func.coalesce(func.sum(UsageEvent.cache_write_tokens), 0),
            func.count(distinct(UsageEvent.key_name)),
        )
    )
    row = (await session.execute(stmt)).one()
    return _totals(row[:6], int(row[6]))
