"""Golden tests for direction A→O: Anthropic clients in front of OpenAI-compatible backends.

Every folder in ``tests/fixtures/anthropic_to_openai/`` is one case, recognised by its files:

* ``request.json`` [+ ``options.json``, BackendOptions fields] → ``expected.json`` (the exact
  OpenAI body) or ``error.json`` (the InvalidRequestError a client gets);
* ``response_in.json`` + ``context.json`` → ``response_out.json`` or ``error.json``;
* ``stream_in.sse`` + ``context.json`` → ``stream_out.sse`` (exact bytes) and
  ``stream_state.json`` (the translator's final attributes). An input event named
  ``x-test-ping`` stands for 15 s of upstream silence: the harness calls ``ping()``. The
  upstream's EOF comes after the last byte of the file (``finish()`` is always called);
* ``upstream_error.json`` (``status``, ``body`` text, ``retry_after``, and the request's
  ``input_tokens`` estimate and ``max_tokens`` where the case needs them) → ``error.json``;
* ``count_tokens_in.json`` [+ ``options.json``] → ``count_tokens_out.json``.

``context.json`` holds the RequestContext: ``client_model``, ``tools`` (client tool names),
``thinking``, ``stop_sequences``, ``input_estimate``, ``stream``. Ids are fixed with
``message_id="msg_test"``.

A new case is a new folder. To (re)generate expected files run

    BRIDGEKEEPER_REGEN=1 .venv/bin/python -m pytest -q tests/translate/test_anthropic_to_openai.py

and review every diff by hand against PROTOCOL.md: golden files must be right, not merely
what the code produced. Besides the golden comparison every output is checked for what
clients enforce: stream grammar (PROTOCOL.md §2.5/§2.6), the real ``anthropic`` SDK's stream
accumulator and Message model, and the ``openai`` SDK's request TypedDicts.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import random
import re
from pathlib import Path
from typing import Any, cast

import anthropic
import httpx2
import orjson
import pytest
from openai.types.chat import completion_create_params
from pydantic import TypeAdapter

from app.dialects.anthropic import error_type
from app.dialects.sse import SSEEvent, SSEParser
from app.errors import GatewayError, InvalidRequestError
from app.translate.anthropic_to_openai import (
    RequestContext,
    count_tokens_request,
    translate_request,
    translate_response,
    upstream_error,
)
from app.translate.anthropic_to_openai_stream import StreamTranslator
from app.translate.ids import ToolNames
from app.translate.options import BackendOptions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "anthropic_to_openai"
REGEN = os.environ.get("BRIDGEKEEPER_REGEN") == "1"
MESSAGE_ID = "msg_test"
TARGET_MODEL = "backend-model"
ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
PING_EVENT = "x-test-ping"

_STREAM_PARAMS = TypeAdapter(completion_create_params.CompletionCreateParamsStreaming)
_PARAMS = TypeAdapter(completion_create_params.CompletionCreateParamsNonStreaming)


# ---------------------------------------------------------------------------------------------
# Shared helpers


def load_json(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def dump_json(path: Path, value: Any) -> None:
    path.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")


def options_for(case: Path) -> BackendOptions:
    path = case / "options.json"
    extra = load_json(path) if path.exists() else {}
    return BackendOptions(target_model=TARGET_MODEL, **extra)


def context_for(case: Path) -> RequestContext:
    raw = load_json(case / "context.json")
    return RequestContext(
        client_model=raw["client_model"],
        names=ToolNames(raw.get("tools", [])),
        thinking=raw.get("thinking", False),
        stop_sequences=raw.get("stop_sequences", []),
        input_estimate=raw.get("input_estimate", 1),
        stream=raw.get("stream", False),
    )


def error_dict(err: GatewayError) -> dict[str, Any]:
    return {
        "class": type(err).__name__,
        "status": err.status,
        "type": error_type(err),
        "message": err.message,
        "retry_after": err.retry_after,
        "headers": err.headers,
    }


def golden(case: Path, name: str, actual: Any) -> None:
    """Compare ``actual`` with ``case/name`` (or write it when regenerating)."""
    path = case / name
    if REGEN:
        if isinstance(actual, bytes):
            path.write_bytes(actual)
        else:
            dump_json(path, actual)
        return
    assert path.exists(), f"{path} missing: run with BRIDGEKEEPER_REGEN=1 and review it"
    if isinstance(actual, bytes):
        assert actual.decode() == path.read_text()
    else:
        assert actual == load_json(path)


def run_stream(
    ctx: RequestContext, raw: bytes, *, chunk_size: int | None = None
) -> tuple[bytes, StreamTranslator]:
    """Feed an upstream SSE body through a StreamTranslator (``chunk_size`` bytes at a time)."""
    translator = StreamTranslator(ctx, message_id=MESSAGE_ID)
    parser = SSEParser()
    out: list[bytes] = []
    step = chunk_size or max(len(raw), 1)
    events: list[SSEEvent] = []
    for start in range(0, len(raw), step):
        events += parser.feed(raw[start : start + step])
    events += parser.finish()
    for event in events:
        out += translator.ping() if event.event == PING_EVENT else translator.feed(event)
    out += translator.finish()
    for frame in out:
        assert frame.endswith(b"\n\n") and frame.count(b"\n\n") == 1, frame
    return b"".join(out), translator


def parse_anthropic_sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    parser = SSEParser()
    events = parser.feed(data) + parser.finish()
    parsed = []
    for event in events:
        assert event.event is not None, f"event without an event: line: {event.data}"
        assert event.data != "[DONE]"
        payload = event.json()
        assert payload["type"] == event.event
        parsed.append((event.event, payload))
    return parsed


_DELTA_FOR_BLOCK = {
    "text": {"text_delta", "citations_delta"},
    "thinking": {"thinking_delta", "signature_delta"},
    "tool_use": {"input_json_delta"},
}


def check_stream_grammar(
    data: bytes, *, valid_tool_json: bool = True
) -> list[tuple[str, dict[str, Any]]]:
    """Assert what the SDK and Claude Code accumulators enforce (PROTOCOL.md §2.5, §2.6, §9).

    ``valid_tool_json``: every tool block of a completed stream holds a JSON object (Claude
    Code parses it at content_block_stop). Off only for fuzzed upstreams that send garbage,
    which is passed on rather than repaired (see ``parse_arguments``).
    """
    events = parse_anthropic_sse(data)
    assert events, "no events at all"
    names = [name for name, _ in events]
    if names[0] == "error":
        assert len(events) == 1
        return events
    assert names[0] == "message_start"
    assert names.count("message_start") == 1
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None
    assert isinstance(start["usage"]["input_tokens"], int) and start["usage"]["input_tokens"] > 0
    assert isinstance(start["usage"]["output_tokens"], int)
    open_index: int | None = None
    open_type = ""
    blocks: list[dict[str, Any]] = []
    saw_delta = False
    for position, (name, payload) in enumerate(events[1:], start=1):
        is_last = position == len(events) - 1
        if name == "error":
            assert is_last, "nothing may follow an error event"
            assert set(payload["error"]) == {"type", "message"}
        elif name == "ping":
            assert not saw_delta
        elif name == "content_block_start":
            assert not saw_delta and open_index is None, "one block open at a time"
            assert payload["index"] == len(blocks), "indices contiguous from 0 in start order"
            open_index, open_type = payload["index"], payload["content_block"]["type"]
            block = dict(payload["content_block"], _json="")
            if open_type == "tool_use":
                assert payload["content_block"]["input"] == {}
                assert ID_RE.match(block["id"])
            blocks.append(block)
        elif name == "content_block_delta":
            assert payload["index"] == open_index
            delta = payload["delta"]
            assert delta["type"] in _DELTA_FOR_BLOCK[open_type], (open_type, delta)
            block = blocks[open_index]
            if delta["type"] == "text_delta":
                assert delta["text"]
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "input_json_delta":
                block["_json"] += delta["partial_json"]
        elif name == "content_block_stop":
            assert payload["index"] == open_index
            open_index = None
        elif name == "message_delta":
            assert open_index is None and not saw_delta
            assert blocks, "a zero-block stream still needs one completed block"
            assert isinstance(payload["usage"]["output_tokens"], int)
            assert payload["delta"]["stop_reason"] is not None
            saw_delta = True
        elif name == "message_stop":
            assert saw_delta and is_last
        else:
            raise AssertionError(f"unexpected event {name}")
    if names[-1] == "message_stop":
        final_usage = [p for n, p in events if n == "message_delta"][-1]["usage"]
        produced = any(
            b.get("text") or b.get("thinking") or b["type"] == "tool_use" for b in blocks
        )
        if produced:
            assert final_usage["output_tokens"] > 0
        for block in blocks:
            if block["type"] == "tool_use" and valid_tool_json:
                assert isinstance(orjson.loads(block["_json"]), dict), block
            if block["type"] == "text" and block["text"]:
                assert block["text"].strip(), "whitespace-only text block"
    else:
        assert names[-1] == "error", "a stream ends in message_stop or error"
    return events


def sdk_final_message(data: bytes) -> anthropic.types.Message:
    """Run ``data`` through the real anthropic SDK's streaming helper."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=data)

    client = anthropic.Anthropic(
        api_key="test",
        base_url="http://gateway.test",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )
    try:
        with client.messages.stream(
            model="bridgekeeper-test-model",
            max_tokens=64,
            messages=[{"role": "user", "content": "hi"}],
        ) as stream:
            return stream.get_final_message()
    finally:
        client.close()


def all_cases(marker: str) -> list[Any]:
    if not FIXTURES.is_dir():
        return []
    return [
        pytest.param(case, id=case.name)
        for case in sorted(FIXTURES.iterdir())
        if (case / marker).exists()
    ]


def walk(value: Any) -> Any:
    """Every dict and list inside ``value``."""
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


# ---------------------------------------------------------------------------------------------
# Golden cases


def test_fixture_inventory() -> None:
    """The fixture set covers every mapping: guard against cases silently going missing."""
    kinds = {
        m: len(all_cases(m))
        for m in ("request.json", "response_in.json", "stream_in.sse", "upstream_error.json")
    }
    assert kinds["request.json"] >= 40
    assert kinds["response_in.json"] >= 15
    assert kinds["stream_in.sse"] >= 35
    assert kinds["upstream_error.json"] >= 15


@pytest.mark.parametrize("case", all_cases("request.json"))
def test_request(case: Path) -> None:
    body = load_json(case / "request.json")
    before = copy.deepcopy(body)
    opts = options_for(case)
    try:
        out, ctx = translate_request(body, opts)
    except InvalidRequestError as err:
        if REGEN:
            dump_json(
                case / "error.json",
                {"type": error_type(err), "status": 400, "message": err.message},
            )
            return
        assert (case / "error.json").exists(), f"unexpected error: {err.message}"
        expected = load_json(case / "error.json")
        assert {"type": error_type(err), "status": err.status, "message": err.message} == expected
        return
    assert not (case / "error.json").exists(), "expected an InvalidRequestError"
    assert body == before, "translate_request must not mutate its input"
    golden(case, "expected.json", out)

    assert out["model"] == TARGET_MODEL
    assert ctx.client_model == body["model"]
    assert ctx.stream is (body.get("stream") is True)
    assert ctx.input_estimate > 0
    (_STREAM_PARAMS if ctx.stream else _PARAMS).validate_python(out)
    for node in walk(out):
        if isinstance(node, dict):
            assert "cache_control" not in node
            if node.get("type") == "text":
                assert node["text"].strip(), "empty or whitespace-only text part"
    for message in out["messages"]:
        if message["role"] == "assistant":
            assert message.get("content") is None or message["content"].strip()
    # Deterministic: the client replays ids and names, so a second run must be identical.
    assert translate_request(copy.deepcopy(before), opts)[0] == out


@pytest.mark.parametrize("case", all_cases("response_in.json"))
def test_response(case: Path) -> None:
    resp = load_json(case / "response_in.json")
    ctx = context_for(case)
    try:
        out = translate_response(resp, ctx, message_id=MESSAGE_ID)
    except GatewayError as err:
        if REGEN:
            dump_json(case / "error.json", error_dict(err))
            return
        assert (case / "error.json").exists(), f"unexpected error: {err.message}"
        expected = load_json(case / "error.json")
        assert {k: error_dict(err)[k] for k in expected} == expected
        return
    assert not (case / "error.json").exists(), "expected an error"
    golden(case, "response_out.json", out)
    message = anthropic.types.Message.model_validate(out)
    assert message.id == MESSAGE_ID and message.model == ctx.client_model
    for block in out["content"]:
        if block["type"] == "text":
            assert block["text"].strip()
        if block["type"] == "tool_use":
            assert ID_RE.match(block["id"]) and isinstance(block["input"], dict)
    assert set(out["usage"]) >= {
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    }


@pytest.mark.parametrize("case", all_cases("stream_in.sse"))
def test_stream(case: Path) -> None:
    ctx = context_for(case)
    raw = (case / "stream_in.sse").read_bytes()
    out, translator = run_stream(ctx, raw)
    golden(case, "stream_out.sse", out)
    state = {
        "started": translator.started,
        "done": translator.done,
        "stop_reason": translator.stop_reason,
        "stop_sequence": translator.stop_sequence,
        "usage": dataclasses.asdict(translator.usage),
        "error": None
        if translator.error is None
        else {"type": error_type(translator.error), "message": translator.error.message},
    }
    golden(case, "stream_state.json", state)

    events = check_stream_grammar(out)
    assert translator.done
    assert translator.feed(SSEEvent(None, '{"choices":[{"delta":{"content":"late"}}]}')) == []
    assert translator.finish() == [] and translator.ping() == []
    if events[-1][0] == "error":
        with pytest.raises(anthropic.APIStatusError) as info:
            sdk_final_message(out)
        assert translator.error is not None
        assert translator.error.message in str(info.value)
        return
    final = sdk_final_message(out)
    assert final.stop_reason == translator.stop_reason
    assert final.stop_sequence == translator.stop_sequence
    assert final.usage.output_tokens == translator.usage.output_tokens
    assert final.usage.input_tokens == translator.usage.input_tokens
    deltas = [p for n, p in events if n == "content_block_delta"]
    for index, block in enumerate(final.content):
        fragments = [d["delta"] for d in deltas if d["index"] == index]
        if block.type == "text":
            assert block.text == "".join(f["text"] for f in fragments)
        elif block.type == "thinking":
            assert block.thinking == "".join(f["thinking"] for f in fragments)
            assert block.signature == ""
        elif block.type == "tool_use":
            assert block.input == orjson.loads("".join(f["partial_json"] for f in fragments))


@pytest.mark.parametrize("case", all_cases("stream_in.sse"))
def test_stream_byte_by_byte_is_identical(case: Path) -> None:
    """TCP may split upstream events anywhere; the output must not depend on it."""
    raw = (case / "stream_in.sse").read_bytes()
    whole, _ = run_stream(context_for(case), raw)
    split, _ = run_stream(context_for(case), raw, chunk_size=7)
    assert split == whole


@pytest.mark.parametrize("case", all_cases("upstream_error.json"))
def test_upstream_error(case: Path) -> None:
    raw = load_json(case / "upstream_error.json")
    err = upstream_error(
        raw["status"],
        raw["body"].encode(),
        retry_after=raw.get("retry_after"),
        input_tokens=raw.get("input_tokens"),
        max_tokens=raw.get("max_tokens"),
    )
    golden(case, "error.json", error_dict(err))


@pytest.mark.parametrize("case", all_cases("count_tokens_in.json"))
def test_count_tokens_request(case: Path) -> None:
    out = count_tokens_request(load_json(case / "count_tokens_in.json"), options_for(case))
    golden(case, "count_tokens_out.json", out)
    assert set(out) <= {"model", "messages", "tools"}


# ---------------------------------------------------------------------------------------------
# Behaviour that golden files cannot pin (random ids) and robustness against bad input


def _ctx(**kw: Any) -> RequestContext:
    base: dict[str, Any] = {
        "client_model": "claude-sonnet-4-5",
        "names": ToolNames(["get_weather"]),
        "thinking": False,
        "stop_sequences": [],
        "input_estimate": 10,
        "stream": True,
    }
    base.update(kw)
    return RequestContext(**base)


def _chunk(delta: dict[str, Any], finish: str | None = None) -> SSEEvent:
    body = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return SSEEvent(None, orjson.dumps(body).decode())


def test_stream_generates_ids_for_calls_without_one() -> None:
    translator = StreamTranslator(_ctx())
    out = translator.feed(
        _chunk({"tool_calls": [{"index": 0, "function": {"name": "get_weather"}}]})
    )
    out += translator.feed(_chunk({"function_call": {"name": "get_weather", "arguments": "{}"}}))
    out += translator.feed(_chunk({}, "tool_calls"))
    out += translator.feed(SSEEvent(None, "[DONE]"))
    events = check_stream_grammar(b"".join(out))
    assert events[0][1]["message"]["id"].startswith("msg_")
    starts = [p["content_block"] for n, p in events if n == "content_block_start"]
    assert len(starts) == 1, "the legacy function_call continues call index 0"
    assert re.fullmatch(r"toolu_[0-9a-f]{24}", starts[0]["id"])
    assert translator.stop_reason == "tool_use"


def test_response_generates_ids_for_calls_without_one() -> None:
    resp = {
        "choices": [
            {
                "message": {
                    "content": None,
                    "tool_calls": [{"type": "function", "function": {"name": "get_weather"}}],
                    "function_call": None,
                },
                "finish_reason": "tool_calls",
            }
        ]
    }
    out = translate_response(resp, _ctx())
    assert re.fullmatch(r"msg_[0-9a-f]{24}", out["id"])
    assert re.fullmatch(r"toolu_[0-9a-f]{24}", out["content"][0]["id"])
    assert out["content"][0]["input"] == {}


def test_stream_usage_is_estimated_until_the_backend_reports_it() -> None:
    translator = StreamTranslator(_ctx(input_estimate=321))
    translator.feed(_chunk({"content": "Some words here"}))
    assert translator.usage.estimated and translator.usage.input_tokens == 321
    assert translator.usage.output_tokens > 0
    usage = {"prompt_tokens": 40, "completion_tokens": 4, "total_tokens": 44}
    translator.feed(SSEEvent(None, orjson.dumps({"choices": [], "usage": usage}).decode()))
    assert not translator.usage.estimated
    assert (translator.usage.input_tokens, translator.usage.output_tokens) == (40, 4)
    assert not translator.done, "usage before finish_reason does not end the message"


def test_request_context_fields() -> None:
    long_name = "x" * 70
    body = {
        "model": "claude-opus-4-1",
        "max_tokens": 10,
        "stream": True,
        "stop_sequences": ["A", "", "B"],
        "thinking": {"type": "enabled", "budget_tokens": 2000, "display": "omitted"},
        "tools": [{"name": long_name, "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "hi"}],
    }
    out, ctx = translate_request(body, BackendOptions(target_model="m"))
    assert ctx.client_model == "claude-opus-4-1" and ctx.stream
    assert ctx.stop_sequences == ["A", "B"] and out["stop"] == ["A", "B"]
    assert ctx.thinking is False, "display: omitted asks for no thinking text"
    assert out["reasoning_effort"] == "medium"
    short = out["tools"][0]["function"]["name"]
    assert len(short) <= 64 and ctx.names.to_client(short) == long_name
    _, ctx2 = translate_request(dict(body, thinking={"type": "adaptive"}), BackendOptions("m"))
    assert ctx2.thinking is True


_JUNK: list[Any] = [None, 42, "x", [], {}, [1], {"type": 5}, True, {"type": "text"}]


def _mutations(value: Any, rng: random.Random, depth: int = 0) -> Any:
    """``value`` with one randomly chosen nested value replaced by junk."""
    if depth > 8 or not isinstance(value, dict | list) or not value or rng.random() < 0.2:
        return rng.choice(_JUNK)
    copy_ = copy.copy(value)
    key = rng.choice(list(copy_)) if isinstance(copy_, dict) else rng.randrange(len(copy_))
    copy_[key] = _mutations(copy_[key], rng, depth + 1)
    return copy_


def test_malformed_requests_raise_invalid_request_only() -> None:
    """No KeyError/TypeError/AttributeError escapes on bad input, whatever breaks where."""
    rng = random.Random(1234)
    bodies = [load_json(c.values[0] / "request.json") for c in all_cases("request.json")]
    assert bodies
    for _ in range(3000):
        body = rng.choice(bodies)
        mutated = dict(body, messages=_mutations(body["messages"], rng))
        for field in ("tools", "tool_choice", "system", "thinking", "output_config", "metadata"):
            if rng.random() < 0.1:
                mutated[field] = _mutations(body.get(field, {}), rng)
        for opts in (BackendOptions("m", reasoning="replay"), BackendOptions("m")):
            try:
                translate_request(mutated, opts)
                count_tokens_request(mutated, opts)
            except InvalidRequestError as err:
                assert err.message and ": " in err.message


def test_malformed_upstream_chunks_never_raise() -> None:
    rng = random.Random(99)
    chunks = []
    for case in all_cases("stream_in.sse"):
        parser = SSEParser()
        for event in parser.feed((case.values[0] / "stream_in.sse").read_bytes()):
            if event.data.startswith("{"):
                try:
                    chunks.append(orjson.loads(event.data))
                except orjson.JSONDecodeError:
                    continue
    assert chunks
    for _ in range(500):
        translator = StreamTranslator(_ctx(thinking=True), message_id=MESSAGE_ID)
        out: list[bytes] = []
        for _ in range(rng.randint(1, 8)):
            chunk = _mutations(rng.choice(chunks), rng)
            out += translator.feed(SSEEvent(None, orjson.dumps(chunk).decode()))
        out += translator.finish()
        check_stream_grammar(b"".join(out), valid_tool_json=False)


def test_malformed_responses_raise_gateway_errors_only() -> None:
    rng = random.Random(7)
    responses = [load_json(c.values[0] / "response_in.json") for c in all_cases("response_in.json")]
    for _ in range(1000):
        resp = _mutations(rng.choice(responses), rng)
        try:
            out = translate_response(resp, _ctx(thinking=True), message_id=MESSAGE_ID)
        except GatewayError:
            continue
        anthropic.types.Message.model_validate(out)


@pytest.mark.parametrize(
    ("data", "expected_type", "expected_message"),
    [
        ('{"message": "engine overloaded", "code": 503}', "overloaded_error", "engine overloaded"),
        ("upstream timed out", "api_error", "upstream timed out"),
        (
            '{"error": {"message": "slow down", "type": "rate_limit_exceeded"}}',
            "rate_limit_error",
            "slow down",
        ),
    ],
)
def test_stream_event_named_error(data: str, expected_type: str, expected_message: str) -> None:
    translator = StreamTranslator(_ctx(), message_id=MESSAGE_ID)
    out = translator.feed(_chunk({"content": "partial"}))
    out += translator.feed(SSEEvent("error", data))
    events = check_stream_grammar(b"".join(out))
    assert events[-1] == (
        "error",
        {"type": "error", "error": {"type": expected_type, "message": expected_message}},
    )
    assert translator.done and translator.error is not None and translator.stop_reason is None


def test_upstream_error_bodies_that_are_not_objects() -> None:
    assert upstream_error(400, b'"just a string"').message == "just a string"
    assert upstream_error(400, b"[1, 2]").message == "[1,2]"
    assert upstream_error(500, b"\xff\xfe garbage").status == 500
    long = upstream_error(400, b"x" * 10_000).message
    assert len(long) == 2000


_CLAUDE_CODE_LIKE = {
    "model": "claude-x",
    "max_tokens": 32000,
    "thinking": {"type": "enabled", "budget_tokens": 31999},
    "temperature": 0.5,
    "stop_sequences": ["a", "b", "c", "d", "e"],
    "messages": [{"role": "user", "content": "hi"}],
}
# What Claude Code's request turns into, by backend: everything as the upstream is set...
_AS_SET = {
    "stop": ["a", "b", "c", "d", "e"],
    "reasoning_effort": "high",
    "max_tokens": 32000,
    "temperature": 0.5,
}
# ...an OpenAI chat model on api.openai.com, and an OpenAI reasoning model there.
_CHAT_MODEL = {"stop": ["a", "b", "c", "d"], "max_tokens": 32000, "temperature": 0.5}
_REASONING_MODEL = {
    "stop": ["a", "b", "c", "d"],
    "reasoning_effort": "high",
    "max_completion_tokens": 32000,
}
_OPENAI = "https://api.openai.com/v1"


@pytest.mark.parametrize(
    ("base_url", "model", "sent", "reasoning"),
    [
        (_OPENAI, "gpt-4.1", _CHAT_MODEL, "off"),
        ("https://API.OpenAI.com:443/v1/", "gpt-4o-mini", _CHAT_MODEL, "off"),
        (_OPENAI, "gpt-5-chat-latest", _CHAT_MODEL, "off"),
        (_OPENAI, "o3-mini", _REASONING_MODEL, "strip"),
        (_OPENAI, "gpt-5", _REASONING_MODEL, "strip"),
        (_OPENAI, "o1", _REASONING_MODEL, "strip"),
        ("http://127.0.0.1:8000/v1", "o3", _AS_SET, "replay"),
        ("https://api.deepseek.com", "deepseek-reasoner", _AS_SET, "replay"),
        ("https://api.openai.com.example.net/v1", "gpt-4.1", _AS_SET, "replay"),
        ("", "gpt-4.1", _AS_SET, "replay"),
        ("http://[::1", "gpt-4.1", _AS_SET, "replay"),  # not a URL: as the upstream is set
    ],
)
def test_openai_s_own_api_gets_what_its_models_take(
    base_url: str, model: str, sent: dict[str, Any], reasoning: str
) -> None:
    """api.openai.com (and only it, PROTOCOL.md §6.1, §6.7): four stop sequences at most;
    a reasoning model gets max_completion_tokens and no temperature; any other model no
    reasoning_effort, which it refuses. Claude Code's own request, through the gateway's
    options for such an upstream."""
    from app.gateway import Gateway
    from app.routing import Route, RouteSettings
    from app.upstreams.keyring import KeyRing
    from app.upstreams.pool import Upstream, UpstreamSpec

    spec = UpstreamSpec(name="u", kind="openai", base_url=base_url, reasoning="replay")
    upstream = Upstream(spec, KeyRing([]), None)
    route = Route(requested="claude-x", upstream="u", target=model, settings=RouteSettings())
    opts = Gateway._options(cast(Any, None), upstream, route)
    out, _ctx = translate_request(copy.deepcopy(_CLAUDE_CODE_LIKE), opts)
    fields = ("stop", "reasoning_effort", "max_tokens", "max_completion_tokens", "temperature")
    assert {k: out[k] for k in fields if k in out} == sent
    # The upstream says "replay"; OpenAI's own API takes no thinking back, and its chat
    # models are never asked to reason.
    assert opts.reasoning == reasoning


@pytest.mark.parametrize(
    ("base_url", "model", "mapped"),
    [
        ("https://api.mistral.ai/v1", "mistral-large-latest", True),
        ("https://api.mistral.ai/v1", "some-future-model", True),
        ("http://127.0.0.1:8000/v1", "mistralai/Devstral-Small-2505", True),
        ("http://127.0.0.1:11434/v1", "Mixtral-8x7B-Instruct", True),
        ("http://127.0.0.1:11434/v1", "qwen3:8b", False),
        ("https://api.openai.com/v1", "gpt-4.1", False),
    ],
)
def test_mistral_backends_get_nine_character_tool_ids(
    base_url: str, model: str, mapped: bool
) -> None:
    """Mistral's API and Mistral-family models anywhere refuse tool-call ids that are not
    nine letters and digits (PROTOCOL.md §6.10): the history's ids are mapped, the same
    way for a call and its result, and ids already in that grammar kept."""
    from app.gateway import Gateway
    from app.routing import Route, RouteSettings
    from app.translate.ids import mistral_tool_id
    from app.upstreams.keyring import KeyRing
    from app.upstreams.pool import Upstream, UpstreamSpec

    spec = UpstreamSpec(name="u", kind="openai", base_url=base_url)
    route = Route(requested="claude-x", upstream="u", target=model, settings=RouteSettings())
    opts = Gateway._options(cast(Any, None), Upstream(spec, KeyRing([]), None), route)
    assert opts.mistral_tool_ids is mapped
    body = {
        "model": "claude-x",
        "max_tokens": 9,
        "messages": [
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_01XYZ", "name": "f", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_01XYZ", "content": "ok"}],
            },
        ],
    }
    out, _ctx = translate_request(body, opts)
    call_id = out["messages"][1]["tool_calls"][0]["id"]
    assert out["messages"][2]["tool_call_id"] == call_id
    assert call_id == (mistral_tool_id("toolu_01XYZ") if mapped else "toolu_01XYZ")
    assert re.fullmatch(r"[A-Za-z0-9]{9}", mistral_tool_id("toolu_01XYZ"))


def test_mistral_tool_ids_are_stable_and_distinct() -> None:
    from app.translate.ids import mistral_tool_id

    rng = random.Random(5)
    ids = {f"toolu_{rng.getrandbits(96):024x}" for _ in range(20000)}
    mapped = {mistral_tool_id(i) for i in ids}
    assert len(mapped) == len(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", m) for m in mapped)
    assert mistral_tool_id("abcDEF123") == "abcDEF123"
    assert mistral_tool_id("toolu_1") == mistral_tool_id("toolu_1") != mistral_tool_id("toolu_2")
    assert mistral_tool_id("") == mistral_tool_id("")


def test_mistral_s_api_gets_only_fields_of_its_schema() -> None:
    """Mistral's API answers 422 "Extra inputs are not permitted" to anything outside its
    schema: Claude Code's request goes there without stream_options, user,
    reasoning_effort or max_completion_tokens; an OpenAI client's own stream is passed
    through without the gateway's usage request (Mistral sends usage in the last chunk)."""
    from app.gateway import ApiRequest, Gateway, _Call
    from app.routing import Route, RouteSettings
    from app.upstreams.keyring import KeyRing
    from app.upstreams.pool import Upstream, UpstreamSpec

    def upstream_at(base_url: str) -> Upstream:
        spec = UpstreamSpec(name="u", kind="openai", base_url=base_url, reasoning="replay")
        return Upstream(spec, KeyRing([]), None)

    route = Route(requested="claude-x", upstream="u", target="mistral-large-latest",
                  settings=RouteSettings())  # fmt: skip
    mistral = upstream_at("https://api.mistral.ai/v1")
    body = copy.deepcopy(_CLAUDE_CODE_LIKE) | {"stream": True}
    body["metadata"] = {"user_id": "someone"}
    out, _ctx = translate_request(body, Gateway._options(cast(Any, None), mistral, route))
    assert not {"stream_options", "user", "reasoning_effort", "max_completion_tokens"} & set(out)
    assert out["max_tokens"] == 32000 and out["stream"] is True

    chat = {"model": "claude-x", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    for upstream, asked in ((mistral, False), (upstream_at("http://127.0.0.1:9/v1"), True)):
        request = ApiRequest("openai", "chat", orjson.dumps(chat), {}, "req_1")
        call = _Call(req=request, started=0.0, stream=True)
        attempt = Gateway._prepare(cast(Any, None), call, chat, route, upstream, 5)
        assert not attempt.translated
        assert ("stream_options" in orjson.loads(attempt.body)) is asked


def test_openai_s_own_api_never_gets_thinking_back_in_either_field() -> None:
    from app.translate.options import REPLAYED, openai_quirks

    for setting in REPLAYED:
        assert openai_quirks("https://api.openai.com/v1", "o3", setting).reasoning == "strip"
        assert openai_quirks("http://127.0.0.1:8000/v1", "o3", setting).reasoning is None


_THINKS = {"enable_thinking": True, "thinking": True}


@pytest.mark.parametrize(
    ("base_url", "model", "sent"),
    [
        ("http://127.0.0.1:8000/v1", "Qwen/Qwen3-32B", _THINKS),
        ("http://127.0.0.1:30000/v1", "deepseek-ai/DeepSeek-V3.1", _THINKS),
        ("http://127.0.0.1:8000/v1", "mistralai/Devstral-Small-2507", _THINKS),  # on vLLM
        (_OPENAI, "gpt-4.1", None),
        (_OPENAI, "o3", None),
        ("https://api.mistral.ai/v1", "mistral-large-latest", None),
    ],
)
def test_chat_template_thinking_only_where_a_chat_template_is_rendered(
    base_url: str, model: str, sent: dict[str, bool] | None
) -> None:
    """An upstream set to ``chat_template_thinking`` tells the chat template whether to
    think (PROTOCOL.md §6.7's per-backend switch); OpenAI's and Mistral's APIs refuse
    fields they do not know, so they never get it, whatever the upstream says."""
    from app.gateway import Gateway
    from app.routing import Route, RouteSettings
    from app.upstreams.keyring import KeyRing
    from app.upstreams.pool import Upstream, UpstreamSpec

    spec = UpstreamSpec(name="u", kind="openai", base_url=base_url, chat_template_thinking=True)
    route = Route(requested="claude-x", upstream="u", target=model, settings=RouteSettings())
    opts = Gateway._options(cast(Any, None), Upstream(spec, KeyRing([]), None), route)
    out, _ctx = translate_request(copy.deepcopy(_CLAUDE_CODE_LIKE), opts)
    assert out.get("chat_template_kwargs") == sent
    plain = dataclasses.replace(spec, chat_template_thinking=False)
    opts = Gateway._options(cast(Any, None), Upstream(plain, KeyRing([]), None), route)
    out, _ctx = translate_request(copy.deepcopy(_CLAUDE_CODE_LIKE), opts)
    assert "chat_template_kwargs" not in out


def test_a_route_s_forced_chat_template_kwargs_replace_the_switch() -> None:
    """Forced means sent: a route's own ``chat_template_kwargs`` (applied after the
    translation) is what the backend gets, not the upstream's thinking switch; fields the
    translation mapped keep their mapped value."""
    from app.translate.route_settings import force_params

    opts = BackendOptions(target_model="m", chat_template_thinking=True)
    out, _ctx = translate_request(copy.deepcopy(_CLAUDE_CODE_LIKE), opts)
    assert out["chat_template_kwargs"] == _THINKS
    forced = {"chat_template_kwargs": {"enable_thinking": False}, "max_tokens": 99, "min_p": 0.05}
    force_params(out, forced)
    assert out["chat_template_kwargs"] == {"enable_thinking": False}
    assert (out["max_tokens"], out["min_p"], out["reasoning_effort"]) == (32000, 0.05, "high")


_CAPPED_THINKING = {
    "model": "claude-x",
    "max_tokens": 8000,
    "thinking": {"type": "enabled", "budget_tokens": 5000},
    "messages": [{"role": "user", "content": "Plan it."}],
}


def _capped(cap: int, *, translated: bool) -> dict[str, Any]:
    """`_CAPPED_THINKING` with a route's max_tokens cap of ``cap`` applied."""
    from app.translate.route_settings import apply_anthropic

    return apply_anthropic(
        copy.deepcopy(_CAPPED_THINKING),
        temperature=None,
        max_tokens=cap,
        context_window=None,
        params={},
        input_tokens=10,
        translated=translated,
    )


@pytest.mark.parametrize("cap", [1000, 3000])
def test_a_route_s_max_tokens_cap_keeps_the_thinking_for_an_openai_backend(cap: int) -> None:
    """A cap on the output limits the output, not the reasoning: the translated request
    gets the cap and the reasoning_effort of the client's own budget (§6.7), however far
    below the budget the cap is (it once dropped thinking under 1025 and shrank it above)."""
    adjusted = _capped(cap, translated=True)
    opts = BackendOptions(target_model="m", max_tokens_field="max_completion_tokens")
    out, ctx = translate_request(adjusted, opts)
    assert (out["max_completion_tokens"], out.get("reasoning_effort")) == (cap, "high")
    assert ctx.thinking


@pytest.mark.parametrize(
    ("cap", "thinking"),
    [(1000, None), (1024, None), (3000, {"type": "enabled", "budget_tokens": 2999})],
)
def test_a_route_s_max_tokens_cap_fits_the_thinking_for_an_anthropic_backend(
    cap: int, thinking: dict[str, Any] | None
) -> None:
    """Passed through to Anthropic, the budget must stay below max_tokens and at least
    1024: it shrinks under the cap, or thinking goes when no budget fits."""
    adjusted = _capped(cap, translated=False)
    assert (adjusted["max_tokens"], adjusted.get("thinking")) == (cap, thinking)


def test_a_tool_s_strict_becomes_function_strict() -> None:
    """Anthropic's ``strict`` (anthropic ``ToolParam.strict``) and OpenAI's
    ``function.strict`` promise the same: tool input valid against the schema."""
    schema = {"type": "object", "properties": {}, "additionalProperties": False}
    body = {
        "model": "claude-x",
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [
            {"name": "a", "input_schema": schema, "strict": True},
            {"name": "b", "input_schema": schema, "strict": False},
            {"name": "c", "input_schema": schema},
        ],
    }
    out, _ctx = translate_request(body, BackendOptions(target_model="m"))
    assert [t["function"].get("strict") for t in out["tools"]] == [True, False, None]
    _PARAMS.validate_python(out)
    body["tools"][0]["strict"] = "yes"
    with pytest.raises(InvalidRequestError) as info:
        translate_request(body, BackendOptions(target_model="m"))
    assert info.value.message == "tools.0.strict: Input should be a valid boolean"


def test_stream_surrogate_halves_pair_up_or_become_replacement_characters() -> None:
    """Halves of a UTF-16 pair escaped in separate events (valid JSON, refused by orjson)
    join per field, tool arguments included; a lone low half is U+FFFD, and a high half
    held at the end of a field whose partner never comes is dropped."""
    translator = StreamTranslator(_ctx())
    raw = [
        '{"choices":[{"index":0,"delta":{"content":"\\ude00a\\ud83d"}}]}',
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1",'
        '"function":{"name":"f","arguments":"{\\"e\\": \\"\\ud83d"}}]}}]}',
        '{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
        '"function":{"arguments":"\\ude03\\"}"}}]}}]}',
        '{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}',
        "[DONE]",
    ]
    out: list[bytes] = []
    for data in raw:
        out += translator.feed(SSEEvent(None, data))
    events = check_stream_grammar(b"".join(out))
    deltas = [p["delta"] for n, p in events if n == "content_block_delta"]
    assert deltas == [
        {"type": "text_delta", "text": "\ufffda"},
        {"type": "input_json_delta", "partial_json": '{"e": "'},
        {"type": "input_json_delta", "partial_json": '\U0001f603"}'},
    ]
    assert translator.error is None and translator.stop_reason == "tool_use"


# -- fields the translation drops or maps keep Anthropic's types (audit_http #12) ----------------


def _hello(**fields: Any) -> dict[str, Any]:
    return {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Hello"}],
        **fields,
    }


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("service_tier", "s", "service_tier: Input should be 'auto' or 'standard_only'"),
        ("service_tier", "priority", "service_tier: Input should be 'auto' or 'standard_only'"),
        ("service_tier", ["auto"], "service_tier: Input should be 'auto' or 'standard_only'"),
        ("metadata", {"a": 1}, "metadata.a: Extra inputs are not permitted"),
        (
            "metadata",
            {"user_id": "u", "team": "x"},
            "metadata.team: Extra inputs are not permitted",
        ),
        ("metadata", {"user_id": 5}, "metadata.user_id: Input should be a valid string"),
        ("metadata", "me", "metadata: Input should be an object"),
        ("container", 5, "container: Input should be a valid string or an object"),
        ("context_management", "clear", "context_management: Input should be an object"),
        ("inference_geo", 1, "inference_geo: Input should be a valid string"),
        ("speed", "warp", "speed: Input should be 'standard' or 'fast'"),
        ("cache_control", "ephemeral", "cache_control: Input should be an object"),
        ("diagnostics", 1, "diagnostics: Input should be an object"),
    ],
)
def test_dropped_and_mapped_fields_are_type_checked(field: str, value: Any, says: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        translate_request(_hello(**{field: value}), BackendOptions(target_model="m"))
    assert info.value.message == says and info.value.status == 400


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("service_tier", "auto"),
        ("service_tier", "standard_only"),
        ("metadata", {}),
        ("metadata", {"user_id": None}),
        ("metadata", {"user_id": "user_abc"}),
        ("container", "container_1"),
        ("container", {"id": "container_1"}),
        ("context_management", {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}),
        ("inference_geo", "us"),
        ("speed", "fast"),
        ("cache_control", {"type": "ephemeral", "ttl": "1h"}),
        ("diagnostics", {"previous_message_id": None}),
        ("some_future_field", 5),  # unknown fields stay dropped unchecked
    ],
)
def test_well_typed_dropped_fields_still_pass(field: str, value: Any) -> None:
    out, _ = translate_request(_hello(**{field: value}), BackendOptions(target_model="m"))
    assert field not in out and out["messages"] == [{"role": "user", "content": "Hello"}]


# -- a prompt of blank text is Anthropic's 400, not `messages: []` upstream (audit_sdk #4) -------

EMPTY_TEXT = "messages: text content blocks must be non-empty"
BLANK_TEXT = "messages: text content blocks must contain non-whitespace text"
EMPTY_TURN = (
    "all messages must have non-empty content except for the optional final assistant message"
)
HISTORY = [
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi. What can I do?"},
]


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ("", f"messages.0: {EMPTY_TURN}"),
        ("   ", BLANK_TEXT),
        ("\n\t", BLANK_TEXT),
        ([], f"messages.0: {EMPTY_TURN}"),
        ([_text("")], EMPTY_TEXT),
        ([_text(" ")], BLANK_TEXT),
        ([_text(" "), _text("")], EMPTY_TEXT),
        ([_text("\n"), _text("  ")], BLANK_TEXT),
    ],
)
def test_a_prompt_of_blank_text_is_refused(content: Any, says: str) -> None:
    body = _hello(messages=[{"role": "user", "content": content}])
    with pytest.raises(InvalidRequestError) as info:
        translate_request(body, BackendOptions(target_model="m"))
    assert info.value.message == says


@pytest.mark.parametrize(
    "after",
    [
        [],
        [{"role": "assistant", "content": "Sure"}],  # a prefill does not make a prompt
        [{"role": "system", "content": "Be brief."}],  # Claude Code's closing system turn
    ],
)
def test_the_last_user_turn_is_the_one_checked(after: list[dict[str, Any]]) -> None:
    messages = [*HISTORY, {"role": "user", "content": [_text("")]}, *after]
    with pytest.raises(InvalidRequestError) as info:
        translate_request(_hello(messages=messages), BackendOptions(target_model="m"))
    assert info.value.message == EMPTY_TEXT


def test_a_conversation_left_with_no_message_is_refused() -> None:
    body = _hello(
        system="You are terse.", messages=[{"role": "assistant", "content": [_text(" ")]}]
    )
    with pytest.raises(InvalidRequestError) as info:
        translate_request(body, BackendOptions(target_model="m"))
    assert info.value.message == "messages: at least one non-empty message is required"


PNG_SOURCE = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}


@pytest.mark.parametrize(
    "messages",
    [
        # Blank text beside real text, as the API takes it too.
        [{"role": "user", "content": [_text(" "), _text("real")]}],
        # Blank turns earlier in the history are dropped, as before.
        [{"role": "user", "content": ""}, *HISTORY[1:], {"role": "user", "content": "go on"}],
        [*HISTORY, {"role": "user", "content": "  "}, {"role": "user", "content": "go on"}],
        # A turn of tool results, or of an image, says something.
        [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_1", "name": "w", "input": {}}],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}, _text(" ")],
            },
        ],
        [{"role": "user", "content": [_text(""), {"type": "image", "source": PNG_SOURCE}]}],
    ],
)
def test_blank_text_that_is_not_the_whole_prompt_is_dropped(
    messages: list[dict[str, Any]],
) -> None:
    out, _ = translate_request(_hello(messages=messages), BackendOptions(target_model="m"))
    assert out["messages"] and out["messages"][-1]["role"] in ("user", "tool")


def test_count_tokens_still_counts_a_blank_prompt() -> None:
    body = _hello(messages=[{"role": "user", "content": ""}])
    assert count_tokens_request(body, BackendOptions(target_model="m"))["messages"] == []
