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
        self._entries.pop(self._key(ip, username), None)

    def _prune(self, now: float) -> None:
        stale = [
            key
            for key, entry in self._entries.items()
            if entry.locked_until <= now
            and (not entry.failures or entry.failures[-1] <= now - self.window)
        ]
        for key in stale:
            del self._entries[key]
