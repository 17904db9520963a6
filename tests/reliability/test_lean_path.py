"""The proxy endpoints have two ways in: `ApiCall` for a POST with a Content-Length within
the limit, the Tornado Application for anything else (a chunked body, say). A client
must not be able to tell them apart."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from app.handlers.lean import ApiCall
from tests.reliability.conftest import Bed, Resp, auth, body_for, call, path_for

A, OA = "anthropic", "openai"


@pytest.fixture(scope="module")
def bed(bed_factory: Callable[..., Bed]) -> Bed:
    return bed_factory()


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
