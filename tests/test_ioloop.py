"""The steady-reader IOLoop bridge: a reader Tornado drops stays registered until it
fires, is then removed without Tornado hearing of it, and costs nothing to take back."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from tornado.ioloop import IOLoop

from app.ioloop import SteadyAsyncIOLoop, SteadyAsyncIOMainLoop, install

pytestmark = pytest.mark.gen_test(timeout=10)


class _Spy:
    """Counts the asyncio loop's reader calls the bridge makes."""

    def __init__(self, loop: Any) -> None:
        self.calls: list[str] = []
        real_add, real_remove = loop.add_reader, loop.remove_reader

        def add(fd: int, *args: Any) -> None:
            self.calls.append("add")
            real_add(fd, *args)

        def remove(fd: int) -> bool:
            self.calls.append("remove")
            return bool(real_remove(fd))

        loop.add_reader, loop.remove_reader = add, remove


async def test_the_tests_run_on_it() -> None:
    assert isinstance(IOLoop.current(), SteadyAsyncIOLoop)


class _Watched:
    """A socket pair whose one end is a handler on the current IOLoop (reading what comes)."""

    def __init__(self) -> None:
        self.io_loop = IOLoop.current()
        self.a, self.b = socket.socketpair()
        self.a.setblocking(False)
        self.events: list[int] = []
        self.spy = _Spy(self.io_loop.asyncio_loop)
        self.io_loop.add_handler(self.a.fileno(), self._on_event, IOLoop.READ)

    def _on_event(self, fd: Any, events: int) -> None:
        self.events.append(events)
        self.a.recv(64)

    def want_reads(self, reading: bool) -> None:
        state = IOLoop.READ | IOLoop.ERROR if reading else IOLoop.ERROR
        self.io_loop.update_handler(self.a.fileno(), state)

    def close(self) -> None:
        self.io_loop.remove_handler(self.a.fileno())
        self.a.close()
        self.b.close()


async def test_dropping_and_taking_back_a_reader_costs_no_loop_call() -> None:
    watched = _Watched()
    try:
        for _ in range(3):
            watched.want_reads(False)  # Tornado stops reading
            watched.want_reads(True)  # and reads again
        assert watched.spy.calls == ["add"]
        watched.b.send(b"x")
        await asyncio.sleep(0.05)
        assert watched.events == [IOLoop.READ]  # listening: the event reaches Tornado
    finally:
        watched.close()


async def test_a_muted_reader_that_fires_is_removed_and_not_passed_on() -> None:
    watched = _Watched()
    try:
        watched.want_reads(False)
        watched.b.send(b"unread")
        await asyncio.sleep(0.05)
        assert watched.events == []  # Tornado was not reading: it does not hear of it
        assert watched.spy.calls == ["add", "remove"]  # the loop stops watching: no busy loop
        watched.want_reads(True)
        await asyncio.sleep(0.05)
        assert watched.events == [IOLoop.READ]  # the bytes are still there when it reads again
        assert watched.spy.calls == ["add", "remove", "add"]
    finally:
        watched.close()


async def test_removing_a_muted_handler_stops_the_loop_watching_it() -> None:
    watched = _Watched()
    watched.want_reads(False)
    watched.close()
    assert watched.spy.calls == ["add", "remove"]


def test_serve_installs_it_on_a_fresh_loop() -> None:
    async def main() -> tuple[type, bool]:
        first = install()
        return type(first), install() is first

    loop = asyncio.new_event_loop()
    try:
        kind, same = loop.run_until_complete(main())
    finally:
        loop.close()
    assert kind is SteadyAsyncIOMainLoop and same
