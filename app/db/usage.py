"""Queries on ``usage_events`` and ``usage_daily``: batched inserts with the roll-up,
filtered export (streamed in keyset pages), the model filter's glob, and retention.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from itertools import chain
from operator import itemgetter
from typing import Any, NamedTuple, TypeVar, cast

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    Dialect,
    Executable,
    Select,
    String,
    Table,
    TypeDecorator,
    and_,
    bindparam,
    delete,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from app.db.models import ProxyKey, UsageDaily, UsageEvent

log = logging.getLogger("bridgekeeper.usage")

OK = "ok"  # the status of a request that went well; every other status is an error


class UsageRecord(NamedTuple):
    """One request's usage as the recorder buffers it: UsageEvent's columns, in its order.

    A tuple, so a batch goes to the driver as it is and its columns come out of
    ``zip(*batch)`` in C: read attribute by attribute, a 1,500-row batch cost the
    writer thread ~8 k instructions a row more (issue 7)."""

    time: datetime
    request_id: str
    client_dialect: str
    endpoint: str = "messages"
    key_id: int | None = None
    key_name: str | None = None
    requested_model: str | None = None
    upstream: str | None = None
    upstream_key: str | None = None
    target_model: str | None = None
    stream: bool = False
    status: str = OK
    http_status: int = 200
    error_type: str | None = None
    error_message: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    tokens_estimated: bool = False
    latency_ms: float = 0.0
    ttft_ms: float | None = None

    @property
    def is_error(self) -> bool:
        return self.status != OK


_RECORD_FIELDS = list(UsageRecord._fields)
_COLUMN = {name: at for at, name in enumerate(_RECORD_FIELDS)}
_EVENTS = cast(Table, UsageEvent.__table__)

EXPORT_COLUMNS = (
    "time",
    "request_id",
    "key_name",
    "client_dialect",
    "requested_model",
    "upstream",
    "target_model",
    "stream",
    "status",
    "error_type",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "latency_ms",
    "ttft_ms",
    # Beyond DESIGN.md's list, after it, so its columns keep the order it gives them.
    "http_status",
    "tokens_estimated",
)


class ExportedEvent(NamedTuple):
    """The columns of ``usage_events`` an export reads, as `export_row` takes them.

    A named tuple: read from a SQLAlchemy Row, each of `export_row`'s 18 attributes went
    through the Row's Python-level key lookup, ~9 us of the ~25 us a CSV row took."""

    id: int
    time: datetime
    request_id: str
    key_name: str | None
    client_dialect: str
    requested_model: str | None
    upstream: str | None
    target_model: str | None
    stream: bool
    status: str
    http_status: int
    error_type: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    tokens_estimated: bool
    latency_ms: float
    ttft_ms: float | None


_EXPORT_SELECT = tuple(getattr(UsageEvent, name) for name in ExportedEvent._fields)


def export_row(event: Any) -> dict[str, Any]:
    """One export row: the columns of the dashboard CSV and ``usage export``.

    ``event`` is a UsageEvent or a row with the same attributes.
    """
    return {
        "time": event.time.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        "request_id": event.request_id,
        "key_name": event.key_name or "",
        "client_dialect": event.client_dialect,
        "requested_model": event.requested_model or "",
        "upstream": event.upstream or "",
        "target_model": event.target_model or "",
        "stream": bool(event.stream),
        "status": event.status,
        "error_type": event.error_type or "",
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "cache_read_tokens": event.cache_read_tokens,
        "cache_write_tokens": event.cache_write_tokens,
        "latency_ms": round(event.latency_ms, 1),
        "ttft_ms": round(event.ttft_ms, 1) if event.ttft_ms is not None else None,
        "http_status": event.http_status,
        "tokens_estimated": bool(event.tokens_estimated),
    }


# What a spreadsheet takes for the start of a formula in a text cell: a key holder chooses
# the requested model (``=cmd|'/C calc'!A0``). OWASP's advice on CSV injection: such a
# cell starts with a single quote. Only text is touched: -5 the number stays a number.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """An export value as a CSV cell: None empty, a formula-like text made inert."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_line(cells: Sequence[Any]) -> str:
    """One CSV line ending in ``\n``, a cell holding ``\r`` or ``\n`` quoted.

    The csv module quotes only the characters of its own line terminator: written with
    ``\n`` a bare ``\r`` went out unquoted, and readers end the row there (the rest, a
    new row whose first cell could be an unprefixed formula)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return buffer.getvalue()[:-2] + "\n"


CSV_HEADER = csv_line(EXPORT_COLUMNS)


def csv_row(row: Mapping[str, Any]) -> str:
    """An `export_row` as a CSV line, in `EXPORT_COLUMNS` order."""
    return csv_line([csv_cell(row[column]) for column in EXPORT_COLUMNS])


class _Lines(list[str]):
    """What a csv writer writes to: its rows, one string each (``writerow`` makes one
    ``write`` call a row)."""

    write = list.append


def csv_rows(events: Sequence[Any]) -> str:
    """Events (`ExportedEvent` or the like) as the CSV lines `csv_row` makes of their
    `export_row`, one writer for all of them (~3 times faster than line by line)."""
    lines = _Lines()
    csv.writer(lines, lineterminator="\r\n").writerows(
        [[csv_cell(row[column]) for column in EXPORT_COLUMNS] for row in map(export_row, events)]
    )
    return "".join([line[:-2] + "\n" for line in lines])  # as `csv_line` ends a line


_S = TypeVar("_S", bound="Select[*tuple[Any, ...]]")

# The model filter's wildcards, as the shell's: ``*`` any run of characters, ``?`` one.
# Everything else is literal, ``[`` included (fnmatch's sets are not offered: a model name
# such as ``gpt-4[beta]`` is typed as it is).
GLOB_WILDCARDS = frozenset("*?")
_LIKE_SPECIAL = {"*": "%", "?": "_", "%": "\\%", "_": "\\_", "\\": "\\\\"}


def is_glob(value: str) -> bool:
    """Whether the model filter ``value`` has a wildcard; without one it is an exact name."""
    return not GLOB_WILDCARDS.isdisjoint(value)


def like_pattern(glob: str) -> str:
    """``glob`` as a LIKE pattern whose escape character is ``\\``: the wildcards become
    ``%`` and ``_``, and a literal ``%``, ``_`` or ``\\`` is escaped."""
    return "".join([_LIKE_SPECIAL.get(char, char) for char in glob])


def sqlite_glob_pattern(glob: str) -> str:
    """``glob`` as a pattern of SQLite's GLOB: the wildcards are its own, and a literal
    ``[`` (which would open a set) is the set of it alone, ``[[]``."""
    return glob.replace("[", "[[]")


class _GlobPattern(TypeDecorator[str]):
    """A model glob bound as the pattern of the database's case-sensitive match: GLOB's on
    SQLite, LIKE's (escape ``\\``) elsewhere. Converted at bind time, where the dialect is
    known, so one cached statement serves every pattern."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return sqlite_glob_pattern(value) if dialect.name == "sqlite" else like_pattern(value)


class _GlobMatch(FunctionElement[bool]):
    """``column`` matches a `_GlobPattern` bound value; compiled per dialect below."""

    type = Boolean()
    inherit_cache = True
    # A comparison already: without this, SQLite (no native boolean) got ``... GLOB ? = 1``.
    _is_implicitly_boolean = True


@compiles(_GlobMatch)
def _compile_like(element: _GlobMatch, compiler: SQLCompiler, **kw: Any) -> str:
    # PostgreSQL's LIKE compares case-sensitively, as the product's other globs do.
    column, pattern = element.clauses
    return compiler.process(column.like(pattern, escape="\\"), **kw)


@compiles(_GlobMatch, "sqlite")
def _compile_glob(element: _GlobMatch, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite's LIKE ignores ASCII case (and PRAGMA case_sensitive_like is deprecated and
    # holds for the whole connection); GLOB compares case-sensitively, like PostgreSQL's
    # LIKE. The column behind a unary "+" (a no-op) is no index term: given a pattern's
    # literal prefix, SQLite took the range of ix_usage_events_model_time and sorted all
    # of its rows by time for every page, and an export's pages in all took time quadratic
    # in their number. It walks the time index (or the key's) instead, stopping at a page.
    column, pattern = element.clauses
    return f"+{compiler.process(column, **kw)} GLOB {compiler.process(pattern, **kw)}"


def model_match(
    column: InstrumentedAttribute[str] | InstrumentedAttribute[str | None], model: str
) -> ColumnElement[bool]:
    """The model filter's condition on ``column`` (``usage_events.requested_model`` or
    ``usage_daily.model``): an exact name as it was (``=``), or a glob (`is_glob`) matched
    case-sensitively on every database, as a key's allowed-model globs are (fnmatchcase).

    A glob matches only requests that named a model: the roll-up keeps a request without
    one (NULL or "" in the events) under model "", which ``*`` would take and LIKE on NULL
    would not, and its totals then differed from the rows."""
    if not is_glob(model):
        return column == model
    match = _GlobMatch(column, bindparam(None, model, type_=_GlobPattern()))
    if model.strip("*"):
        return match  # a character or a ``?`` to match: never the empty name
    return and_(column != "", match)


@dataclass(frozen=True, slots=True)
class UsageFilter:
    """Filters shared by the usage page, its CSV export and ``usage export``.

    ``model`` is an exact name or a glob (`model_match`); ``since`` and ``until`` are
    inclusive UTC days.
    """

    key_name: str | None = None
    model: str | None = None
    upstream: str | None = None
    status: str | None = None
    since: date | None = None
    until: date | None = None

    def apply(self, stmt: _S) -> _S:
        if self.key_name:
            stmt = stmt.where(UsageEvent.key_name == self.key_name)
        if self.model:
            stmt = stmt.where(model_match(UsageEvent.requested_model, self.model))
        if self.upstream:
            stmt = stmt.where(UsageEvent.upstream == self.upstream)
        if self.status:
            stmt = stmt.where(UsageEvent.status == self.status)
            if self.status != OK:
                # Implied, but stated: SQLite uses a partial index (the failures') only for a
                # query that has its condition among its own terms.
                stmt = stmt.where(UsageEvent.status != OK)
        if self.since:
            stmt = stmt.where(UsageEvent.time >= datetime.combine(self.since, time.min))
        if self.until and self.until < date.max:  # through the last day: no upper bound
            stmt = stmt.where(
                UsageEvent.time < datetime.combine(self.until + timedelta(days=1), time.min)
            )
        return stmt


# The driver binds int, float and str at once, but any other value (None, bool) only after
# asking its adapter registry and then the adaptation protocol: two failed attribute
# lookups, each raising a formatted AttributeError in C, ~16 k instructions a usage row
# (a row has about five such values). Found in the registry, each is one C call. What is
# bound does not change: None is still NULL (an empty dict's ``get`` answers None for
# None) and a bool its int.
sqlite3.register_adapter(type(None), cast(Callable[[None], None], {}.get))
sqlite3.register_adapter(bool, int)


@lru_cache(maxsize=64)
def _second_text(day: int, hour: int, minute: int, second: int) -> str:
    return f"{date.fromordinal(day)} {hour:02d}:{minute:02d}:{second:02d}"


def sqlite_datetime(when: datetime) -> str:
    """The text SQLAlchemy stores for a SQLite DATETIME, ``YYYY-MM-DD HH:MM:SS.ffffff``
    (any tzinfo left out, as SQLAlchemy does). A batch's rows share their seconds, so each
    second's text is made once: `datetime.isoformat` was ~7 k instructions a row."""
    head = _second_text(when.toordinal(), when.hour, when.minute, when.second)
    return head + "." + str(when.microsecond).zfill(6)  # faster than "%s.%06d" or an f-string


# The INSERT's text and its columns, in the record's order.
_InsertPlan = tuple[str, tuple[str, ...]]
# Columns often one value over a whole chunk of rows: the optional ones (None for a request
# that went well) and the flags.
_OPTIONAL = ("error_type", "error_message", "ttft_ms", "key_id", "upstream_key")
_FLAGS = ("stream", "tokens_estimated")
# Columns the gateway fills from its own few words ("anthropic", "messages", "ok"…), never
# from what a client or an admin typed: written as a literal when one word over a chunk, the
# statement's variants stay few. (Names, models and keys are left bound, see `_SHARED`:
# their variety is the users', and each new statement of a few hundred rows costs its
# preparation.)
_WORDS = ("client_dialect", "endpoint", "status")
_WORD = re.compile(r"[a-z][a-z_/]{0,31}")
# Columns that say who asked for what, and where it went: one value over a chunk whenever
# one key's traffic fills it. Such a value is bound once for the whole chunk, a numbered
# parameter every row refers to (a text bound costs the driver ~1 k instructions: a copy
# made under the connection's mutex). Whatever the value, the statement is the same.
_SHARED = (
    "key_id", "key_name", "requested_model", "upstream", "upstream_key", "target_model",
    "http_status",
)  # fmt: skip
# Rows per INSERT: within SQLite's bound-parameter limit (32766 since 3.32, 999 before).
_CHUNK = 256 if sqlite3.sqlite_version_info >= (3, 32, 0) else 32


@lru_cache(maxsize=4)
def _sqlite_insert(dialect: Dialect) -> _InsertPlan | None:
    """The INSERT for a batch of events, the getter of its parameters, its column order."""
    compiled = insert(_EVENTS).compile(dialect=dialect, column_keys=_RECORD_FIELDS)
    order = compiled.positiontup
    if order != _RECORD_FIELDS:
        # A column with a Python-side default, or out of the record's order: SQLAlchemy
        # binds them (test_usage_db checks this is not what happens).
        return None
    return str(compiled), tuple(order)


def _insert_rows(
    conn: Connection, records: Sequence[UsageRecord], columns: list[tuple[Any, ...]]
) -> None:
    """The batch's ``usage_events`` rows; ``columns`` are the batch's, ``zip(*records)``.

    On SQLite the rows go straight to the driver: SQLAlchemy's per-row parameter
    processing was ~60k of ~170k instructions a row (callgrind), all of it holding the GIL
    the event loop needs, while SQLite's own work releases it. Values are what SQLAlchemy
    would bind: DATETIME as its ``YYYY-MM-DD HH:MM:SS.ffffff`` text.
    """
    plan = _sqlite_insert(conn.dialect) if conn.dialect.name == "sqlite" else None
    if plan is None:
        conn.execute(insert(_EVENTS), [r._asdict() for r in records])
        return
    sql, order = plan
    width = len(_RECORD_FIELDS)
    flat: list[Any] = list(chain.from_iterable(records))
    flat[order.index("time") :: width] = [sqlite_datetime(t) for t in columns[_COLUMN["time"]]]
    # Many rows per INSERT: the driver releases the GIL around every statement it steps,
    # and with the event loop waiting for the GIL each release became a thread handoff
    # (a row's insert cost the serving thread ~0.15 ms under load, `make bench`).
    head = sql.partition(" VALUES ")[0]
    checked = _Checked(
        nullable=tuple(order.index(name) for name in _OPTIONAL),
        flags=tuple(order.index(name) for name in _FLAGS),
        words=tuple(order.index(name) for name in _WORDS),
        shared=tuple(order.index(name) for name in _SHARED),
    )
    start, left = 0, len(records)
    while left:
        # Chunks of a few fixed sizes (256, 128, ... 1): the driver caches each distinct
        # statement it prepares, and a statement of many rows is large.
        count = _CHUNK if left >= _CHUNK else 1 << (left.bit_length() - 1)
        chunk = flat[start * width : (start + count) * width]
        literals, shared = _constant_columns(chunk, count, width, checked)
        values = [chunk[column] for column in shared]  # the first row's: every row's
        dropped = sorted([column for column, _literal in literals] + list(shared))
        for gone, column in enumerate(reversed(dropped)):
            # Not bound row by row: drop the column from every row (the rows are ``gone``
            # narrower already, the columns after it gone).
            del chunk[column :: width - gone]
        statement = _multi_insert(head, width, count, literals, shared)
        conn.exec_driver_sql(statement, tuple(values + chunk) if values else tuple(chunk))
        start += count
        left -= count


class _Checked(NamedTuple):
    """Where the columns checked for one value over a chunk are, by kind."""

    nullable: tuple[int, ...]
    flags: tuple[int, ...]
    words: tuple[int, ...]
    shared: tuple[int, ...]


def _constant_columns(
    chunk: list[Any], count: int, width: int, checked: _Checked
) -> tuple[tuple[tuple[int, str], ...], tuple[int, ...]]:
    """The columns one value in every row of ``chunk``: those written into the statement
    as a literal (with it), and the `_SHARED` ones bound once for the chunk. Bound row by
    row, None and bool each took the driver an adapter lookup (~1.3 k instructions a
    value), a text ~0.9 k (copied into a fresh allocation under the connection's mutex);
    the whole check is a few C calls a column per chunk."""
    found: list[tuple[int, str]] = []
    shared: list[int] = []
    for column in sorted(set(checked.nullable + checked.flags + checked.words + checked.shared)):
        values = chunk[column::width]
        first = values[0]
        if column in checked.words:
            if values.count(first) == count and type(first) is str and _WORD.fullmatch(first):
                found.append((column, f"'{first}'"))
        elif column in checked.nullable and values.count(None) == count:
            found.append((column, "NULL"))
        elif column in checked.flags and values.count(True) == count:
            found.append((column, "1"))
        elif column in checked.flags and values.count(False) == count:
            found.append((column, "0"))
        elif column in checked.shared and count > 1 and values.count(first) == count:
            shared.append(column)
    return tuple(found), tuple(shared)


@lru_cache(maxsize=64)
def _multi_insert(
    head: str,
    width: int,
    count: int,
    literals: tuple[tuple[int, str], ...],
    shared: tuple[int, ...],
) -> str:
    """``count`` rows of ``width`` columns: literals written in, ``shared`` columns the
    parameters ?1, ?2… (in column order), the others numbered on, row after row."""
    marks: list[str | None] = [None] * width
    for column, literal in literals:
        marks[column] = literal
    if not shared:
        group = f"({', '.join(mark or '?' for mark in marks)})"
        return f"{head} VALUES {', '.join([group] * count)}"
    for number, column in enumerate(shared, 1):
        marks[column] = f"?{number}"
    rows = []
    number = len(shared)
    for _ in range(count):
        row = []
        for mark in marks:
            if mark is None:
                number += 1
                mark = f"?{number}"
            row.append(mark)
        rows.append(f"({', '.join(row)})")
    return f"{head} VALUES {', '.join(rows)}"


_DAILY = cast(Table, UsageDaily.__table__)
_KEYS = cast(Table, ProxyKey.__table__)
# Roll-up sums and the record column each one adds up.
_SUMS = {
    name: _COLUMN[column]
    for name, column in (
        ("input_tokens", "input_tokens"),
        ("output_tokens", "output_tokens"),
        ("cache_read_tokens", "cache_read_tokens"),
        ("cache_write_tokens", "cache_write_tokens"),
        ("latency_ms_total", "latency_ms"),
    )
}
_TOTAL_COLUMNS = ("requests", "errors", *_SUMS)
_BUCKET = ("day", "key_name", "model", "upstream")  # uq_usage_daily_bucket's columns


@lru_cache(maxsize=4)
def _add_to_day(dialect: str) -> Executable:
    """The roll-up's statement: a bucket's row made, or the batch's totals added to it.

    One statement, not an UPDATE and then an INSERT when nothing was updated: two
    processes on one PostgreSQL database that both found a new bucket missing both
    inserted it, and one of them hit uq_usage_daily_bucket (audit finding 2). Here the
    second waits for the first to commit and then adds to its row. Built once per
    dialect: built per batch, statements were ~5.8 M instructions a batch (the ORM's
    expressions, then its "evaluate" pass over them).
    """
    # Both dialects the gateway runs on have it (SQLite since 3.24), each its own construct.
    stmt = postgresql.insert(_DAILY) if dialect == "postgresql" else sqlite.insert(_DAILY)
    return stmt.on_conflict_do_update(
        index_elements=[_DAILY.c[name] for name in _BUCKET],
        set_={name: _DAILY.c[name] + stmt.excluded[name] for name in _TOTAL_COLUMNS},
    )


_TOUCH_KEY = (
    update(_KEYS)
    .where(_KEYS.c.id == bindparam("b_id"))
    .where(_KEYS.c.last_used_at.is_(None) | (_KEYS.c.last_used_at < bindparam("b_when")))
    .values(last_used_at=bindparam("b_when"))
)


def insert_events(session: Session, records: Sequence[UsageRecord]) -> None:
    """Insert a batch, add it to the daily roll-up, and bump keys' ``last_used_at``.

    Synchronous on purpose: the recorder runs it in its own writer thread, so
    neither the ORM's work nor the database's wait touches the event loop.

    The roll-up and ``last_used_at`` are written under a savepoint: when the database
    refuses them (a total past its column, a constraint), the raw rows are still
    committed and the refusal logged. Otherwise the writer would retry the batch row by
    row, each refused again for the same bucket, and drop them all. Any other error (the
    connection lost, a lock timeout) leaves the whole batch to the recorder's retry.
    """
    if not records:
        return
    conn = session.connection()
    columns = list(zip(*records, strict=True))
    _insert_rows(conn, records, columns)
    try:
        with session.begin_nested():
            # The savepoint is set when the nested transaction's connection is asked for.
            _add_to_rollup(session.connection(), records, columns)
    except (DataError, IntegrityError) as exc:
        log.error(
            "usage roll-up refused; its %d events are kept, the daily totals miss them: %s",
            len(records),
            exc,
        )


def _add_to_rollup(
    conn: Connection, records: Sequence[UsageRecord], columns: list[tuple[Any, ...]]
) -> None:
    """The batch's totals added to ``usage_daily`` and its keys' ``last_used_at`` moved on.

    Rows are locked in one order, buckets then key ids sorted, so two processes writing
    the same buckets at once wait for each other rather than deadlock."""
    buckets = sorted(_buckets(records, columns).items(), key=itemgetter(0))
    conn.execute(
        _add_to_day(conn.dialect.name),
        [
            dict(zip(_BUCKET, bucket, strict=True)) | _totals(columns, rows)
            for bucket, rows in buckets
        ],
    )
    for key_id, when in sorted(_last_used(records, columns).items()):
        conn.execute(_TOUCH_KEY, {"b_id": key_id, "b_when": when})


_Bucket = tuple[date, str, str, str]
_TIME, _KEY_ID = _COLUMN["time"], _COLUMN["key_id"]
_BUCKET_COLUMNS = (_COLUMN["key_name"], _COLUMN["requested_model"], _COLUMN["upstream"])


def _buckets(
    records: Sequence[UsageRecord], columns: list[tuple[Any, ...]]
) -> Mapping[_Bucket, list[int] | None]:
    """The batch's rows by roll-up bucket (day, key, model, upstream), as row numbers (None:
    every row). Under load a batch is often one bucket: told by a few counts in C instead
    of a look at every row. Otherwise rows are grouped from the columns (a bucket made
    from each record's attributes, and a record list a bucket, were ~2 k instructions a
    row more, with three keys taking turns)."""
    first, times = records[0], columns[_TIME]
    day = min(times).date()
    one_day = day == max(times).date()
    if one_day and all(columns[c].count(first[c]) == len(records) for c in _BUCKET_COLUMNS):
        return {_bucket(day, first.key_name, first.requested_model, first.upstream): None}
    days = [day] * len(times) if one_day else [when.date() for when in times]
    found: dict[tuple[Any, ...], list[int]] = {}
    for at, seen in enumerate(zip(days, *(columns[c] for c in _BUCKET_COLUMNS), strict=True)):
        rows = found.get(seen)
        if rows is None:
            found[seen] = [at]
        else:
            rows.append(at)
    out: dict[_Bucket, list[int]] = {}
    for seen, rows in found.items():
        bucket = _bucket(*seen)
        merged = out.setdefault(bucket, rows)  # None and "" are one bucket
        if merged is not rows:
            out[bucket] = merged + rows
    return out


def _bucket(day: date, key_name: str | None, model: str | None, upstream: str | None) -> _Bucket:
    return day, key_name or "", model or "", upstream or ""


def _last_used(
    records: Sequence[UsageRecord], columns: list[tuple[Any, ...]]
) -> dict[int, datetime]:
    """Each key's latest request in the batch."""
    key_ids, times = columns[_KEY_ID], columns[_TIME]
    first = records[0].key_id
    if key_ids.count(first) == len(records):
        return {} if first is None else {first: max(times)}
    latest: dict[int, datetime] = {}
    for key_id, when in zip(key_ids, times, strict=True):
        if key_id is not None and (key_id not in latest or latest[key_id] < when):
            latest[key_id] = when
    return latest


def _totals(columns: list[tuple[Any, ...]], rows: list[int] | None) -> dict[str, Any]:
    """The sums of a roll-up bucket's ``rows`` (None: all) from the batch's columns, each
    in C (seven generator sums over the rows were ~5 k instructions a row)."""
    pick: Callable[[tuple[Any, ...]], tuple[Any, ...]]
    if rows is None:
        pick = _whole
    elif len(rows) > 1:
        pick = itemgetter(*rows)
    else:
        pick = itemgetter(slice(rows[0], rows[0] + 1))  # a tuple of one, as for more
    statuses = pick(columns[_COLUMN["status"]])
    totals: dict[str, Any] = {
        "requests": len(statuses),
        "errors": len(statuses) - statuses.count(OK),
    }
    for name, column in _SUMS.items():
        totals[name] = sum(pick(columns[column]))
    return totals


def _whole(column: tuple[Any, ...]) -> tuple[Any, ...]:
    return column


_EXPORT_ORDER = (UsageEvent.time, UsageEvent.id)


def export_page(
    flt: UsageFilter, after: tuple[datetime, int] | None, limit: int
) -> Select[*tuple[Any, ...]]:
    """One keyset page of the export: the filter's rows past ``after`` (the last row's time
    and id), oldest first, the id breaking ties in time.

    Paged on (time, id), not on the id alone: every filter's ``(column, time)`` index (or
    ``ix_usage_events_time``) then hands the rows over in that order, and a page stops
    after ``limit`` rows. Paged on the id, a key's or a model's page sorted all of its
    remaining rows again, and exporting one key's rows took time quadratic in their
    number (audit finding 4)."""
    stmt = flt.apply(select(*_EXPORT_SELECT))
    if after is not None:
        stmt = stmt.where(tuple_(*_EXPORT_ORDER) > after)
    return stmt.order_by(*_EXPORT_ORDER).limit(limit)


async def iter_export_pages(
    session: AsyncSession, flt: UsageFilter, *, page_size: int = 1000
) -> AsyncIterator[list[ExportedEvent]]:
    """The export's rows in keyset pages (`export_page`), so memory stays flat; each row
    goes through `export_row` (or `csv_rows`) to become what is exported."""
    after: tuple[datetime, int] | None = None
    make = ExportedEvent._make
    while True:
        result = await session.execute(export_page(flt, after, page_size))
        rows = [make(row) for row in result]
        if not rows:
            return
        yield rows
        after = (rows[-1].time, rows[-1].id)


async def iter_export(
    session: AsyncSession, flt: UsageFilter, *, page_size: int = 1000
) -> AsyncIterator[dict[str, Any]]:
    """Export rows oldest first (`iter_export_pages`), each an `export_row`."""
    async for rows in iter_export_pages(session, flt, page_size=page_size):
        for row in rows:
            yield export_row(row)


async def count_events(session: AsyncSession, flt: UsageFilter | None = None) -> int:
    stmt = select(func.count(UsageEvent.id))
    if flt is not None:
        stmt = flt.apply(stmt)
    return int(await session.scalar(stmt) or 0)


def delete_older_than(session: Session, cutoff: datetime, *, batch: int = 500) -> int:
    """Delete one batch of raw events older than ``cutoff``; returns how many went.

    Called repeatedly (each in its own short transaction, in the writer thread) so
    a large purge never holds the write lock for long. Roll-ups are kept.
    """
    ids = list(session.scalars(select(UsageEvent.id).where(UsageEvent.time < cutoff).limit(batch)))
    if ids:
        session.execute(delete(UsageEvent).where(UsageEvent.id.in_(ids)))
    return len(ids)
