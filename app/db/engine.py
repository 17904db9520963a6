"""Engine and session setup, URL handling and migrations.

The server uses the async engine (aiosqlite, asyncpg); the CLI and alembic use
a sync engine on the same database. SQLite runs in WAL mode with a busy timeout
so the dashboard can read while usage batches are written. One process at a time
migrates and writes the config file in (`startup_lock`): under an advisory lock on
PostgreSQL, an exclusive ``flock`` on a file beside the database on SQLite.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

ROOT = Path(__file__).resolve().parent.parent.parent
# The PostgreSQL advisory lock held while a process migrates and syncs the config file:
# two `serve` started together on a fresh database both ran the migrations (one died on
# pg_type's unique index) or both inserted the file's upstreams. Any fixed 64-bit number
# does; this one spells "bridgekp".
STARTUP_LOCK_KEY = 0x627269646765_6B70
# SQLite's equivalent: an exclusive flock on the database's name plus this suffix. Python's
# sqlite3 commits each DDL statement as it runs (no transaction), so two first starts on one
# fresh file both found no tables, both ran the migrations, and one died on "table ...
# already exists" (or "duplicate column name").
SQLITE_LOCK_SUFFIX = ".lock"

log = logging.getLogger("bridgekeeper.db")


class DatabaseUnavailableError(Exception):
    """The database cannot be reached or opened; the message is one line, no password."""


_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_SYNC_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}


def _with_driver(url: str, drivers: dict[str, str]) -> str:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if parsed.drivername == backend and backend in drivers:
        parsed = parsed.set(drivername=drivers[backend])
    return parsed.render_as_string(hide_password=False)


def async_url(url: str) -> str:
    """``sqlite:///x.db`` -> ``sqlite+aiosqlite:///x.db``; explicit drivers are kept."""
    return _with_driver(url, _ASYNC_DRIVERS)


def sync_url(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg://``; explicit drivers are kept."""
    parsed = make_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        return parsed.set(drivername="sqlite").render_as_string(hide_password=False)
    if parsed.drivername == "postgresql+asyncpg":
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return _with_driver(url, _SYNC_DRIVERS)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL (None for in-memory or other backends)."""
    parsed = make_url(url)
    if (
        parsed.get_backend_name() != "sqlite"
        or not parsed.database
        or parsed.database == ":memory:"
    ):
        return None
    return Path(parsed.database)


def display_url(url: str) -> str:
    """``url`` with its password masked, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def error_line(exc: BaseException) -> str:
    """The driver's own message of a database error, on one line."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return "; ".join(lines) or type(cause).__name__


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_sync_engine(url: str) -> Engine:
    engine = create_engine(sync_url(url))
    if is_sqlite(url):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    """The async engine and session factory the server shares."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {}
        if not is_sqlite(url):
            kwargs["pool_pre_ping"] = True
        self.engine: AsyncEngine = create_async_engine(async_url(url), **kwargs)
        if is_sqlite(url):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> AsyncSession:
        return self.sessions()

    async def close(self) -> None:
        await self.engine.dispose()


def alembic_config(url: str) -> Any:
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    # The app's URL, which BRIDGEKEEPER_DATABASE_URL must not replace (migrations/env.py).
    cfg.attributes["database_url"] = url
    return cfg


def connect(engine: Engine, url: str | None = None) -> Connection:
    """A connection, or `DatabaseUnavailableError` saying why there is none (naming
    ``url``, the database as the operator gave it, else the engine's)."""
    shown = url or engine.url.render_as_string(hide_password=False)
    try:
        return engine.connect()
    except DBAPIError as exc:
        verb = "open" if is_sqlite(shown) else "connect to"
        raise DatabaseUnavailableError(
            f"cannot {verb} the database {display_url(shown)}: {error_line(exc)}"
        ) from None


def sqlite_lock_path(url: str) -> Path | None:
    """The file `startup_lock` flocks for a SQLite database file (None: in-memory, or not
    SQLite)."""
    path = sqlite_path(url)
    return None if path is None else path.with_name(path.name + SQLITE_LOCK_SUFFIX)


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``path`` (created when missing) until the block ends.

    The file is never deleted: a process that opened it before a deletion would lock
    another inode than one that opened it after. It is opened read-only (flock needs no
    write access), so an admin's `db upgrade` can take a lock file that `serve`'s user
    created."""
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish migrating the database")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # which releases the lock (the process ending does too)


@contextmanager
def startup_lock(url: str) -> Iterator[Connection]:
    """A connection to ``url``, with the start-up lock held until the block ends: migrations
    and the config sync run in one process at a time. On PostgreSQL an advisory lock; on a
    SQLite file an flock on `sqlite_lock_path` (an in-memory database has no other
    process to wait for). A SQLite file (and its folder) is created here when missing."""
    path = sqlite_path(url)
    if path is not None and path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = sqlite_lock_path(url)
    with ExitStack() as stack:
        if lock_path is not None:
            stack.enter_context(_file_lock(lock_path))
        engine = make_sync_engine(url)
        stack.callback(engine.dispose)
        with connect(engine, url) as connection:
            locking = connection.dialect.name == "postgresql"
            if locking:
                key = {"key": STARTUP_LOCK_KEY}
                if not connection.scalar(text("SELECT pg_try_advisory_lock(:key)"), key):
                    log.info("waiting for another process to finish migrating the database")
                    connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
                connection.commit()  # the lock is the session's: it outlives the transaction
            try:
                yield connection
            finally:
                if locking:
                    # Unlocked by closing the connection at worst (engine.dispose, on the way out).
                    with suppress(DBAPIError):
                        connection.rollback()
                        connection.execute(text("SELECT pg_advisory_unlock(:key)"), key)
                        connection.commit()


def upgrade(url: str, connection: Connection | None = None) -> None:
    """``alembic upgrade head`` on ``url`` (blocking: call it outside the event loop), on
    ``connection`` when given (one `startup_lock` holds), else under a lock of its own."""
    from alembic import command

    if connection is None:
        with startup_lock(url) as locked:
            upgrade(url, locked)
        return
    cfg = alembic_config(url)
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
    connection.commit()
