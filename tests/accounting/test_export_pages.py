"""The usage export's keyset pages: oldest first on (time, id), the same rows in the same
order as when it was paged on the id alone, each page read in an index's order (no sort of
the rest of a key's rows per page); and `csv_rows` equal to `csv_row` line by line."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app.db.engine import Database, make_sync_engine, sqlite_path, upgrade
from app.db.models import UsageEvent
from app.db.usage import (
    ExportedEvent,
    UsageFilter,
    UsageRecord,
    csv_row,
    csv_rows,
    export_row,
    insert_events,
    iter_export,
)
from tests.databases import POSTGRES, database_url

BASE = datetime(2025, 6, 15, 23, 59, 50)  # the rows run past midnight
FILTERS = [
    UsageFilter(),
    UsageFilter(key_name="alice"),
    UsageFilter(key_name="bob"),
    UsageFilter(key_name="nobody"),
    UsageFilter(model="m2"),
    UsageFilter(upstream="u1"),
    UsageFilter(status="error"),
    UsageFilter(status="ok"),
    UsageFilter(since=date(2025, 6, 16)),
    UsageFilter(until=date(2025, 6, 15)),
    UsageFilter(key_name="alice", model="m1", since=date(2025, 6, 15), until=date(2025, 6, 16)),
]


def seed() -> list[UsageRecord]:
    """Four rows a timestamp (ties a page boundary falls in), written oldest first."""
    return [
        UsageRecord(
            time=BASE + timedelta(seconds=n // 4),
            request_id=f"r{n:04d}",
            client_dialect="openai",
            key_name=["alice", "alice", "bob", None][n % 4],
            requested_model=["m1", "m2", "m1"][n % 3],
            upstream=["u1", "u2"][n % 5 == 0],
            status="error" if n % 7 == 0 else "ok",
            input_tokens=n,
        )
        for n in range(160)
    ]


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    made = database_url(tmp_path, "export.db")
    upgrade(made)
    engine = make_sync_engine(made)
    records = seed()
    try:
        for start in range(0, len(records), 4):  # one batch a timestamp: ids in time order
            with Session(engine) as session, session.begin():
                insert_events(session, records[start : start + 4])
        with Session(engine) as session:
            stored = session.execute(select(UsageEvent.time, UsageEvent.id)).all()
        assert sorted(stored, key=lambda row: row.id) == sorted(stored)
    finally:
        engine.dispose()
    yield made


async def id_paged_export(session: AsyncSession, flt: UsageFilter, page_size: int) -> list[Any]:
    """The export as it was read before: keyset pages on the id alone."""
    rows: list[dict[str, Any]] = []
    last_id = 0
    while True:
        stmt = flt.apply(select(UsageEvent)).where(UsageEvent.id > last_id)
        page = list(await session.scalars(stmt.order_by(UsageEvent.id).limit(page_size)))
        if not page:
            return rows
        rows += [export_row(e) for e in page]
        last_id = page[-1].id


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("page_size", [1, 3, 4, 1000])
async def test_the_export_is_row_for_row_what_paging_on_the_id_gave(
    url: str, page_size: int
) -> None:
    db = Database(url)
    sizes = []
    try:
        async with db.session() as session:
            for flt in FILTERS:
                before = await id_paged_export(session, flt, 1000)
                after = [row async for row in iter_export(session, flt, page_size=page_size)]
                assert after == before, flt
                sizes.append(len(after))
    finally:
        await db.close()
    assert sizes[0] == 160
    assert [flt for flt, size in zip(FILTERS, sizes, strict=True) if size < 5] == [
        UsageFilter(key_name="nobody")
    ]


@pytest.mark.gen_test(timeout=60)
async def test_a_row_written_after_a_later_one_comes_out_in_time_order(url: str) -> None:
    """Oldest first is by time: a row another process wrote later (a later id) with an
    earlier time goes where its time says, as on the usage page."""
    engine = make_sync_engine(url)
    try:
        with Session(engine) as session, session.begin():
            late = UsageRecord(time=BASE, request_id="late", client_dialect="openai")
            insert_events(session, [late._replace(key_name="bob")])
    finally:
        engine.dispose()
    db = Database(url)
    try:
        async with db.session() as session:
            ids = [r["request_id"] async for r in iter_export(session, UsageFilter(key_name="bob"))]
    finally:
        await db.close()
    # r0002 is bob's first row at BASE; "late" ties with it and has the higher id.
    assert ids[:3] == ["r0002", "late", "r0006"]


@pytest.mark.skipif(bool(POSTGRES), reason="reads SQLite's query plans")
@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("flt", FILTERS, ids=lambda flt: repr(flt)[12:-1])
async def test_each_page_is_read_in_an_index_order_without_a_sort(
    url: str, flt: UsageFilter
) -> None:
    """Each statement the export runs walks an index in the export's order and stops after
    a page: paged on the id, a key's page sorted all of the key's remaining rows (a temp
    B-tree, every page), and exporting one key took time quadratic in its rows."""
    db = Database(url)
    ran: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM usage_events" in statement:
            ran.append((statement, parameters))

    event.listen(db.engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with db.session() as session:
            async for _ in iter_export(session, flt, page_size=10):
                pass
    finally:
        await db.close()
    assert len(ran) > 1 or flt.key_name == "nobody"
    path = sqlite_path(url)
    assert path is not None
    with sqlite3.connect(path) as conn:
        for statement, parameters in ran:
            plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + statement, parameters)]
            assert not [step for step in plan if "TEMP B-TREE" in step], (statement, plan)


def test_csv_rows_are_the_lines_csv_row_makes() -> None:
    """One writer for many rows makes the lines `csv_row` made one by one: quoting of
    commas, quotes, ``\\r`` and ``\\n``, formulas made inert, None empty, True and False."""
    nasty = ["=1+1", "-5", "+x", "@SUM(A1)", "\tx", "\rx", 'a,"b"', "two\nlines", "cr\rin", "é ✓"]
    rows = [
        ExportedEvent(
            id=n,
            time=BASE + timedelta(microseconds=n * 1001),
            request_id=f"r{n}",
            key_name=text,
            client_dialect="openai",
            requested_model=nasty[-1 - n],
            upstream=None if n % 2 else "u1",
            target_model=None,
            stream=bool(n % 2),
            status="ok",
            http_status=200,
            error_type=None,
            input_tokens=-n,
            output_tokens=n,
            cache_read_tokens=0,
            cache_write_tokens=0,
            tokens_estimated=not n % 3,
            latency_ms=n / 3,
            ttft_ms=None if n % 2 else n / 7,
        )
        for n, text in enumerate(nasty)
    ]
    assert csv_rows(rows) == "".join(csv_row(export_row(row)) for row in rows)
    assert csv_rows([]) == ""
