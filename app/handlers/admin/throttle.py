"""Sign-in throttling: after too many failures, refuse for a while. Two rules, both in force.

- Per IP and username: 5 failures within 60 s lock that pair for 60 s. It stops one
  client guessing and costs an admin who mistypes a minute.
- Per username, whatever the IP: 20 failures within 10 minutes lock that username for
  10 minutes. Behind a proxy the client's IP is what X-Real-IP / X-Forwarded-For say,
  and a client sets those itself when the proxy passes them on, so the first rule
  alone is dodged by claiming a new address per guess (24 wrong passwords in a row all
  got a 401). This rule holds such guessing to about 20 per 10 minutes per name. While
  it lasts the real admin is refused too (the price of the cap), but the lock always
  ends 10 minutes after it began; a success from one IP does not clear the count, as
  it says nothing about the guesses from the others.

Usernames count case- and whitespace-insensitively ("Admin " is "admin"). Each rule
tracks at most `MAX_TRACKED` keys, so guessing with random names or addresses cannot
grow memory: when full, stale keys are forgotten first, then those least worth keeping
(unlocked before locked, fewest failures first, then the locks ending soonest).

In memory on purpose: a restart forgets it, which costs an attacker a restart
per few guesses, and a small team's gateway runs as one process.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

MAX_TRACKED = 10_000

# Per IP and username.
MAX_FAILURES = 5
WINDOW = 60.0
LOCKOUT = 60.0

# Per username, whatever the IP.
USER_MAX_FAILURES = 20
USER_WINDOW = 600.0
USER_LOCKOUT = 600.0

K = TypeVar("K", bound=Hashable)


@dataclass(slots=True)
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    pending: int = 0  # attempts being checked right now (scrypt runs off the loop)


class _Ledger(Generic[K]):
    """One rule: ``max_failures`` within ``window`` seconds lock a key for ``lockout`` seconds."""

    def __init__(
        self, max_failures: int, window: float, lockout: float, clock: Callable[[], float]
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self._clock = clock
        self.entries: dict[K, _Entry] = {}

    def locked_for(self, key: K) -> float:
        entry = self.entries.get(key)
        if entry is None:
            return 0.0
        return max(entry.locked_until - self._clock(), 0.0)

    def begin(self, key: K) -> float:
        wait = self.locked_for(key)
        if wait:
            return wait
        now = self._clock()
        entry = self._entry(key, now)
        self._forget_old(entry, now)
        if len(entry.failures) + entry.pending >= self.max_failures:
            return 1.0
        entry.pending += 1
        return 0.0

    def end(self, key: K) -> None:
        entry = self.entries.get(key)
        if entry is None:
            return
        entry.pending = max(entry.pending - 1, 0)
        if not entry.pending and not entry.failures and entry.locked_until <= self._clock():
            del self.entries[key]

    def failure(self, key: K) -> float:
        now = self._clock()
        entry = self._entry(key, now)
        entry.failures.append(now)
        self._forget_old(entry, now)
        if len(entry.failures) >= self.max_failures:
            entry.failures.clear()
            entry.locked_until = now + self.lockout
            return self.lockout
        return 0.0

    def success(self, key: K) -> None:
        entry = self.entries.get(key)
        if entry is not None:
            entry.failures.clear()
            if not entry.pending:
                del self.entries[key]

    def _forget_old(self, entry: _Entry, now: float) -> None:
        while entry.failures and entry.failures[0] <= now - self.window:
            entry.failures.popleft()

    def _entry(self, key: K, now: float) -> _Entry:
        entry = self.entries.get(key)
        if entry is None:
            if len(self.entries) >= MAX_TRACKED:
                self._make_room(now)
            entry = self.entries[key] = _Entry()
        return entry

    def _make_room(self, now: float) -> None:
        """Forgets stale keys; then, down to nine tenths full (so a flood does not sort
        the table on every guess), the keys least worth keeping. Lifting a lock this way
        takes `MAX_TRACKED` other keys locked meanwhile: tens of thousands of failed,
        scrypt-checked guesses within one lockout."""
        for key in [key for key, entry in self.entries.items() if self._stale(entry, now)]:
            del self.entries[key]
        excess = len(self.entries) - (MAX_TRACKED - max(MAX_TRACKED // 10, 1))
        if excess <= 0:
            return

        def worth(entry: _Entry) -> tuple[int, float, int]:
            if entry.locked_until > now:
                return 1, entry.locked_until, 0
            return 0, 0.0, len(entry.failures) + entry.pending

        # A stable sort: among equals, the oldest keys go first.
        ranked = sorted(self.entries, key=lambda key: worth(self.entries[key]))
        for key in ranked[:excess]:
            del self.entries[key]

    def _stale(self, entry: _Entry, now: float) -> bool:
        return (
            entry.locked_until <= now
            and not entry.pending
            and (not entry.failures or entry.failures[-1] <= now - self.window)
        )


def _name(username: str) -> str:
    return username.strip().lower()


class LoginThrottle:
    """``max_failures`` within ``window`` seconds lock that IP+username for ``lockout``
    seconds; ``user_max_failures`` within ``user_window`` seconds lock that username, from
    every IP, for ``user_lockout`` seconds."""

    def __init__(
        self,
        *,
        max_failures: int = MAX_FAILURES,
        window: float = WINDOW,
        lockout: float = LOCKOUT,
        user_max_failures: int = USER_MAX_FAILURES,
        user_window: float = USER_WINDOW,
        user_lockout: float = USER_LOCKOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._by_ip: _Ledger[tuple[str, str]] = _Ledger(max_failures, window, lockout, clock)
        self._by_user: _Ledger[str] = _Ledger(user_max_failures, user_window, user_lockout, clock)

    def locked_for(self, ip: str, username: str) -> float:
        """Seconds until this IP may try this username again (0 when it may now)."""
        name = _name(username)
        return max(self._by_ip.locked_for((ip, name)), self._by_user.locked_for(name))

    def begin(self, ip: str, username: str) -> float:
        """Before checking a password: seconds to wait (0 = go ahead; call `end` after).

        Attempts still being checked count against the limits, so a burst of
        parallel guesses gets no more tries than a sequence of them.
        """
        name = _name(username)
        wait = self.locked_for(ip, name)
        if wait:
            return wait
        wait = self._by_ip.begin((ip, name))
        if wait:
            return wait
        wait = self._by_user.begin(name)
        if wait:
            self._by_ip.end((ip, name))
        return wait

    def end(self, ip: str, username: str) -> None:
        """After a check `begin` allowed, whatever its outcome."""
        name = _name(username)
        self._by_ip.end((ip, name))
        self._by_user.end(name)

    def failure(self, ip: str, username: str) -> float:
        """Records a failed attempt; returns the lockout it started (0 when none)."""
        name = _name(username)
        return max(self._by_ip.failure((ip, name)), self._by_user.failure(name))

    def success(self, ip: str, username: str) -> None:
        """Forgets this IP's failures for the username (not the username's from elsewhere)."""
        self._by_ip.success((ip, _name(username)))
