"""UsageRecorder with a fake writer: batching off the event loop, the flush timer,
back-pressure instead of dropping, retries, shutdown, key state and the retention purge."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from app.accounting import UsageRecorder
from app.db.usage import UsageRecord
from app.upstreams.keyring import KeyState
from tests.team.support import START, FakeClock, wait_until

pytestmark = pytest.mark.gen_test(timeout=20)


def event(n: int) -> UsageRecord:
    return UsageRecord(
        time=datetime(2025, 6, 15, 12, 0), request_id=f"req_{n}", client_dialect="openai"
    )


class FakeWriter:
    """Records each batch and the thread it ran on; fails while ``failing`` > 0."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.keys: list[list[tuple[int | None, bool]]] = []
        self.threads: set[str] = set()
        self.failing = 0
        self.calls = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def __call__(self, records: Sequence[UsageRecord], keys: Sequence[KeyState]) -> None:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        if self.failing:
            self.failing -= 1
            raise RuntimeError("database is locked")
        self.batches.append([r.request_id for r in records])
        self.keys.append([(k.id, k.enabled) for k in keys])

    @property
    def written(self) -> list[str]:
        return [rid for batch in self.batches for rid in batch]


async def test_events_are_written_in_batches_by_the_timer_on_the_writer_thread() -> None:
    writer = FakeWriter()
    recorder = UsageRecorder(writer, interval=0.01)
    recorder.start()
    try:
        for n in range(5):
            await recorder.record(event(n))
        await wait_until(lambda: len(writer.written) == 5, "the timer to flush")
        assert writer.written == [f"req_{n}" for n in range(5)]
        assert writer.threads and all(t.startswith("usage-writer") for t in writer.threads)
        assert threading.main_thread().name not in writer.threads
        assert recorder.pending == 0 and recorder.written == 5
    finally:
        await recorder.close()


async def test_one_flush_writes_everything_buffered_as_one_batch() -> None:
    writer = FakeWriter()
    recorder = UsageRecorder(writer, interval=3600)
    for n in range(100):
        await recorder.record(event(n))
    assert writer.calls == 0  # nothing written on the event loop, nothing before a flush
    assert await recorder.flush()
    assert writer.batches == [[f"req_{n}" for n in range(100)]]
    await recorder.close()


async def test_close_writes_what_is_left() -> None:
    writer = FakeWriter()
    recorder = UsageRecorder(writer, interval=3600)
    recorder.start()
    for n in range(3):
        await recorder.record(event(n))
    await recorder.close()
    assert writer.written == ["req_0", "req_1", "req_2"]


async def test_failed_writes_keep_the_events_and_are_retried_in_order() -> None:
    writer = FakeWriter()
    writer.failing = 2
    recorder = UsageRecorder(writer, interval=3600)
    for n in range(3):
        await recorder.record(event(n))
    assert not await recorder.flush()
    await recorder.record(event(3))
    assert not await recorder.flush()
    assert recorder.pending == 4 and recorder.failures == 2
    assert await recorder.flush()
    assert writer.written == ["req_0", "req_1", "req_2", "req_3"]
    assert recorder.pending == 0
    await recorder.close()


async def test_full_buffer_applies_back_pressure_instead_of_dropping() -> None:
    writer = FakeWriter()
    writer.failing = 1
    recorder = UsageRecorder(writer, interval=3600, max_buffer=3)
    for n in range(3):
        await recorder.record(event(n))
    blocked = asyncio.ensure_future(recorder.record(event(3)))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not blocked.done()  # the caller waits for room ...
    assert not await recorder.flush()  # ... still waiting while the database refuses ...
    for _ in range(20):
        await asyncio.sleep(0)
    assert not blocked.done()
    assert recorder.pending == 3
    assert await recorder.flush()  # ... and goes on once a batch is written
    await asyncio.wait_for(blocked, 5)
    assert recorder.pending == 1
    await recorder.close()
    assert writer.written == ["req_0", "req_1", "req_2", "req_3"]


async def test_close_during_a_write_neither_loses_nor_duplicates_events() -> None:
    writer = FakeWriter()
    writer.gate = threading.Event()
    recorder = UsageRecorder(writer, interval=0.01)
    recorder.start()
    for n in range(3):
        await recorder.record(event(n))
    await wait_until(writer.entered.is_set, "the timer's write to start")
    await recorder.record(event(3))
    closing = asyncio.ensure_future(recorder.close())
    for _ in range(20):
        await asyncio.sleep(0)
    writer.gate.set()
    await asyncio.wait_for(closing, 10)
    assert writer.written == ["req_0", "req_1", "req_2", "req_3"]


async def test_key_state_is_written_with_the_next_batch_and_kept_on_failure() -> None:
    writer = FakeWriter()
    writer.failing = 1
    recorder = UsageRecorder(writer, interval=3600)
    key = KeyState(id=7, secret="sk-x")
    recorder.key_changed(key)
    recorder.key_changed(KeyState(id=None, secret=None))  # keyless upstreams have no row
    assert not await recorder.flush()
    key.enabled = False
    recorder.key_changed(key)
    assert await recorder.flush()
    assert writer.keys == [[(7, False)]]
    assert await recorder.flush()
    assert writer.calls == 2  # nothing left to write
    await recorder.close()


class FakePurge:
    def __init__(self, batches: list[int]) -> None:
        self.batches = batches
        self.cutoffs: list[datetime] = []
        self.threads: set[str] = set()

    def __call__(self, cutoff: datetime) -> int:
        self.cutoffs.append(cutoff)
        self.threads.add(threading.current_thread().name)
        return self.batches.pop(0) if self.batches else 0


async def test_retention_purges_in_batches_until_nothing_is_left_then_waits_an_hour() -> None:
    clock = FakeClock()
    purge = FakePurge([500, 500, 7])
    recorder = UsageRecorder(
        FakeWriter(), interval=0.01, purge=purge, retention_days=30, clock=clock
    )
    recorder.start()
    try:
        await wait_until(lambda: len(purge.cutoffs) == 4, "the purge to run")
        expected = datetime.fromtimestamp(START, UTC).replace(tzinfo=None) - timedelta(days=30)
        assert purge.cutoffs == [expected] * 4
        assert all(t.startswith("usage-writer") for t in purge.threads)
        clock.advance(1800)
        await recorder.record(event(1))
        await wait_until(lambda: recorder.pending == 0, "a flush")
        await recorder.flush()
        assert len(purge.cutoffs) == 4  # not again within the hour
        clock.advance(1800)
        await wait_until(lambda: len(purge.cutoffs) == 5, "the next hourly purge")
        assert purge.cutoffs[-1] == expected + timedelta(hours=1)
    finally:
        await recorder.close()


async def test_no_retention_setting_means_no_purge() -> None:
    purge = FakePurge([5])
    recorder = UsageRecorder(FakeWriter(), interval=0.01, purge=purge, retention_days=None)
    recorder.start()
    await recorder.record(event(1))
    await wait_until(lambda: recorder.pending == 0, "a flush")
    await recorder.close()
    assert purge.cutoffs == []


async def test_usage_is_still_written_while_a_long_purge_runs() -> None:
    writer = FakeWriter()
    done = threading.Event()
    batches: list[datetime] = []

    def endless_purge(cutoff: datetime) -> int:
        batches.append(cutoff)
        time.sleep(0.002)
        return 0 if done.is_set() else 500

    recorder = UsageRecorder(writer, interval=0.01, purge=endless_purge, retention_days=1)
    recorder.start()
    try:
        await wait_until(lambda: len(batches) > 2, "the purge to be under way")
        await recorder.record(event(1))
        await wait_until(lambda: writer.written == ["req_1"], "a write during the purge")
    finally:
        done.set()
        await recorder.close()


async def test_close_closes_the_writer_after_its_last_flush_on_its_thread() -> None:
    """The writer's engine is closed (``on_close``) once, after the events left at shutdown
    are written, on the writer's own thread (SQLite connections belong to theirs)."""
    writer = FakeWriter()
    seen: list[tuple[list[str], str]] = []
    recorder = UsageRecorder(
        writer,
        interval=3600,
        on_close=lambda: seen.append((writer.written, threading.current_thread().name)),
    )
    recorder.start()
    for n in range(3):
        await recorder.record(event(n))
    await recorder.close()
    assert len(seen) == 1
    written, thread = seen[0]
    assert written == ["req_0", "req_1", "req_2"]
    assert thread.startswith("usage-writer")
