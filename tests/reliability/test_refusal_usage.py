"""The requests the HTTP layer refuses itself leave their usage row, as every API request
does: a body that stalls (408), a header block over the limit (431), a request that is not
HTTP/1.1 the server can read (400). Each row has the answer's status and error type, the
dialect of its path (or headers), and the key its headers carry when the server read them.

These answers go out before the gateway sees the request (app/http1.py,
`app.handlers.lean.ApiRouter.refused_head` and ``stalled_body``); the row is recorded from a
task beside the answer, so the tests poll for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import tornado.ioloop

from app.db.models import UsageEvent
from app.server import Server, build_services
from app.settings import load_settings
from tests.conftest import ECHO_CONFIG, TEST_KEY, Live, http, write_config
from tests.reliability.conftest import exchange, usage_rows

pytestmark = pytest.mark.gen_test(timeout=60)

BODY_TIMEOUT = 0.3
A = "anthropic"
O = "openai"  # noqa: E741
BEARER = f"Authorization: Bearer {TEST_KEY}"
X_API_KEY = f"x-api-key: {TEST_KEY}"
UNKNOWN_BEARER = "Authorization: Bearer bk-not-a-key-00000000000"


@pytest.fixture
def live(io_loop: tornado.ioloop.IOLoop, tmp_path: Path) -> Iterator[Live]:
    async def start() -> Live:
        path = write_config(tmp_path, ECHO_CONFIG)
        settings = load_settings(config_path=str(path), environ={}, cwd=tmp_path)
        services, _ = await build_services(settings)
        server = Server(services, body_timeout=BODY_TIMEOUT)
        server.listen("127.0.0.1", 0)
        return Live(server, services, server.ports[0])

    running = io_loop.run_sync(start)
    yield running
    io_loop.run_sync(lambda: running.server.stop(2))


async def rows_of(live: Live, request_id: str) -> list[UsageEvent]:
    """The usage rows of ``request_id`` once one is written (5 s at most), and a moment
    later, so that a second row would show too."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        rows = [r for r in await usage_rows(live) if r.request_id == request_id]
        if rows or loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    return [r for r in await usage_rows(live) if r.request_id == request_id]


def check_row(
    row: UsageEvent,
    *,
    http_status: int,
    dialect: str,
    endpoint: str,
    key_name: str | None,
    says: str,
) -> None:
    assert (row.status, row.http_status, row.error_type) == (
        "error",
        http_status,
        "invalid_request_error",
    )
    assert (row.client_dialect, row.endpoint, row.key_name) == (dialect, endpoint, key_name)
    assert (row.key_id is None) == (key_name is None)
    assert (row.requested_model, row.upstream, row.target_model, row.stream) == (
        None,
        None,
        None,
        False,
    )
    assert (row.input_tokens, row.output_tokens) == (0, 0)
    assert row.error_message is not None and says in row.error_message


def head(start: str, *lines: str) -> bytes:
    return "\r\n".join([start, "Host: x", *lines, "", ""]).encode("latin1")


async def still_serving(live: Live) -> None:
    fine = await http(
        "POST",
        live.url + "/v1/messages",
        json={
            "model": "echo-model",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x"}],
        },
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    assert fine.status == 200


# -- 408: a body that stops coming -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "framing", "key", "dialect", "endpoint", "key_name"),
    [
        # `ApiCall` (the lean path) would have read the body
        ("/v1/messages", "Content-Length: 100", BEARER, A, "messages", "tester"),
        ("/v1/chat/completions", "Content-Length: 100", None, O, "chat", None),
        # Tornado's `ProxyHandler` would have
        (
            "/anthropic/v1/messages",
            "Transfer-Encoding: chunked",
            X_API_KEY,
            A,
            "messages",
            "tester",
        ),
        (
            "/openai/v1/chat/completions",
            "Transfer-Encoding: chunked",
            BEARER,
            O,
            "chat",
            "tester",
        ),
        # `NotFoundHandler` would have (its 404 is recorded the same way)
        ("/v1/nope", "Content-Length: 100", BEARER, O, "unknown", "tester"),
    ],
)
async def test_a_stalled_body_leaves_a_usage_row(
    live: Live,
    path: str,
    framing: str,
    key: str | None,
    dialect: str,
    endpoint: str,
    key_name: str | None,
) -> None:
    start = b"64\r\n" if framing.startswith("Transfer") else b""
    raw = head(f"POST {path} HTTP/1.1", framing, *([key] if key else [])) + start + b'{"model"'
    status, headers, _ = await exchange(live.port, raw)
    assert status == 408
    rows = await rows_of(live, headers["request-id"])
    assert len(rows) == 1, rows
    check_row(
        rows[0],
        http_status=408,
        dialect=dialect,
        endpoint=endpoint,
        key_name=key_name,
        says="stopped arriving",
    )
    await still_serving(live)


async def test_a_chunked_body_without_a_valid_key_is_a_401_row_before_it_stalls(
    live: Live,
) -> None:
    """A body of unknown size is read only for a valid key: an unknown one is refused at
    its headers (and recorded), so its stalling body never comes into it."""
    raw = head(
        "POST /openai/v1/chat/completions HTTP/1.1", "Transfer-Encoding: chunked", UNKNOWN_BEARER
    )
    status, headers, _ = await exchange(live.port, raw + b"64\r\n" + b'{"model"')
    assert status == 401
    rows = await rows_of(live, headers["request-id"])
    assert [(r.http_status, r.key_name, r.client_dialect) for r in rows] == [(401, None, O)]
    await still_serving(live)


# -- 431: a header block over the limit --------------------------------------------------------

BIG = "x-trace: " + "t" * 100_000


@pytest.mark.parametrize(
    ("start", "lines", "dialect", "endpoint"),
    [
        ("POST /v1/messages HTTP/1.1", ["Content-Length: 2"], A, "messages"),
        ("POST /openai/v1/chat/completions HTTP/1.1", ["Content-Length: 2"], O, "chat"),
        ("GET /v1/models HTTP/1.1", ["anthropic-version: 2023-06-01"], A, "unknown"),
    ],
)
async def test_headers_over_the_limit_leave_a_usage_row_without_a_key(
    live: Live, start: str, lines: list[str], dialect: str, endpoint: str
) -> None:
    """The key comes first, but the head was never read whole: the row names no key."""
    raw = head(start, BEARER, *lines, BIG) + (b"{}" if start.startswith("POST") else b"")
    status, headers, _ = await exchange(live.port, raw)
    assert status == 431
    rows = await rows_of(live, headers["request-id"])
    assert len(rows) == 1, rows
    check_row(
        rows[0],
        http_status=431,
        dialect=dialect,
        endpoint=endpoint,
        key_name=None,
        says="larger than the 65536 bytes",
    )
    await still_serving(live)


# -- 400: not HTTP/1.1 the server can read -----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "dialect", "endpoint", "key_name"),
    [
        # The header block does not parse: no key is taken from it.
        (head("POST /v1/messages HTTP/1.1", BEARER, "Bad Name: 1"), A, "messages", None),
        (head("GET /v1/models HTTP/1.1", "anthropic-version: 1", "X\x01: y"), A, "unknown", None),
        (head("POST /v1/chat/completions HTTP/1.1 extra"), O, "chat", None),
        # It does (the request line or the body framing is what is wrong): its key counts.
        (head("POST /v1/chat/completions HTTP/1.1 extra", BEARER), O, "chat", "tester"),
        (
            head("POST /v1/chat/completions HTTP/1.1", BEARER, "Content-Length: ten"),
            O,
            "chat",
            "tester",
        ),
        (
            head("POST /anthropic/v1/messages HTTP/1.1", X_API_KEY, "Transfer-Encoding: chunked")
            + b"zz\r\n{}\r\n0\r\n\r\n",
            A,
            "messages",
            "tester",
        ),
        (
            head("POST /v1/messages HTTP/1.1", UNKNOWN_BEARER, "Content-Length: -1"),
            A,
            "messages",
            None,
        ),
    ],
    ids=[
        "bad-name",
        "control-char",
        "request-line",
        "request-line-key",
        "content-length",
        "chunked",
        "unknown-key",
    ],
)
async def test_a_malformed_request_leaves_a_usage_row(
    live: Live, raw: bytes, dialect: str, endpoint: str, key_name: str | None
) -> None:
    status, headers, _ = await exchange(live.port, raw)
    assert status == 400
    rows = await rows_of(live, headers["request-id"])
    assert len(rows) == 1, rows
    check_row(
        rows[0],
        http_status=400,
        dialect=dialect,
        endpoint=endpoint,
        key_name=key_name,
        says="not valid HTTP/1.1",
    )
    await still_serving(live)


# -- what is not recorded, and a recorder that fails -------------------------------------------


async def test_refusals_outside_the_api_leave_no_usage_row(live: Live) -> None:
    """As a 404 there (`is_api_path`): a scanner's or a browser's request is no API call."""
    before = len(await usage_rows(live))
    for raw in (
        head("GET /favicon.ico HTTP/1.1 extra"),
        head("GET /admin/login HTTP/1.1", BIG),
        head("POST /admin/login HTTP/1.1", "Content-Length: 10") + b"user",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # TLS to the HTTP port
    ):
        status, _, _ = await exchange(live.port, raw)
        assert status in (400, 408, 431)
    await asyncio.sleep(0.3)
    assert len(await usage_rows(live)) == before


async def test_a_recorder_that_fails_does_not_stop_the_answer(
    live: Live, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(event: object) -> None:
        raise RuntimeError("the recorder is broken")

    monkeypatch.setattr(live.services.recorder, "record", broken)
    raw = head("POST /v1/messages HTTP/1.1", BEARER, "Bad Name: 1")
    with caplog.at_level(logging.ERROR, logger="bridgekeeper.api"):
        status, headers, body = await exchange(live.port, raw)
        assert status == 400
        assert orjson.loads(body)["error"]["type"] == "invalid_request_error"
        for _ in range(100):
            if any("could not be recorded" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.02)
    failed = [r for r in caplog.records if "could not be recorded" in r.getMessage()]
    assert len(failed) == 1
    assert headers["request-id"] in failed[0].getMessage()
    assert failed[0].exc_info is not None and "recorder is broken" in str(failed[0].exc_info[1])
    monkeypatch.undo()
    await still_serving(live)
