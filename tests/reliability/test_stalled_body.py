"""A request body that stops coming (slowloris): the request gets a 408 in the client's
dialect and its connection closes, key or no key, on the lean path and on Tornado's; a body
that keeps coming, however slowly, is not cut.

The gateway runs with a body timeout of a fraction of a second (``[server]
body_timeout_seconds``; 60 s by default, as nginx's ``client_body_timeout``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import tornado.ioloop

from app.server import Server, build_services
from app.settings import load_settings
from tests.conftest import ECHO_CONFIG, TEST_KEY, Live, http, write_config
from tests.reliability.conftest import exchange

pytestmark = pytest.mark.gen_test(timeout=30)

BODY_TIMEOUT = 0.4


@pytest.fixture
def live(io_loop: tornado.ioloop.IOLoop, tmp_path: Path) -> Iterator[Live]:
    async def start() -> Live:
        server_lines = f"body_timeout_seconds = {BODY_TIMEOUT}"
        path = write_config(tmp_path, ECHO_CONFIG, server=server_lines)
        settings = load_settings(config_path=str(path), environ={}, cwd=tmp_path)
        services, _ = await build_services(settings)
        server = Server(services)  # the timeout from the setting
        server.listen("127.0.0.1", 0)
        return Live(server, services, server.ports[0])

    running = io_loop.run_sync(start)
    yield running
    io_loop.run_sync(lambda: running.server.stop(2))


async def stall(port: int, raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Send ``raw`` (a head and part of its body), then nothing: the answer, read to the
    connection's end (a server that never answers fails the read's timeout)."""
    status, headers, body = await exchange(port, raw)
    assert int(headers["content-length"]) == len(body)
    return status, headers, orjson.loads(body)


def head(path: str, *lines: str) -> bytes:
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: x", *lines, "", ""]).encode()


KEY = f"Authorization: Bearer {TEST_KEY}"


@pytest.mark.parametrize(
    ("path", "framing", "dialect"),
    [
        ("/v1/messages", "Content-Length: 100", "anthropic"),  # the lean path
        ("/v1/chat/completions", "Content-Length: 100", "openai"),
        ("/v1/messages", "Transfer-Encoding: chunked", "anthropic"),  # Tornado's
        ("/openai/v1/chat/completions", "Transfer-Encoding: chunked", "openai"),
    ],
)
@pytest.mark.parametrize("key", [True, False], ids=["key", "no-key"])
async def test_a_stalled_body_gets_a_408_in_the_dialect(
    live: Live, path: str, framing: str, dialect: str, key: bool
) -> None:
    chunked = framing.startswith("Transfer")
    start = b"64\r\n" if chunked else b""
    raw = head(path, framing, *([KEY] if key else [])) + start + b'{"model"'
    status, headers, body = await stall(live.port, raw)
    if chunked and not key:
        # A body of unknown size is read only for a valid key: refused at its headers.
        assert status == 401
        return
    assert status == 408
    assert headers["connection"] == "close"
    assert headers["request-id"].startswith("req_")
    assert "access-control-allow-origin" not in headers
    if dialect == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        message = body["error"]["message"]
    else:
        assert body["error"]["type"] == "invalid_request_error"
        message = body["error"]["message"]
    assert "stopped arriving" in message
    fine = await http(
        "POST",
        live.url + path,
        json={
            "model": "echo-model",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
        },
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    assert fine.status == 200


async def test_a_page_can_read_the_408(live: Live) -> None:
    raw = head("/v1/messages", "Content-Length: 100", "Origin: https://app.example") + b"{"
    status, headers, _ = await stall(live.port, raw)
    assert status == 408
    assert headers["access-control-allow-origin"] == "*"


async def test_a_body_that_keeps_coming_is_not_cut(live: Live) -> None:
    """Longer in all than the timeout, but never silent for as long."""
    body = orjson.dumps(
        {"model": "echo-model", "max_tokens": 5, "messages": [{"role": "user", "content": "slow"}]}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", live.port)
    writer.write(head("/v1/messages", f"Content-Length: {len(body)}", KEY, "Connection: close"))
    for at in range(0, len(body), len(body) // 20 + 1):  # ~1.5 s in all
        await asyncio.sleep(BODY_TIMEOUT / 5)
        writer.write(body[at : at + len(body) // 20 + 1])
    said = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert said.startswith(b"HTTP/1.1 200 OK")
    assert b"echo: slow" in said


async def test_serve_takes_the_body_timeout_from_the_config_file(tmp_path: Path) -> None:
    """`bridgekeeper serve` itself: a stall of a fraction of a second, where the default
    would wait 60 s (the read's 10 s would fail first)."""
    path = write_config(tmp_path, ECHO_CONFIG, server="body_timeout_seconds = 0.3")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ANTHROPIC_", "OPENAI_", "BRIDGEKEEPER_", "CLAUDE_"))
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--config", str(path), "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("Bridgekeeper listening on http://"), proc.communicate()[1]
        port = int(first.split()[3].rsplit(":", 1)[1])
        raw = head("/v1/messages", "Content-Length: 100", KEY) + b'{"model"'
        status, headers, body = await stall(port, raw)
        assert status == 408 and headers["connection"] == "close"
        assert "stopped arriving" in body["error"]["message"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
