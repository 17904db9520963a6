"""Each upstream's own model list, as ``GET /v1/models`` shows the names a glob route
passes through (PROTOCOL.md §6.12: a backend's list, with the gateway's own names).

A list is fetched at most every `TTL_SECONDS` per upstream (a failed fetch counts as an
empty list for `FAILED_TTL_SECONDS`), by one request however many clients ask at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from app.errors import GatewayError
from app.upstreams.pool import Upstream

TTL_SECONDS = 300.0
FAILED_TTL_SECONDS = 30.0
log = logging.getLogger(__name__)


class ModelLists:
    """Upstream model ids by upstream, kept for a while."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        # (name, base URL) -> (fresh until, ids); a changed base URL is another list.
        self._kept: dict[tuple[str, str], tuple[float, list[str]]] = {}
        self._fetching: dict[tuple[str, str], asyncio.Task[list[str]]] = {}

    async def ids(self, upstream: Upstream) -> list[str]:
        """The upstream's model ids (empty for one that cannot list them)."""
        spec = upstream.spec
        slot = (spec.name, spec.base_url)
        kept = self._kept.get(slot)
        if kept is not None and kept[0] > self._clock():
            return kept[1]
        task = self._fetching.get(slot)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(upstream, slot))
            self._fetching[slot] = task
            task.add_done_callback(lambda _: self._fetching.pop(slot, None))
        # A caller that stops waiting (its own timeout) leaves the fetch to finish for
        # the next one.
        return await asyncio.shield(task)

    async def _fetch(self, upstream: Upstream, slot: tuple[str, str]) -> list[str]:
        try:
            ids = await upstream.model_ids()
            fresh = TTL_SECONDS
        except (GatewayError, OSError, IndexError) as exc:
            log.info("upstream %r: its model list could not be read: %s", slot[0], exc)
            ids, fresh = [], FAILED_TTL_SECONDS
        self._kept[slot] = (self._clock() + fresh, ids)
        return ids
