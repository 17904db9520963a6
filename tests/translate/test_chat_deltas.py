"""Tool arguments sent as cumulative snapshots: one rule (`chat_deltas.ToolArguments`) for
both streams that read an OpenAI-compatible backend, the Anthropic client's
(`anthropic_to_openai_stream`) and the Responses client's (`responses_stream`).

Each case pins what the rule makes of a call's fragments; the two streams must then give
the same arguments for the same fragments, and only a fragment that starts with all the
arguments so far may cost a run of the JSON grammar.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson
import pytest

from app.dialects.sse import SSEEvent
from app.translate import chat_deltas
from app.translate.anthropic_to_openai_stream import StreamTranslator
from app.translate.chat_deltas import ToolArguments
from app.translate.json_repair import is_json_prefix
from tests.translate import test_anthropic_to_openai as a2o_tests
from tests.translate import test_responses_answer as responses_tests
from tests.translate.test_responses_stream_quirks import chat_sse, streamed

RESPONSES_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "responses_answer"


@pytest.mark.parametrize(
    ("fragments", "added", "settled"),
    [
        pytest.param(['{"city":', ' "Paris"}'], ['{"city":', ' "Paris"}'], None, id="deltas"),
        pytest.param(
            ["{", '{"city": ', '{"city": "Paris"}'],
            ["{", '"city": ', '"Paris"}'],
            None,
            id="snapshots",
        ),
        pytest.param(
            ["{", '{"a": 1', '{"a": 1', "{", '{"a": 1}'],
            ["{", '"a": 1', "", "", "}"],
            None,
            id="snapshots_repeated_or_shorter",
        ),
        pytest.param(['{"q":', '{"q":1}}'], ['{"q":', '{"q":1}}'], None, id="nested_same_key"),
        pytest.param(
            ['{"a": ', '{"a": 1}', "}"],
            ['{"a": ', '{"a": 1}', "}"],
            '{"a": {"a": 1}}',
            id="undecided_then_deltas",
        ),
        pytest.param(
            ['{"a":', '{"a":', "1}}"],
            ['{"a":', '{"a":', "1}}"],
            '{"a":{"a":1}}',
            id="undecided_key",
        ),
        pytest.param(
            ['{"a": ', '{"a": 1', '{"a": 1, "b": 2}'],
            ['{"a": ', '{"a": 1', '{"a": 1, "b": 2}'],
            '{"a": 1, "b": 2}',
            id="undecided_then_snapshots",
        ),
        pytest.param(
            [" ", ' {"a":', ' {"a": 1}'],
            [" ", '{"a":', ' {"a": 1}'],
            ' {"a": 1}',
            id="after_blank_then_undecided",
        ),
    ],
)
def test_tool_arguments(fragments: list[str], added: list[str], settled: str | None) -> None:
    """What each fragment adds, and the arguments at the call's close (the deltas' text,
    unless ``settled`` says otherwise: then the call was left undecided)."""
    arguments = ToolArguments()
    assert [arguments.add(f) for f in fragments] == added
    assert arguments.text == "".join(added)
    assert arguments.size == len(arguments.text)
    assert arguments.undecided is (settled is not None)
    assert arguments.settled() == (settled if settled is not None else arguments.text)


def _a2o_arguments(fragments: list[str]) -> object:
    """The input the Anthropic client's stream gives one call of ``fragments``."""
    translator = StreamTranslator(a2o_tests._ctx(), message_id=a2o_tests.MESSAGE_ID)
    out: list[bytes] = []
    for n, fragment in enumerate(fragments):
        call: dict[str, object] = {"index": 0, "function": {"arguments": fragment}}
        if n == 0:
            call.update(id="call_1", type="function", function={"name": "f", "arguments": fragment})
        delta = {"tool_calls": [call]}
        out += translator.feed(
            SSEEvent(None, orjson.dumps({"choices": [{"delta": delta}]}).decode())
        )
    out += translator.feed(
        SSEEvent(None, '{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}')
    )
    out += translator.feed(SSEEvent(None, "[DONE]"))
    events = a2o_tests.check_stream_grammar(b"".join(out))
    return orjson.loads(
        "".join(
            p["delta"]["partial_json"]
            for name, p in events
            if name == "content_block_delta" and p["delta"]["type"] == "input_json_delta"
        )
    )


def _responses_arguments(fragments: list[str]) -> str:
    """The arguments the Responses client's stream gives one call of ``fragments``, checked
    against the deltas it sent for them."""
    head = '{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f",'
    escaped = [orjson.dumps(f).decode() for f in fragments]
    data = chat_sse(
        [f'{head}"arguments":{escaped[0]}}}}}]}}']
        + [f'{{"tool_calls":[{{"index":0,"function":{{"arguments":{e}}}}}]}}' for e in escaped[1:]],
        "tool_calls",
    )
    events = responses_tests.events_of(streamed(data))
    deltas = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    (done,) = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert "".join(deltas) == done["arguments"]
    return str(done["arguments"])


_WHOLE = [
    '{"city": "Paris", "days": [1, 2], "opts": {"unit": "c"}}',
    '{"q":{"q":1}}',
    '{"a": {"a": {"b": 1}}}',
    '{"a": [{"a": [1, 2]}, "x"]}',
]


@pytest.mark.parametrize("whole", _WHOLE)
def test_both_streams_read_fragments_and_snapshots_alike(whole: str) -> None:
    """Cut anywhere, as deltas and as snapshots (some sent twice), the arguments come out the
    same through both streams: the ones the backend meant."""
    rng = random.Random(whole)
    expected = orjson.loads(whole)
    for _ in range(40):
        ends = sorted(rng.sample(range(1, len(whole)), rng.randint(1, 4))) + [len(whole)]
        deltas = [whole[start:end] for start, end in zip([0, *ends], ends, strict=False)]
        snapshots = [whole[:end] for end in ends]
        if rng.random() < 0.3:
            at = rng.randrange(len(snapshots))
            snapshots.insert(at, snapshots[at])
        for fragments in (deltas, snapshots):
            assert orjson.loads(_responses_arguments(fragments)) == expected, fragments
            assert _a2o_arguments(fragments) == expected, fragments


def test_the_grammar_runs_only_for_a_fragment_that_repeats_what_came_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Plain calls pay nothing per fragment on either stream; a snapshot stream is decided
    once."""
    calls: list[str] = []

    def counted(text: str) -> bool:
        calls.append(text)
        return is_json_prefix(text)

    monkeypatch.setattr(chat_deltas, "is_json_prefix", counted)
    for case in ("stream_tool_fragmented_args", "stream_parallel_calls"):
        path = a2o_tests.FIXTURES / case
        a2o_tests.run_stream(a2o_tests.context_for(path), (path / "stream_in.sse").read_bytes())
    for name in ("c08_one_tool_call", "c09_parallel_tool_calls_interleaved"):
        ctx = responses_tests.context_for(name)
        responses_tests.run_stream(ctx, responses_tests.chunks_of(name))
    assert calls == []
    path = a2o_tests.FIXTURES / "stream_cumulative_argument_snapshots"
    a2o_tests.run_stream(a2o_tests.context_for(path), (path / "stream_in.sse").read_bytes())
    assert calls == ['{{"city": ']
    calls.clear()
    _responses_arguments(["{", '{"city": ', '{"city": "Paris"}'])
    assert calls == ['{{"city": ']
