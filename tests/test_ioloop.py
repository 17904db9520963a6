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


async def test_dropping_and_taking_back_a_reader_costs_no_loop_call() -> None:
    io_loop = IOLoop.current()
    assert isinstance(io_loop, SteadyAsyncIOLoop)
    a, b = socket.socketpair()
    a.setblocking(False)
    events: list[int] = []
    spy = _Spy(io_loop.asyncio_loop)
    try:
        io_loop.add_handler(a.fileno(), lambda fd, ev: events.append(ev) or a.recv(64), IOLoop.READ)
        for _ in range(3):
            io_loop.update_handler(a.fileno(), IOLoop.ERROR)  # Tornado stops reading
            io_loop.update_handler(a.fileno(), IOLoop.READ | IOLoop.ERROR)  # and reads again
        assert spy.calls == ["add"]
        b.send(b"x")
        await asyncio.sleep(0.05)
        assert events == [IOLoop.READ]  # listening: the event reaches Tornado
    finally:
        io_loop.remove_handler(a.fileno())
        a.close()
        b.close()


async def test_a_muted_reader_that_fires_is_removed_and_not_passed_on() -> None:
    io_loop = IOLoop.current()
    a, b = socket.socketpair()
    a.setblocking(False)
    events: list[int] = []
    spy = _Spy(io_loop.asyncio_loop)
    try:
        io_loop.add_handler(a.fileno(), lambda fd, ev: events.append(ev) or a.recv(64), IOLoop.READ)
        io_loop.update_handler(a.fileno(), IOLoop.ERROR)
        b.send(b"unread")
        await asyncio.sleep(0.05)
        assert events == []  # Tornado was not reading: it does not hear of it
        assert spy.calls == ["add", "remove"]  # and the loop stops watching (no busy loop)
        io_loop.update_handler(a.fileno(), IOLoop.READ | IOLoop.ERROR)
        await asyncio.sleep(0.05)
        assert events == [IOLoop.READ]  # the bytes are still there when it reads again
        assert spy.calls == ["add", "remove", "add"]
    finally:
        io_loop.remove_handler(a.fileno())
        a.close()
        b.close()


async def test_removing_a_muted_handler_stops_the_loop_watching_it() -> None:
    io_loop = IOLoop.current()
    a, b = socket.socketpair()
    spy = _Spy(io_loop.asyncio_loop)
    io_loop.add_handler(a.fileno(), lambda fd, ev: None, IOLoop.READ)
    io_loop.update_handler(a.fileno(), IOLoop.ERROR)
    io_loop.remove_handler(a.fileno())
    assert spy.calls == ["add", "remove"]
    a.close()
    b.close()


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
