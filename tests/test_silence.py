"""SilenceWatch: one timer per stream that interrupts only a read, only for silence."""

from __future__ import annotations

import asyncio

import pytest

from app.silence import SilenceWatch

pytestmark = pytest.mark.gen_test(timeout=10)

QUIET = 0.05


async def test_a_silent_read_gives_none_and_the_next_read_still_gets_the_data() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    watch = SilenceWatch(QUIET)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await watch.read(queue.get) is None
    assert loop.time() - started >= QUIET * 0.9
    loop.call_later(QUIET / 5, queue.put_nowait, b"late")
    assert await watch.read(queue.get) == b"late"
    # Silences after a keep-alive are measured again from it.
    assert await watch.read(queue.get) is None
    watch.close()


async def test_steady_chunks_are_never_interrupted() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    watch = SilenceWatch(QUIET)
    loop = asyncio.get_running_loop()
    for i in range(12):  # 12 x QUIET/3: four quiet periods in all, never one without data
        loop.call_later(QUIET / 3, queue.put_nowait, b"%d" % i)
        assert await watch.read(queue.get) == b"%d" % i
    watch.close()


async def test_time_spent_outside_a_read_is_not_silence() -> None:
    """The reader may be busy writing to a slow client: that must not be interrupted."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    watch = SilenceWatch(QUIET)
    await asyncio.sleep(QUIET * 4)  # not reading: the watch must leave this alone
    queue.put_nowait(b"x")
    assert await watch.read(queue.get) == b"x"
    watch.close()


async def test_chunks_the_client_never_saw_do_not_end_the_quiet() -> None:
    """The same steady chunks as above, each `still_quiet` (keep-alives a translation
    drops): the client's heartbeat is due all the same."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    watch = SilenceWatch(QUIET)
    loop = asyncio.get_running_loop()
    got: list[bytes | None] = []
    for i in range(12):
        loop.call_later(QUIET / 3, queue.put_nowait, b"%d" % i)
        got.append(chunk := await watch.read(queue.get))
        if chunk is not None:
            watch.still_quiet()
    assert None in got
    watch.close()


async def test_a_real_cancel_still_cancels() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def reader() -> None:
        watch = SilenceWatch(10.0)
        try:
            await watch.read(queue.get)
        finally:
            watch.close()

    task = asyncio.ensure_future(reader())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cancel_that_coincides_with_the_silence_wins() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    outcome: list[str] = []

    async def reader() -> None:
        watch = SilenceWatch(QUIET)
        try:
            result = await watch.read(queue.get)
            outcome.append(f"returned {result!r}")
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise
        finally:
            watch.close()

    task = asyncio.ensure_future(reader())
    loop = asyncio.get_running_loop()
    # The client leaves in the same loop turn as the silence is noticed.
    loop.call_at(loop.time() + QUIET, task.cancel)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]


async def test_close_stops_the_timer() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    watch = SilenceWatch(QUIET)
    watch.close()
    with pytest.raises(TimeoutError):  # a live watch would have answered None at QUIET
        async with asyncio.timeout(QUIET * 4):
            await watch.read(queue.get)
    watch.close()  # twice is fine


class _Expired(Exception):
    pass


async def test_silence_past_the_limit_raises_and_keep_alives_do_not_reset_it() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    watch = SilenceWatch(QUIET, QUIET * 3.5, _Expired)
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcomes = []
    with pytest.raises(_Expired):
        while True:
            outcomes.append(await watch.read(queue.get))
    assert outcomes == [None, None, None]  # a keep-alive at each QUIET, then the limit
    assert loop.time() - started >= QUIET * 3.5 * 0.9
    watch.close()


async def test_a_chunk_restarts_the_limit_and_busy_time_is_not_silence() -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    watch = SilenceWatch(10.0, QUIET * 2, _Expired)
    loop = asyncio.get_running_loop()
    for i in range(6):  # 6 x QUIET: three limits in all, never one without a chunk
        loop.call_later(QUIET, queue.put_nowait, b"%d" % i)
        assert await watch.read(queue.get) == b"%d" % i
    await asyncio.sleep(QUIET * 4)  # writing to a slow client: not the upstream's silence
    queue.put_nowait(b"x")
    assert await watch.read(queue.get) == b"x"
    with pytest.raises(_Expired):
        await watch.read(queue.get)
    watch.close()


async def test_a_reads_own_failure_is_raised_as_mapped() -> None:
    async def broken() -> bytes:
        raise ConnectionResetError("reset by peer")

    async def odd() -> bytes:
        raise KeyError("not mapped")

    def errors(exc: BaseException) -> BaseException | None:
        return _Expired(f"mapped: {exc}") if isinstance(exc, OSError) else None

    watch = SilenceWatch(10.0, None, _Expired, errors)
    with pytest.raises(_Expired, match="mapped: reset by peer"):
        await watch.read(broken)
    with pytest.raises(KeyError):
        await watch.read(odd)
    watch.close()
