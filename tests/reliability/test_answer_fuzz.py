"""Deterministic mutation fuzzing of what the backend sends back: whole answers and SSE
streams of both dialects, served by the fake upstreams to clients of both dialects (and a
Responses client) on the translated and the passthrough route.

Seed answers are the golden upstream answers under ``tests/fixtures/`` (``response_in.json``,
``stream_in.sse``, and the Responses cases' ``chat_in.*`` and ``anthropic_in.json``) plus a
few written here (tool calls, thinking and reasoning, a usage-only chunk, error events).
Each is mutated with a `random.Random` seeded by a string: a JSON node replaced by a value
of another type (objects nested 300 levels among them: past the 254 orjson writes, under
the 1,024 it reads), a key deleted or added, an array item duplicated; for streams, events
swapped, duplicated, dropped, renamed to unknown types or given invalid JSON, the stream
cut mid-event or mid-line, events split across reads, CRLF line ends; for whole answers, a
body that is not JSON, a JSON array, the wrong content type.

Whatever the backend sent, the client never gets a 500 and the log holds no traceback; a
translated answer is a 200 valid in the client's dialect (a stream well-formed and ended
as that dialect ends one: ``message_stop`` or an ``error`` event after its blocks are
closed, ``[DONE]`` or an error chunk, a Responses terminal event) or an error in the
client's envelope; a passthrough relays what it got. Every request leaves a usage row and
the gateway answers a valid request after each batch.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.dialects.sse import OPENAI_DONE, anthropic_event
from tests.fakes import (
    JsonReply,
    SSEReply,
    anthropic_block,
    anthropic_end,
    anthropic_message,
    openai_completion,
    openai_delta,
    openai_usage,
)
from tests.reliability.conftest import (
    Bed,
    Resp,
    auth,
    call,
    check_error,
    message_blocks,
    usage_rows,
)
from tests.reliability.test_mutation_fuzz import (
    Raw,
    _get,
    _is_int,
    _name,
    _pick,
    _problems,
    _set,
    _short,
    _text,
    chat_data,
    check_completion,
    check_message,
    named_events,
)

A, O = "anthropic", "openai"  # noqa: E741
R = "responses"  # an OpenAI client of /v1/responses
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODEL = {A: "m-an", O: "m-oa"}  # the backend of each dialect (as in conftest)
PATH = {A: "/v1/messages", O: "/v1/chat/completions", R: "/v1/responses"}
CUT = "upstream stream ended before completion"
DEEP = 300  # levels of objects: past the 254 orjson writes, under the 1,024 it reads


@pytest.fixture(scope="module")
def bed(bed_factory: Callable[..., Bed]) -> Bed:
    return bed_factory()


# -- the seed answers ----------------------------------------------------------------------------

Event = str  # one SSE event's text, without the blank line that ends it
Whole = list[tuple[str, Any]]
Streams = list[tuple[str, list[Event]]]


def _files(pattern: str) -> Iterator[tuple[str, Path]]:
    for path in sorted(FIXTURES.glob(pattern)):
        yield f"{path.parent.parent.name}/{path.parent.name}", path


def _events(raw: bytes) -> list[Event]:
    text = raw.decode().replace("\r\n", "\n")
    return [event for event in text.split("\n\n") if event.strip("\n")]


def _stream(chunks: list[bytes]) -> list[Event]:
    return _events(b"".join(chunks))


WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}}


def _written_openai_whole() -> Whole:
    tools = openai_completion("", prompt_tokens=30, completion_tokens=12)
    tools["choices"][0]["message"] = {
        "role": "assistant",
        "content": None,
        "reasoning_content": "The user wants the weather.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
            },
        ],
    }
    tools["choices"][0]["finish_reason"] = "tool_calls"
    tools["usage"]["prompt_tokens_details"] = {"cached_tokens": 10}
    tools["usage"]["completion_tokens_details"] = {"reasoning_tokens": 5}
    think = openai_completion("<think>Hmm.</think>The answer is 4.")
    return [("written/tool_calls_reasoning", tools), ("written/think_tags", think)]


def _written_anthropic_whole() -> Whole:
    message = anthropic_message("", input_tokens=30, output_tokens=12)
    message["content"] = [
        {"type": "thinking", "thinking": "Weather, then.", "signature": "EqQBCkYIBxgC"},
        {"type": "redacted_thinking", "data": "EmwKAhgB"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    message["stop_reason"] = "tool_use"
    return [("written/thinking_tool_use", message)]


def _written_openai_streams() -> Streams:
    call_start = {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    args = [
        {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
        for piece in ('{"ci', 'ty": "Pa', 'ris"}')
    ]
    tools = [
        openai_delta({"role": "assistant", "content": ""}),
        openai_delta({"reasoning_content": "The user wants "}),
        openai_delta({"reasoning_content": "the weather."}),
        openai_delta(call_start),
        *[openai_delta(a) for a in args],
        openai_delta({}, "tool_calls"),
        openai_usage(30, 12, cached=10),
        OPENAI_DONE,
    ]
    error = {"error": {"message": "Overloaded", "type": "server_error", "param": None}}
    failing = [
        openai_delta({"role": "assistant", "content": ""}),
        openai_delta({"content": "Part"}),
        b"data: " + orjson.dumps(error) + b"\n\n",
        OPENAI_DONE,
    ]
    usage_only = [
        openai_delta({"role": "assistant", "content": "Hi"}),
        openai_delta({}, "stop"),
        openai_usage(11, 2),
        openai_usage(11, 3),  # a second usage-only chunk: some backends repeat it
        OPENAI_DONE,
    ]
    return [
        ("written/tool_reasoning_stream", _stream(tools)),
        ("written/error_chunk", _stream(failing)),
        ("written/usage_only_chunks", _stream(usage_only)),
    ]


def _written_anthropic_streams() -> Streams:
    start = anthropic_message("", input_tokens=30, output_tokens=1)
    start.update(content=[], stop_reason=None)
    head = [
        anthropic_event("message_start", {"type": "message_start", "message": start}),
        anthropic_event("ping", {"type": "ping"}),
    ]
    thinking = anthropic_block(
        0,
        {"type": "thinking", "thinking": "", "signature": ""},
        [
            {"type": "thinking_delta", "thinking": "Weather, then."},
            {"type": "signature_delta", "signature": "EqQBCkYIBxgC"},
        ],
    )
    tool = anthropic_block(
        1,
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
        [
            {"type": "input_json_delta", "partial_json": '{"ci'},
            {"type": "input_json_delta", "partial_json": 'ty": "Paris"}'},
        ],
    )
    text = anthropic_block(0, {"type": "text", "text": ""}, [{"type": "text_delta", "text": "Hi"}])
    error = anthropic_event(
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    return [
        ("written/thinking_tool_stream", _stream(head + thinking + tool + anthropic_end("tool_use", 12))),
        ("written/error_event", _stream(head + text[:2] + [error])),
    ]  # fmt: skip


def whole_seeds(dialect: str) -> Whole:
    if dialect == O:
        found = [*_files("anthropic_to_openai/*/response_in.json")]
        found += _files("responses_answer/*/chat_in.json")
        written = _written_openai_whole()
    else:
        found = [*_files("openai_to_anthropic/*/response_in.json")]
        found += _files("responses_answer/*/anthropic_in.json")
        written = _written_anthropic_whole()
    return [(name, orjson.loads(path.read_bytes())) for name, path in found] + written


def stream_seeds(dialect: str) -> Streams:
    if dialect == O:
        found = [*_files("anthropic_to_openai/*/stream_in.sse")]
        found += _files("responses_answer/*/chat_in.sse")
        written = _written_openai_streams()
    else:
        found = [*_files("openai_to_anthropic/*/stream_in.sse")]
        written = _written_anthropic_streams()
    return [(name, _events(path.read_bytes())) for name, path in found] + written


# -- mutating a JSON value -----------------------------------------------------------------------


def deep_object(depth: int = DEEP) -> Raw:
    return Raw('{"a":' * depth + "1" + "}" * depth, f"<object nested {depth} deep>")


ODD_VALUES: list[Any] = [
    None, True, False, 0, -1, 1.5, -2.5, 2**63, -(2**63), 10**30, 1e308, "", "x",
    "y" * 5000, [], {}, [None], {"type": None},
]  # fmt: skip


def replace_node(rng: random.Random, data: Any) -> tuple[Any, str]:
    where = _pick(rng, data, lambda n: True)
    assert where is not None
    new = deep_object() if rng.random() < 0.1 else copy.deepcopy(rng.choice(ODD_VALUES))
    return _set(data, where, new), f"{_name(where)} = {_short(new)}"


def delete_key(rng: random.Random, data: Any) -> tuple[Any, str]:
    where = _pick(rng, data, lambda n: isinstance(n, dict) and bool(n))
    if where is None:
        return data, "nothing to delete"
    node = _get(data, where)
    key = rng.choice(sorted(node))
    del node[key]
    return data, f"del {_name((*where, key))}"


def add_key(rng: random.Random, data: Any) -> tuple[Any, str]:
    where = _pick(rng, data, lambda n: isinstance(n, dict))
    if where is None:
        return data, "nowhere to add a key"
    key = rng.choice(["type", "index", "error", "usage", "delta", "x_extra", "choices", "content"])
    value = copy.deepcopy(rng.choice(ODD_VALUES))
    _get(data, where)[key] = value
    return data, f"{_name((*where, key))} := {_short(value)}"


def duplicate_item(rng: random.Random, data: Any) -> tuple[Any, str]:
    where = _pick(rng, data, lambda n: isinstance(n, list) and bool(n))
    if where is None:
        return data, "no array to grow"
    node = _get(data, where)
    k = rng.randrange(len(node))
    node.insert(k, copy.deepcopy(node[k]))
    return data, f"{_name((*where, k))} twice"


JSON_MUTATIONS: list[Callable[[random.Random, Any], tuple[Any, str]]] = [
    replace_node, replace_node, replace_node, delete_key, add_key, duplicate_item,
]  # fmt: skip


def mutate_json(rng: random.Random, data: Any) -> tuple[Any, str]:
    return rng.choice(JSON_MUTATIONS)(rng, data)


# -- mutants ----------------------------------------------------------------------------------


@dataclass
class Mutant:
    id: str
    dialect: str  # the backend's
    stream: bool  # asked for by the client
    reply: JsonReply | SSEReply


def whole_mutant(rng: random.Random, name: str, data: Any, dialect: str) -> Mutant:
    data = copy.deepcopy(data)
    roll = rng.random()
    headers: dict[str, str] = {}
    if roll < 0.06:
        raw, said = rng.choice(
            [
                (b"<html><body>Bad gateway</body></html>", "an HTML body"),
                (b"", "an empty body"),
                (b"not json at all", "plain text"),
                (_text(data).encode()[:40], "cut after 40 bytes"),
                (b"\xff\xfe{}", "not UTF-8"),
            ]
        )
    elif roll < 0.1:
        raw, said = _text([data]).encode(), "in a JSON array"
    elif roll < 0.14:
        raw, said = _text(rng.choice([None, "x", 42, True])).encode(), "a JSON scalar"
    else:
        done = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            data, step = mutate_json(rng, data)
            done.append(step)
        raw, said = _text(data).encode(), "; ".join(done)
    if rng.random() < 0.08:
        headers["Content-Type"] = rng.choice(["text/html", "text/plain", "text/event-stream"])
        said += f" as {headers['Content-Type']}"
    return Mutant(f"{name}: {said}", dialect, False, JsonReply(raw=raw, headers=headers))


def _event_json(event: Event) -> tuple[int, Any] | None:
    """The line index and parsed JSON of ``event``'s one ``data:`` line, if it has that."""
    lines = event.split("\n")
    found = [i for i, line in enumerate(lines) if line.startswith("data:")]
    if len(found) != 1:
        return None
    try:
        return found[0], orjson.loads(lines[found[0]][5:])
    except orjson.JSONDecodeError:
        return None


def _with_json(event: Event, at: int, data: Any) -> Event:
    lines = event.split("\n")
    lines[at] = "data: " + _text(data)
    return "\n".join(lines)


UNKNOWN = ["x_mystery", "content_block_wobble", "response.created", "message"]


def mutate_events(rng: random.Random, events: list[Event]) -> tuple[list[Event], str]:
    if not events:
        return events, "no events"
    k = rng.randrange(len(events))
    roll = rng.random()
    if roll < 0.45:
        found = _event_json(events[k])
        if found is None:
            return events, f"event {k} has no JSON"
        at, data = found
        data, said = mutate_json(rng, data)
        events[k] = _with_json(events[k], at, data)
        return events, f"event {k}: {said}"
    if roll < 0.55:
        j = rng.randrange(len(events))
        events[k], events[j] = events[j], events[k]
        return events, f"events {k} and {j} swapped"
    if roll < 0.63:
        events.insert(k, events[k])
        return events, f"event {k} twice"
    if roll < 0.71:
        del events[k]
        return events, f"event {k} dropped"
    if roll < 0.8:
        name = rng.choice(UNKNOWN)
        data = orjson.dumps({"type": name, "index": 0}).decode()
        events.insert(k, f"event: {name}\ndata: {data}")
        return events, f"an unknown event {name!r} before event {k}"
    if roll < 0.9:
        bad = rng.choice(['{"type": "content_block_delta", ', "{'a': 1}", "nope", "{}{}", ""])
        lines = events[k].split("\n")
        lines = [("data: " + bad) if line.startswith("data:") else line for line in lines]
        events[k] = "\n".join(lines)
        return events, f"event {k} data = {bad!r}"
    found = _event_json(events[k])
    if found is None:
        return events, f"event {k} has no JSON"
    at, data = found
    deep = Raw(_text(data).replace("{", '{"deep":' + deep_object().text + ",", 1), "deep")
    events[k] = _with_json(events[k], at, deep)
    return events, f"event {k} given an object nested {DEEP} deep"


def stream_mutant(rng: random.Random, name: str, events: list[Event], dialect: str) -> Mutant:
    events = list(events)
    done = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        events, said = mutate_events(rng, events)
        done.append(said)
    sep = "\n"
    if rng.random() < 0.12:
        sep = "\r\n"
        done.append("CRLF")
    raw = "".join((event + "\n\n").replace("\n", sep) for event in events).encode()
    cut = False
    if rng.random() < 0.15 and raw:
        end = rng.randrange(len(raw))
        raw, cut = raw[:end], rng.random() < 0.5
        done.append(f"cut at byte {end}" + (" (connection dropped)" if cut else ""))
    # Reads: one an event mostly; else at random bytes (an event or a line split in two).
    if rng.random() < 0.3 and len(raw) > 2:
        points = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 6))))
        chunks = [raw[i:j] for i, j in zip([0, *points], [*points, len(raw)], strict=True)]
        done.append(f"split at bytes {points}")
    else:
        chunks = [c + b"\n\n" for c in raw.split(b"\n\n") if c] if sep == "\n" else [raw]
        if not raw.endswith(b"\n\n") and chunks:
            chunks[-1] = chunks[-1][:-2]
    headers: dict[str, str] = {}
    if rng.random() < 0.04:
        headers["Content-Type"] = rng.choice(["application/json", "text/plain"])
        done.append(f"as {headers['Content-Type']}")
    reply = SSEReply(chunks=[c for c in chunks if c], cut=cut, headers=headers)
    return Mutant(f"{name}: {'; '.join(done)}", dialect, True, reply)


def mutants(dialect: str, stream: bool, count: int) -> list[Mutant]:
    """``count`` mutants spread over the seeds; each seed's name seeds its generator."""
    seeds: list[tuple[str, Any]] = [*(stream_seeds(dialect) if stream else whole_seeds(dialect))]
    per_seed = -(-count // len(seeds))
    out = []
    for name, seed in seeds:
        for k in range(per_seed):
            rng = random.Random(f"answer:{dialect}:{stream}:{name}:{k}")
            make = stream_mutant if stream else whole_mutant
            out.append(make(rng, f"{name} #{k}", seed, dialect))
    return out


# -- what a client may get -------------------------------------------------------------------------


def request_body(client: str, model: str, stream: bool, k: int) -> dict[str, Any]:
    """A valid request; every other one offers the tool the seeds call and asks to think."""
    tooled = k % 2 == 1
    if client == A:
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": 2048,
            "messages": [{"role": "user", "content": "hi"}],
        }
        if tooled:
            body["tools"] = [{"name": "get_weather", "input_schema": WEATHER}]
            body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
    elif client == O:
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        if tooled:
            body["tools"] = [
                {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}
            ]
            body["reasoning_effort"] = "low"
        if stream and tooled:
            body["stream_options"] = {"include_usage": True}
    else:
        body = {"model": model, "input": "hi"}
        if tooled:
            body["tools"] = [{"type": "function", "name": "get_weather", "parameters": WEATHER}]
    if stream:
        body["stream"] = True
    return body  # fmt: skip


def check_error_reply(client: str, resp: Resp) -> None:
    """A translated answer refused: a 502 for the backend's garbage, or the status of an
    error the backend reported (an error object in a 200), in the client's envelope."""
    dialect = A if client == A else O
    if resp.status == 502:
        check_error(dialect, resp, 502, "api_error" if dialect == A else "server_error", "")
    else:
        assert resp.status in (400, 401, 403, 404, 408, 413, 429, 503, 504, 529), resp.status
        body = resp.json()
        check_error(dialect, resp, resp.status, body["error"]["type"], "")


def check_response(data: Any) -> None:
    assert data["object"] == "response", data
    assert data["status"] in ("completed", "incomplete"), data
    assert isinstance(data["id"], str) and isinstance(data["model"], str), data
    assert isinstance(data["output"], list), data
    for item in data["output"]:
        assert isinstance(item, dict) and isinstance(item.get("type"), str), data
    usage = data["usage"]  # optional in a Response: a chat answer may come without one
    assert usage is None or _is_int(usage["input_tokens"]) and _is_int(usage["output_tokens"])


def check_message_stream(raw: bytes) -> None:
    """message_start first; blocks opened at 0, 1, 2... one at a time, each delta in the
    open one; last either message_delta then message_stop, or an error event. A stream
    cut short has its open block closed before the error; an error the upstream sent (or
    an event it garbled) closes nothing (PROTOCOL.md §7.1)."""
    events = named_events(raw)
    names = [e["type"] for e in events]
    assert names and names[-1] in ("message_stop", "error"), names
    assert names.count("message_stop") + names.count("error") == 1, names
    if names[-1] == "error":
        assert set(events[-1]["error"]) == {"type", "message"}, events[-1]
        assert isinstance(events[-1]["error"]["message"], str), events[-1]
    else:
        assert names[-2] == "message_delta", names
    if names[0] == "error":
        return  # failed before the answer began
    assert names[0] == "message_start" and names.count("message_start") == 1, names
    assert names.count("message_delta") <= 1, names
    count, _ = message_blocks(
        events,
        names,
        closed=lambda e: e["type"] == "message_delta" or e is events[-1] and cut_short(e),
    )
    if names[-1] == "message_stop":
        delta = events[-2]
        assert count, names
        assert isinstance(delta["delta"]["stop_reason"], str), delta
        assert _is_int(delta["usage"]["output_tokens"]), delta


def cut_short(event: dict[str, Any]) -> bool:
    return event["type"] == "error" and event["error"]["message"] == CUT


def check_chat_stream(raw: bytes) -> None:
    """``data:`` chunks of ``chat.completion.chunk``, then ``[DONE]`` after one finish
    reason, or an error chunk last (after at most one: the upstream may garble its
    stream's terminator after its finish)."""
    data = chat_data(raw)
    assert data, raw[:300]
    failed = data[-1] != "[DONE]"
    chunks = [orjson.loads(d) for d in (data if failed else data[:-1])]
    if failed:
        error = chunks.pop()
        assert set(error) == {"error"}, error
        assert set(error["error"]) == {"message", "type", "param", "code"}, error
        assert isinstance(error["error"]["message"], str), error
    for chunk in chunks:
        assert "error" not in chunk, chunk
        assert chunk["object"] == "chat.completion.chunk", chunk
        assert isinstance(chunk["choices"], list), chunk
    finishes = [c["finish_reason"] for k in chunks for c in k["choices"] if c["finish_reason"]]
    assert len(finishes) == 1 or failed and not finishes, chunks
    assert all(isinstance(f, str) for f in finishes), finishes


def check_responses_stream(raw: bytes) -> None:
    """response.created first, numbered 0, 1, 2..., a terminal event last."""
    events = named_events(raw)
    names = [e["type"] for e in events]
    terminal = ("response.completed", "response.incomplete", "response.failed")
    assert names[0] == "response.created" and names[-1] in terminal, names
    assert sum(names.count(t) for t in terminal) == 1, names
    assert [e["sequence_number"] for e in events] == list(range(len(events))), names
    final = events[-1]["response"]
    assert final["status"] == names[-1].removeprefix("response."), final
    assert isinstance(final["output"], list), final


WHOLE = {A: check_message, O: check_completion, R: check_response}
STREAM = {A: check_message_stream, O: check_chat_stream, R: check_responses_stream}


def route_of(client: str, backend: str) -> str:
    return "passthrough" if client == backend else "translated"


def verdict(
    bed: Bed, client: str, mutant: Mutant, k: int, caplog: pytest.LogCaptureFixture
) -> tuple[int, str | None]:
    """The status the gateway answers ``client`` with when the backend sends ``mutant``,
    and what is wrong with that answer (None if nothing)."""
    fake = bed.fa if mutant.dialect == A else bed.fo
    fake.script.clear()
    fake.push(mutant.reply, mutant.reply, mutant.reply)  # however often it is asked
    seen = len(caplog.records)
    body = orjson.dumps(request_body(client, MODEL[mutant.dialect], mutant.stream, k))
    resp = call("POST", bed.port, PATH[client], body=body, headers=auth())
    fake.script.clear()
    del fake.received[:]
    try:
        assert resp.status != 500, "a 500"
        if route_of(client, mutant.dialect) == "translated":
            if resp.status != 200:
                check_error_reply(client, resp)
            elif mutant.stream:
                assert resp.headers["content-type"].startswith("text/event-stream")
                STREAM[client](resp.body)
            else:
                assert resp.headers["content-type"].startswith("application/json")
                WHOLE[client](resp.json())
    except (AssertionError, KeyError, IndexError, TypeError, ValueError) as exc:
        said = (str(exc).splitlines() or [""])[0]
        return resp.status, f"{type(exc).__name__}({said:.300}) <- {resp.body[-400:]!r}"
    logged = _problems(caplog, seen) + [
        r.getMessage()
        for r in caplog.records[seen:]
        if "failed while being answered" in r.getMessage()
    ]
    return resp.status, f"logged {logged}" if logged else None


def recorded(bed: Bed) -> int:
    """Usage rows written so far (a reply's row is queued just after its last byte)."""

    async def count() -> int:
        rows = len(await usage_rows(bed.live))
        await asyncio.sleep(0.05)
        return max(rows, len(await usage_rows(bed.live)))

    return bed.run(count())


# Each mutant goes to the client of the backend's own dialect (passthrough) and of the other
# (translated); every third one to a Responses client too (translated, over chat).
BATCHES = [(A, False, 1000), (O, False, 1300), (A, True, 1500), (O, True, 2000)]


@pytest.mark.parametrize(
    ("backend", "stream", "count"),
    BATCHES,
    ids=[f"{b}-{'stream' if s else 'whole'}" for b, s, _ in BATCHES],
)
def test_mutated_answers_reach_the_client_well_formed_or_as_an_error(
    bed: Bed, backend: str, stream: bool, count: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    rows_before = recorded(bed)
    cases = mutants(backend, stream, count)
    failures = []
    sent = translated = answered = 0
    for k, mutant in enumerate(cases):
        for client in (A, O, R) if k % 3 == 0 else (A, O):
            sent += 1
            status, problem = verdict(bed, client, mutant, k, caplog)
            if route_of(client, backend) == "translated":
                translated += 1
                answered += status == 200
            if problem is not None:
                failures.append(f"{client} <- {mutant.id}: {status} {problem}")
    assert not failures, f"{len(failures)} of {sent}:\n" + "\n".join(failures[:60])
    # Both outcomes are exercised: mutants translated into answers and mutants refused.
    assert translated // 10 < answered < translated * 98 // 100, (answered, translated)
    assert recorded(bed) - rows_before == sent, (recorded(bed) - rows_before, sent)
    for client in (A, O, R):  # still serving
        body = orjson.dumps(request_body(client, MODEL[backend], stream, 0))
        fine = call("POST", bed.port, PATH[client], body=body, headers=auth())
        assert fine.status == 200, fine.body[:300]
        if stream:
            STREAM[client](fine.body)
        else:
            WHOLE[client](fine.json())


# -- what the fuzzing found ----------------------------------------------------------------------


def exchange(bed: Bed, client: str, backend: str, reply: JsonReply | SSEReply) -> Resp:
    """``client``'s request for ``backend``'s model, answered by ``reply``."""
    fake = bed.fa if backend == A else bed.fo
    fake.script.clear()
    fake.push(reply, reply)
    body = request_body(client, MODEL[backend], isinstance(reply, SSEReply), 0)
    resp = call("POST", bed.port, PATH[client], body=orjson.dumps(body), headers=auth())
    fake.script.clear()
    return resp


def test_an_error_object_in_a_200_without_a_status_is_a_502(
    bed: Bed, caplog: pytest.LogCaptureFixture
) -> None:
    """An OpenAI backend's 200 holding ``{"error": …}`` with no status in its code or type
    (``resp_error_in_200`` with its type and code deleted) was answered with a made-up
    500: the backend failed, so a 502 in the client's envelope."""
    caplog.set_level(logging.WARNING)
    for error in ({"message": [None]}, {"message": "Boom", "code": 10**30}, "Boom", -2.5):
        resp = exchange(bed, A, O, JsonReply(raw=_text({"error": error}).encode()))
        check_error(A, resp, 502, "api_error", "")
    assert resp.json()["error"]["message"] == '{"error":-2.5}'
    assert _problems(caplog, 0) == []


def test_an_error_object_nested_too_deeply_is_an_error_event_not_a_500(
    bed: Bed, caplog: pytest.LogCaptureFixture
) -> None:
    """``data: {"error": <an object nested 300 levels>}`` in an OpenAI backend's stream: its
    message could not be written (orjson writes 254 levels), a TypeError and a 500 before
    the stream began; now the stream's error event, as for any error chunk. A whole
    answer like it is a 502."""
    caplog.set_level(logging.WARNING)
    error = b'{"error": ' + deep_object().text.encode() + b"}"
    chunks = _written_openai_streams()[0][1][:1]
    stream = SSEReply([chunks[0].encode() + b"\n\n", b"data: " + error + b"\n\n"])
    resp = exchange(bed, A, O, stream)
    assert resp.status == 200, resp.body[:300]
    check_message_stream(resp.body)
    last = named_events(resp.body)[-1]
    assert last["error"] == {
        "type": "api_error",
        "message": "upstream sent an error nested too deeply to show (more than 254 levels)",
    }
    check_error(A, exchange(bed, A, O, JsonReply(raw=error)), 502, "api_error", "too deeply")
    assert _problems(caplog, 0) == []


def test_a_token_count_past_what_the_usage_table_holds_leaves_the_recorder_working(
    bed: Bed, caplog: pytest.LogCaptureFixture
) -> None:
    """A usage count of 2**63 (or 10**30, read as a float) in an answer: the usage row
    could not be written ("Python int too large to convert to SQLite INTEGER"; PostgreSQL's
    INTEGER stops at 2**31 - 1), and the recorder kept the batch to retry, so no usage
    event was written again. Such a count is garbage: read as no count."""
    caplog.set_level(logging.WARNING)
    before = recorded(bed)
    for huge in (2**63 - 1, 2**31, 10**30):
        message = anthropic_message("hi", output_tokens=7)
        message["usage"]["input_tokens"] = huge
        resp = exchange(bed, A, A, JsonReply(raw=_text(message).encode()))
        assert resp.status == 200, resp.body[:300]
        answer = openai_completion("hi", completion_tokens=huge)
        resp = exchange(bed, A, O, JsonReply(raw=_text(answer).encode()))
        assert resp.status == 200, resp.body[:300]
        check_message(resp.json())
        assert resp.json()["usage"]["output_tokens"] < 2**31, resp.json()["usage"]
    assert recorded(bed) - before == 6
    rows = bed.run(usage_rows(bed.live))[-6:]
    assert [(r.input_tokens, r.output_tokens) for r in rows[0::2]] == [(0, 7)] * 3
    assert [r.input_tokens for r in rows[1::2]] == [11] * 3
    assert _problems(caplog, 0) == []
    assert not [r for r in caplog.records if "usage write failed" in r.getMessage()]


@pytest.mark.parametrize("start", [b"1e+308", b"[]", b'{"type": "message_start", "message": "x"}'])
def test_a_message_start_that_is_not_an_object_is_relayed_as_it_came(
    bed: Bed, start: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A passed-through Anthropic stream whose ``message_start`` data (or its ``message``)
    is JSON but no object: the usage sniffer called ``.get`` on it, and the client got a
    500 instead of the stream."""
    caplog.set_level(logging.WARNING)
    events = [e.encode() + b"\n\n" for e in _written_anthropic_streams()[0][1]]
    events[0] = b"event: message_start\ndata: " + start + b"\n\n"
    before = recorded(bed)
    resp = exchange(bed, A, A, SSEReply(events))
    assert resp.status == 200, resp.body[:300]
    assert resp.body == b"".join(events)
    assert recorded(bed) - before == 1
    assert _problems(caplog, 0) == []
