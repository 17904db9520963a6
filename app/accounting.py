"""Rate limits (RPM/TPM per proxy key) and the buffered usage recorder.

Limits are exact within one process: a sliding 60-second window of admitted
requests and of tokens (an estimate reserved at admission, trued up with the
upstream's real usage when the request ends). The recorder buffers usage
events in memory and writes them in batches from one writer thread, so the
event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from app.auth import KeyRecord
from app.db.usage import UsageRecord
from app.errors import RateLimitedError
from app.upstreams.keyring import KeyState

log = logging.getLogger("bridgekeeper.accounting")
WINDOW = 60.0


@lru_cache(maxsize=256)
def _rfc3339_second(second: int) -> str:
    """A reset time as RFC 3339, ``second`` being whole seconds since the epoch (reset
    times are after it: ``int`` floors them). strftime costs ~15 µs and Anthropic-dialect
    replies carry two of these per request; reset times repeat for a whole second."""
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    """OpenAI's reset format: ``"1s"``, ``"6m0s"``, ``"12ms"``."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    return _whole_seconds(int(seconds + 0.999))


@lru_cache(maxsize=128)
def _whole_seconds(whole: int) -> str:
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


@dataclass(slots=True)
class _Window:
    """One key's last minute: admission times, and token charges as two parallel deques of
    floats. Not a list per charge: a busy key holds a minute of requests (120,000 at
    2,000 a second), and that many lists cost the garbage collector (issue 7: a full
    window made every request dearer than an empty one) where floats cost it nothing.

    It also holds the key's limits as of the record ``key`` (a key changed in the
    dashboard or CLI arrives as a new record: the limits are taken again, the history
    kept) and its header names in each dialect, so an admission looks nothing up."""

    requests: deque[float] = field(default_factory=deque)
    times: deque[float] = field(default_factory=deque)  # each charge's time
    amounts: deque[float] = field(default_factory=deque)  # and its tokens (0 once taken back)
    first: int = 0  # the number of the charge at times[0]: charges are numbered in order
    # Running sum of ``amounts``: summing the deque per request was O(requests in the window).
    total: float = 0.0
    key: KeyRecord | None = None
    rpm: int | None = None
    tpm: int | None = None
    names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def expire(self, now: float) -> None:
        cutoff = now - WINDOW
        requests = self.requests
        while requests and requests[0] <= cutoff:
            requests.popleft()
        self.expire_charges(cutoff)

    def expire_charges(self, cutoff: float) -> None:
        times, amounts = self.times, self.amounts
        while times and times[0] <= cutoff:
            times.popleft()
            self.total -= amounts.popleft()
            self.first += 1

    def used_tokens(self) -> int:
        return int(self.total)


@dataclass(slots=True)
class Admission:
    """A request let in: its token reservation and the limit headers to send."""

    window: _Window | None
    charge: int | None  # the reservation's number in its key's window
    headers: dict[str, str]


class RateLimiter:
    """Per-key RPM and TPM over a sliding 60-second window."""

    def __init__(
        self,
        *,
        default_rpm: int | None = None,
        default_tpm: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._default_rpm = default_rpm
        self._default_tpm = default_tpm
        self._clock = clock
        self._windows: dict[int, _Window] = {}

    def limits(self, key: KeyRecord) -> tuple[int | None, int | None]:
        rpm = key.rpm if key.rpm is not None else self._default_rpm
        tpm = key.tpm if key.tpm is not None else self._default_tpm
        return (rpm or None), (tpm or None)

    def _window(self, key: KeyRecord) -> _Window:
        """``key``'s window, its limits and header names taken from this record."""
        window = self._windows.get(key.id)
        if window is None:
            window = self._windows[key.id] = _Window()
        window.key = key
        window.rpm, window.tpm = self.limits(key)
        window.names = {
            dialect: _header_names(dialect, "requests", window.rpm or 0)
            + _header_names(dialect, "tokens", window.tpm or 0)
            for dialect in ("anthropic", "openai")
        }
        return window

    def admit(self, key: KeyRecord, estimate: int, dialect: str) -> Admission:
        """Count the request and reserve ``estimate`` tokens, or raise RateLimitedError.

        The common path is written out in one function: it runs for every request, and
        each call it made (expiry, charge, headers, their caches) was a few hundred
        instructions of a limiter that cost 3% of a request."""
        window = self._windows.get(key.id)
        if window is None or window.key is not key:
            window = self._window(key)
        rpm, tpm = window.rpm, window.tpm
        if rpm is None and tpm is None:
            return Admission(None, None, {})
        now = self._clock()
        cutoff = now - WINDOW
        requests = window.requests
        while requests and requests[0] <= cutoff:
            requests.popleft()
        times = window.times
        if times and times[0] <= cutoff:
            window.expire_charges(cutoff)
        used = int(window.total)
        if rpm is not None and len(requests) >= rpm:
            wait = requests[0] + WINDOW - now
            raise self._refuse(
                f"Rate limit reached: {rpm} requests per minute for key {key.name!r}",
                wait,
                window,
                used,
                dialect,
                now,
            )
        if tpm is not None and used > 0 and used + estimate > tpm:
            wait = self._token_wait(window, tpm, estimate, now)
            raise self._refuse(
                f"Rate limit reached: {tpm} tokens per minute for key {key.name!r} "
                f"({used} used in the last minute, about {estimate} requested)",
                wait,
                window,
                used,
                dialect,
                now,
            )
        requests.append(now)
        if tpm is None:
            return Admission(window, None, _headers(dialect, window, used, now))
        times.append(now)
        window.amounts.append(float(estimate))
        window.total += estimate
        charge = window.first + len(times) - 1
        return Admission(window, charge, _headers(dialect, window, used + estimate, now))

    def settle(self, admission: Admission, actual_tokens: int) -> None:
        """Replace the reservation with what the request really used, charged as of now.

        Charged when the request ends rather than at admission: a stream longer than
        the window would otherwise cost nothing, its reservation having expired.
        """
        charge = admission.charge
        window = admission.window
        if charge is None or window is None:
            return
        admission.charge = None
        at = charge - window.first
        amounts = window.amounts
        if at >= 0:  # still in the window: take the reservation back
            window.total -= amounts[at]
            amounts[at] = 0.0
        if actual_tokens > 0:
            window.times.append(self._clock())
            amounts.append(float(actual_tokens))
            window.total += actual_tokens

    def _token_wait(self, window: _Window, tpm: int, estimate: int, now: float) -> float:
        remaining: float = window.used_tokens() + estimate - tpm
        for when, tokens in zip(window.times, window.amounts, strict=True):
            remaining -= tokens
            if remaining <= 0:
                return when + WINDOW - now
        return WINDOW

    def _refuse(
        self,
        message: str,
        wait: float,
        window: _Window,
        used: int,
        dialect: str,
        now: float,
    ) -> RateLimitedError:
        headers = _headers(dialect, window, used, now)
        return RateLimitedError(message, retry_after=max(wait, 0.001), headers=headers)


def _headers(dialect: str, window: _Window, used_tokens: int, now: float) -> dict[str, str]:
    """The limit headers: Anthropic's resets as RFC 3339, OpenAI's as durations, under the
    names the window holds for the dialect (making them was half the limiter's cost)."""
    out: dict[str, str] = {}
    anthropic = dialect == "anthropic"
    (r_limit_name, r_limit, r_left_name, r_reset_name, t_limit_name, t_limit, t_left_name,
     t_reset_name) = window.names[dialect]  # fmt: skip
    rpm = window.rpm
    if rpm is not None:
        requests = window.requests
        reset = requests[0] + WINDOW if requests else now
        out[r_limit_name] = r_limit
        left = rpm - len(requests)
        out[r_left_name] = str(left) if left > 0 else "0"
        out[r_reset_name] = _rfc3339_second(int(reset)) if anthropic else _duration(reset - now)
    tpm = window.tpm
    if tpm is not None:
        times = window.times
        reset = times[0] + WINDOW if times else now
        out[t_limit_name] = t_limit
        left = tpm - used_tokens
        out[t_left_name] = str(left) if left > 0 else "0"
        out[t_reset_name] = _rfc3339_second(int(reset)) if anthropic else _duration(reset - now)
    return out


@lru_cache(maxsize=256)
def _header_names(dialect: str, kind: str, limit: int) -> tuple[str, str, str, str]:
    """A window's limit header name and value, and its remaining and reset header names."""
    if dialect == "anthropic":
        prefix = f"anthropic-ratelimit-{kind}-"
        return f"{prefix}limit", str(limit), f"{prefix}remaining", f"{prefix}reset"
    return (
        f"x-ratelimit-limit-{kind}",
        str(limit),
        f"x-ratelimit-remaining-{kind}",
        f"x-ratelimit-reset-{kind}",
    )


WriteBatch = Callable[[Sequence[UsageRecord], Sequence[KeyState]], None]
PurgeBatch = Callable[[datetime], int]
PURGE_EVERY = 3600.0


class UsageRecorder:
    """Buffers usage events and upstream-key state, written in batches by one thread.

    Flushed at least every ``interval`` seconds and on `close`. When the database
    is busy or unreachable, batches stay in the buffer and are retried; when the
    buffer is full, `record` waits (back-pressure) rather than dropping events.
    """

    def __init__(
        self,
        write: WriteBatch,
        *,
        interval: float = 1.0,
        max_buffer: int = 10000,
        purge: PurgeBatch | None = None,
        retention_days: int | None = None,
        clock: Callable[[], float] = time.time,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self._write = write
        self._on_close = on_close  # run in the writer thread once the last flush is done
        self._interval = interval
        self._max = max_buffer
        self._purge = purge
        self._retention_days = retention_days
        self._clock = clock
        self._buffer: deque[UsageRecord] = deque()
        self._keys: dict[int, KeyState] = {}
        self._space = asyncio.Event()
        self._space.set()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="usage-writer")
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_purge: float | None = None
        self._flush_lock = asyncio.Lock()
        self.written = 0
        self.failures = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def pending(self) -> int:
        return len(self._buffer)

    async def record(self, event: UsageRecord) -> None:
        """Queue one event; waits only while the buffer is full."""
        while len(self._buffer) >= self._max and not self._stopping:
            self._space.clear()
            await self._space.wait()
        self._buffer.append(event)

    def key_changed(self, key: KeyState) -> None:
        if key.id is not None:
            self._keys[key.id] = key

    async def flush(self) -> bool:
        """Write what is buffered now; False when the database refused it (it stays queued)."""
        async with self._flush_lock:
            return await self._flush()

    async def _flush(self) -> bool:
        if not self._buffer and not self._keys:
            return True
        batch = list(self._buffer)
        keys = list(self._keys.values())
        self._keys = {}
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._write, batch, keys)
        except Exception as exc:  # the database's own errors: keep everything, retry later
            self.failures += 1
            for key in keys:
                self._keys.setdefault(key.id or 0, key)
            log.warning("usage write failed (%d events kept for retry): %s", len(batch), exc)
            return False
        for _ in range(len(batch)):
            self._buffer.popleft()
        self.written += len(batch)
        self._space.set()
        return True

    async def _run(self) -> None:
        backoff = self._interval
        while not self._stopping:
            try:
                await asyncio.wait_for(self._wake.wait(), backoff)
            except TimeoutError:
                pass
            if self._stopping:
                return
            ok = await self.flush()
            backoff = self._interval if ok else min(backoff * 2, 30.0)
            if ok:
                await self._maybe_purge()

    async def _maybe_purge(self) -> None:
        if self._purge is None or not self._retention_days:
            return
        now = self._clock()
        if self._last_purge is not None and now - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = now
        cutoff = datetime.fromtimestamp(now, UTC).replace(tzinfo=None) - timedelta(
            days=self._retention_days
        )
        loop = asyncio.get_running_loop()
        try:
            while not self._stopping:
                deleted = await loop.run_in_executor(self._executor, self._purge, cutoff)
                if not deleted:
                    break
                if self._buffer or self._keys:
                    # A first purge of a large table takes a while: usage writes go on
                    # between its batches, or the buffer fills and requests wait.
                    await self.flush()
        except Exception as exc:
            log.warning("usage retention purge failed: %s", exc)

    async def close(self, attempts: int = 5) -> None:
        """Stop the timer and write everything left, retrying a few times."""
        self._stopping = True
        self._space.set()
        self._wake.set()
        if self._task is not None:
            # Not cancelled: a write already handed to the writer thread would carry on
            # regardless, and its batch, still buffered, would be written a second time.
            try:
                await self._task
            except Exception:
                log.exception("usage recorder timer failed")
            self._task = None
        for attempt in range(attempts):
            if await self.flush():
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        if self._buffer:
            log.error("%d usage events could not be written at shutdown", len(self._buffer))
        if self._on_close is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._executor, self._on_close)
            except Exception:
                log.exception("closing the usage writer failed")
        self._executor.shutdown(wait=True)
