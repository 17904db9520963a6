"""Helpers shared by the team-feature tests: an injectable clock, extra fake upstreams,
waiting for the usage writer, and reading what it wrote."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import tornado.ioloop
from sqlalchemy import select

from app.db.models import UpstreamKey, UsageDaily, UsageEvent
from tests.conftest import Live, flushed
from tests.fakes import FakeUpstream

# 2025-06-15T12:00:00Z: far from midnight, so a test that advances a few minutes stays on one day.
START = 1_749_988_800.0


class FakeClock:
    """A wall clock that only moves when the test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeFake = Callable[[str], Awaitable[FakeUpstream]]


@pytest.fixture
def make_fake(io_loop: tornado.ioloop.IOLoop) -> Iterator[MakeFake]:
    """``await make_fake("openai")``: one more fake upstream, stopped after the test."""
    made: list[FakeUpstream] = []

    async def make(dialect: str) -> FakeUpstream:
        fake = await FakeUpstream(dialect).start()
        made.append(fake)
        return fake

    yield make
    for fake in made:
        io_loop.run_sync(fake.stop)


async def wait_until(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """Poll ``condition`` (work happening on other tasks); fail with ``what`` if it never holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def eventually(check: Callable[[], Awaitable[bool]], what: str, limit: float = 10.0) -> None:
    """Like `wait_until` for a condition that needs awaiting (a database read)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def usage_events(live: Live, expected: int | None = None) -> list[UsageEvent]:
    """Every usage event in the database, oldest first (after the buffer is flushed).

    With ``expected``, first waits until that many events were recorded: a cancelled
    request records its event when its task finishes unwinding, a moment after the
    client is gone.
    """
    recorder = live.services.recorder
    if expected is not None:
        await wait_until(
            lambda: recorder.written + recorder.pending >= expected, f"{expected} usage events"
        )
    await flushed(live)
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UsageEvent).order_by(UsageEvent.id)))


async def daily_rows(live: Live) -> list[UsageDaily]:
    await flushed(live)
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UsageDaily).order_by(UsageDaily.id)))


async def upstream_key_rows(live: Live) -> list[UpstreamKey]:
    await flushed(live)
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UpstreamKey).order_by(UpstreamKey.id)))


def auth_of(fake: FakeUpstream) -> list[str]:
    """The upstream key each request to ``fake`` carried, in order."""
    out = []
    for received in fake.received:
        headers = {k.lower(): v for k, v in received.headers.items()}
        if "x-api-key" in headers:
            out.append(headers["x-api-key"])
        else:
            out.append(headers.get("authorization", "").removeprefix("Bearer "))
    return out


def anthropic_body(text: str = "hi", model: str = "team-model", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": text}],
    } | extra


def openai_body(text: str = "hi", model: str = "team-model", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]} | extra
