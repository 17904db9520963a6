"""Helpers for the reliability tests: a gateway with two fake upstreams (one per dialect),
a gateway running on a background event loop for table-driven tests that make hundreds of
plain HTTP calls, and a blocking HTTP client that can send anything (wrong methods, broken
bytes, chunked bodies).

Model names route the same way in every test here: ``m-oa`` goes to the OpenAI-kind upstream
``oa`` and ``m-an`` to the Anthropic-kind upstream ``an``. An OpenAI client asking for ``m-oa``
is a passthrough, an Anthropic client asking for it is translated, and vice versa.
"""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from sqlalchemy import select

from app.db.models import UsageEvent
from app.server import Server, build_services
from app.settings import load_settings
from tests.conftest import TEST_KEY, Live, flushed, write_config
from tests.fakes import FakeUpstream

T = TypeVar("T")

# What each (client dialect, model) pair exercises.
ROUTES = {
    ("anthropic", "m-an"): "passthrough",
    ("anthropic", "m-oa"): "translated",
    ("openai", "m-oa"): "passthrough",
    ("openai", "m-an"): "translated",
}


def two_upstreams(
    openai_url: str,
    anthropic_url: str,
    *,
    openai_keys: tuple[str, ...] = ("sk-oa-upstream-1",),
    anthropic_keys: tuple[str, ...] = ("sk-ant-upstream-1",),
    timeout: float = 30,
    server: str = "",
) -> str:
    """Config text: upstreams ``oa`` and ``an`` and the models ``m-oa`` and ``m-an``."""

    def keys(values: tuple[str, ...]) -> str:
        return "[" + ", ".join(f'"{k}"' for k in values) + "]"

    return f"""{server}
[[upstreams]]
name = "oa"
kind = "openai"
base_url = "{openai_url}"
keys = {keys(openai_keys)}
timeout = {timeout}

[[upstreams]]
name = "an"
kind = "anthropic"
base_url = "{anthropic_url}"
keys = {keys(anthropic_keys)}
timeout = {timeout}

[[models]]
name = "m-oa"
upstream = "oa"
target = "oa-target"

[[models]]
name = "m-an"
upstream = "an"
target = "an-target"
"""


def body_for(dialect: str, model: str, *, stream: bool = False, text: str = "hi") -> dict[str, Any]:
    """A minimal valid request body of ``dialect``."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": text}]}
    if dialect == "anthropic":
        body["max_tokens"] = 16
    if stream:
        body["stream"] = True
    return body


def path_for(dialect: str) -> str:
    return "/v1/messages" if dialect == "anthropic" else "/v1/chat/completions"


def auth(key: str = TEST_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def usage_rows(live: Live) -> list[UsageEvent]:
    """Every usage event, oldest first, after the recorder's buffer is written."""
    await flushed(live)
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UsageEvent).order_by(UsageEvent.id)))


async def wait_for(check: Callable[[], bool], timeout: float, step: float = 0.02) -> bool:
    """Poll ``check`` until it holds or ``timeout`` s pass; returns its last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            return check()
        await asyncio.sleep(step)
    return True


# -- the error envelope -------------------------------------------------------------------------

DROP: Any = object()  # "do not check this field"


def check_error(
    dialect: str,
    resp: Resp,
    status: int,
    etype: str,
    says: str,
    *,
    code: Any = DROP,
    param: Any = DROP,
    relayed: bool = False,
) -> None:
    """``resp`` is exactly the error ``dialect``'s clients expect (``relayed``: a backend's
    own envelope passed through verbatim, which carries no gateway request id)."""
    assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.headers.get("request-id", "").startswith("req_")
    body = resp.json()
    if dialect == "anthropic":
        keys = {"type", "error"} if relayed else {"type", "error", "request_id"}
        assert set(body) == keys, body
        assert body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}, body
        assert body["error"]["type"] == etype, body
        message = body["error"]["message"]
    else:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert body["error"]["type"] == etype, body
        if code is not DROP:
            assert body["error"]["code"] == code, body
        if param is not DROP:
            assert body["error"]["param"] == param, body
        message = body["error"]["message"]
    assert isinstance(message, str) and says in message, (says, message)


def message_blocks(
    events: list[dict[str, Any]],
    names: list[str],
    closed: Callable[[dict[str, Any]], bool] = lambda event: False,
) -> tuple[int, int | None]:
    """A Messages stream's content blocks (its events' data, ``names`` their types): opened
    at 0, 1, 2... one at a time, each delta and stop in the open one, and none open at an
    event ``closed`` says finds them all closed. How many opened, and the one left open."""
    open_block: int | None = None
    count = 0
    for event in events:
        if event["type"] == "content_block_start":
            assert open_block is None and event["index"] == count, names
            open_block, count = event["index"], count + 1
        elif event["type"] in ("content_block_delta", "content_block_stop"):
            assert event["index"] == open_block, names
            if event["type"] == "content_block_stop":
                open_block = None
        elif closed(event):
            assert open_block is None, names
    return count, open_block


# -- a blocking HTTP client ------------------------------------------------------------------


@dataclass
class Resp:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def call(
    method: str,
    port: int,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
    timeout: float = 20,
) -> Resp:
    """One request on a fresh connection; ``chunked`` sends the body without Content-Length."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        sent = {"Connection": "close", **(headers or {})}
        if body is not None and not chunked:
            sent.setdefault("Content-Type", "application/json")
        if chunked:
            conn.putrequest(method, path)
            for name, value in sent.items():
                conn.putheader(name, value)
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            data = body or b""
            try:
                for i in range(0, len(data), 65536):
                    piece = data[i : i + 65536]
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered early (413) and closed: read its answer below
        else:
            try:
                conn.request(method, path, body=body, headers=sent)
            except (BrokenPipeError, ConnectionResetError):
                pass
        resp = conn.getresponse()
        return Resp(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def post_json(port: int, path: str, payload: Any, headers: dict[str, str] | None = None) -> Resp:
    return call("POST", port, path, body=orjson.dumps(payload), headers=headers)


# -- a gateway on a background event loop ----------------------------------------------------


class BackgroundLoop:
    """An asyncio loop in a daemon thread; `run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@dataclass
class Bed:
    """A live gateway with fakes ``fo`` (OpenAI) and ``fa`` (Anthropic) on a background loop."""

    bg: BackgroundLoop
    live: Live
    fo: FakeUpstream
    fa: FakeUpstream

    @property
    def port(self) -> int:
        return self.live.port

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return self.bg.run(coro, timeout)


async def start_live(tmp_path: Path, config: str, *, with_key: bool = True) -> Live:
    path = write_config(tmp_path, config, with_key=with_key)
    settings = load_settings(config_path=str(path), environ={}, cwd=tmp_path)
    services, _ = await build_services(settings)
    server = Server(services)
    server.listen("127.0.0.1", 0)
    return Live(server, services, server.ports[0])


@pytest.fixture(scope="module")
def bed_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Bed]]:
    """Start gateways on background loops; everything is stopped when the module ends."""
    made: list[Bed] = []

    def make(
        server: str = "",
        extra: str | Callable[[FakeUpstream, FakeUpstream], str] = "",
        **kwargs: Any,
    ) -> Bed:
        """``extra``: more config, or a function of the two fakes making it."""
        bg = BackgroundLoop()

        async def setup() -> Bed:
            fo = await FakeUpstream("openai").start()
            fa = await FakeUpstream("anthropic").start()
            more = extra(fo, fa) if callable(extra) else extra
            config = two_upstreams(fo.url, fa.url, server=server, **kwargs) + more
            live = await start_live(tmp_path_factory.mktemp("bed"), config)
            return Bed(bg, live, fo, fa)

        bed = bg.run(setup())
        made.append(bed)
        return bed

    yield make
    for bed in made:

        async def teardown(bed: Bed = bed) -> None:
            await bed.live.server.stop(2)
            await bed.fo.stop()
            await bed.fa.stop()

        bed.run(teardown())
        bed.bg.close()


async def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` as it is (then nothing), read the answer to the connection's end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    try:
        said = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = said.partition(b"\r\n\r\n")
    lines = head.decode("latin1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body
