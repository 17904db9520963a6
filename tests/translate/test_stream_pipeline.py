"""The stream fast path: `StreamPipeline` and the translators' ``fast_event`` must give the
client exactly the bytes the parser and ``feed`` alone give, however TCP cuts the upstream.

Every stream fixture of both directions is replayed whole, one event per read, and cut at
fixed and random sizes; the output must equal the fixture's golden ``stream_out.sse`` and
the output meter must count what the slow path counts.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.dialects.sse import SSEParser
from app.dialects.tokens import estimate_text
from app.dialects.usage import OutputMeter
from app.translate import anthropic_to_openai_stream as a2o_stream
from app.translate import openai_to_anthropic_stream as o2a_stream
from app.translate.anthropic_to_openai import RequestContext as A2OContext
from app.translate.ids import ToolNames
from app.translate.openai_to_anthropic import RequestContext as O2AContext
from app.translate.stream_pipeline import StreamPipeline, TextSlot, plain_run
from tests.translate import test_anthropic_to_openai as a2o_tests
from tests.translate import test_openai_to_anthropic as o2a_tests

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _a2o(case: Path) -> StreamPipeline:
    translator = a2o_stream.StreamTranslator(
        a2o_tests.context_for(case), message_id=a2o_tests.MESSAGE_ID
    )
    return StreamPipeline(translator, "openai")


def _o2a(case: Path) -> StreamPipeline:
    translator = o2a_stream.StreamTranslator(
        o2a_tests.context_for(case),
        completion_id=o2a_tests.COMPLETION_ID,
        created=o2a_tests.CREATED,
    )
    return StreamPipeline(translator, "anthropic")


def _cases() -> list[Any]:
    out = []
    for direction, make in (("anthropic_to_openai", _a2o), ("openai_to_anthropic", _o2a)):
        for case in sorted((FIXTURES / direction).glob("*/stream_in.sse")):
            if a2o_tests.PING_EVENT.encode() in case.read_bytes():
                continue  # a heartbeat the test harness injects, not upstream bytes
            out.append(pytest.param(case.parent, make, id=f"{direction}/{case.parent.name}"))
    return out


def _reads(raw: bytes, how: str) -> Iterator[bytes]:
    if how == "whole":
        yield raw
    elif how == "events":
        parts = raw.split(b"\n\n")
        for part in parts[:-1]:
            yield part + b"\n\n"
        if parts[-1]:
            yield parts[-1]
    elif how.startswith("size"):
        step = int(how[4:])
        for at in range(0, len(raw), step):
            yield raw[at : at + step]
    else:
        rng = random.Random(how)
        at = 0
        while at < len(raw):
            step = rng.randint(1, 300)
            yield raw[at : at + step]
            at += step


def _replay(pipeline: StreamPipeline, raw: bytes, how: str) -> bytes:
    out: list[bytes] = []
    for chunk in _reads(raw, how):
        for frame in pipeline.feed(chunk):
            assert frame.endswith(b"\n\n")
            out.append(frame)
    out += pipeline.finish()
    return b"".join(out)


def _slow_meter(raw: bytes, dialect: str) -> int:
    parser = SSEParser()
    meter = OutputMeter(dialect)
    for event in parser.feed(raw) + parser.finish():
        meter.feed(event)
    return meter.tokens


READS = ["whole", "events", "size1", "size7", "size64", "seed1", "seed2"]


@pytest.mark.parametrize(("case", "make"), _cases())
def test_pipeline_gives_the_golden_bytes_however_the_stream_is_cut(
    case: Path, make: Callable[[Path], StreamPipeline]
) -> None:
    raw = (case / "stream_in.sse").read_bytes()
    expected = (case / "stream_out.sse").read_bytes()
    dialect = "openai" if case.parent.name == "anthropic_to_openai" else "anthropic"
    metered = _slow_meter(raw, dialect)
    for how in READS:
        pipeline = make(case)
        assert _replay(pipeline, raw, how) == expected, how
        assert pipeline.meter.tokens == metered, how
        assert pipeline.translator.done


def test_the_fast_path_carries_the_text_of_plain_streams() -> None:
    """Not a timing: which path the events took. Text deltas must not fall back to `feed`."""
    for direction, name, make in (
        ("anthropic_to_openai", "stream_text_basic", _a2o),
        ("openai_to_anthropic", "t01_stream_text_include_usage", _o2a),
    ):
        case = FIXTURES / direction / name
        raw = (case / "stream_in.sse").read_bytes()
        pipeline = make(case)
        _replay(pipeline, raw, "events")
        deltas = raw.count(b'"content_block_delta"') or raw.count(b'"content":"') - 1
        assert deltas >= 2
        assert pipeline.fast_events >= deltas - 1, direction  # the first one opens the block


# -- A→O: OpenAI chunks from real servers ---------------------------------------------------


def _a2o_ctx(thinking: bool = False) -> A2OContext:
    return A2OContext(client_model="claude-x", names=ToolNames([]), thinking=thinking)


def _openai_chunk(delta: dict[str, Any], **extra: Any) -> bytes:
    chunk = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
    }
    chunk.update(extra)
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _both_paths(
    make: Callable[[], Any], dialect: str, events: list[bytes]
) -> tuple[bytes, bytes, int]:
    slow = make()
    parser = SSEParser()
    slow_out: list[bytes] = []
    for event in parser.feed(b"".join(events)) + parser.finish():
        slow_out += slow.feed(event)
    slow_out += slow.finish()
    pipeline = StreamPipeline(make(), dialect)
    fast_out: list[bytes] = []
    for event in events:
        fast_out += pipeline.feed(event)
    fast_out += pipeline.finish()
    return b"".join(slow_out), b"".join(fast_out), pipeline.fast_events


def _openai_stream(texts: list[str], **per_chunk: Callable[[int], Any]) -> list[bytes]:
    events = [_openai_chunk({"role": "assistant", "content": ""})]
    for i, text in enumerate(texts):
        extra = {name: value(i) for name, value in per_chunk.items()}
        events.append(_openai_chunk({"content": text}, **extra))
    events.append(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    events.append(b"data: [DONE]\n\n")
    return events


@pytest.mark.parametrize(
    "texts",
    [
        ["Hello", " wor", "ld", "!"],
        ["m", "m", "m"],  # the text equals the model name: found twice, never learned wrongly
        ["caf\u00e9 ", "\u4f60\u597d", " \U0001f600", 'say "hi"\n', "back\\slash", "\u2028"],
        ["\x00bk-probe", "x"],
    ],
)
def test_a2o_fast_path_matches_feed(texts: list[str]) -> None:
    make = lambda: a2o_stream.StreamTranslator(_a2o_ctx(), message_id="msg_1")  # noqa: E731
    slow, fast, taken = _both_paths(make, "openai", _openai_stream(texts))
    assert fast == slow
    assert taken >= len(texts) - 1


def test_a2o_chunks_that_change_between_events_still_match() -> None:
    """llama.cpp stamps ``created`` per chunk and OpenAI pads each chunk with a random
    ``obfuscation`` string: the learned bytes stop matching and the parse path takes over."""
    texts = [f"word{i} " for i in range(12)]
    events = _openai_stream(
        texts, created=lambda i: 1700000000 + i // 3, obfuscation=lambda i: "x" * (i % 5)
    )
    make = lambda: a2o_stream.StreamTranslator(_a2o_ctx(), message_id="msg_1")  # noqa: E731
    slow, fast, taken = _both_paths(make, "openai", events)
    assert fast == slow
    assert taken >= len(texts) - 1


def test_a2o_escaped_text_written_differently_is_read_right() -> None:
    # The same text as the learned event, but escaped the way another encoder writes it.
    events = _openai_stream(["caf\u00e9", "plain"])
    events.insert(3, events[1].replace("caf\u00e9".encode(), b"caf\\u00e9"))
    events.insert(4, events[2].replace(b"plain", b"\\/slash\\/"))
    make = lambda: a2o_stream.StreamTranslator(_a2o_ctx(), message_id="msg_1")  # noqa: E731
    slow, fast, _ = _both_paths(make, "openai", events)
    assert fast == slow
    assert b'"text":"/slash/"' in fast


@pytest.mark.parametrize("thinking", [True, False])
def test_a2o_reasoning_deltas_match_feed(thinking: bool) -> None:
    events = [_openai_chunk({"role": "assistant", "content": ""})]
    events += [
        _openai_chunk({"reasoning_content": f"think {i} ", "content": None}) for i in range(5)
    ]
    events += [_openai_chunk({"content": f"say {i} ", "reasoning_content": None}) for i in range(5)]
    events.append(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    make = lambda: a2o_stream.StreamTranslator(  # noqa: E731
        _a2o_ctx(thinking=thinking), message_id="msg_1"
    )
    slow, fast, taken = _both_paths(make, "openai", events)
    assert fast == slow
    assert (b"thinking_delta" in fast) is thinking
    assert taken >= 8


def test_a2o_content_with_a_tool_call_or_usage_takes_the_full_path() -> None:
    events = _openai_stream(["one ", "two "])
    events.insert(
        3,
        _openai_chunk(
            {
                "content": "three",
                "tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f"}}],
            }
        ),
    )
    events.insert(4, _openai_chunk({"content": "four"}, usage={"prompt_tokens": 3}))
    make = lambda: a2o_stream.StreamTranslator(  # noqa: E731
        A2OContext(client_model="c", names=ToolNames(["f"]), thinking=False), message_id="m"
    )
    slow, fast, _ = _both_paths(make, "openai", events)
    assert fast == slow
    assert b'"name":"f"' in fast


def test_a2o_content_after_a_refusal_takes_the_full_path_until_it_shows() -> None:
    """The blank line between a refusal and the content after it is `feed`'s to add: the
    content's deltas skip the fast path until the content has shown text, then take it."""
    events = [_openai_chunk({"role": "assistant", "content": ""})]
    events += [_openai_chunk({"refusal": "No. "}), _openai_chunk({"refusal": "Sorry."})]
    events += [_openai_chunk({"content": text}) for text in (" ", "But ", "here ", "is ", "more.")]
    events.append(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    make = lambda: a2o_stream.StreamTranslator(_a2o_ctx(), message_id="msg_1")  # noqa: E731
    slow, fast, taken = _both_paths(make, "openai", events)
    assert fast == slow
    texts = [
        orjson.loads(line[6:])["delta"]["text"]
        for line in fast.split(b"\n")
        if line.startswith(b'data: {"type":"content_block_delta"')
    ]
    assert texts == ["No. ", "Sorry.", "\n\n But ", "here ", "is ", "more."]
    assert taken >= 2


# -- O→A: Anthropic events -------------------------------------------------------------------


def _o2a_ctx(reasoning: bool = True, include_usage: bool = False) -> O2AContext:
    return O2AContext(
        client_model="gpt-x",
        names=ToolNames([]),
        include_usage=include_usage,
        json_tool=None,
        reasoning=reasoning,
        stream=True,
    )


def _anthropic_event(name: str, data: dict[str, Any], named: bool = True) -> bytes:
    head = b"event: " + name.encode() + b"\n" if named else b""
    return head + b"data: " + orjson.dumps({"type": name, **data}) + b"\n\n"


def _anthropic_stream(named: bool = True) -> list[bytes]:
    def delta(index: int, kind: str, key: str, text: str) -> bytes:
        body = {"index": index, "delta": {"type": kind, key: text}}
        return _anthropic_event("content_block_delta", body, named)

    message = {"id": "msg_1", "usage": {"input_tokens": 5, "output_tokens": 1}}
    events = [_anthropic_event("message_start", {"message": message}, named)]
    events.append(
        _anthropic_event(
            "content_block_start",
            {"index": 0, "content_block": {"type": "thinking", "thinking": ""}},
            named,
        )
    )
    events += [delta(0, "thinking_delta", "thinking", f"hmm {i} ") for i in range(4)]
    events.append(delta(0, "signature_delta", "signature", "sig"))
    events.append(_anthropic_event("content_block_stop", {"index": 0}, named))
    events.append(
        _anthropic_event(
            "content_block_start",
            {"index": 1, "content_block": {"type": "text", "text": ""}},
            named,
        )
    )
    events += [delta(1, "text_delta", "text", t) for t in ["Hi", " \u00e9", ' "q"', "", "\n"]]
    events.append(_anthropic_event("ping", {}, named))
    events.append(_anthropic_event("content_block_stop", {"index": 1}, named))
    events.append(
        _anthropic_event(
            "message_delta",
            {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 9}},
            named,
        )
    )
    events.append(_anthropic_event("message_stop", {}, named))
    return events


@pytest.mark.parametrize("named", [True, False])
@pytest.mark.parametrize("reasoning", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
def test_o2a_fast_path_matches_feed(named: bool, reasoning: bool, include_usage: bool) -> None:
    make = lambda: o2a_stream.StreamTranslator(  # noqa: E731
        _o2a_ctx(reasoning, include_usage), completion_id="chatcmpl-1", created=1
    )
    slow, fast, taken = _both_paths(make, "anthropic", _anthropic_stream(named))
    assert fast == slow
    assert (b"reasoning_content" in fast) is reasoning
    assert taken >= 8


@pytest.mark.parametrize(
    ("silent", "fails"),
    [
        (b'event: ping\ndata: {"type":"ping"}\n\n', False),
        (b'event: ping\ndata: {"type": "ping"}\n\n', False),
        (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n', False),
        (b"event: ping\ndata: {bad\n\n", True),  # malformed: the stream fails, as via `feed`
        (b"event: content_block_stop\ndata: [1]\n\n", False),  # not an object: nothing
        (b'event: ping\ndata: {"type":"ping"}\ndata: {}\n\n', True),  # two lines, joined
        (b'event: pingx\ndata: {"type":"ping"}\n\n', False),  # another name: dropped
    ],
)
def test_o2a_silent_events_match_feed(silent: bytes, fails: bool) -> None:
    """Pings and block stops carry nothing for the client; the fast path answers them
    without the parser only when `feed` would also say nothing."""
    make = lambda: o2a_stream.StreamTranslator(  # noqa: E731
        _o2a_ctx(), completion_id="chatcmpl-1", created=1
    )
    events = _anthropic_stream()
    events.insert(len(events) - 3, silent)
    slow, fast, _taken = _both_paths(make, "anthropic", events)
    assert fast == slow
    assert (b'"error"' in fast) is fails


# -- runs of deltas in one read (plain_run) ----------------------------------------------------

TRICKY = [
    "plain ",
    "caf\u00e9 \u4f60\u597d \U0001f600",  # non-ASCII: its characters counted right
    'say "hi"',  # escaped: ends the run, read by fast_event
    "back\\slash",
    "tab\there",
    "\u2028 \u007f <&>/",  # unescaped by orjson all the same
    "",  # nothing to frame
    "after ",
    "x",
]


def _batched(make: Callable[[], Any], dialect: str, events: list[bytes], per_read: int) -> Any:
    pipeline = StreamPipeline(make(), dialect)
    out: list[bytes] = []
    for at in range(0, len(events), per_read):
        out += pipeline.feed(b"".join(events[at : at + per_read]))
    out += pipeline.finish()
    return b"".join(out), pipeline.meter.tokens, pipeline.fast_events


@pytest.mark.parametrize("per_read", [1, 3, 1000])
def test_a2o_runs_in_one_read_match_feed(per_read: int) -> None:
    texts = [*TRICKY, *(f"word{i} " for i in range(30)), *TRICKY]
    events = _openai_stream(texts)
    make = lambda: a2o_stream.StreamTranslator(_a2o_ctx(), message_id="msg_1")  # noqa: E731
    expected, _, _ = _both_paths(make, "openai", events)
    one_by_one = _batched(make, "openai", events, 1)
    got = _batched(make, "openai", events, per_read)
    assert got[0] == expected
    assert got[1] == one_by_one[1]  # the same output estimate however the reads fall
    assert got[2] >= len(texts) - 6  # all but the block's opening and the escaped ones
    translator = a2o_stream.StreamTranslator(_a2o_ctx(), message_id="msg_1")
    pipeline = StreamPipeline(translator, "openai")
    pipeline.feed(b"".join(events))
    pipeline.finish()
    # The estimate the translator would give without the upstream's usage: all the text.
    assert translator.usage.output_tokens == estimate_text("".join(texts))


@pytest.mark.parametrize("per_read", [1, 3, 1000])
@pytest.mark.parametrize("reasoning", [True, False])
def test_o2a_runs_in_one_read_match_feed(per_read: int, reasoning: bool) -> None:
    events = _anthropic_stream()
    at = events.index(next(e for e in events if b'"text":"Hi"' in e))
    more = [
        _anthropic_event(
            "content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": t}}
        )
        for t in [*TRICKY, *(f"word{i} " for i in range(30))]
    ]
    events[at + 1 : at + 1] = more
    make = lambda: o2a_stream.StreamTranslator(  # noqa: E731
        _o2a_ctx(reasoning), completion_id="chatcmpl-1", created=1
    )
    expected, _, _ = _both_paths(make, "anthropic", events)
    one_by_one = _batched(make, "anthropic", events, 1)
    got = _batched(make, "anthropic", events, per_read)
    assert got[0] == expected
    assert got[1] == one_by_one[1]
    assert got[2] >= len(more)


def test_plain_run_stops_at_what_it_cannot_frame_as_is() -> None:
    head, tail = b'data: {"d":', b"}"
    parts = [head + orjson.dumps(t) + tail for t in ["a", "b\u00e9", 'q"', "c"]]
    parts.insert(2, head + b'"\xff\xfe"' + tail)  # not UTF-8
    out: list[bytes] = []
    end, chars, extra = plain_run(parts, 0, (head, tail), (b"<", b">"), out)
    assert (end, chars, extra) == (2, 3, 1)
    assert out == [b'<"a">', '<"b\u00e9">'.encode()]
    assert plain_run(parts, 2, (head, tail), (b"<", b">"), out)[0] == 2
    assert plain_run(parts, 3, (head, tail), (b"<", b">"), out)[0] == 3
    assert plain_run(parts, 4, (head, tail), (b"<", b">"), out)[0] == 5


def _plain_run_by_definition(
    parts: list[bytes], at: int, head: bytes, tail: bytes
) -> tuple[int, int, int, list[bytes]]:
    """What `plain_run` must give, event by event from its definition."""
    chars = extra = 0
    out = []
    for part in parts[at:]:
        if not (part.startswith(head) and part.endswith(tail)) or len(part) < len(head) + 2:
            break
        literal = part[len(head) : len(part) - len(tail)]
        inner = literal[1:-1]
        if not (literal[:1] == literal[-1:] == b'"' and inner) or any(
            c in b'"\\' or c < 0x20 for c in inner
        ):
            break
        try:
            text = inner.decode()
        except UnicodeDecodeError:
            break
        chars += len(text)
        extra += len(inner) - len(text)
        out.append(b"<" + literal + b">")
        at += 1
    return at, chars, extra, out


@pytest.mark.parametrize("seed", range(40))
def test_plain_run_takes_what_its_definition_takes(seed: int) -> None:
    """Windows of up to 64 events are checked together: wherever a run breaks inside one
    (an escape, a raw control byte, bad UTF-8, another event, two strings), the events
    taken, the counts and the bytes are those of taking them one by one."""
    rng = random.Random(seed)
    head, tail = b'data: {"d":', b"}"
    texts = ["a", "word ", "caf\u00e9", "\u4f60\u597d", "\U0001f600", "x" * 40]
    bad = [
        head + orjson.dumps('q"') + tail,  # escaped
        head + b'"tab\there"' + tail,  # a raw control byte: not JSON
        head + b'"a\x01b"' + tail,  # the byte the check joins texts with
        head + b'"a"\x01"b"' + tail,  # two strings around it
        head + b'"a""b"' + tail,
        head + b'"\xff\xfe"' + tail,  # not UTF-8
        head + b'""' + tail,  # nothing to frame
        head + b"5" + tail,
        b'data: {"e":"a"}',
        head + b'"a"',
        b"",
    ]
    parts = []
    for _ in range(rng.choice([1, 5, 63, 64, 65, 130, 200])):
        if rng.random() < 0.04:
            parts.append(rng.choice(bad))
        else:
            parts.append(head + orjson.dumps(rng.choice(texts)) + tail)
    at = 0
    while at < len(parts):
        out: list[bytes] = []
        end, chars, extra = plain_run(parts, at, (head, tail), (b"<", b">"), out)
        want_end, want_chars, want_extra, want_out = _plain_run_by_definition(parts, at, head, tail)
        assert (end, chars, extra) == (want_end, want_chars, want_extra)
        assert b"".join(out) == b"".join(want_out)
        at = max(end, at + 1)


# -- TextSlot --------------------------------------------------------------------------------


def _locate(chunk: Any) -> Any:
    return chunk["choices"][0]["delta"]["content"]


def test_text_slot_reads_only_the_learned_shape() -> None:
    slot = TextSlot()
    part = _openai_chunk({"content": "Hello"})[:-2]
    assert slot.text(part) is None  # nothing learned yet
    slot.learn(part, 6, "Hello", _locate)
    assert slot.text(part) == "Hello"
    assert slot.text(_openai_chunk({"content": 'a "b" \\ \u00e9'})[:-2]) == 'a "b" \\ \u00e9'
    assert slot.text(_openai_chunk({"content": "x"}, usage=None)[:-2]) is None
    assert slot.text(_openai_chunk({"content": ["x"]})[:-2]) is None
    assert slot.text(_openai_chunk({"content": 5})[:-2]) is None
    # Two values spliced where one string was: not a string, so not read.
    assert slot.text(part.replace(b'"Hello"', b'"a","role":"b"')) is None


def test_text_slot_refuses_what_it_cannot_prove() -> None:
    slot = TextSlot()
    ambiguous = _openai_chunk({"content": "m"})[:-2]  # "m" is also the model
    slot.learn(ambiguous, 6, "m", _locate)
    assert slot.text(ambiguous) is None
    # The text found once, but not where the content is.
    elsewhere = b'data: {"note":"hi","choices":[{"delta":{"content":"h\\u0069"}}]}'
    slot.learn(elsewhere, 6, "hi", _locate)
    assert slot.text(elsewhere) is None
    assert slot.text(b'data: {"note":"zz","choices":[{"delta":{"content":"h\\u0069"}}]}') is None


def test_crlf_and_comments_go_through_the_parser() -> None:
    events = _openai_stream(["a", "b", "c"])
    crlf = [e.replace(b"\n", b"\r\n") for e in events]
    commented = [b": keep-alive\n\n" + e for e in events]
    make = lambda: a2o_stream.StreamTranslator(_a2o_ctx(), message_id="msg_1")  # noqa: E731
    expected, _, _ = _both_paths(make, "openai", events)
    for variant in (crlf, commented):
        slow, fast, _ = _both_paths(make, "openai", variant)
        assert slow == fast == expected
