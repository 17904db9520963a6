"""The running gateway's shared parts, built once at start-up and handed to handlers.

`Services.reload` re-reads keys, upstreams and routes from the database into the
in-memory tables the hot path uses; the dashboard calls it after every change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from app.accounting import RateLimiter, UsageRecorder
from app.auth import KeyRecord, KeyTable, hash_key, presented_key, second_key
from app.db.catalog import load_catalog, save_key_states
from app.db.engine import Database, make_sync_engine
from app.db.keys import get_key_by_hash, keys_fingerprint, load_key_records, to_record
from app.db.usage import UsageRecord, delete_older_than, insert_events
from app.errors import UnauthorizedError
from app.metrics import Metrics
from app.routing import Router, RouteSettings
from app.secretbox import SecretBox
from app.settings import Settings
from app.upstreams.keyring import KeyState
from app.upstreams.model_lists import ModelLists
from app.upstreams.pool import UpstreamPool

_EPOCH = datetime(1970, 1, 1)  # naive UTC, as every stored time
log = logging.getLogger("bridgekeeper.services")
KEY_REFRESH_SECONDS = 0.5
MISS_TTL = 5.0


@dataclass
class Services:
    """Everything a handler may need; no module-level state anywhere else."""

    settings: Settings
    db: Database
    secrets: SecretBox
    keys: KeyTable
    router: Router
    pool: UpstreamPool
    limiter: RateLimiter
    recorder: UsageRecorder
    metrics: Metrics
    clock: Callable[[], float] = time.time
    cookie_secret: str = ""
    started_at: float = field(default_factory=time.time)
    inflight: set[asyncio.Task[Any]] = field(default_factory=set)
    model_lists: ModelLists = field(default_factory=ModelLists)  # /v1/models' backend names
    # Shutdown's grace is over: what is cancelled now is cut by the gateway, not the client.
    stopping: bool = False
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    _misses: dict[str, float] = field(default_factory=dict)
    _fingerprint: tuple[Any, ...] | None = None
    _refresher: asyncio.Task[None] | None = None
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def now(self) -> datetime:
        """The clock as a naive UTC datetime (~1 µs; ``fromtimestamp(…, UTC)`` took ~8)."""
        return _EPOCH + timedelta(seconds=self.clock())

    async def reload(self) -> None:
        """Re-read keys, upstreams and routes into memory."""
        async with self._reload_lock:
            # Live key state first (an automatic disable not written yet would otherwise
            # be read back as enabled and switched on again).
            await self.recorder.flush()
            async with self.db.session() as session:
                # Read before the keys: a change in between shows as a difference next time.
                fingerprint = await keys_fingerprint(session)
                records = await load_key_records(session)
                catalog = await load_catalog(session, self.secrets)
            self.keys.replace(records)
            # The baseline is what was loaded: a key revoked before the first poll must
            # still count as a change (with None as baseline it never would).
            self._fingerprint = fingerprint
            self.pool.update(catalog.upstreams, catalog.keys)
            s = self.settings
            if s.echo_default and any(u.kind != "echo" for u in catalog.upstreams):
                s = self.settings = s.without_echo_default()  # one added in the dashboard
            self.router = Router(
                catalog.routes,
                [u.name for u in catalog.upstreams],
                default_upstream=s.default_upstream
                if s.default_upstream in {u.name for u in catalog.upstreams}
                else None,
                default_model=s.default_model,
                defaults=RouteSettings(
                    temperature=s.default_temperature, max_tokens=s.default_max_tokens
                ),
            )

    async def authenticate_headers(self, headers: Mapping[str, str]) -> KeyRecord:
        """The record of the proxy key a request carries (`presented_key`; when that one is
        refused, a different ``x-api-key`` beside it)."""
        try:
            return await self.authenticate(presented_key(headers))
        except UnauthorizedError:
            other = second_key(headers)
            if other is None:
                raise
            return await self.authenticate(other)

    async def authenticate(self, key: str | None) -> KeyRecord:
        """The key's record; a key created by the CLI since the last refresh is looked up once.

        Unknown keys are remembered for a few seconds so a client retrying a bad
        key cannot turn every request into a database read.
        """
        try:
            return self.keys.authenticate(key, self.now)
        except UnauthorizedError:
            if not key:
                raise
            digest = hash_key(key)
            if digest in self.keys:
                raise
            now = self.clock()
            if self._misses.get(digest, 0.0) > now:
                raise
            try:
                async with self.db.session() as session:
                    row = await get_key_by_hash(session, digest)
            except (SQLAlchemyError, OSError) as exc:
                # The database is down: a key not in memory cannot be checked, which is the
                # client's 401, never a 500; keys already known keep working.
                log.warning("key lookup failed, treating the key as unknown: %s", exc)
                row = None
            if row is None:
                if len(self._misses) > 10000:
                    self._misses.clear()
                self._misses[digest] = now + MISS_TTL
                raise
            self.keys.add(to_record(row))
            return self.keys.authenticate(key, self.now)

    def start_refresh(self, interval: float = KEY_REFRESH_SECONDS) -> None:
        """Poll for key changes made outside this process (the CLI) every ``interval`` s."""
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop(interval))

    async def _refresh_loop(self, interval: float) -> None:
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), interval)
                return
            except TimeoutError:
                pass
            try:
                async with self.db.session() as session:
                    fingerprint = await keys_fingerprint(session)
                if fingerprint != self._fingerprint:
                    async with self.db.session() as session:
                        self.keys.replace(await load_key_records(session))
                    self._fingerprint = fingerprint
            except Exception as exc:  # a busy or unreachable database: keep serving from memory
                log.warning("key refresh failed: %s", exc)

    async def close(self) -> None:
        if self._refresher is not None:
            # Told to stop and waited for, never cancelled: a query cancelled halfway
            # leaves the database driver's thread to answer a loop that may be gone.
            self._stopping.set()
            await self._refresher
            self._refresher = None
        await self.recorder.close()
        await self.pool.close()
        await self.db.close()


# What a database says of a row it will not take, as opposed to being out of reach. SQLite's
# driver refuses an integer past 64 bits with a bare OverflowError, no DBAPI error.
_REFUSED = (DataError, IntegrityError, OverflowError)


def make_writer(
    database_url: str,
) -> tuple[
    Callable[[Sequence[UsageRecord], Sequence[KeyState]], None],
    Callable[[datetime], int],
    Callable[[], None],
]:
    """The recorder's batch writer, retention purge and close (the engine's connections
    closed: left to the garbage collector, PostgreSQL's warn that they were never closed),
    on a sync engine of their own."""
    engine = make_sync_engine(database_url)

    def write(records: Sequence[UsageRecord], keys: Sequence[KeyState]) -> None:
        try:
            with Session(engine) as session, session.begin():
                insert_events(session, records)
                save_key_states(session, keys)
        except _REFUSED as exc:
            # A row the database refuses must not hold back the rest for good (the batch
            # is kept and retried while the database is unreachable): rows one by one,
            # dropping only those refused again.
            log.error("usage batch refused (%s): writing its %d rows one by one", exc, len(records))
            for record in records:
                try:
                    with Session(engine) as session, session.begin():
                        insert_events(session, [record])
                except _REFUSED as row_exc:
                    log.error("usage event %s dropped: %s", record.request_id, row_exc)
            with Session(engine) as session, session.begin():
                save_key_states(session, keys)

    def purge(cutoff: datetime) -> int:
        with Session(engine) as session, session.begin():
            return delete_older_than(session, cutoff)

    return write, purge, engine.dispose
