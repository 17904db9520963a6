"""Noticing an upstream stream that has gone quiet, with one timer per stream.

The gateway sends a keep-alive when an upstream says nothing for a while, and gives up
on one that says nothing for its whole timeout. Wrapping every read in
``asyncio.timeout`` did the first by making and cancelling a timer for each chunk (~8 µs
a chunk, issue 7), and aiohttp's ``sock_read`` timeout did the second the same way.
`SilenceWatch` keeps one timer for the whole stream: each read only notes the time, and
the timer, when it comes due, looks at when the last chunk came and either moves itself
on or interrupts the read in progress.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


class SilenceWatch:
    """Reads for one task; `read` gives None after ``quiet`` seconds without a chunk, and
    raises ``expired()`` after ``limit`` seconds without one (keep-alives do not count);
    a read's own failure is raised as ``errors`` maps it.

    Only a read in progress is interrupted (never the task writing to its client), and
    only when nothing else cancelled the task: a client that leaves still cancels it.
    Interrupting is safe for aiohttp's ``readany``: data that arrives is kept for the
    next read.
    """

    __slots__ = (
        "_loop",
        "_task",
        "_quiet",
        "_limit",
        "_expired",
        "_last",
        "_before",
        "_heard",
        "_reading",
        "_fired",
        "_handle",
        "_errors",
    )

    def __init__(
        self,
        quiet: float,
        limit: float | None = None,
        expired: Callable[[], BaseException] = TimeoutError,
        errors: Callable[[BaseException], BaseException | None] | None = None,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None, "SilenceWatch runs inside a task"
        self._loop = asyncio.get_running_loop()
        self._task = task
        self._quiet = quiet
        self._limit = limit
        self._expired = expired
        self._errors = errors  # what a read's own failures mean (None: as they are)
        self._last = self._heard = self._before = self._loop.time()
        self._reading = False
        self._fired = False
        self._handle: asyncio.TimerHandle | None = self._loop.call_at(self._due(), self._check)

    async def read(self, read_chunk: Callable[[], Awaitable[bytes]]) -> bytes | None:
        """``await read_chunk()``, or None when the upstream was silent for ``quiet`` s."""
        self._reading = True
        try:
            chunk = await read_chunk()
        except asyncio.CancelledError:
            self._reading = False
            if self._fired:
                self._fired = False
                if self._task.uncancel() == 0:
                    now = self._loop.time()
                    if self._limit is not None and now >= self._heard + self._limit:
                        self.close()
                        raise self._expired() from None
                    self._last = now
                    self._arm()
                    return None
            raise
        except Exception as exc:
            self._reading = False
            mapped = self._errors(exc) if self._errors is not None else None
            if mapped is None:
                raise
            raise mapped from None
        self._reading = False
        self._before = self._last
        self._last = self._heard = self._loop.time()
        return chunk

    def still_quiet(self) -> None:
        """The chunk just read gave the client nothing (an upstream keep-alive a translated
        stream drops, half an event): the quiet goes on from before it, so the client still
        gets its heartbeat in time. The upstream was heard all the same."""
        self._last = self._before

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _due(self) -> float:
        due = self._last + self._quiet
        if self._limit is not None:
            due = min(due, self._heard + self._limit)
        return due

    def _arm(self) -> None:
        if self._handle is not None:
            self._handle = self._loop.call_at(self._due(), self._check)

    def _check(self) -> None:
        if self._handle is None or self._task.done():
            return
        if not self._reading:
            # Busy writing to the client: not a silence to cover, nor the upstream's.
            self._last = self._heard = self._loop.time()
        if self._loop.time() < self._due():
            self._arm()
            return
        self._fired = True
        self._task.cancel()
