"""Shared fixtures: a live gateway on a free port with a real database, and fake upstreams.

Tests that use them are ``@pytest.mark.gen_test`` coroutines (pytest-tornado):
the gateway, the fakes and the async SDK clients all run on the test's IOLoop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tornado.ioloop

from app.server import Server, build_services
from app.services import Services
from app.settings import load_settings
from tests.databases import database_url
from tests.fakes import FakeUpstream

TEST_KEY = "bk-test-key-000000000000"
# The built-in echo backend as the one upstream, serving ``echo-model``.
ECHO_CONFIG = """
[[upstreams]]
name = "echo"
kind = "echo"

[[models]]
name = "echo-model"
upstream = "echo"
"""
SECRET_KEY = "Gk1hY0c7oQ7m0oGJbJ0xv0Hn7K3z4cQx0m9o0x2q3yE="


@dataclass
class Live:
    """A running gateway."""

    server: Server
    services: Services
    port: int
    key: str = TEST_KEY

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def services_db_url(self) -> str:
        return self.services.settings.database_url


_databases: dict[Path, str] = {}


def write_config(tmp_path: Path, body: str, *, with_key: bool = True, server: str = "") -> Path:
    """A config file with a fresh SQLite database and (by default) the test key.

    ``server`` holds extra lines for the ``[server]`` table.
    """
    db = _databases.get(tmp_path)
    if db is None:  # one per test: a second gateway of the test is a restart on it
        db = _databases[tmp_path] = database_url(tmp_path, "bridgekeeper.db")
    text = f'[server]\ndatabase_url = "{db}"\nadmin_password = "test-admin-pw"\n'
    text += f'secret_key = "{SECRET_KEY}"\n'
    if "usage_flush_seconds" not in server:
        text += "usage_flush_seconds = 0.05\n"
    text += server.strip() + "\n" if server.strip() else ""
    text += body
    if with_key:
        text += f'\n[[keys]]\nname = "tester"\nkey = "{TEST_KEY}"\n'
    path = tmp_path / "bridgekeeper.toml"
    path.write_text(text)
    return path


StartGateway = Callable[..., Awaitable[Live]]

# pytest-tornado's ``io_loop`` is ``IOLoop()``: the same steady-reader bridge as
# ``bridgekeeper serve`` installs (app/ioloop.py), so every test runs on it.
tornado.ioloop.IOLoop.configure("app.ioloop.SteadyAsyncIOLoop")


@pytest.fixture(scope="session", autouse=True)
def _base_event_loop() -> Iterator[None]:
    """One asyncio loop set as current for the whole session, closed at its end.

    pytest-tornado's ``io_loop.make_current()`` asks asyncio for the current loop
    and, with none set, asyncio silently creates one that Tornado later restores
    and nobody closes; an ``asyncio.run`` in a later test then drops it and the
    garbage collector reports an unclosed event loop.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield
    asyncio.set_event_loop(None)
    loop.close()


@pytest.fixture
def gateway(io_loop: tornado.ioloop.IOLoop, tmp_path: Path) -> Iterator[StartGateway]:
    """``await gateway(config_text)`` starts a gateway; it is stopped after the test."""
    started: list[Live] = []

    async def start(
        config: str = "",
        *,
        environ: dict[str, str] | None = None,
        clock: Any = None,
        with_key: bool = True,
        server: str = "",
    ) -> Live:
        path = write_config(tmp_path, config, with_key=with_key, server=server)
        settings = load_settings(config_path=str(path), environ=environ or {}, cwd=tmp_path)
        kwargs = {"clock": clock} if clock is not None else {}
        services, _ = await build_services(settings, **kwargs)
        server = Server(services)
        server.listen("127.0.0.1", 0)
        live = Live(server, services, server.ports[0])
        started.append(live)
        return live

    yield start
    for live in started:
        io_loop.run_sync(lambda live=live: live.server.stop(2))


@pytest.fixture
def fake_openai(io_loop: tornado.ioloop.IOLoop) -> Iterator[FakeUpstream]:
    fake = io_loop.run_sync(FakeUpstream("openai").start)
    yield fake
    io_loop.run_sync(fake.stop)


@pytest.fixture
def fake_anthropic(io_loop: tornado.ioloop.IOLoop) -> Iterator[FakeUpstream]:
    fake = io_loop.run_sync(FakeUpstream("anthropic").start)
    yield fake
    io_loop.run_sync(fake.stop)


async def flushed(live: Live) -> None:
    """Wait until every buffered usage event is in the database."""
    await live.services.recorder.flush()


async def aiter_list(it: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in it]


@dataclass
class RawResponse:
    status: int
    headers: Any
    content: bytes

    def json(self) -> Any:
        import orjson

        return orjson.loads(self.content)


async def http(
    method: str,
    url: str,
    *,
    json: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> RawResponse:
    """One raw HTTP call (aiohttp), for asserting exact bytes and headers."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.request(method, url, json=json, data=data, headers=headers) as resp:
            return RawResponse(resp.status, resp.headers, await resp.read())
