"""Golden tests for OpenAI client -> Anthropic backend translation (PROTOCOL.md §6-§7.2).

Every folder in tests/fixtures/openai_to_anthropic/<case>/ is one case; the files present
decide what is checked:

* ``request.json`` [+ ``options.json``] -> ``expected.json`` (exact Anthropic body) and
  ``expected_context.json``, or ``expected_error.json`` (status + OpenAI error body).
* ``response_in.json`` (Anthropic Message) -> ``response_out.json`` (chat.completion).
* ``stream_in.sse`` (Anthropic SSE) -> ``stream_out.sse`` (exact bytes), ``stream_state.json``
  (translator state at the end) and ``stream_sdk.json`` (what the real ``openai`` client makes
  of ``stream_out.sse``).
* ``error_in.json`` (upstream status + body) -> ``error_out.json``.

Response and stream cases take their RequestContext from ``request.json`` when present,
else from ``context.json``. Fixed ids: ``chatcmpl-test`` and ``created=1700000000``.
``BRIDGEKEEPER_REGEN=1`` rewrites the expected files; review every diff by hand.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic.types
import httpx2 as httpx
import openai
import orjson
import pydantic
import pytest
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from app.dialects import openai as openai_dialect
from app.dialects.sse import OPENAI_DONE, OPENAI_KEEPALIVE, SSEEvent, SSEParser
from app.errors import GatewayError, InvalidRequestError, OverloadedError, UpstreamError
from app.translate.ids import ToolNames
from app.translate.openai_to_anthropic import (
    RequestContext,
    translate_request,
    translate_response,
    upstream_error,
)
from app.translate.openai_to_anthropic_stream import StreamTranslator
from app.translate.options import BackendOptions, adaptive_thinking
from tests.translate import test_responses_answer as responses_tests
from tests.translate.golden import REGEN, check_bytes, check_json, load
from tests.translate.junk import mutate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "openai_to_anthropic"
COMPLETION_ID = "chatcmpl-test"
CREATED = 1700000000
TARGET_MODEL = "claude-sonnet-4-5"


# -- helpers ----------------------------------------------------------------------------------


def cases_with(filename: str) -> list[str]:
    return sorted(p.parent.name for p in FIXTURES.glob(f"*/{filename}"))


def options_for(case: Path) -> BackendOptions:
    raw = load(case / "options.json") if (case / "options.json").exists() else {}
    return BackendOptions(target_model=TARGET_MODEL, **raw)


def context_for(case: Path) -> RequestContext:
    if (case / "request.json").exists():
        return translate_request(load(case / "request.json"), options_for(case))[1]
    raw = load(case / "context.json")
    return RequestContext(
        client_model=raw["client_model"],
        names=ToolNames(raw.get("tools", [])),
        include_usage=raw["include_usage"],
        json_tool=raw.get("json_tool"),
        reasoning=raw["reasoning"],
        stream=raw["stream"],
        legacy_functions=raw.get("legacy_functions", False),
    )


def context_json(ctx: RequestContext) -> dict[str, Any]:
    out = {
        "client_model": ctx.client_model,
        "include_usage": ctx.include_usage,
        "json_tool": ctx.json_tool,
        "reasoning": ctx.reasoning,
        "stream": ctx.stream,
    }
    if ctx.legacy_functions:  # only then: the other cases' files stay as they are
        out["legacy_functions"] = True
    return out


def consume(value: Any) -> Any:
    """Materialise pydantic's lazy ``Iterable`` validators so every nested item is checked."""
    if isinstance(value, dict):
        return {k: consume(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ValidatorIterator":
        return [consume(v) for v in value]
    return value


MESSAGE_PARAMS = pydantic.TypeAdapter(MessageCreateParamsNonStreaming)
STREAM_MESSAGE_PARAMS = pydantic.TypeAdapter(MessageCreateParamsStreaming)
STREAM_EVENT = pydantic.TypeAdapter(anthropic.types.RawMessageStreamEvent)


def assert_valid_anthropic_request(body: dict[str, Any]) -> None:
    """Shape (anthropic SDK types) plus the §1.2 constraints the API enforces."""
    adapter = STREAM_MESSAGE_PARAMS if body.get("stream") else MESSAGE_PARAMS
    consume(adapter.validate_python(body))
    assert isinstance(body["max_tokens"], int) and body["max_tokens"] >= 1
    messages = body["messages"]
    assert messages and messages[0]["role"] == "user"
    roles = [m["role"] for m in messages]
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), roles
    id_ok = re.compile(r"^[A-Za-z0-9_-]+$")
    for i, m in enumerate(messages):
        blocks = m["content"] if isinstance(m["content"], list) else [m["content"]]
        for b in blocks:
            text = b if isinstance(b, str) else b.get("text")
            if isinstance(b, str) or b["type"] == "text":
                assert isinstance(text, str) and text.strip(), f"blank text in messages[{i}]"
        if isinstance(m["content"], str):
            continue
        kinds = [b["type"] for b in m["content"]]
        if "tool_result" in kinds:
            first_other = next((k for k, t in enumerate(kinds) if t != "tool_result"), len(kinds))
            assert "tool_result" not in kinds[first_other:], f"tool_result after text in {i}"
        uses = [b["id"] for b in m["content"] if b["type"] == "tool_use"]
        for tool_id in uses:
            assert id_ok.match(tool_id)
        if uses:
            nxt = messages[i + 1]
            assert nxt["role"] == "user" and isinstance(nxt["content"], list)
            answered = [b["tool_use_id"] for b in nxt["content"] if b["type"] == "tool_result"]
            assert sorted(answered) == sorted(uses), (uses, answered)
        if m["role"] == "user":
            prev = messages[i - 1] if i else None
            prev_uses = (
                {b["id"] for b in prev["content"] if b["type"] == "tool_use"}
                if prev and isinstance(prev["content"], list)
                else set()
            )
            for b in m["content"]:
                if b["type"] == "tool_result":
                    assert b["tool_use_id"] in prev_uses
    last = messages[-1]
    if last["role"] == "assistant":
        content = last["content"]
        tail = content if isinstance(content, str) else content[-1].get("text", "x")
        assert tail == tail.rstrip()
    for tool in body.get("tools", []):
        assert re.match(r"^[A-Za-z0-9_-]{1,64}$", tool["name"])
        assert tool["input_schema"]["type"] == "object"
    if "thinking" in body:
        assert "temperature" not in body and "top_k" not in body
        assert body.get("top_p", 1) >= 0.95
        assert body.get("tool_choice", {}).get("type", "auto") in ("auto", "none")
        if body["thinking"]["type"] == "enabled":
            assert 1024 <= body["thinking"]["budget_tokens"] < body["max_tokens"]
    if "temperature" in body:
        assert 0 <= body["temperature"] <= 1 and "top_p" not in body
    if "tool_choice" in body:
        assert body.get("tools")


def run_stream(case: Path) -> tuple[StreamTranslator, bytes]:
    parser = SSEParser()
    events = parser.feed((case / "stream_in.sse").read_bytes()) + parser.finish()
    translator = StreamTranslator(context_for(case), completion_id=COMPLETION_ID, created=CREATED)
    out: list[bytes] = []
    for event in events:
        out.extend(translator.feed(event))
    out.extend(translator.finish())
    return translator, b"".join(out)


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> openai.OpenAI:
    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.test/v1",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(handler)),
    )


def serve(body: bytes, content_type: str) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, content=body)

    return handler


def sdk_stream_result(stream_bytes: bytes) -> dict[str, Any]:
    """What ``client.chat.completions.stream(...)`` (ChatCompletionStreamState) makes of it."""
    client = mock_client(serve(stream_bytes, "text/event-stream"))
    raised = None
    try:
        with client.chat.completions.stream(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            for _ in stream:
                pass
            try:
                final: Any = stream.get_final_completion()
            except (openai.LengthFinishReasonError, openai.ContentFilterFinishReasonError) as exc:
                # The SDK refuses to "parse" such completions; the accumulated snapshot remains.
                raised = type(exc).__name__
                final = stream.current_completion_snapshot
    except openai.APIError as exc:
        return {"error": {"class": type(exc).__name__, "message": exc.message, "body": exc.body}}
    finally:
        client.close()
    choice = final.choices[0]
    message = choice.message
    return {
        "raised": raised,
        "id": final.id,
        "model": final.model,
        "content": message.content,
        "reasoning_content": getattr(message, "reasoning_content", None),
        "thinking_blocks": getattr(message, "thinking_blocks", None),
        "tool_calls": [
            {"id": t.id, "name": t.function.name, "arguments": t.function.arguments}
            for t in message.tool_calls or []
        ],
        "finish_reason": choice.finish_reason,
        "usage": final.usage.model_dump(exclude_none=True) if final.usage else None,
    } | ({"function_call": message.function_call.to_dict()} if message.function_call else {})


def stream_state(translator: StreamTranslator) -> dict[str, Any]:
    err = translator.error
    return {
        "done": translator.done,
        "started": translator.started,
        "finish_reason": translator.finish_reason,
        "usage": {
            "input_tokens": translator.usage.input_tokens,
            "output_tokens": translator.usage.output_tokens,
            "cache_read_tokens": translator.usage.cache_read_tokens,
            "cache_write_tokens": translator.usage.cache_write_tokens,
            "reasoning_tokens": translator.usage.reasoning_tokens,
        },
        "error": None if err is None else {"class": type(err).__name__, "message": err.message},
    }


def render_error(err: GatewayError) -> dict[str, Any]:
    return {
        "class": type(err).__name__,
        "status": openai_dialect.error_status(err),
        "retry_after": err.retry_after,
        "body": openai_dialect.error_body(err),
    }


def sse_data(stream_bytes: bytes) -> Iterator[bytes]:
    for frame in stream_bytes.split(b"\n\n"):
        if frame.startswith(b"data: ") and frame != OPENAI_DONE.strip():
            yield frame[len(b"data: ") :]


# -- golden cases -----------------------------------------------------------------------------


def test_fixture_corpus_is_complete() -> None:
    cases = sorted(p for p in FIXTURES.iterdir() if p.is_dir())
    assert len(cases) >= 35
    inputs = ("request.json", "response_in.json", "stream_in.sse", "error_in.json")
    for case in cases:
        assert any((case / name).exists() for name in inputs), f"{case.name} has no input"


@pytest.mark.parametrize("case", cases_with("request.json"))
def test_request(case: str) -> None:
    folder = FIXTURES / case
    body = load(folder / "request.json")
    openai_dialect.validate_request(body)
    try:
        out, ctx = translate_request(body, options_for(folder))
    except GatewayError as err:
        if not REGEN:
            assert (folder / "expected_error.json").exists(), f"unexpected error: {err.message}"
        check_json(
            folder / "expected_error.json",
            {"status": openai_dialect.error_status(err), "body": openai_dialect.error_body(err)},
        )
        return
    assert not (folder / "expected_error.json").exists(), "expected an error"
    check_json(folder / "expected.json", out)
    check_json(folder / "expected_context.json", context_json(ctx))
    assert_valid_anthropic_request(out)


@pytest.mark.parametrize("case", cases_with("response_in.json"))
def test_response(case: str) -> None:
    folder = FIXTURES / case
    resp = load(folder / "response_in.json")
    anthropic.types.Message.model_validate(resp)  # the fixture is a real Message shape
    out = translate_response(
        resp, context_for(folder), completion_id=COMPLETION_ID, created=CREATED
    )
    check_json(folder / "response_out.json", out)


@pytest.mark.parametrize("case", cases_with("response_in.json"))
def test_response_through_openai_sdk(case: str) -> None:
    """The real client parses every field of the translated body without loss."""
    out = (FIXTURES / case / "response_out.json").read_bytes()
    client = mock_client(serve(out, "application/json"))
    with client:
        completion = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert isinstance(completion, ChatCompletion)
    assert completion.to_dict() == load(FIXTURES / case / "response_out.json")


@pytest.mark.parametrize("case", cases_with("stream_in.sse"))
def test_stream(case: str) -> None:
    folder = FIXTURES / case
    parser = SSEParser()
    for event in parser.feed((folder / "stream_in.sse").read_bytes()) + parser.finish():
        if event.event not in ("ping", "error"):
            STREAM_EVENT.validate_json(event.data)  # the fixture is a real Anthropic event
    translator, out = run_stream(folder)
    check_bytes(folder / "stream_out.sse", out)
    check_json(folder / "stream_state.json", stream_state(translator))
    assert translator.done


@pytest.mark.parametrize("case", cases_with("stream_in.sse"))
def test_stream_chunks_are_valid(case: str) -> None:
    """§7.2 invariants on the golden output, independent of the expected bytes."""
    folder = FIXTURES / case
    ctx = context_for(folder)
    out = (folder / "stream_out.sse").read_bytes()
    frames = out.split(b"\n\n")
    assert frames[-1] == b""
    chunks = [orjson.loads(d) for d in sse_data(out)]
    errors = [c for c in chunks if "error" in c]
    if errors:
        assert len(errors) == 1 and chunks[-1] is errors[0]
        assert OPENAI_DONE not in out
    else:
        assert out.endswith(OPENAI_DONE) and out.count(OPENAI_DONE) == 1
    normal = [c for c in chunks if "error" not in c]
    for chunk in normal:
        model = ChatCompletionChunk.model_validate(chunk)
        assert model.to_dict() == chunk
        assert (chunk["id"], chunk["created"], chunk["model"]) == (
            COMPLETION_ID,
            CREATED,
            ctx.client_model,
        )
        assert chunk["object"] == "chat.completion.chunk"
        assert ("usage" in chunk) == ctx.include_usage
    with_choices = [c for c in normal if c["choices"]]
    if with_choices:
        assert with_choices[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert sum("role" in c["choices"][0]["delta"] for c in with_choices) <= 1
    assert sum(c["choices"][0]["finish_reason"] is not None for c in with_choices) <= 1
    usage_chunks = [c for c in normal if not c["choices"]]
    if ctx.include_usage and not errors:
        assert len(usage_chunks) == 1 and normal[-1] is usage_chunks[0]
        assert usage_chunks[0]["usage"] is not None
    else:
        assert usage_chunks == []
    for c in with_choices:
        assert c["choices"][0]["logprobs"] is None
        assert "usage" not in c or c["usage"] is None
        for call in c["choices"][0]["delta"].get("tool_calls", []):
            assert "index" in call
            if "id" in call:
                assert call["function"]["arguments"] == "" and call["type"] == "function"
            else:
                assert set(call) == {"index", "function"} and call["function"]["arguments"]


@pytest.mark.parametrize("case", cases_with("stream_in.sse"))
def test_stream_through_openai_sdk(case: str) -> None:
    """The real ``openai`` client's stream helper accumulates the golden output."""
    folder = FIXTURES / case
    result = sdk_stream_result((folder / "stream_out.sse").read_bytes())
    check_json(folder / "stream_sdk.json", result)


def cases_with_both(first: str, second: str) -> list[str]:
    return sorted(set(cases_with(first)) & set(cases_with(second)))


def json_or_text(text: Any) -> Any:
    try:
        return {"json": orjson.loads(text)} if isinstance(text, str) else text
    except orjson.JSONDecodeError:
        return text


def whole_answer(case: Path) -> dict[str, Any]:
    """The non-streamed answer in `sdk_stream_result`'s terms, JSON text parsed (the stream
    relays Anthropic's ``partial_json`` as it is written, the whole answer re-serialises)."""
    ctx = context_for(case)
    completion = translate_response(load(case / "response_in.json"), ctx)
    message = completion["choices"][0]["message"]
    out = {
        "content": json_or_text(message["content"]) if ctx.json_tool else message["content"],
        "reasoning_content": message.get("reasoning_content"),
        "thinking_blocks": message.get("thinking_blocks"),
        "tool_calls": [
            {"id": t["id"], "name": t["function"]["name"], "arguments": t["function"]["arguments"]}
            for t in message.get("tool_calls", [])
        ],
        "finish_reason": completion["choices"][0]["finish_reason"],
    } | ({"function_call": message["function_call"]} if "function_call" in message else {})
    for call in out["tool_calls"] + [out.get("function_call", {})]:
        if "arguments" in call:
            call["arguments"] = json_or_text(call["arguments"])
    return out


def assembled_stream(case: Path) -> dict[str, Any]:
    """What the ``openai`` SDK assembles of the translator's stream, in `whole_answer`'s terms."""
    ctx = context_for(case)
    _, out = run_stream(case)
    result = sdk_stream_result(out)
    if ctx.json_tool:
        result["content"] = json_or_text(result["content"])
    if result["thinking_blocks"] is not None:
        blocks = result["thinking_blocks"]
        assert [b["index"] for b in blocks] == list(range(len(blocks)))
        result["thinking_blocks"] = [{k: v for k, v in b.items() if k != "index"} for b in blocks]
    for call in result["tool_calls"] + [result.get("function_call", {})]:
        if "arguments" in call:
            call["arguments"] = json_or_text(call["arguments"])
    if result["content"] == "" and not ctx.json_tool:
        # The role chunk opens every stream with "content": "" at message_start (PROTOCOL.md
        # §7.2: the client's first byte leaves with the upstream's first event), which the
        # SDK keeps where no text follows; the whole answer says null there.
        result["content"] = None
    keep = ("content", "reasoning_content", "thinking_blocks", "tool_calls", "finish_reason")
    return {k: result[k] for k in (*keep, "function_call") if k in result}


@pytest.mark.parametrize("case", cases_with_both("stream_in.sse", "response_in.json"))
def test_stream_assembles_the_whole_answer(case: str) -> None:
    """A case with the same Message whole (``response_in.json``) and streamed
    (``stream_in.sse``): the message the SDK assembles of the stream is the whole answer."""
    folder = FIXTURES / case
    assert assembled_stream(folder) == whole_answer(folder)


JSON_ANSWER = {"type": "tool_use", "id": "toolu_j", "name": "Weather", "input": {"a": 1}}
CALL = {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": 1}}


@pytest.mark.parametrize(
    ("blocks", "json_tool"),
    [
        ([{"type": "text", "text": "Here it is:"}, JSON_ANSWER], "Weather"),
        ([{"type": "text", "text": "Calling."}, CALL, JSON_ANSWER], "Weather"),
        ([JSON_ANSWER, {**JSON_ANSWER, "id": "toolu_k", "input": {"a": 2}}], "Weather"),
        ([{"type": "thinking", "thinking": "hm", "signature": ""}, CALL], None),
        ([{"type": "thinking", "thinking": "", "signature": "sig"}, CALL], None),
    ],
)
def test_responses_stream_from_anthropic_ends_with_the_whole_answer(
    blocks: list[dict[str, Any]], json_tool: str | None
) -> None:
    """A Responses client on an Anthropic backend streams through `StreamTranslator`: its
    final Response has the whole answer's items (JSON mode: the first JSON tool's input
    alone, no text; and the thinking_blocks entries sent for a thinking block without a
    signature or without text add no item of their own)."""
    message = {
        "content": blocks,
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    ctx = responses_tests.plain_ctx(encrypted_reasoning=True)
    whole = responses_tests.from_anthropic(message, ctx, json_tool=json_tool)
    streamed = responses_tests.streamed_from_anthropic(message, ctx, json_tool=json_tool)
    _, final = responses_tests.terminal_response(streamed)
    assert final["output"] == whole["output"]


@pytest.mark.parametrize("case", cases_with("error_in.json"))
def test_upstream_error(case: str) -> None:
    folder = FIXTURES / case
    raw = load(folder / "error_in.json")
    body = raw["body"] if isinstance(raw["body"], str) else orjson.dumps(raw["body"]).decode()
    err = upstream_error(raw["status"], body.encode(), raw.get("retry_after"))
    check_json(folder / "error_out.json", render_error(err))


# -- behaviour not expressible as one fixture ---------------------------------------------------


def ctx_of(**overrides: Any) -> RequestContext:
    fields: dict[str, Any] = {
        "client_model": "gpt-4o-mini",
        "names": ToolNames(),
        "include_usage": False,
        "json_tool": None,
        "reasoning": False,
        "stream": True,
    }
    fields.update(overrides)
    return RequestContext(**fields)


def event(name: str | None, data: dict[str, Any]) -> SSEEvent:
    return SSEEvent(name, orjson.dumps(data).decode())


MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_01abc",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 1},
    },
}


def test_ping_is_a_comment_until_done() -> None:
    translator = StreamTranslator(ctx_of(), completion_id=COMPLETION_ID, created=CREATED)
    assert translator.ping() == [OPENAI_KEEPALIVE] == [b": keep-alive\n\n"]
    translator.feed(event("message_start", MESSAGE_START))
    assert translator.ping() == [OPENAI_KEEPALIVE]
    translator.feed(
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": 3},
            },
        )
    )
    assert translator.feed(event("message_stop", {"type": "message_stop"}))[-1] == OPENAI_DONE
    assert translator.done and translator.ping() == []
    assert translator.feed(event("message_stop", {"type": "message_stop"})) == []
    assert translator.finish() == []


def test_stream_derives_completion_id_from_message_id() -> None:
    translator = StreamTranslator(ctx_of(), created=CREATED)
    assert not translator.started
    [chunk] = translator.feed(event("message_start", MESSAGE_START))
    assert translator.started
    assert orjson.loads(chunk[len(b"data: ") :])["id"] == "chatcmpl-01abc"


def test_stream_ignores_unknown_events_and_tolerates_missing_message_start() -> None:
    translator = StreamTranslator(ctx_of(), completion_id=COMPLETION_ID, created=CREATED)
    assert translator.feed(SSEEvent("future_event", "{not json")) == []
    assert translator.feed(SSEEvent(None, "{not json")) == []
    out = translator.feed(
        event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": "hi"},
            },
        )
    )
    deltas = [orjson.loads(c[len(b"data: ") :])["choices"][0]["delta"] for c in out]
    assert deltas == [{"role": "assistant", "content": ""}, {"content": "hi"}]


def test_stream_malformed_known_event_is_an_in_band_error() -> None:
    translator = StreamTranslator(ctx_of(), completion_id=COMPLETION_ID, created=CREATED)
    [chunk] = translator.feed(SSEEvent("message_start", "{broken"))
    assert orjson.loads(chunk[len(b"data: ") :])["error"]["type"] == "server_error"
    assert isinstance(translator.error, UpstreamError) and translator.done


def test_stream_error_event_maps_type_to_error_class() -> None:
    translator = StreamTranslator(ctx_of(), completion_id=COMPLETION_ID, created=CREATED)
    translator.feed(event("message_start", MESSAGE_START))
    [chunk] = translator.feed(
        event(
            "error",
            {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        )
    )
    assert chunk == (
        b'data: {"error":{"message":"Overloaded","type":"server_error","param":null,'
        b'"code":"overloaded"}}\n\n'
    )
    assert isinstance(translator.error, OverloadedError)
    assert translator.finish_reason is None


def test_request_does_not_mutate_the_client_body() -> None:
    body = load(FIXTURES / "r10_tool_roundtrip" / "request.json")
    before = orjson.dumps(body)
    translate_request(body, BackendOptions(target_model=TARGET_MODEL, prompt_cache=True))
    assert orjson.dumps(body) == before


def test_request_context_fields() -> None:
    body = {
        "model": "my-alias",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "reasoning_effort": "low",
    }
    out, ctx = translate_request(
        body, BackendOptions(target_model="claude-x", default_max_tokens=77)
    )
    assert out["model"] == "claude-x"
    assert out["max_tokens"] == 1024 + 1024  # default 77 raised above the 1024 budget
    assert (ctx.client_model, ctx.include_usage, ctx.reasoning, ctx.stream) == (
        "my-alias",
        True,
        True,
        True,
    )
    body["stream"] = False
    _, ctx = translate_request(body, BackendOptions(target_model="claude-x"))
    assert ctx.include_usage is False and ctx.stream is False


def test_default_max_tokens_from_options() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    out, _ = translate_request(body, BackendOptions(target_model="t", default_max_tokens=1234))
    assert out["max_tokens"] == 1234


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("alice_01", "alice_01"),
        ("x" * 256, "x" * 256),
        ("x" * 257, hashlib.sha256(b"x" * 257).hexdigest()),
        ("carol@example.com", hashlib.sha256(b"carol@example.com").hexdigest()),
        ("user 42", hashlib.sha256(b"user 42").hexdigest()),
    ],
)
def test_user_id_pattern_or_hash(value: str, expected: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "user": value}
    out, _ = translate_request(body, BackendOptions(target_model="t"))
    assert out["metadata"] == {"user_id": expected}


@pytest.mark.parametrize(
    ("effort", "budget"),
    [
        ("minimal", 1024),
        ("low", 1024),
        ("medium", 2048),
        ("high", 4096),
        ("xhigh", 8192),
        ("max", 16384),
    ],
)
def test_reasoning_effort_budgets(effort: str, budget: int) -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "reasoning_effort": effort,
        "max_completion_tokens": 20000,
    }
    out, ctx = translate_request(body, BackendOptions(target_model="t"))
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert out["max_tokens"] == 20000 and ctx.reasoning


def test_reasoning_effort_none_and_thinking_disabled_mean_no_thinking() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.3}
    for extra in (
        {"reasoning_effort": "none"},
        {"reasoning_effort": "high", "thinking": {"type": "disabled"}},
    ):
        out, ctx = translate_request({**base, **extra}, BackendOptions(target_model="t"))
        assert "thinking" not in out and out["temperature"] == 0.3 and not ctx.reasoning


@pytest.mark.parametrize(
    ("body_patch", "param"),
    [
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "thinking.budget_tokens"),
        ({"thinking": "on"}, "thinking"),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"tool_choice": {"type": "custom", "custom": {"name": "x"}}}, "tool_choice"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"n": 0}, "n"),
    ],
)
def test_invalid_options_are_400_naming_the_field(body_patch: dict[str, Any], param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body_patch}
    with pytest.raises(InvalidRequestError) as info:
        translate_request(body, BackendOptions(target_model="t"))
    assert info.value.param == param and info.value.status == 400


# -- fields the translation drops or maps keep OpenAI's types (audit_http #12) -------------------

SEVENTEEN_PAIRS = {f"k{i}": "v" for i in range(17)}


@pytest.mark.parametrize(
    ("field", "value", "param", "says"),
    [
        ("logprobs", 1, "logprobs", "Invalid type for 'logprobs': expected a boolean."),
        ("logprobs", 1.5, "logprobs", "expected a boolean"),
        ("logprobs", "s", "logprobs", "expected a boolean"),
        ("logprobs", [], "logprobs", "expected a boolean"),
        ("logprobs", {}, "logprobs", "expected a boolean"),
        ("parallel_tool_calls", "s", "parallel_tool_calls", "expected a boolean"),
        ("parallel_tool_calls", 0, "parallel_tool_calls", "expected a boolean"),
        ("store", "s", "store", "expected a boolean"),
        ("store", 1, "store", "expected a boolean"),
        ("metadata", 1, "metadata", "Invalid type for 'metadata': expected an object."),
        ("metadata", ["a"], "metadata", "expected an object"),
        ("metadata", {"a": 1}, "metadata.a", "Invalid type for 'metadata.a': expected a string."),
        ("metadata", {"a": None}, "metadata.a", "expected a string"),
        ("metadata", SEVENTEEN_PAIRS, "metadata", "at most 16 key-value pairs"),
        ("metadata", {"k" * 65: "v"}, "metadata", "longer than 64 characters"),
        ("metadata", {"a": "x" * 513}, "metadata.a", "at most 512 characters"),
        ("modalities", 1, "modalities", "expected an array of strings"),
        ("modalities", "text", "modalities", "expected an array of strings"),
        ("modalities", ["video"], "modalities[0]", "expected 'text' or 'audio'"),
        ("modalities", ["text", ["audio"]], "modalities[1]", "expected 'text' or 'audio'"),
        ("prediction", 1, "prediction", "Invalid type for 'prediction': expected an object."),
        ("prediction", "x", "prediction", "expected an object"),
        ("audio", "alloy", "audio", "expected an object"),
        (
            "stream_options",
            {"include_usage": "yes"},
            "stream_options.include_usage",
            "expected a boolean",
        ),
        (
            "stream_options",
            {"include_obfuscation": 1},
            "stream_options.include_obfuscation",
            "expected a boolean",
        ),
        ("service_tier", 1, "service_tier", "Invalid type for 'service_tier': expected a string."),
        ("service_tier", {}, "service_tier", "expected a string"),
        ("reasoning_effort", 1, "reasoning_effort", "expected a string"),
        ("safety_identifier", 5, "safety_identifier", "expected a string"),
        ("verbosity", 1, "verbosity", "expected a string"),
        ("prompt_cache_key", [], "prompt_cache_key", "expected a string"),
        ("prompt_cache_retention", 24, "prompt_cache_retention", "expected a string"),
        ("prompt_cache_options", "x", "prompt_cache_options", "expected an object"),
        ("web_search_options", [], "web_search_options", "expected an object"),
        ("moderation", "on", "moderation", "expected an object"),
    ],
)
def test_dropped_and_mapped_fields_are_type_checked(
    field: str, value: Any, param: str, says: str
) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], field: value}
    with pytest.raises(InvalidRequestError) as info:
        translate_request(body, BackendOptions(target_model="t"))
    assert info.value.param == param and info.value.status == 400
    assert says in info.value.message


def test_another_servers_stream_option_is_dropped_not_refused() -> None:
    body = {
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    out, _ = translate_request(body, BackendOptions(target_model="t"))
    assert "stream_options" not in out and out["stream"] is True


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("logprobs", False),
        ("logprobs", None),
        ("top_logprobs", 0),
        ("parallel_tool_calls", True),
        ("store", True),
        ("metadata", {}),
        ("metadata", {"run": "7", "team": "search"}),
        ("metadata", None),
        ("modalities", ["text"]),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("stream_options", {}),
        ("stream_options", {"include_usage": False, "include_obfuscation": True}),
        ("stream_options", {"include_usage": None}),
        ("service_tier", "priority"),
        ("reasoning_effort", "none"),
        ("safety_identifier", "alice_01"),
        ("verbosity", "low"),
        ("prompt_cache_key", "k"),
        ("prompt_cache_retention", "24h"),
        ("prompt_cache_options", {"mode": "explicit"}),
        ("web_search_options", {}),
        ("moderation", {"model": "omni-moderation-latest"}),
        ("seed", 7),
        ("user", "alice_01"),
        ("some_future_field", {"a": 1}),  # unknown fields stay dropped unchecked
    ],
)
def test_well_typed_dropped_fields_still_pass(field: str, value: Any) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], field: value}
    out, _ = translate_request(body, BackendOptions(target_model="t"))
    assert out["messages"] == [{"role": "user", "content": "hi"}]


def test_a_wrongly_typed_effort_is_a_400_on_a_model_that_thinks_adaptively() -> None:
    """Once a TypeError (a list is no dict key) and so a 500."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "reasoning_effort": []}
    opts = BackendOptions(target_model="claude-opus-4-8", adaptive_thinking=True)
    with pytest.raises(InvalidRequestError) as info:
        translate_request(body, opts)
    assert info.value.param == "reasoning_effort"


def test_logprobs_true_keeps_its_own_refusal() -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": True}
    with pytest.raises(InvalidRequestError) as info:
        translate_request(body, BackendOptions(target_model="t"))
    assert info.value.param == "logprobs" and "not available" in info.value.message


# -- legacy functions get the legacy answer shape (audit_sdk #3) ---------------------------------

GET_WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}
TOOL_REPLY = {
    "id": "msg_01L",
    "type": "message",
    "role": "assistant",
    "model": TARGET_MODEL,
    "content": [
        {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}}
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {"input_tokens": 10, "output_tokens": 5},
}


def test_legacy_functions_answer_with_function_call_through_the_sdk() -> None:
    body = {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "weather?"}],
        "functions": [GET_WEATHER],
    }
    out, ctx = translate_request(body, BackendOptions(target_model=TARGET_MODEL))
    assert ctx.legacy_functions
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    completion = ChatCompletion.model_validate(translate_response(TOOL_REPLY, ctx))
    choice = completion.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.tool_calls is None
    assert choice.message.function_call is not None
    assert choice.message.function_call.name == "get_weather"
    assert orjson.loads(choice.message.function_call.arguments) == {"city": "Paris"}


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"functions": [GET_WEATHER]},  # both: the client reads tool_calls
    ],
)
def test_a_tools_client_keeps_tool_calls(extra: dict[str, Any]) -> None:
    body = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "weather?"}],
        "tools": [{"type": "function", "function": GET_WEATHER}],
        **extra,
    }
    out, ctx = translate_request(body, BackendOptions(target_model=TARGET_MODEL))
    assert not ctx.legacy_functions
    assert "tool_choice" not in out
    completion = translate_response(TOOL_REPLY, ctx)
    choice = completion["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and "function_call" not in choice["message"]
    assert choice["message"]["tool_calls"][0]["id"] == "toolu_01A"


def test_legacy_function_call_none_keeps_parallel_use_unset() -> None:
    body = {
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "weather?"}],
        "functions": [GET_WEATHER],
        "function_call": "none",
    }
    out, ctx = translate_request(body, BackendOptions(target_model=TARGET_MODEL))
    assert out["tool_choice"] == {"type": "none"} and ctx.legacy_functions


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "assistant", "tool_calls": "x"}, "messages[1].tool_calls"),
        (
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]},
            "messages[1].tool_calls[0].id",
        ),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]},
            "messages[1].tool_calls[0].function.name",
        ),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]},
            "messages[1].tool_calls[0].type",
        ),
        (
            {
                "role": "assistant",
                "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
            },
            "messages[1].content[0]",
        ),
        ({"role": "user", "content": [{"type": "text", "text": 5}]}, "messages[1].content[0].text"),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
            },
            "messages[1].content[0].image_url.url",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}],
            },
            "messages[1].content[0].image_url.url",
        ),
        (
            {
                "role": "user",
                "content": [{"type": "file", "file": {"file_data": "data:text/csv;base64,YSxi"}}],
            },
            "messages[1].content[0].file.file_data",
        ),
        (
            {
                "role": "system",
                "content": [{"type": "image_url", "image_url": {"url": "https://x"}}],
            },
            "messages[1].content[0]",
        ),
        (
            {"role": "tool", "tool_call_id": "c", "content": [{"type": "file", "file": {}}]},
            "messages[1].content[0]",
        ),
    ],
)
def test_malformed_messages_are_400_not_crashes(message: dict[str, Any], param: str) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}, message]}
    with pytest.raises(InvalidRequestError) as info:
        translate_request(body, BackendOptions(target_model="t"))
    assert info.value.param == param


# -- real client round trips: structured outputs and tools ----------------------------------


class Weather(pydantic.BaseModel):
    city: str
    temperature_c: float


def anthropic_reply(ctx: RequestContext, anthropic_body: dict[str, Any]) -> dict[str, Any]:
    """What an Anthropic backend answers to a forced JSON tool: a tool_use with the input."""
    assert anthropic_body["tool_choice"] == {"type": "tool", "name": ctx.json_tool}
    return {
        "id": "msg_01Parse",
        "type": "message",
        "role": "assistant",
        "model": TARGET_MODEL,
        "content": [
            {
                "type": "tool_use",
                "id": "toolu_01P",
                "name": ctx.json_tool,
                "input": {"city": "Paris", "temperature_c": 18.5},
            }
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 40, "output_tokens": 12},
    }


def gateway_handler(stream: bool) -> Callable[[httpx.Request], httpx.Response]:
    """A fake gateway: translate the real request, answer as Anthropic would, translate back."""

    def handler(request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        anthropic_body, ctx = translate_request(
            openai_dialect.validate_request(body), BackendOptions(target_model=TARGET_MODEL)
        )
        assert_valid_anthropic_request(anthropic_body)
        reply = anthropic_reply(ctx, anthropic_body)
        if not stream:
            out = translate_response(reply, ctx, completion_id=COMPLETION_ID, created=CREATED)
            return httpx.Response(200, json=out)
        translator = StreamTranslator(ctx, completion_id=COMPLETION_ID, created=CREATED)
        chunks: list[bytes] = []
        start = {**reply, "content": [], "stop_reason": None}
        chunks += translator.feed(
            event("message_start", {"type": "message_start", "message": start})
        )
        block = {**reply["content"][0], "input": {}}
        chunks += translator.feed(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": block},
            )
        )
        for fragment in ('{"city": "Pa', 'ris", "temperature_c"', ": 18.5}"):
            delta = {"type": "input_json_delta", "partial_json": fragment}
            chunks += translator.feed(
                event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": delta},
                )
            )
        chunks += translator.feed(
            event("content_block_stop", {"type": "content_block_stop", "index": 0})
        )
        chunks += translator.feed(
            event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "tool_use"},
                    "usage": {"output_tokens": 12},
                },
            )
        )
        chunks += translator.feed(event("message_stop", {"type": "message_stop"}))
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"".join(chunks)
        )

    return handler


def test_sdk_parse_pydantic_model_through_forced_tool() -> None:
    with mock_client(gateway_handler(stream=False)) as client:
        completion = client.chat.completions.parse(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Paris is 18.5 degrees."}],
            response_format=Weather,
        )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls is None
    assert choice.message.parsed == Weather(city="Paris", temperature_c=18.5)


def test_parse_chat_completion_on_translated_json_response() -> None:
    from openai.lib._parsing._completions import parse_chat_completion

    folder = FIXTURES / "r33_json_schema_forced_tool"
    out = load(folder / "response_out.json")

    class Report(pydantic.BaseModel):
        city: str
        temperature_c: int

    parsed = parse_chat_completion(
        response_format=Report,
        input_tools=openai.omit,
        chat_completion=ChatCompletion.model_validate(out),
    )
    assert parsed.choices[0].message.parsed == Report(city="Paris", temperature_c=18)


def test_sdk_stream_parse_pydantic_model_through_forced_tool() -> None:
    with mock_client(gateway_handler(stream=True)) as client:
        with client.chat.completions.stream(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Paris is 18.5 degrees."}],
            response_format=Weather,
            stream_options={"include_usage": True},
        ) as stream:
            kinds = [e.type for e in stream]
            final = stream.get_final_completion()
    assert "content.done" in kinds and "tool_calls.function.arguments.delta" not in kinds
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.parsed == Weather(city="Paris", temperature_c=18.5)
    assert final.usage is not None and final.usage.total_tokens == 52


def test_stream_state_accumulates_parallel_tool_calls_directly() -> None:
    from openai.lib.streaming.chat import ChatCompletionStreamState

    out = (FIXTURES / "t05_stream_parallel_tools_index_counting" / "stream_out.sse").read_bytes()
    state: ChatCompletionStreamState[None] = ChatCompletionStreamState()
    for data in sse_data(out):
        state.handle_chunk(ChatCompletionChunk.model_validate(orjson.loads(data)))
    final = state.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, orjson.loads(c.function.arguments)) for c in calls] == [
        ("toolu_01A", "get_weather", {"city": "Paris"}),
        ("toolu_01B", "get_weather", {"city": "Rome"}),
    ]
    assert final.choices[0].finish_reason == "tool_calls"
    assert final.usage is not None and final.usage.prompt_tokens_details is not None
    assert final.usage.prompt_tokens_details.cached_tokens == 512


# -- robustness: malformed input never escapes as KeyError/TypeError -------------------------

JUNK: list[Any] = [
    None, 0, -1, 2.5, True, "", " ", "x", "data:", "data:image/png;base64,", [], [None], [{}],
    {}, {"type": None}, {"type": "text"}, {"type": "function"}, {"type": "image_url"},
    "auto", "required", {"name": 5},
]  # fmt: skip


def test_mutated_requests_raise_only_invalid_request() -> None:
    import random

    rng = random.Random(20260827)
    bodies = [load(FIXTURES / case / "request.json") for case in cases_with("request.json")]
    checked = 0
    for _ in range(4000):
        body = mutate(rng, rng.choice(bodies), JUNK)
        try:
            openai_dialect.validate_request(body)
        except InvalidRequestError:
            continue
        checked += 1
        try:
            out, _ = translate_request(body, BackendOptions(target_model="t", prompt_cache=True))
        except InvalidRequestError:
            continue
        orjson.dumps(out)
    assert checked > 1000


def test_mutated_upstream_responses_and_streams_never_raise() -> None:
    import random

    rng = random.Random(7)
    responses = [
        load(FIXTURES / case / "response_in.json") for case in cases_with("response_in.json")
    ]
    streams = []
    for case in cases_with("stream_in.sse"):
        parser = SSEParser()
        events = parser.feed((FIXTURES / case / "stream_in.sse").read_bytes()) + parser.finish()
        streams.append([(e.event, orjson.loads(e.data)) for e in events])
    for i in range(2000):
        ctx = ctx_of(
            json_tool="Weather" if i % 2 else None, reasoning=i % 3 == 0, include_usage=i % 5 == 0
        )
        out = translate_response(mutate(rng, rng.choice(responses), JUNK), ctx)
        ChatCompletion.model_validate(out)
    for i in range(600):
        ctx = ctx_of(
            json_tool="Weather" if i % 2 else None, reasoning=i % 3 == 0, include_usage=i % 5 == 0
        )
        translator = StreamTranslator(ctx)
        events = mutate(rng, rng.choice(streams), JUNK)
        chunks: list[bytes] = []
        for item in events:
            name, data = item if isinstance(item, list) and len(item) == 2 else (None, item)
            chunks += translator.feed(
                SSEEvent(name if isinstance(name, str) else None, orjson.dumps(data).decode())
            )
        chunks += translator.finish()
        assert translator.done and chunks
        assert chunks[-1] == OPENAI_DONE or chunks[-1].startswith(b'data: {"error":')


def test_reasoning_tool_loop_round_trips_signed_thinking_through_the_sdk_message() -> None:
    """A client that appends ``message.to_dict()`` keeps thinking on for the follow-up turn."""
    tools = [load(FIXTURES / "r10_tool_roundtrip" / "request.json")["tools"][0]]
    first = {
        "model": "gpt-4o-mini",
        "reasoning_effort": "medium",
        "tools": tools,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
    }
    body, ctx = translate_request(first, BackendOptions(target_model=TARGET_MODEL))
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    reply = {
        "id": "msg_01Loop",
        "type": "message",
        "role": "assistant",
        "model": TARGET_MODEL,
        "content": [
            {"type": "thinking", "thinking": "Call the tool.", "signature": "EqQBCkYIsig=="},
            {
                "type": "tool_use",
                "id": "toolu_01L",
                "name": "get_weather",
                "input": {"city": "Paris"},
            },
        ],
        "stop_reason": "tool_use",
        "stop_sequence": None,
        "usage": {"input_tokens": 50, "output_tokens": 30},
    }
    completion = ChatCompletion.model_validate(translate_response(reply, ctx))
    message = completion.choices[0].message
    assert getattr(message, "reasoning_content", None) == "Call the tool."

    second = {
        **first,
        "messages": [
            *first["messages"],
            message.to_dict(),
            {"role": "tool", "tool_call_id": "toolu_01L", "content": "18C sunny"},
        ],
    }
    body, ctx = translate_request(second, BackendOptions(target_model=TARGET_MODEL))
    assert ctx.reasoning and body["thinking"]["type"] == "enabled"
    assert body["messages"][1]["content"] == reply["content"]
    assert body["messages"][2]["content"][0]["tool_use_id"] == "toolu_01L"
    assert_valid_anthropic_request(body)

    # Without the signed block (a client that keeps only role/content/tool_calls) thinking is off.
    plain = {k: v for k, v in message.to_dict().items() if k in ("role", "content", "tool_calls")}
    second["messages"][1] = plain
    body, ctx = translate_request(second, BackendOptions(target_model=TARGET_MODEL))
    assert "thinking" not in body and not ctx.reasoning
    assert_valid_anthropic_request(body)


def test_a_forced_tool_choice_dropped_for_thinking_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Thinking refuses forced tool use (§1.2); the request goes with ``auto``, and the log
    says so (§6.5): the client asked for more than it gets."""
    import logging

    body = {
        "model": "gpt-4o",
        "reasoning_effort": "high",
        "tool_choice": "required",
        "tools": [
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ],
        "messages": [{"role": "user", "content": "go"}],
    }
    with caplog.at_level(logging.INFO, logger="app.translate.openai_to_anthropic"):
        out, _ctx = translate_request(body, BackendOptions(target_model="claude-x"))
    assert out["tool_choice"] == {"type": "auto"}
    assert "tool_choice 'any' sent as 'auto': thinking is on" in caplog.text


@pytest.mark.parametrize(
    ("model", "adaptive"),
    [
        ("claude-opus-4-8", True),
        ("claude-sonnet-4-6", True),
        ("claude-sonnet-4-6-20260217", True),
        ("anthropic.claude-sonnet-4-6-v1:0", True),  # Bedrock
        ("us.anthropic.claude-opus-4-7", True),
        ("claude-opus-5", True),
        ("CLAUDE-HAIKU-4-6", True),
        ("claude-fable-5", True),
        ("claude-mythos-5-1", True),
        ("claude-sonnet-5", True),
        ("claude-2.1", False),
        ("claude-instant-1-2", False),
        ("claude-haiku-4-5", False),
        ("claude-sonnet-4-5-20250929", False),
        ("claude-opus-4-20250514", False),  # 4.0: the second number is a date
        ("claude-opus-4-1", False),
        ("claude-3-7-sonnet-latest", False),
        ("claude-3-5-haiku-20241022", False),
        ("qwen3-coder", False),
    ],
)
def test_which_models_think_adaptively(model: str, adaptive: bool) -> None:
    """As Claude Code 2.1 asks them: adaptive thinking with an effort from 4.6 on."""
    assert adaptive_thinking(model) is adaptive
