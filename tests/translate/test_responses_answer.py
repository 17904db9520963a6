"""Golden tests for a Chat Completions answer -> Responses API (`responses_answer`,
`responses_stream`).

Every folder in tests/fixtures/responses_answer/<case>/ is one case, with ``context.json``
(the ResponsesContext fields) and:

* ``chat_in.json`` (a ``chat.completion``) -> ``response_out.json`` (the Response);
* ``chat_in.sse`` (a chat SSE stream as backends send it) -> ``stream_out.sse`` (exact
  bytes) and ``stream_sdk.json`` (what the real ``openai`` client's
  ``client.responses.stream()`` makes of ``stream_out.sse``);
* ``anthropic_in.json`` (an Anthropic backend's whole ``Message``) -> ``response_out.json``,
  through the gateway's Anthropic translator and its ordered parts
  (`openai_to_anthropic.translate_response_parts`).

A stream's final Response must equal what `translate_response` makes of the same stream
accumulated into one answer (and ``response_out.json`` when the case has both); an
Anthropic ``Message`` streamed (its blocks as events, through the gateway's Anthropic
stream translator) must end with the Response its whole answer makes.
``BRIDGEKEEPER_REGEN=1`` rewrites the expected files; review every diff by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import openai
import orjson
import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from app.dialects.sse import SSEParser, anthropic_event
from app.translate import openai_to_anthropic as o2a
from app.translate import openai_to_anthropic_stream as o2a_stream
from app.translate.ids import ToolNames
from app.translate.responses_answer import response_error, translate_response
from app.translate.responses_context import ResponsesContext, ToolOrigin
from app.translate.responses_sse import ResponsesSSE
from app.translate.responses_stream import ResponsesStream
from tests.fakes import anthropic_block
from tests.translate.golden import check_bytes, check_json, load
from tests.translate.junk import mutate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "responses_answer"
STREAM_EVENT: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(ResponseStreamEvent)
TERMINAL = ("response.completed", "response.incomplete", "response.failed")

Chunk = dict[str, Any] | None  # None stands for ``data: [DONE]``


# -- helpers ----------------------------------------------------------------------------------


def cases_with(filename: str) -> list[str]:
    return sorted(p.parent.name for p in FIXTURES.glob(f"*/{filename}"))


def context_for(case: str) -> ResponsesContext:
    raw = load(FIXTURES / case / "context.json")
    return ResponsesContext(
        response_id=raw["response_id"],
        created_at=raw["created_at"],
        model=raw["model"],
        echo=raw["echo"],
        encrypted_reasoning=raw["encrypted_reasoning"],
        tools={name: ToolOrigin(**origin) for name, origin in raw["tools"].items()},
        clock=lambda: raw["created_at"] + 2,
    )


def parse_chunks(data: bytes, piece: int | None = None) -> list[Chunk]:
    """The chat SSE's chunks, the bytes fed whole or ``piece`` bytes at a time."""
    parser = SSEParser()
    pieces = [data] if piece is None else [data[i : i + piece] for i in range(0, len(data), piece)]
    events = [e for p in pieces for e in parser.feed(p)] + parser.finish()
    return [None if e.data == "[DONE]" else orjson.loads(e.data) for e in events]


def chunks_of(case: str) -> list[Chunk]:
    return parse_chunks((FIXTURES / case / "chat_in.sse").read_bytes())


def run_stream(ctx: ResponsesContext, chunks: list[Chunk]) -> list[bytes]:
    """As the gateway runs it: start, each chunk, finish at ``[DONE]`` and again at EOF."""
    stream = ResponsesStream(ctx)
    out = stream.start()
    for chunk in chunks:
        out += stream.finish() if chunk is None else stream.feed(chunk)
    out += stream.finish()
    assert stream.done
    return out


def events_of(data: bytes) -> list[dict[str, Any]]:
    """Every event of a Responses SSE stream, checking its framing on the way."""
    frames = data.split(b"\n\n")
    assert frames[-1] == b""
    events = []
    for frame in frames[:-1]:
        name, data_line = frame.split(b"\n")
        assert name.startswith(b"event: ") and data_line.startswith(b"data: ")
        event = orjson.loads(data_line[6:])
        assert event["type"] == name[7:].decode()
        assert orjson.dumps(event) == data_line[6:]  # compact
        events.append(event)
    return events


def terminal_response(data: bytes) -> tuple[str, dict[str, Any]]:
    last = events_of(data)[-1]
    assert last["type"] in TERMINAL
    return last["type"], last["response"]


def accumulate(chunks: list[Chunk]) -> dict[str, Any]:
    """The whole ``chat.completion`` a chunk stream stands for (as the gateway's answer
    would carry it: thinking_blocks without their stream ``index``)."""
    message: dict[str, Any] = {"role": "assistant"}
    texts: dict[str, list[str]] = {"content": [], "reasoning_content": [], "refusal": []}
    blocks: list[dict[str, Any]] = []
    calls: dict[int, dict[str, Any]] = {}
    finish = model = usage = None
    for chunk in chunks:
        if chunk is None:
            continue
        model = chunk.get("model") or model
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            texts["content"].append(delta.get("content") or "")
            texts["reasoning_content"].append(
                delta.get("reasoning_content") or delta.get("reasoning") or ""
            )
            texts["refusal"].append(delta.get("refusal") or "")
            blocks += [
                {k: v for k, v in b.items() if k != "index"}
                for b in delta.get("thinking_blocks") or []
            ]
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(
                    call["index"],
                    {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
                )
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["function"]["name"] = function.get("name") or slot["function"]["name"]
                slot["function"]["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    for key, pieces in texts.items():
        message[key] = "".join(pieces) or None
    if blocks:
        message["thinking_blocks"] = blocks
    if calls:
        message["tool_calls"] = [calls[k] for k in sorted(calls)]
    whole: dict[str, Any] = {
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage is not None:
        whole["usage"] = usage
    return whole


def mock_client(body: bytes, content_type: str) -> openai.OpenAI:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": content_type}, content=body)

    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://gateway.test/v1",
        max_retries=0,
        http_client=httpx2.Client(transport=httpx2.MockTransport(handler)),
    )


def without_parsed(value: Any) -> Any:
    """A parsed SDK object's dict without what the SDK adds of its own (``parsed``,
    ``parsed_arguments``: None without a ``text_format`` or input tools)."""
    if isinstance(value, dict):
        return {
            k: without_parsed(v)
            for k, v in value.items()
            if not (k in ("parsed", "parsed_arguments") and v is None)
        }
    if isinstance(value, list):
        return [without_parsed(v) for v in value]
    return value


def sdk_stream_result(data: bytes) -> dict[str, Any]:
    """What ``client.responses.stream(...)`` (ResponseStreamState) makes of a stream."""
    client = mock_client(data, "text/event-stream")
    with client, client.responses.stream(model="gpt-5", input="hi") as stream:
        events = list(stream)
        raised = None
        try:
            final: Any = stream.get_final_response()
        except RuntimeError as exc:  # no response.completed: the lifecycle event's response
            raised = str(exc)
            last: Any = next(e for e in reversed(events) if e.type in TERMINAL)
            final = last.response
    return {
        "events": [e.type for e in events],
        "raised": raised,
        "status": final.status,
        "output_text": final.output_text,
        "output": [without_parsed(item.to_dict()) for item in final.output],
        "usage": final.usage.to_dict() if final.usage is not None else None,
        "error": final.error.to_dict() if final.error is not None else None,
    }


# -- golden cases -----------------------------------------------------------------------------


def test_fixture_corpus_is_complete() -> None:
    cases = sorted(p for p in FIXTURES.iterdir() if p.is_dir())
    assert len(cases) >= 20
    for case in cases:
        assert (case / "context.json").exists(), case.name
        inputs = ("chat_in.json", "chat_in.sse", "anthropic_in.json")
        assert any((case / name).exists() for name in inputs), case.name


@pytest.mark.parametrize("case", cases_with("chat_in.json"))
def test_response(case: str) -> None:
    folder = FIXTURES / case
    out = translate_response(load(folder / "chat_in.json"), context_for(case))
    check_json(folder / "response_out.json", out)
    assert Response.model_validate(out).to_dict() == out


@pytest.mark.parametrize("case", cases_with("chat_in.sse"))
def test_stream(case: str) -> None:
    out = b"".join(run_stream(context_for(case), chunks_of(case)))
    check_bytes(FIXTURES / case / "stream_out.sse", out)


@pytest.mark.parametrize("case", cases_with("chat_in.sse"))
def test_stream_events_are_valid(case: str) -> None:
    """Shape and order rules on the golden output, independent of the expected bytes."""
    events = events_of((FIXTURES / case / "stream_out.sse").read_bytes())
    for event in events:
        assert STREAM_EVENT.validate_python(event).to_dict() == event
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events[:2]] == ["response.created", "response.in_progress"]
    assert [e["type"] in TERMINAL for e in events].count(True) == 1
    assert events[-1]["type"] in TERMINAL
    for event in events[:2]:
        assert event["response"]["status"] == "in_progress" and event["response"]["output"] == []
    ctx = context_for(case)
    opened: dict[int, str] = {}
    closed: set[int] = set()
    for event in events[2:-1]:
        index = event.get("output_index")
        assert isinstance(index, int)
        if event["type"] == "response.output_item.added":
            assert index == len(opened) and index not in opened
            opened[index] = event["item"]["id"]
            assert event["item"]["id"].endswith(f"_{index}")
            assert ctx.response_id.removeprefix("resp_") in event["item"]["id"]
        else:
            assert index in opened and index not in closed
            assert event.get("item_id", opened[index]) == opened[index]
        if event["type"] == "response.output_item.done":
            assert event["item"]["id"] == opened[index]
            closed.add(index)
    final = events[-1]["response"]
    Response.model_validate(final)
    if events[-1]["type"] == "response.failed":
        assert final["status"] == "failed" and final["error"]["message"]
        assert len(final["output"]) == len(opened)
    else:
        assert closed == set(opened), "every item is closed before the end"
        done = {
            e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"
        }
        assert final["output"] == [done[i] for i in sorted(done)]
        assert final["status"] == (
            "completed" if events[-1]["type"] == TERMINAL[0] else "incomplete"
        )


@pytest.mark.parametrize("case", cases_with("chat_in.sse"))
def test_stream_ends_with_the_whole_answer(case: str) -> None:
    """The final Response is the one `translate_response` makes of the same answer."""
    kind, final = terminal_response((FIXTURES / case / "stream_out.sse").read_bytes())
    if kind == "response.failed":
        return
    ctx = context_for(case)
    assert final == translate_response(accumulate(chunks_of(case)), ctx)
    if (FIXTURES / case / "response_out.json").exists():
        assert final == load(FIXTURES / case / "response_out.json")


@pytest.mark.parametrize("case", cases_with("chat_in.sse"))
def test_stream_through_openai_sdk(case: str) -> None:
    """The real ``openai`` client's stream helper accumulates the golden output, and what it
    holds at the end is the final event's Response, item for item."""
    folder = FIXTURES / case
    data = (folder / "stream_out.sse").read_bytes()
    result = sdk_stream_result(data)
    check_json(folder / "stream_sdk.json", result)
    _, final = terminal_response(data)
    assert result["output"] == final["output"]


@pytest.mark.parametrize("case", cases_with("chat_in.sse"))
def test_stream_pieces_give_the_same_bytes(case: str) -> None:
    """A per-chunk translator: the chat SSE cut anywhere (here: every 7 bytes, and byte by
    byte through `ResponsesSSE`) gives the same events, and nothing is held back."""
    data = (FIXTURES / case / "chat_in.sse").read_bytes()
    ctx = context_for(case)
    whole = b"".join(run_stream(ctx, chunks_of(case)))
    assert b"".join(run_stream(ctx, parse_chunks(data, piece=7))) == whole
    sse = ResponsesSSE(ctx)
    assert b"".join([sse.feed(data[i : i + 1]) for i in range(len(data))]) + sse.finish() == whole

    stream = ResponsesStream(ctx)
    stream.start()
    for chunk in chunks_of(case):
        if chunk is None:
            break
        out = events_of(b"".join(stream.feed(chunk)))
        for choice in chunk.get("choices") or []:
            text = (choice.get("delta") or {}).get("content")
            if text:
                deltas = [e["delta"] for e in out if e["type"] == "response.output_text.delta"]
                assert deltas == [text], "text goes out as it comes"


# -- an Anthropic backend's answer: its content blocks' order -----------------------------------


def anthropic_ctx(**kwargs: Any) -> o2a.RequestContext:
    """The gateway's Anthropic translator context for a Responses request (reasoning shown)."""
    fields: dict[str, Any] = {
        "client_model": "gpt-claude",
        "names": ToolNames(),
        "include_usage": True,
        "json_tool": None,
        "reasoning": True,
        "stream": False,
    }
    return o2a.RequestContext(**(fields | kwargs))


def from_anthropic(message: Any, ctx: ResponsesContext, **kwargs: Any) -> dict[str, Any]:
    """The whole answer as the gateway makes it of an Anthropic ``Message``."""
    chat, parts = o2a.translate_response_parts(message, anthropic_ctx(**kwargs))
    return translate_response(chat, ctx, parts)


def anthropic_events(message: dict[str, Any]) -> bytes:
    """``message`` as the Anthropic stream that sends it: each block started empty, its
    payload in deltas (text and tool input in two pieces), the stop reason and usage last."""
    start = dict(message, content=[], stop_reason=None)
    out = [anthropic_event("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        kind = block["type"]
        deltas: list[dict[str, Any]] = []
        if kind == "text":
            opened: dict[str, Any] = {"type": "text", "text": ""}
            half = len(block["text"]) // 2
            pieces = [block["text"][:half], block["text"][half:]]
            deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
        elif kind == "thinking":
            opened = {"type": "thinking", "thinking": "", "signature": ""}
            deltas = [
                {"type": "thinking_delta", "thinking": block["thinking"]},
                {"type": "signature_delta", "signature": block["signature"]},
            ]
        elif kind == "tool_use":
            opened = dict(block, input={})
            arguments = orjson.dumps(block["input"]).decode()
            half = len(arguments) // 2
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in (arguments[:half], arguments[half:])
            ]
        else:
            opened = block
        out += anthropic_block(index, opened, deltas)
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": None}
    out += [
        anthropic_event(
            "message_delta", {"type": "message_delta", "delta": delta, "usage": message["usage"]}
        ),
        anthropic_event("message_stop", {"type": "message_stop"}),
    ]
    return b"".join(out)


def streamed_from_anthropic(message: dict[str, Any], ctx: ResponsesContext, **kwargs: Any) -> bytes:
    """The Responses stream the gateway makes of ``message`` streamed."""
    translator = o2a_stream.StreamTranslator(anthropic_ctx(stream=True, **kwargs))
    parser = SSEParser()
    chat = b""
    for event in parser.feed(anthropic_events(message)) + parser.finish():
        chat += b"".join(translator.feed(event))
    chat += b"".join(translator.finish())
    events = ResponsesSSE(ctx)
    return events.feed(chat) + events.finish()


@pytest.mark.parametrize("case", cases_with("anthropic_in.json"))
def test_response_from_anthropic(case: str) -> None:
    """Text after a tool call, thinking between calls: each item in its block's place."""
    folder = FIXTURES / case
    out = from_anthropic(load(folder / "anthropic_in.json"), context_for(case))
    check_json(folder / "response_out.json", out)
    assert Response.model_validate(out).to_dict() == out


@pytest.mark.parametrize("case", cases_with("anthropic_in.json"))
def test_anthropic_stream_ends_with_the_whole_answer(case: str) -> None:
    """The same Message streamed: the items the stream opens (output_index, ids, status)
    are the whole answer's, item for item."""
    message = load(FIXTURES / case / "anthropic_in.json")
    ctx = context_for(case)
    data = streamed_from_anthropic(message, ctx)
    events = events_of(data)
    for event in events:
        assert STREAM_EVENT.validate_python(event).to_dict() == event
    kind, final = terminal_response(data)
    assert kind in ("response.completed", "response.incomplete")
    whole = from_anthropic(message, ctx)
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    assert added == [item["id"] for item in whole["output"]]
    assert final == whole


def test_chat_answer_is_the_same_with_parts() -> None:
    """The chat completion beside the parts is the one a chat client gets."""
    for case in cases_with("anthropic_in.json"):
        message = load(FIXTURES / case / "anthropic_in.json")
        chat, _ = o2a.translate_response_parts(message, anthropic_ctx(), created=1)
        assert chat == o2a.translate_response(message, anthropic_ctx(), created=1)


def test_json_mode_parts_hold_only_the_forced_call_s_input() -> None:
    """JSON mode: the forced tool's input is the message, after the thinking before it;
    other text is dropped, as from the chat answer's content."""
    message = {
        "content": [
            {"type": "thinking", "thinking": "A JSON object.", "signature": "sig"},
            {"type": "text", "text": "Here it is:"},
            {"type": "tool_use", "id": "toolu_j", "name": "json_tool_call", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use",
    }
    out = from_anthropic(message, plain_ctx(), json_tool="json_tool_call")
    assert [(i["type"], i["id"]) for i in out["output"]] == [
        ("reasoning", "rs_t_0"),
        ("message", "msg_t_1"),
    ]
    assert out["output"][1]["content"][0]["text"] == '{"a":1}'


def test_hidden_thinking_does_not_split_the_message() -> None:
    """Without reasoning shown, thinking between two text blocks makes no item (one message,
    as the stream gives it); a tool call does (a message before it, another after)."""
    message = {
        "content": [
            {"type": "text", "text": "One, "},
            {"type": "thinking", "thinking": "hm", "signature": "sig"},
            {"type": "text", "text": "two."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            {"type": "text", "text": "Three."},
        ],
        "stop_reason": "tool_use",
    }
    ctx = plain_ctx()
    out = from_anthropic(message, ctx, reasoning=False)
    assert [(i["type"], i["id"]) for i in out["output"]] == [
        ("message", "msg_t_0"),
        ("function_call", "fc_t_1"),
        ("message", "msg_t_2"),
    ]
    assert [i["content"][0]["text"] for i in out["output"] if i["type"] == "message"] == [
        "One, two.",
        "Three.",
    ]
    assert out["output"][1]["arguments"] == "{}"
    streamed = dict(message, usage={"input_tokens": 1, "output_tokens": 1})
    _, final = terminal_response(streamed_from_anthropic(streamed, ctx, reasoning=False))
    assert final["output"] == out["output"]


# -- behaviour --------------------------------------------------------------------------------


def plain_ctx(**kwargs: Any) -> ResponsesContext:
    return ResponsesContext(
        response_id="resp_t", created_at=1, model="m", clock=lambda: 3, **kwargs
    )


def test_nothing_follows_the_terminal_event() -> None:
    stream = ResponsesStream(plain_ctx())
    stream.start()
    stream.feed({"choices": [{"index": 0, "delta": {"content": "a"}}]})
    assert stream.finish() and stream.done
    assert stream.feed({"choices": [{"index": 0, "delta": {"content": "b"}}]}) == []
    assert stream.finish() == []
    assert stream.start() == []


def test_feed_before_start_starts() -> None:
    stream = ResponsesStream(plain_ctx())
    out = events_of(b"".join(stream.feed({"choices": []})))
    assert [e["type"] for e in out] == ["response.created", "response.in_progress"]
    assert stream.start() == []


def test_echo_never_overrides_what_the_answer_owns() -> None:
    ctx = plain_ctx(echo={"id": "x", "status": "x", "output": ["x"], "usage": "x", "top_p": 0.5})
    chat = {"model": "", "choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}]}
    out = translate_response(chat, ctx)
    assert (out["id"], out["status"], out["usage"], out["top_p"]) == (
        "resp_t",
        "completed",
        None,
        0.5,
    )
    assert out["model"] == "m" and len(out["output"]) == 1


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (
            {"message": "m", "type": "server_error", "param": None, "code": "overloaded"},
            "server_error",
        ),
        ({"message": "m", "type": "rate_limit_error", "code": None}, "rate_limit_exceeded"),
        ({"message": "m", "type": "tokens", "code": "rate_limit_exceeded"}, "rate_limit_exceeded"),
        ({"message": "m", "type": "invalid_request_error", "code": None}, "invalid_prompt"),
        (
            {"message": "m", "type": "invalid_request_error", "code": "invalid_image"},
            "invalid_image",
        ),
        ({"message": "m", "type": "timeout", "code": None}, "server_error"),
        ({}, "server_error"),
    ],
)
def test_error_codes_are_ones_the_responses_api_has(error: dict[str, Any], code: str) -> None:
    mapped = response_error(error)
    assert mapped["code"] == code and mapped["message"]
    Response.model_validate(
        {
            "id": "r",
            "object": "response",
            "created_at": 1,
            "model": "m",
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "error": mapped,
        }
    )


def test_tool_call_without_index_or_id() -> None:
    """Gemini's OpenAI layer leaves out ``index``; some backends leave out the id."""
    stream = ResponsesStream(plain_ctx())
    stream.start()
    calls: list[dict[str, Any]] = [
        {"id": "c1", "function": {"name": "a", "arguments": "{}"}},
        {"function": {"name": "b", "arguments": '{"x":'}},
        {"function": {"arguments": "1}"}},
    ]
    for call in calls:
        stream.feed({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    _, final = terminal_response(b"".join(stream.finish()))
    assert [(i["call_id"], i["name"], i["arguments"]) for i in final["output"]] == [
        ("c1", "a", "{}"),
        ("call_t_1", "b", '{"x":1}'),
    ]


# -- robustness: malformed chunks never escape as exceptions -----------------------------------

JUNK: list[Any] = [
    None, 0, -1, 2.5, True, "", "x", [], [None], [{}], {}, {"type": None},
    {"type": "thinking"}, {"type": "redacted_thinking"}, {"index": "0"}, {"index": 0},
]  # fmt: skip


def test_mutated_answers_and_streams_never_raise() -> None:
    import random

    rng = random.Random(20261107)
    answers = [
        (case, load(FIXTURES / case / "chat_in.json")) for case in cases_with("chat_in.json")
    ]
    for _ in range(1500):
        case, chat = rng.choice(answers)
        Response.model_validate(translate_response(mutate(rng, chat, JUNK), context_for(case)))
    streams = [(case, chunks_of(case)) for case in cases_with("chat_in.sse")]
    for _ in range(600):
        case, chunks = rng.choice(streams)
        mutated = mutate(rng, [c for c in chunks if c is not None], JUNK)
        ctx = context_for(case)
        out = run_stream(ctx, [c if isinstance(c, dict) else {} for c in mutated])
        events = events_of(b"".join(out))
        for event in events:
            STREAM_EVENT.validate_python(event)
        assert events[-1]["type"] in TERMINAL


def test_mutated_anthropic_answers_and_parts_never_raise() -> None:
    import random

    rng = random.Random(20261207)
    messages = [
        (case, load(FIXTURES / case / "anthropic_in.json"))
        for case in cases_with("anthropic_in.json")
    ]
    for _ in range(600):
        case, message = rng.choice(messages)
        ctx = context_for(case)
        Response.model_validate(from_anthropic(mutate(rng, message, JUNK), ctx))
        chat, parts = o2a.translate_response_parts(message, anthropic_ctx())
        Response.model_validate(translate_response(chat, ctx, mutate(rng, parts, JUNK)))
