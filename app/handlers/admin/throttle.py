"""Sign-in throttling: after too many failures for one IP and username, refuse for a while.

In memory on purpose: a restart forgets it, which costs an attacker a restart
per few guesses, and a small team's gateway runs as one process.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_TRACKED = 10_000


@dataclass(slots=True)
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    locked_until: float = 0.0
    pending: int = 0  # attempts being checked right now (scrypt runs off the loop)


class LoginThrottle:
    """``max_failures`` within ``window`` seconds lock that IP+username for ``lockout`` seconds."""

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window: float = 60.0,
        lockout: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.lockout = lockout
        self._clock = clock
        self._entries: dict[tuple[str, str], _Entry] = {}

    @staticmethod
    def _key(ip: str, username: str) -> tuple[str, str]:
        return ip, username.strip().lower()

    def locked_for(self, ip: str, username: str) -> float:
        """Seconds until this IP may try this username again (0 when it may now)."""
        entry = self._entries.get(self._key(ip, username))
        if entry is None:
            return 0.0
        return max(entry.locked_until - self._clock(), 0.0)

    def begin(self, ip: str, username: str) -> float:
        """Before checking a password: seconds to wait (0 = go ahead; call `end` after).

        Attempts still being checked count against the limit, so a burst of
        parallel guesses gets no more tries than a sequence of them.
        """
        wait = self.locked_for(ip, username)
        if wait:
            return wait
        now = self._clock()
        entry = self._entries.setdefault(self._key(ip, username), _Entry())
        while entry.failures and entry.failures[0] <= now - self.window:
            entry.failures.popleft()
        if len(entry.failures) + entry.pending >= self.max_failures:
            return 1.0
        entry.pending += 1
        return 0.0

    def end(self, ip: str, username: str) -> None:
        """After a check `begin` allowed, whatever its outcome."""
        key = self._key(ip, username)
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.pending = max(entry.pending - 1, 0)
        if not entry.pending and not entry.failures and entry.locked_until <= self._clock():
            del self._entries[key]

    def failure(self, ip: str, username: str) -> float:
        """Records a failed attempt; returns the lockout it started (0 when none)."""
        now = self._clock()
        if len(self._entries) >= MAX_TRACKED:
            self._prune(now)
        entry = self._entries.setdefault(self._key(ip, username), _Entry())
        entry.failures.append(now)
        while entry.failures and entry.failures[0] <= now - self.window:
            entry.failures.popleft()
        if len(entry.failures) >= self.max_failures:
            entry.failures.clear()
            entry.locked_until = now + self.lockout
            return self.lockout
        return 0.0

    def success(self, ip: str, username: str) -> None:
        entry = self._entries.get(self._key(ip, username))
        if entry is not None:
            entry.failures.clear()
            if not entry.pending:
                del self._entries[self._key(ip, username)]

    def _prune(self, now: float) -> None:
        stale = [
            key
            for key, entry in self._entries.items()
            if entry.locked_until <= now
            and not entry.pending
            and (not entry.failures or entry.failures[-1] <= now - self.window)
        ]
        for key in stale:
            del self._entries[key]
