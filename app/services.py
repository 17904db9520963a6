"""The running gateway's shared parts, built once at start-up and handed to handlers.

`Services.reload` re-reads keys, upstreams and routes from the database into the
in-memory tables the hot path uses; the dashboard calls it after every change.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy.orm import Session

from app.accounting import RateLimiter, UsageRecorder
from app.auth import KeyTable
from app.db.catalog import load_catalog, save_key_states
from app.db.engine import Database, make_sync_engine
from app.db.keys import load_key_records
from app.db.usage import UsageRecord, delete_older_than, insert_events
from app.routing import Router, RouteSettings
from app.secretbox import SecretBox
from app.settings import Settings
from app.upstreams.keyring import KeyState
from app.upstreams.pool import UpstreamPool


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
    clock: Callable[[], float] = time.time
    started_at: float = field(default_factory=time.time)
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), UTC).replace(tzinfo=None)

    async def reload(self) -> None:
        """Re-read keys, upstreams and routes into memory."""
        async with self._reload_lock:
            async with self.db.session() as session:
                records = await load_key_records(session)
                catalog = await load_catalog(session, self.secrets)
            self.keys.replace(records)
            self.pool.update(catalog.upstreams, catalog.keys)
            s = self.settings
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

    async def close(self) -> None:
        await self.recorder.close()
        await self.pool.close()
        await self.db.close()


def make_writer(database_url: str) -> tuple[
    Callable[[Sequence[UsageRecord], Sequence[KeyState]], None], Callable[[datetime], int]
]:
    """The recorder's batch writer and retention purge, on a sync engine of their own."""
    engine = make_sync_engine(database_url)

    def write(records: Sequence[UsageRecord], keys: Sequence[KeyState]) -> None:
        with Session(engine) as session, session.begin():
            insert_events(session, records)
            save_key_states(session, keys)

    def purge(cutoff: datetime) -> int:
        with Session(engine) as session, session.begin():
            return delete_older_than(session, cutoff)

    return write, purge

