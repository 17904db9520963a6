"""The real ``bridgekeeper serve`` process stopped with SIGTERM (and SIGKILL) while streams
are in flight: new connections are refused at once, in-flight streams finish within
``grace_seconds``, and every usage event is in the database after the process exits.

The fake upstreams run in the test process; the gateway is a subprocess, and the usage
rows are counted with ``sqlite3`` once it has exited.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import TEST_KEY
from tests.fakes import FakeUpstream, HangReply, SSEReply, anthropic_stream, openai_stream
from tests.reliability.conftest import auth, body_for, path_for, two_upstreams

pytestmark = pytest.mark.gen_test(timeout=120)

STREAMS = 100
PIECES = [f"p{i:02d} " for i in range(12)]
COMBOS = [("anthropic", "m-an"), ("anthropic", "m-oa"), ("openai", "m-oa"), ("openai", "m-an")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_config(tmp: Path, fo: FakeUpstream, fa: FakeUpstream, port: int, **server: Any) -> Path:
    db = tmp / "gateway.db"
    lines = [
        'host = "127.0.0.1"',
        f"port = {port}",
        f'database_url = "sqlite:///{db}"',
        'admin_password = "shutdown-test-pw"',
        *(f"{k} = {v!r}" for k, v in server.items()),
    ]
    text = "[server]\n" + "\n".join(lines) + "\n" + two_upstreams(fo.url, fa.url)
    text += f'\n[[keys]]\nname = "tester"\nkey = "{TEST_KEY}"\n'
    path = tmp / "serve.toml"
    path.write_text(text)
    return path


def usage_counts(tmp: Path) -> dict[str, int]:
    with sqlite3.connect(tmp / "gateway.db") as db:
        return dict(db.execute("SELECT status, count(*) FROM usage_events GROUP BY status"))


class Gateway:
    """``bridgekeeper serve`` in a subprocess, its output in files."""

    def __init__(self, tmp: Path, config: Path, port: int) -> None:
        self.tmp, self.config, self.port = tmp, config, port
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        script = Path(sys.executable).with_name("bridgekeeper")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "app"]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BRIDGEKEEPER_", "ANTHROPIC_", "OPENAI_", "CLAUDE_"))
        }
        with (
            (self.tmp / "stdout.txt").open("wb") as out,
            (self.tmp / "stderr.txt").open("wb") as err,
        ):
            self.proc = await asyncio.create_subprocess_exec(
                *command,
                "serve",
                "--config",
                str(self.config),
                cwd=self.tmp,
                env=env,
                stdout=out,
                stderr=err,
            )
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                assert self.proc.returncode is None, self.output()
                try:
                    async with session.get(self.url + "/health") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, "the gateway did not start:\n" + self.output()
                await asyncio.sleep(0.1)

    def output(self) -> str:
        return "".join(
            (self.tmp / name).read_text(errors="replace") for name in ("stdout.txt", "stderr.txt")
        )

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@pytest.fixture
def fakes(
    fake_openai: FakeUpstream, fake_anthropic: FakeUpstream
) -> tuple[FakeUpstream, FakeUpstream]:
    return fake_openai, fake_anthropic


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def slow_streams(fo: FakeUpstream, fa: FakeUpstream, count: int, delay: float) -> None:
    for _ in range(count):
        fo.push(SSEReply(openai_stream(PIECES, prompt=30, completion=12), delay=delay))
        fa.push(SSEReply(anthropic_stream(PIECES, input_tokens=30, output_tokens=12), delay=delay))


async def run_streams(
    gw: Gateway, count: int
) -> tuple[list[asyncio.Task[bytes | Exception]], set[int]]:
    """Start ``count`` streams over the four routes; returns their tasks and the set of
    those whose first bytes arrived."""
    started: set[int] = set()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def one(i: int) -> bytes | Exception:
        dialect, model = COMBOS[i % len(COMBOS)]
        try:
            async with session.post(
                gw.url + path_for(dialect),
                json=body_for(dialect, model, stream=True),
                headers=auth(),
            ) as resp:
                assert resp.status == 200
                first = await resp.content.readany()
                started.add(i)
                return first + await resp.content.read()
        except aiohttp.ClientError as exc:
            return exc

    tasks = [asyncio.ensure_future(one(i)) for i in range(count)]

    async def close_when_done() -> None:
        await asyncio.gather(*tasks)
        await session.close()

    asyncio.ensure_future(close_when_done())
    return tasks, started


def complete(body: bytes | Exception) -> bool:
    """The whole answer, with its terminator."""
    if isinstance(body, Exception):
        return False
    text = body.decode()
    ended = "message_stop" in text or "[DONE]" in text
    return ended and all(piece.strip() in text for piece in PIECES)


ANTHROPIC, OPENAI = "anthropic", "openai"


async def whole_answer(
    gw: Gateway, dialect: str, model: str, *, stream: bool = False
) -> tuple[int, str, str]:
    """(status, dialect, error message) of a request answered with a whole error."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            gw.url + path_for(dialect),
            json=body_for(dialect, model, stream=stream),
            headers=auth(),
        ) as resp,
    ):
        body = await resp.json()
        return resp.status, dialect, body["error"]["message"]


async def told_to_retry(waiting: list[asyncio.Future[tuple[int, str, str]]]) -> None:
    """An Anthropic and an OpenAI client (`whole_answer`, in that order) each got the
    overload error of its dialect, saying the gateway shut down."""
    whole = await asyncio.wait_for(asyncio.gather(*waiting), 10)
    assert [(status, dialect) for status, dialect, _ in whole] == [
        (529, "anthropic"),
        (503, "openai"),
    ]
    assert all("shut down" in message for _, _, message in whole)


async def test_sigterm_with_100_streams_in_flight(tmp_path: Path, fakes) -> None:  # type: ignore[no-untyped-def]
    fo, fa = fakes
    port = free_port()
    gw = Gateway(tmp_path, serve_config(tmp_path, fo, fa, port, grace_seconds=30), port)
    await gw.start()
    try:
        slow_streams(fo, fa, STREAMS, delay=0.25)  # each stream takes ~3.5 s
        tasks, started = await run_streams(gw, STREAMS)
        deadline = time.monotonic() + 30
        while len(started) < STREAMS:
            assert time.monotonic() < deadline, f"only {len(started)} streams started"
            await asyncio.sleep(0.05)
        gw.signal(signal.SIGTERM)
        sent = time.monotonic()

        # New connections are refused while the streams are still running.
        while not refused(port):
            assert time.monotonic() - sent < 5, "still accepting connections after SIGTERM"
            await asyncio.sleep(0.05)
        assert sum(not t.done() for t in tasks) >= 10, "streams ended before the check"

        bodies = await asyncio.wait_for(asyncio.gather(*tasks), 40)
        cut = [i for i, b in enumerate(bodies) if not complete(b)]
        assert not cut, f"{len(cut)} streams were cut off, e.g. {bodies[cut[0]]!r}"[:2000]
        assert await gw.wait(30) == 0, gw.output()
    finally:
        await gw.kill()
    assert usage_counts(tmp_path) == {"ok": STREAMS}, gw.output()
    assert "could not be written" not in gw.output()


async def test_grace_period_over_cuts_what_is_left_and_still_records_it(
    tmp_path: Path, fakes
) -> None:  # type: ignore[no-untyped-def]
    fo, fa = fakes
    port = free_port()
    gw = Gateway(tmp_path, serve_config(tmp_path, fo, fa, port, grace_seconds=1), port)
    await gw.start()
    try:
        slow_streams(fo, fa, 10, delay=2)  # each stream would take ~25 s
        tasks, started = await run_streams(gw, 20)
        deadline = time.monotonic() + 30
        while len(started) < 20:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        # And two whole answers still waiting on their upstream.
        fo.push(HangReply(30), HangReply(30))
        waiting = [asyncio.ensure_future(whole_answer(gw, d, "m-oa")) for d in (ANTHROPIC, OPENAI)]
        while len(fo.received) < 12:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        gw.signal(signal.SIGTERM)
        sent = time.monotonic()
        assert await gw.wait(20) == 0, gw.output()
        # 1 s of grace, then the cut-off requests are cancelled and usage is flushed.
        assert time.monotonic() - sent < 12
        bodies = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert not any(complete(b) for b in bodies)
        # Each stream ends with its dialect's overload error, as a stream should end, not
        # cut mid chunked body (aiohttp would have raised on that).
        for i, body in enumerate(bodies):
            assert not isinstance(body, Exception), body
            last = body.decode().rstrip("\n").rsplit("\n\n", 1)[-1]
            if COMBOS[i % len(COMBOS)][0] == "anthropic":
                assert last.startswith("event: error\ndata: "), last
                assert '"type":"overloaded_error"' in last and "shut down" in last
            else:
                assert last.startswith('data: {"error":'), last
                assert "shut down" in last
        await told_to_retry(waiting)
    finally:
        await gw.kill()
    counts = usage_counts(tmp_path)
    assert counts == {"error": 22}, counts


async def test_sigkill_loses_at_most_the_last_flush_interval(tmp_path: Path, fakes) -> None:  # type: ignore[no-untyped-def]
    """With the default 1 s flush interval, what was answered more than a second before
    the kill is in the database."""
    fo, fa = fakes
    port = free_port()
    gw = Gateway(tmp_path, serve_config(tmp_path, fo, fa, port, usage_flush_seconds=1.0), port)
    await gw.start()
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(12):
                dialect, model = COMBOS[i % len(COMBOS)]
                async with session.post(
                    gw.url + path_for(dialect),
                    json=body_for(dialect, model, stream=i % 2 == 0),
                    headers=auth(),
                ) as resp:
                    assert resp.status == 200
                    await resp.read()
        await asyncio.sleep(2.5)  # two flush intervals and some slack
        gw.signal(signal.SIGKILL)
        assert await gw.wait(10) == -signal.SIGKILL
    finally:
        await gw.kill()
    assert usage_counts(tmp_path) == {"ok": 12}


async def test_a_stream_cut_before_its_first_byte_gets_the_whole_error(
    tmp_path: Path, fakes
) -> None:  # type: ignore[no-untyped-def]
    """The upstream sent half an event, so the client has no byte yet when the grace ends:
    it gets the 529/503 whole (status line and JSON), not an error event with no head."""
    fo, fa = fakes
    port = free_port()
    gw = Gateway(tmp_path, serve_config(tmp_path, fo, fa, port, grace_seconds=1), port)
    await gw.start()
    try:
        half = SSEReply([b'data: {"id": "chatcmpl-1", "obj'], end_delay=30)
        fo.push(half, half)
        waiting = [
            asyncio.ensure_future(whole_answer(gw, d, "m-oa", stream=True))
            for d in (ANTHROPIC, OPENAI)
        ]
        deadline = time.monotonic() + 30
        while len(fo.received) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # the half event is in
        gw.signal(signal.SIGTERM)
        assert await gw.wait(20) == 0, gw.output()
        await told_to_retry(waiting)
    finally:
        await gw.kill()
    assert usage_counts(tmp_path) == {"error": 2}
