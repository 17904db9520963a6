"""One upstream's keys in the admin's rotation order, with cooldowns and auto-disable.

``ordered`` tries the first healthy key first; ``round_robin`` starts one further
along each request. A 429 cools a key down for ``retry-after`` (or a default),
5xx, timeouts and connection errors cool it briefly (tried all the same when no key is
healthy), a 401 disables it until an admin re-enables it, a 403 leaves it as it was.
Every change is reported through ``on_change`` so it can be persisted and shown in the
dashboard, and logged (the key by label or last four characters, never whole).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

log = logging.getLogger(__name__)

RATE_LIMIT_COOLDOWN = 30.0
FAILURE_COOLDOWN = 5.0
MAX_COOLDOWN = 3600.0


@dataclass(slots=True)
class KeyState:
    """One key's live state. ``secret`` is None for keyless upstreams (local servers)."""

    id: int | None
    secret: str | None
    label: str = ""
    enabled: bool = True
    disabled_reason: str | None = None
    disabled_at: float | None = None
    cooldown_until: float = 0.0
    last_error: str | None = None
    last_error_at: float | None = None
    requests: int = 0
    errors: int = 0
    rate_limited: bool = False  # cooling after a 429: out until its retry-after

    @property
    def last4(self) -> str:
        return self.secret[-4:] if self.secret and len(self.secret) > 4 else ""

    @property
    def display(self) -> str:
        """How logs and usage records name the key: label or ``…last4``, never the secret."""
        if self.secret is None:
            return ""
        return self.label or ("…" + self.last4)

    def state(self, now: float) -> str:
        if not self.enabled:
            return "disabled"
        if self.cooldown_until > now:
            return "cooling"
        return "active"


# How a disable the gateway made itself (a 401) starts its reason; an admin's does not.
AUTO_DISABLED = "HTTP "


def disabled_automatically(reason: str | None) -> bool:
    return reason is not None and reason.startswith(AUTO_DISABLED)


class KeyRing:
    """The rotation of one upstream's keys."""

    def __init__(
        self,
        keys: Iterable[KeyState],
        rotation: str = "ordered",
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[KeyState], None] | None = None,
        name: str = "",
    ) -> None:
        self.name = name  # the upstream's, for the log
        self.keys = list(keys) or [KeyState(id=None, secret=None)]
        self.rotation = rotation
        self._clock = clock
        self._cursor = 0
        self._on_change = on_change

    def _changed(self, key: KeyState) -> None:
        if self._on_change is not None and key.id is not None:
            self._on_change(key)

    def candidates(self, *, last_resort: bool = False) -> list[KeyState]:
        """Healthy keys in the order to try them for one request (``last_resort``: the keys
        a failure cooled, not a 429, soonest back first: for when no key is healthy)."""
        now = self._clock()
        if last_resort:
            cooling = [
                k for k in self.keys if k.enabled and k.cooldown_until > now and not k.rate_limited
            ]
            return sorted(cooling, key=lambda k: k.cooldown_until)
        healthy = [k for k in self.keys if k.enabled and k.cooldown_until <= now]
        if self.rotation == "round_robin" and len(healthy) > 1:
            start = self._cursor % len(healthy)
            self._cursor += 1
            healthy = healthy[start:] + healthy[:start]
        return healthy

    def soonest_recovery(self) -> float | None:
        """Seconds until the first cooling key is usable again (None if none is cooling)."""
        now = self._clock()
        waits = [k.cooldown_until - now for k in self.keys if k.enabled and k.cooldown_until > now]
        return max(min(waits), 0.0) if waits else None

    def mark_success(self, key: KeyState) -> None:
        key.requests += 1
        key.cooldown_until = 0.0  # a cooling key tried as a last resort answered
        self._changed(key)

    def _fail(
        self, key: KeyState, message: str, cooldown: float, *, rate_limited: bool = False
    ) -> None:
        now = self._clock()
        was_cooling = key.cooldown_until > now
        key.rate_limited = rate_limited
        key.requests += 1
        key.errors += 1
        key.last_error = message[:500]
        key.last_error_at = now
        key.cooldown_until = now + min(max(cooldown, 0.0), MAX_COOLDOWN)
        self._changed(key)
        held = key.cooldown_until - now
        # INFO when the key is set aside (once, not again for each request that finds it
        # cooling), DEBUG otherwise: a failing backend must not log a line a request.
        log.log(
            logging.INFO if held > 0 and not was_cooling else logging.DEBUG,
            "upstream %r key %s: %s%s",
            self.name,
            key.display or "(none)",
            message[:300],
            f" (set aside for {held:g} s)" if held > 0 else "",
        )

    def mark_rate_limited(self, key: KeyState, retry_after: float | None, message: str) -> None:
        cooldown = retry_after if retry_after else RATE_LIMIT_COOLDOWN
        self._fail(key, message, cooldown, rate_limited=True)

    def mark_failed(self, key: KeyState, message: str) -> None:
        self._fail(key, message, FAILURE_COOLDOWN)

    def mark_refused(self, key: KeyState, message: str) -> None:
        """403: this request was not allowed with this key (a model, a beta, a region its
        account lacks): counted as an error, but the key stays in rotation, uncooled."""
        self._fail(key, message, 0)

    def mark_rejected(self, key: KeyState, status: int, message: str) -> None:
        """401: the key itself is bad; disable it until an admin re-enables it (or the
        config file names it again at a restart)."""
        if key.secret is None:
            self._fail(key, message, FAILURE_COOLDOWN)
            return
        self._fail(key, message, 0)
        key.enabled = False
        key.disabled_reason = f"{AUTO_DISABLED}{status}: {message[:300]}"
        key.disabled_at = self._clock()
        self._changed(key)
        log.warning(
            "upstream %r key %s disabled (HTTP %d): an admin must re-enable it",
            self.name,
            key.display,
            status,
        )
