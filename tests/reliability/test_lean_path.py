"""The proxy endpoints have two ways in: `ApiCall` for a POST with a Content-Length within
the limit, the Tornado Application for anything else (a chunked body, say). A client
must not be able to tell them apart."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from app.handlers.lean import ApiCall
from tests.reliability.conftest import Bed, Resp, auth, body_for, call, path_for

A, OA = "anthropic", "openai"


@pytest.fixture(scope="module")
def bed(bed_factory: Callable[..., Bed]) -> Bed:
    # Limits high enough never to refuse: each answer carries the limit headers.
    return bed_factory(server="default_rpm = 1000000\ndefault_tpm = 1000000000\n")


def _limit_names(dialect: str) -> set[str]:
    if dialect == A:
        return {
            f"anthropic-ratelimit-{k}-{p}"
            for k in ("requests", "tokens")
            for p in ("limit", "remaining", "reset")
        }
    return {
        f"x-ratelimit-{p}-{k}"
        for k in ("requests", "tokens")
        for p in ("limit", "remaining", "reset")
    }


def _shape(resp: Resp, stream: bool) -> Any:
    """What must match between the two paths: ids and timings aside, the whole answer."""
    if stream:
        lines = resp.body.decode().splitlines()
        return [line.split(":", 1)[0] for line in lines]  # the framing, event by event
    data = orjson.loads(resp.body)
    return sorted(data)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    ("dialect", "model"), [(A, "m-oa"), (OA, "m-an"), (A, "m-an"), (OA, "m-oa")]
)
def test_content_length_and_chunked_bodies_get_the_same_answer(
    bed: Bed, dialect: str, model: str, stream: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken: list[str] = []
    real_init = ApiCall.__init__

    def spy(self: ApiCall, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        taken.append(self.endpoint)

    monkeypatch.setattr(ApiCall, "__init__", spy)
    body = orjson.dumps(body_for(dialect, model, stream=stream))
    answers = []
    for chunked in (False, True):
        resp = call("POST", bed.port, path_for(dialect), body=body, headers=auth(), chunked=chunked)
        assert resp.status == 200, resp.body[:300]
        headers = {k.lower(): v for k, v in resp.headers.items()}
        assert headers["request-id"] == headers["x-request-id"]
        assert headers["request-id"].startswith("req_")
        assert "date" in headers and "server" not in headers
        expected_type = "text/event-stream" if stream else "application/json"
        assert headers["content-type"].startswith(expected_type)
        if not stream:
            assert int(headers["content-length"]) == len(resp.body)
        assert _limit_names(dialect) <= set(headers), sorted(headers)
        assert (
            headers[
                (
                    "anthropic-ratelimit-requests-limit"
                    if dialect == A
                    else "x-ratelimit-limit-requests"
                )
            ]
            == "1000000"
        )
        answers.append(_shape(resp, stream))
    assert answers[0] == answers[1]
    # Only the Content-Length request went the lean way; the chunked one through tornado.web.
    assert taken == ["messages" if dialect == A else "chat"]


def test_a_body_larger_than_it_says_is_refused_by_tornado(bed: Bed) -> None:
    """The lean path trusts Content-Length only as far as Tornado's own reader enforces it."""
    import socket

    body = orjson.dumps(body_for(A, "m-oa"))
    with socket.create_connection(("127.0.0.1", bed.port), timeout=10) as sock:
        head = (
            f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {auth()['Authorization'][7:]}"
            f"\r\nContent-Type: application/json\r\nContent-Length: {len(body) - 5}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    # The first len-5 bytes are not JSON: a 400 in the dialect, never a hang or a 500.
    assert data.startswith(b"HTTP/1.1 400"), data[:200]


def _read_response(sock: socket.socket, buf: bytes) -> tuple[int, bytes, bytes]:
    """One HTTP/1.1 response off ``sock`` (status, body); the bytes read past its end."""

    def need(n: int) -> None:
        nonlocal buf
        while len(buf) < n:
            data = sock.recv(65536)
            assert data, "connection closed mid-response"
            buf += data

    def until(marker: bytes) -> bytes:
        nonlocal buf
        while marker not in buf:
            need(len(buf) + 1)
        line, buf = buf.split(marker, 1)
        return line

    head = until(b"\r\n\r\n").decode("latin1")
    status = int(head.split(" ", 2)[1])
    fields = {
        k.lower(): v.strip() for k, _, v in (h.partition(":") for h in head.split("\r\n")[1:])
    }
    if fields.get("transfer-encoding") == "chunked":
        body = b""
        while size := int(until(b"\r\n"), 16):
            need(size + 2)
            body, buf = body + buf[:size], buf[size + 2 :]
        assert until(b"\r\n") == b""  # no trailers: the body ends here
        return status, body, buf
    length = int(fields["content-length"])
    need(length)
    return status, buf[:length], buf[length:]


@pytest.mark.parametrize(("dialect", "model"), [(A, "m-oa"), (OA, "m-an"), (A, "m-an")])
def test_one_connection_carries_streams_and_whole_answers_in_turn(
    bed: Bed, dialect: str, model: str
) -> None:
    """A stream's body ends in the same write as its last events: the next answer on the
    connection must start exactly where that one ended, with nothing stray between."""
    sock = socket.create_connection(("127.0.0.1", bed.port), timeout=20)
    try:
        for stream in (True, False, True, True, False):
            body = orjson.dumps(body_for(dialect, model, stream=stream))
            head = (
                f"POST {path_for(dialect)} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {auth()['Authorization']}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
            )
            sock.sendall(head.encode() + body)
            status, data, rest = _read_response(sock, b"")
            assert status == 200, data[:300]
            time.sleep(0.05)  # anything written after the end would be here by now
            sock.setblocking(False)
            try:
                rest += sock.recv(65536)
            except BlockingIOError:
                pass
            sock.setblocking(True)
            assert rest == b""
            if stream:
                assert (b"message_stop" if dialect == A else b"data: [DONE]") in data[-80:]
            else:
                assert orjson.loads(data)
    finally:
        sock.close()
