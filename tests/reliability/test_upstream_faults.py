"""Upstream faults, each seen from a client of either dialect on a passthrough and a translated
route: the error it gets (a status and envelope before the first byte, an in-stream error
event after it), what happens to the upstream keys, and the usage event left behind.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from app.db.models import Upstream, UpstreamKey
from app.dialects.sse import OPENAI_DONE, SSEEvent, SSEParser, anthropic_event, openai_chunk
from app.upstreams.keyring import FAILURE_COOLDOWN, RATE_LIMIT_COOLDOWN
from tests.conftest import RawResponse, http
from tests.fakes import (
    FakeUpstream,
    HangReply,
    JsonReply,
    SSEReply,
    anthropic_message,
    anthropic_stream,
    openai_completion,
    openai_stream,
)
from tests.reliability.conftest import (
    Resp,
    auth,
    body_for,
    check_error,
    path_for,
    two_upstreams,
    usage_rows,
)

pytestmark = pytest.mark.gen_test(timeout=60)

# (client dialect, model): passthrough and translated routes for both dialects.
COMBOS = [
    pytest.param("anthropic", "m-an", id="anthropic-passthrough"),
    pytest.param("anthropic", "m-oa", id="anthropic-translated"),
    pytest.param("openai", "m-oa", id="openai-passthrough"),
    pytest.param("openai", "m-an", id="openai-translated"),
]
BOTH_KEYS = {"m-oa": ("sk-oa-one", "sk-oa-two"), "m-an": ("sk-ant-one", "sk-ant-two")}


class Clock:
    """Wall time that moves only when told, so cooldowns can be skipped or watched."""

    def __init__(self) -> None:
        self.now = 1_750_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def upstream_of(model: str, fo: FakeUpstream, fa: FakeUpstream) -> FakeUpstream:
    return fo if model == "m-oa" else fa


def upstream_name(model: str) -> str:
    return "oa" if model == "m-oa" else "an"


async def send(live: Any, dialect: str, model: str, *, stream: bool = False) -> RawResponse:
    return await http(
        "POST",
        live.url + path_for(dialect),
        json=body_for(dialect, model, stream=stream),
        headers=auth(),
    )


def as_resp(raw: RawResponse) -> Resp:
    return Resp(raw.status, {k.lower(): v for k, v in raw.headers.items()}, raw.content)


# Client-facing error per dialect: (status, Anthropic error.type, OpenAI error.type, OpenAI code).
BAD_GATEWAY = (502, "api_error", "server_error", None)
TIMEOUT = (504, "timeout_error", "timeout", None)


def expect(dialect: str, raw: RawResponse, kind: tuple[int, str, str, Any], says: str) -> None:
    status, a_type, o_type, o_code = kind
    if dialect == "anthropic":
        check_error("anthropic", as_resp(raw), status, a_type, says)
    else:
        status = 503 if status == 529 else status
        check_error("openai", as_resp(raw), status, o_type, says, code=o_code)


def expect_backends(
    dialect: str,
    model: str,
    raw: RawResponse,
    reply: JsonReply,
    kind: tuple[int, str, str, Any],
    says: str,
) -> None:
    """A backend's last error once no other key answered: as it came on a same-dialect
    route (its status and body: OpenAI's ``"type": "requests"`` stays itself), else the
    gateway's ``kind`` in the client's dialect."""
    if (dialect == "anthropic") == (model == "m-an"):
        assert (raw.status, orjson.loads(raw.content)) == (reply.status, reply.body)
        assert raw.headers["request-id"].startswith("req_")
    else:
        expect(dialect, raw, kind, says)


def events_of(raw: RawResponse) -> list[SSEEvent]:
    assert raw.status == 200
    assert raw.headers["content-type"].startswith("text/event-stream")
    parser = SSEParser()
    return [e for e in parser.feed(raw.content) + parser.finish() if e.data != "[DONE]"]


def stream_error(dialect: str, raw: RawResponse) -> dict[str, Any]:
    """The in-stream error a client of ``dialect`` got as the last event, after some content."""
    events = events_of(raw)
    assert len(events) >= 2, "the error should follow content already sent"
    last = events[-1]
    data = last.json()
    if dialect == "anthropic":
        assert last.event == "error"
        assert data["type"] == "error" and set(data["error"]) == {"type", "message"}
        return data["error"]  # type: ignore[no-any-return]
    assert last.event is None
    assert set(data) == {"error"} and set(data["error"]) == {"message", "type", "param", "code"}
    return data["error"]  # type: ignore[no-any-return]


def dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port whose accept queue is full: connection attempts hang until they time out."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = server.getsockname()[1]
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    yield port
    for filler in fillers:
        filler.close()
    server.close()


def key_states(live: Any, model: str) -> list[tuple[str, bool, int, str | None]]:
    return [
        (k.secret, k.enabled, k.errors, k.last_error)
        for k in live.services.pool.key_states(upstream_name(model))
    ]


# -- no answer at all ----------------------------------------------------------------------------


def unreachable_config(
    url_for: dict[str, str], *, timeout: float = 30, one_key: bool = False
) -> str:
    keys = {m: (k[0],) if one_key else k for m, k in BOTH_KEYS.items()}
    return two_upstreams(
        url_for["m-oa"],
        url_for["m-an"],
        openai_keys=keys["m-oa"],
        anthropic_keys=keys["m-an"],
        timeout=timeout,
    )


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_connection_refused(gateway, dialect, model):  # type: ignore[no-untyped-def]
    port = dead_port()
    clock = Clock()
    live = await gateway(
        unreachable_config(
            {"m-oa": f"http://127.0.0.1:{port}/v1", "m-an": f"http://127.0.0.1:{port}"}
        ),
        clock=clock,
    )
    for stream in (False, True):
        resp = await send(live, dialect, model, stream=stream)
        expect(dialect, resp, BAD_GATEWAY, "cannot connect")
        # Both keys were tried within the request, and both now cool down briefly.
        assert [s[2] for s in key_states(live, model)] == [1 + 2 * stream] * 2
        states = live.services.pool.key_states(upstream_name(model))
        assert [k.state(clock()) for k in states] == ["cooling"] * 2
        # With no key healthy, the keys a failure cooled are tried all the same: the client
        # gets the upstream's real failure again, not a 429 it did not cause.
        again = await send(live, dialect, model, stream=stream)
        expect(dialect, again, BAD_GATEWAY, "cannot connect")
        assert [s[2] for s in key_states(live, model)] == [2 + 2 * stream] * 2
        clock.advance(FAILURE_COOLDOWN)
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type, r.stream, r.upstream) for r in rows] == [
        ("error", 502, "api_error", False, upstream_name(model)),
        ("error", 502, "api_error", False, upstream_name(model)),
        ("error", 502, "api_error", True, upstream_name(model)),
        ("error", 502, "api_error", True, upstream_name(model)),
    ]
    assert "cannot connect" in (rows[0].error_message or "")


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_unresolvable_host(gateway, dialect, model):  # type: ignore[no-untyped-def]
    host = "bridgekeeper-no-such-host.invalid"
    live = await gateway(
        unreachable_config({"m-oa": f"http://{host}/v1", "m-an": f"http://{host}"})
    )
    resp = await send(live, dialect, model, stream=dialect == "openai")
    expect(dialect, resp, BAD_GATEWAY, host)
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type) for r in rows] == [("error", 502, "api_error")]


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_connect_timeout(gateway, blackhole, dialect, model):  # type: ignore[no-untyped-def]
    url = f"http://127.0.0.1:{blackhole}"
    live = await gateway(
        unreachable_config({"m-oa": url + "/v1", "m-an": url}, timeout=0.5, one_key=True)
    )
    resp = await send(live, dialect, model, stream=dialect == "anthropic")
    expect(dialect, resp, TIMEOUT, "0.5 s")
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type) for r in rows] == [
        ("error", 504, "timeout_error")
    ]


@pytest.fixture
def fakes(
    fake_openai: FakeUpstream, fake_anthropic: FakeUpstream
) -> tuple[FakeUpstream, FakeUpstream]:
    return fake_openai, fake_anthropic


async def faked(gateway, fakes, *, one_key: bool = False, timeout: float = 30, clock: Any = None):  # type: ignore[no-untyped-def]
    fo, fa = fakes
    keys = {m: (k[0],) if one_key else k for m, k in BOTH_KEYS.items()}
    config = two_upstreams(
        fo.url, fa.url, openai_keys=keys["m-oa"], anthropic_keys=keys["m-an"], timeout=timeout
    )
    return await gateway(config, clock=clock)


def sent_keys(fake: FakeUpstream) -> list[str]:
    out = []
    for r in fake.received:
        auth_header = r.headers.get("Authorization") or ""
        out.append(r.headers.get("X-Api-Key") or auth_header.removeprefix("Bearer "))
    return out


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_read_timeout_before_the_answer(gateway, fakes, dialect, model):  # type: ignore[no-untyped-def]
    clock = Clock()
    live = await faked(gateway, fakes, one_key=True, timeout=0.5, clock=clock)
    fake = upstream_of(model, *fakes)
    fake.push(HangReply(5), HangReply(5))
    for stream in (False, True):
        fake.disconnected.clear()
        resp = await send(live, dialect, model, stream=stream)
        expect(dialect, resp, TIMEOUT, "0.5 s")
        assert fake.disconnected.is_set(), "the gateway should hang up on a silent upstream"
        clock.advance(FAILURE_COOLDOWN)  # the key timed out: it cools down briefly
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type, r.stream) for r in rows] == [
        ("error", 504, "timeout_error", False),
        ("error", 504, "timeout_error", True),
    ]


def trickled(body: Any, pieces: int, delay: float) -> SSEReply:
    """A JSON body sent in ``pieces`` slow parts (a backend that stalls mid-answer)."""
    raw = orjson.dumps(body)
    size = -(-len(raw) // pieces)
    parts = [raw[i : i + size] for i in range(0, len(raw), size)]
    return SSEReply(parts, delay=delay, headers={"Content-Type": "application/json"})


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_slow_trickle_past_the_timeout(gateway, fakes, dialect, model):  # type: ignore[no-untyped-def]
    """A whole answer must arrive within the timeout; a stream must only never go silent
    for that long: one that keeps trickling is a long answer, one that stalls is cut."""
    clock = Clock()
    live = await faked(gateway, fakes, one_key=True, timeout=0.6, clock=clock)
    fake = upstream_of(model, *fakes)
    whole = openai_completion() if model == "m-oa" else anthropic_message()
    fake.push(trickled(whole, pieces=6, delay=0.25))
    expect(dialect, await send(live, dialect, model), TIMEOUT, "0.6 s")
    # On a loaded machine the 0.6 s can run out before the headers instead, which cools
    # the only key down (seen once in CI): the stream below must not depend on which.
    clock.advance(FAILURE_COOLDOWN)

    chunks = (
        openai_stream(["a", "b", "c", "d"])
        if model == "m-oa"
        else anthropic_stream(["a", "b", "c", "d"])
    )
    fake.push(SSEReply(chunks, delay=0.15))  # longer than 0.6 s in all, never silent for it
    slow = await send(live, dialect, model, stream=True)
    text = "".join(
        (e.json().get("delta") or {}).get("text", "")
        if dialect == "anthropic"
        else "".join(
            (c.get("delta") or {}).get("content") or "" for c in e.json().get("choices", [])
        )
        for e in events_of(slow)
    )
    assert text == "abcd"

    stalled = SSEReply(chunks[:3] + [b": still here\n\n"], delay=1.5)
    fake.push(stalled)
    resp = await send(live, dialect, model, stream=True)
    error = stream_error(dialect, resp)
    assert error["type"] == ("timeout_error" if dialect == "anthropic" else "timeout")
    assert "0.6 s" in error["message"]
    rows = await usage_rows(live)
    assert [(r.status, r.error_type, r.stream) for r in rows] == [
        ("error", "timeout_error", False),
        ("ok", None, True),
        ("error", "timeout_error", True),
    ]


# -- bad answers -----------------------------------------------------------------------------------

HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
HTML_503 = HTML_502.replace(b"502 Bad Gateway", b"503 Service Temporarily Unavailable")


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
@pytest.mark.parametrize(
    ("status", "html", "kind"),
    [
        pytest.param(502, HTML_502, BAD_GATEWAY, id="502"),
        pytest.param(
            503, HTML_503, (529, "overloaded_error", "server_error", "overloaded"), id="503"
        ),
    ],
)
async def test_5xx_with_an_html_body(gateway, fakes, dialect, model, status, html, kind):  # type: ignore[no-untyped-def]
    live = await faked(gateway, fakes)
    fake = upstream_of(model, *fakes)
    page = JsonReply(status, raw=html, headers={"Content-Type": "text/html"})
    fake.push(page, page)
    resp = await send(live, dialect, model)
    expect(dialect, resp, kind, str(status))
    message = resp.json()["error"]["message"]
    assert "<" not in message, "an HTML page should come back as one readable line"
    assert ("Bad Gateway" if status == 502 else "Unavailable") in message
    assert sent_keys(fake) == list(BOTH_KEYS[model])  # the second key was tried too
    rows = await usage_rows(live)
    assert [(r.status, r.http_status) for r in rows] == [("error", kind[0])]


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_5xx_on_one_key_is_hidden_by_the_next(gateway, fakes, dialect, model):  # type: ignore[no-untyped-def]
    live = await faked(gateway, fakes)
    fake = upstream_of(model, *fakes)
    fake.push(JsonReply(500, raw=b"Internal Server Error", headers={"Content-Type": "text/plain"}))
    resp = await send(live, dialect, model, stream=True)
    assert resp.status == 200 and len(events_of(resp)) > 3
    assert sent_keys(fake) == list(BOTH_KEYS[model])
    states = key_states(live, model)
    assert [(s[1], s[2]) for s in states] == [(True, 1), (True, 0)]
    assert "Internal Server Error" in (states[0][3] or "")


def rate_limited(model: str, retry_after: str | None) -> JsonReply:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    if model == "m-oa":
        body: Any = {
            "error": {
                "message": "Rate limit reached",
                "type": "requests",
                "code": "rate_limit_exceeded",
            }
        }
    else:
        body = {
            "type": "error",
            "error": {"type": "rate_limit_error", "message": "Rate limit reached"},
        }
    return JsonReply(429, body, headers)


RATE_LIMITED = (429, "rate_limit_error", "rate_limit_error", "rate_limit_exceeded")


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_429_with_retry_after_rotates_then_reports_the_soonest(
    gateway, fakes, dialect, model
):  # type: ignore[no-untyped-def]
    clock = Clock()
    live = await faked(gateway, fakes, clock=clock)
    fake = upstream_of(model, *fakes)
    fake.push(rate_limited(model, "12"))
    ok = await send(live, dialect, model)
    assert ok.status == 200  # the second key answered within the same request
    assert sent_keys(fake) == list(BOTH_KEYS[model])

    fake.push(rate_limited(model, "7"))
    resp = await send(live, dialect, model, stream=True)
    expect_backends(dialect, model, resp, rate_limited(model, "7"), RATE_LIMITED, "Rate limit")
    assert resp.headers["retry-after"] == "7"
    assert sent_keys(fake)[2:] == [BOTH_KEYS[model][1]]  # the first key was still cooling

    clock.advance(7)
    assert (await send(live, dialect, model)).status == 200
    assert sent_keys(fake)[3:] == [BOTH_KEYS[model][1]]
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type) for r in rows] == [
        ("ok", 200, None),
        ("rate_limited", 429, "rate_limit_error"),
        ("ok", 200, None),
    ]


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_429_without_retry_after_cools_for_the_default(gateway, fakes, dialect, model):  # type: ignore[no-untyped-def]
    clock = Clock()
    live = await faked(gateway, fakes, one_key=True, clock=clock)
    fake = upstream_of(model, *fakes)
    fake.push(rate_limited(model, None))
    resp = await send(live, dialect, model)
    expect_backends(dialect, model, resp, rate_limited(model, None), RATE_LIMITED, "Rate limit")
    assert resp.headers["retry-after"] == str(int(RATE_LIMIT_COOLDOWN))
    clock.advance(RATE_LIMIT_COOLDOWN - 1)
    again = await send(live, dialect, model)
    expect(dialect, again, RATE_LIMITED, "cooling down")
    assert again.headers["retry-after"] == "1"
    assert len(fake.received) == 1
    clock.advance(1)
    assert (await send(live, dialect, model)).status == 200


def rejected(model: str) -> JsonReply:
    if model == "m-oa":
        body: Any = {
            "error": {
                "message": "Incorrect API key provided",
                "type": "invalid_request_error",
                "code": "invalid_api_key",
            }
        }
    else:
        body = {
            "type": "error",
            "error": {"type": "authentication_error", "message": "invalid x-api-key"},
        }
    return JsonReply(401, body)


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_401_disables_the_key_and_the_next_one_answers(gateway, fakes, dialect, model):  # type: ignore[no-untyped-def]
    live = await faked(gateway, fakes)
    fake = upstream_of(model, *fakes)
    fake.push(rejected(model))
    assert (await send(live, dialect, model, stream=True)).status == 200
    assert (await send(live, dialect, model)).status == 200
    first, second = BOTH_KEYS[model]
    assert sent_keys(fake) == [first, second, second]
    states = key_states(live, model)
    assert [(s[1], s[2]) for s in states] == [(False, 1), (True, 0)]
    await usage_rows(live)  # flushes key state too
    async with live.services.db.session() as session:
        rows = await session.execute(
            select(UpstreamKey.enabled, UpstreamKey.disabled_reason)
            .join(Upstream)
            .where(Upstream.name == upstream_name(model))
            .order_by(UpstreamKey.position)
        )
        persisted = [(enabled, (reason or "")[:8]) for enabled, reason in rows]
    assert persisted == [(False, "HTTP 401"), (True, "")]


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_401_on_the_only_key_is_the_gateways_problem_not_the_clients(
    gateway, fakes, dialect, model
):  # type: ignore[no-untyped-def]
    """The client's own key is fine (it is never sent upstream): telling it 401 would make
    Claude Code ask its user to log in again. It gets a 502 naming the upstream's verdict."""
    live = await faked(gateway, fakes, one_key=True)
    fake = upstream_of(model, *fakes)
    fake.push(rejected(model))
    resp = await send(live, dialect, model)
    expect(dialect, resp, BAD_GATEWAY, "401")
    assert upstream_name(model) in resp.json()["error"]["message"]
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type) for r in rows] == [("error", 502, "api_error")]


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_malformed_json_answer(gateway, fakes, dialect, model):  # type: ignore[no-untyped-def]
    live = await faked(gateway, fakes)
    fake = upstream_of(model, *fakes)
    broken = JsonReply(200, raw=b'{"id": "x", "choices": [{"message": ')
    fake.push(broken, broken)
    resp = await send(live, dialect, model)
    expect(dialect, resp, BAD_GATEWAY, "not valid JSON")
    assert sent_keys(fake) == list(BOTH_KEYS[model])  # the second key was tried too
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type) for r in rows] == [("error", 502, "api_error")]


def nested(depth: int) -> str:
    """A JSON object whose one value is ``depth`` arrays, one inside the other."""
    return '{"a": ' + "[" * depth + "]" * depth + "}"


def tool_answer(model: str, arguments: str) -> JsonReply:
    """A whole answer calling one tool with ``arguments`` (JSON text), raw: orjson writes no
    more than 254 levels, and the tests need more."""
    if model == "m-oa":
        call = '{"id": "call_1", "type": "function", "function": {"name": "probe", '
        call += '"arguments": ' + orjson.dumps(arguments).decode() + "}}"
        raw = (
            '{"id": "chatcmpl-deep", "object": "chat.completion", "created": 1700000000, '
            '"model": "fake-model", "choices": [{"index": 0, "message": {"role": "assistant", '
            '"content": null, "tool_calls": [' + call + ']}, "finish_reason": "tool_calls"}], '
            '"usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}}'
        )
    else:
        raw = (
            '{"id": "msg_deep", "type": "message", "role": "assistant", "model": "fake-model", '
            '"content": [{"type": "tool_use", "id": "toolu_1", "name": "probe", "input": '
            + arguments
            + '}], "stop_reason": "tool_use", "stop_sequence": null, '
            '"usage": {"input_tokens": 11, "output_tokens": 7}}'
        )
    return JsonReply(200, raw=raw.encode())


@pytest.mark.parametrize(
    ("dialect", "model"),
    [
        pytest.param("anthropic", "m-oa", id="anthropic-translated"),
        pytest.param("openai", "m-an", id="openai-translated"),
    ],
)
async def test_an_answer_nested_deeper_than_can_be_written_is_a_502(gateway, fakes, dialect, model):  # type: ignore[no-untyped-def]
    """Tool input nested 600 levels: read (orjson reads 1,024), not writable in the client's
    dialect (254). The backend's fault, so a 502, not the 400 a request that deep gets."""
    live = await faked(gateway, fakes)
    fake = upstream_of(model, *fakes)
    fake.push(tool_answer(model, nested(600)), tool_answer(model, nested(600)))
    resp = await send(live, dialect, model)
    expect(dialect, resp, BAD_GATEWAY, "upstream answered with JSON nested too deeply")
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type) for r in rows] == [("error", 502, "api_error")]


async def test_tool_arguments_nested_past_the_recursion_limit_become_an_empty_input(gateway, fakes):  # type: ignore[no-untyped-def]
    """Arguments text nested 5,000 levels: orjson refuses it, the lenient reading (a
    complete object followed by junk) runs out of stack; unparsable, so ``{}`` as for any
    arguments that are not an object, in the whole answer and in the stream."""
    live = await faked(gateway, fakes)
    fo, _ = fakes
    deep = nested(5000)
    fo.push(tool_answer("m-oa", deep))
    resp = await send(live, "anthropic", "m-oa")
    assert resp.status == 200, resp.content[:300]
    (block,) = orjson.loads(resp.content)["content"]
    assert (block["type"], block["name"], block["input"]) == ("tool_use", "probe", {})
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "probe"}}
    chunk = {"id": "chatcmpl-deep", "object": "chat.completion.chunk", "created": 1700000000}
    chunk["model"] = "fake-model"
    first = dict(chunk, choices=[{"index": 0, "delta": {"tool_calls": [call]}}])
    end = dict(chunk, choices=[{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])
    # 600 levels too: a stream relays the arguments as text, so only its count of the
    # tool's input (orjson writing the object read back) meets the depth.
    for text in (deep, nested(600)):
        args = {"index": 0, "function": {"arguments": text}}
        second = dict(chunk, choices=[{"index": 0, "delta": {"tool_calls": [args]}}])
        fo.push(SSEReply([openai_chunk(c) for c in (first, second, end)] + [OPENAI_DONE]))
        resp = await send(live, "anthropic", "m-oa", stream=True)
        events = events_of(resp)
        names = [e.event for e in events]
        assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"], names
        assert "error" not in names
        streamed = "".join(
            e.json()["delta"]["partial_json"]
            for e in events
            if e.event == "content_block_delta" and e.json()["delta"]["type"] == "input_json_delta"
        )
        assert streamed == text
    rows = await usage_rows(live)
    assert [(r.status, r.http_status) for r in rows] == [("ok", 200)] * 3


def deep_tool_stream() -> list[bytes]:
    """An Anthropic stream with a tool_use block whose start holds an input nested 600
    levels (raw: orjson writes no more than 254)."""
    events = anthropic_stream(["Hi"])
    start = (
        b'event: content_block_start\ndata: {"type": "content_block_start", "index": 1, '
        b'"content_block": {"type": "tool_use", "id": "toolu_1", "name": "probe", "input": '
        + nested(600).encode()
        + b"}}\n\n"
    )
    return events[:4] + [start] + events[4:]


async def test_a_stream_event_nested_deeper_than_can_be_written_is_relayed_as_it_came(
    gateway, fakes
):  # type: ignore[no-untyped-def]
    """Passthrough: the gateway counts the tool's input for the usage trail but never
    writes it; the stream reaches the client byte for byte."""
    live = await faked(gateway, fakes)
    _, fa = fakes
    fa.push(SSEReply(deep_tool_stream()))
    resp = await send(live, "anthropic", "m-an", stream=True)
    assert resp.status == 200
    assert resp.content == b"".join(deep_tool_stream())
    rows = await usage_rows(live)
    assert [(r.status, r.http_status) for r in rows] == [("ok", 200)]


async def test_a_stream_event_nested_deeper_than_can_be_written_ends_in_an_error(gateway, fakes):  # type: ignore[no-untyped-def]
    """A tool_use block opening with its input nested 600 levels (an Anthropic backend's
    stream to a chat client, which gets the input as arguments text written by the
    gateway): the stream ends in the 502's error event after the content before it, not
    in a broken connection."""
    live = await faked(gateway, fakes)
    _, fa = fakes
    fa.push(SSEReply(deep_tool_stream()))
    resp = await send(live, "openai", "m-an", stream=True)
    error = stream_error("openai", resp)
    assert error["type"] == "server_error"
    assert "Hi" in resp.content.decode()  # what came before it, in the same read too
    assert "upstream answered with JSON nested too deeply" in error["message"]
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type) for r in rows] == [("error", 200, "api_error")]


# -- broken streams --------------------------------------------------------------------------------


def partial_stream(model: str) -> list[bytes]:
    """The first events of a stream: content has started, no end yet."""
    if model == "m-oa":
        return openai_stream(["Hel", "lo"], prompt=21, completion=5)[:3]
    return anthropic_stream(["Hel", "lo"], input_tokens=21, output_tokens=5)[:5]


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
@pytest.mark.parametrize("how", ["connection_cut", "clean_end"])
async def test_stream_cut_without_a_terminator(gateway, fakes, dialect, model, how):  # type: ignore[no-untyped-def]
    live = await faked(gateway, fakes)
    fake = upstream_of(model, *fakes)
    fake.push(SSEReply(partial_stream(model), cut=how == "connection_cut"))
    resp = await send(live, dialect, model, stream=True)
    error = stream_error(dialect, resp)
    assert error["type"] == ("api_error" if dialect == "anthropic" else "server_error")
    assert "Hello" in resp.content.decode() or "Hel" in resp.content.decode()
    if dialect == "anthropic" and model == "m-oa":
        # Translated, the text block is closed before the error, cut connection or clean end
        # (§7.1; a passed-through stream is relayed as the upstream sent it).
        names = [e.event for e in SSEParser().feed(resp.content)]
        assert names[-3:] == ["content_block_delta", "content_block_stop", "error"], names
    assert len(fake.received) == 1  # no second attempt after bytes reached the client
    rows = await usage_rows(live)
    assert [(r.status, r.http_status, r.error_type) for r in rows] == [("error", 200, "api_error")]
    if model == "m-an":  # message_start carried the input tokens
        assert rows[0].input_tokens == 21


def error_event(model: str) -> bytes:
    if model == "m-oa":
        return openai_chunk(
            {
                "error": {
                    "message": "Overloaded",
                    "type": "overloaded_error",
                    "param": None,
                    "code": None,
                }
            }
        )
    return anthropic_event(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_error_event_mid_stream(gateway, fakes, dialect, model):  # type: ignore[no-untyped-def]
    live = await faked(gateway, fakes)
    fake = upstream_of(model, *fakes)
    fake.push(SSEReply(partial_stream(model) + [error_event(model)]))
    resp = await send(live, dialect, model, stream=True)
    error = stream_error(dialect, resp)
    assert error["message"] == "Overloaded"
    assert error["type"] in (
        ("overloaded_error",) if dialect == "anthropic" else ("overloaded_error", "server_error")
    )
    assert len(fake.received) == 1
    rows = await usage_rows(live)
    assert [(r.status, r.error_type, r.error_message) for r in rows] == [
        ("error", "overloaded_error", "Overloaded")
    ]
