"""Tornado's asyncio IOLoop bridge, with readers kept registered across short gaps.

Tornado's `IOStream` stops listening for reads while it holds unread bytes (a request's
body, between reading its headers and its body) and listens again for the next request:
twice a request it calls ``remove_reader`` and ``add_reader``. On the default asyncio
loop that is a cheap ``epoll_ctl(MOD)``; on uvloop each pair tears down and rebuilds a
poll handle (``epoll_ctl`` three or four times, an ``ioctl``, an ``io_uring_enter``):
6.8 µs a pair, ~3% of a request's CPU (issue 7, ``strace -c``).

Here a reader Tornado drops stays registered with the asyncio loop, muted. If Tornado
asks for it again before it fires, nothing was spent; if it fires while muted (bytes
arrived that Tornado is not reading yet), it is removed then, exactly as Tornado would
have had it, and the event is not passed on (Tornado did not ask for it).
"""

from __future__ import annotations

from typing import Any

from tornado.ioloop import IOLoop
from tornado.platform.asyncio import AsyncIOLoop, AsyncIOMainLoop, BaseAsyncIOLoop


class _SteadyReaders(BaseAsyncIOLoop):
    _muted: set[int]

    def initialize(self, *args: Any, **kwargs: Any) -> None:
        self._muted = set()
        super().initialize(*args, **kwargs)

    def update_handler(self, fd: Any, events: int) -> None:
        raw, _ = self.split_fd(fd)
        if events & IOLoop.READ:
            if raw in self._muted:  # still registered: listening again costs nothing
                self._muted.discard(raw)
                self.readers.add(raw)
        elif raw in self.readers:
            self.readers.remove(raw)
            self._muted.add(raw)
        super().update_handler(fd, events)

    def remove_handler(self, fd: Any) -> None:
        raw, _ = self.split_fd(fd)
        if raw in self._muted:
            self._muted.discard(raw)
            self.selector_loop.remove_reader(raw)
        super().remove_handler(fd)

    def _handle_events(self, fd: int, events: int) -> None:
        if events == IOLoop.READ and fd in self._muted:
            # Readable while Tornado is not reading: stop listening, as Tornado had asked.
            self._muted.discard(fd)
            self.selector_loop.remove_reader(fd)
            return
        super()._handle_events(fd, events)


class SteadyAsyncIOMainLoop(_SteadyReaders, AsyncIOMainLoop):
    """`AsyncIOMainLoop` (Tornado's IOLoop for the running asyncio loop), steady readers."""


class SteadyAsyncIOLoop(_SteadyReaders, AsyncIOLoop):
    """`AsyncIOLoop` (an IOLoop with its own asyncio loop), steady readers: what
    ``IOLoop()`` makes once ``IOLoop.configure`` names it (the tests do)."""


def install() -> IOLoop:
    """Tornado's IOLoop for the running asyncio loop: a `SteadyAsyncIOMainLoop` unless
    one is already associated with it (then that one, unchanged)."""
    current = IOLoop.current(instance=False)
    return current if current is not None else SteadyAsyncIOMainLoop()
