"""Streamed tool-call arguments (A→O) give the client the input the whole answer gives.

`parse_arguments` repairs a whole answer's arguments (a JSON string holding the object, a
Markdown fence, text before the object); the stream holds such a call and sends the repaired
JSON at its close, while a call that starts with ``{`` streams fragment by fragment. A
fragment that repeats everything received is a cumulative snapshot only when the JSON grammar
says so (`_Tool`). The exact event sequences are pinned by the ``stream_*`` golden cases.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from app.dialects.sse import SSEEvent
from app.translate.anthropic_to_openai import parse_arguments, translate_response
from app.translate.anthropic_to_openai_stream import StreamTranslator
from app.translate.json_repair import is_json_prefix
from tests.translate.test_anthropic_to_openai import (
    MESSAGE_ID,
    _ctx,
    check_stream_grammar,
    sdk_final_message,
)


def _call(fragment: Any, *, first: bool, named: bool | None = None) -> SSEEvent:
    call: dict[str, Any] = {"index": 0, "function": {"arguments": fragment}}
    if first:
        call.update(id="call_1", type="function")
    if first if named is None else named:
        call["function"]["name"] = "get_weather"
    body = {"choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}]}
    return SSEEvent(None, orjson.dumps(body).decode())


def _finish(reason: str = "tool_calls") -> SSEEvent:
    body = {"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}
    return SSEEvent(None, orjson.dumps(body).decode())


def _streamed(fragments: list[Any], *, name_last: bool = False) -> bytes:
    """One call's ``fragments``, its name in the first (or, ``name_last``, the last) one."""
    translator = StreamTranslator(_ctx(), message_id=MESSAGE_ID)
    out: list[bytes] = []
    for position, fragment in enumerate(fragments):
        named = position == len(fragments) - 1 if name_last else position == 0
        out += translator.feed(_call(fragment, first=position == 0, named=named))
    out += translator.feed(_finish())
    out += translator.feed(SSEEvent(None, "[DONE]"))
    return b"".join(out)


def _input_json(stream: bytes) -> str:
    """The first tool block's ``input_json_delta`` fragments, joined as clients join them."""
    events = check_stream_grammar(stream)
    return "".join(
        p["delta"]["partial_json"]
        for name, p in events
        if name == "content_block_delta" and p["delta"]["type"] == "input_json_delta"
    )


def _whole_input(arguments: Any) -> Any:
    call = {"id": "call_1", "type": "function"}
    call["function"] = {"name": "get_weather", "arguments": arguments}
    answer = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                "finish_reason": "tool_calls",
            }
        ]
    }
    return translate_response(answer, _ctx(stream=False), message_id=MESSAGE_ID)["content"][0][
        "input"
    ]


# (case id, the backend's fragments, the whole answer's arguments for the same call)
_CASES = [
    ("plain", ['{"city":', ' "Paris"}'], '{"city": "Paris"}'),
    ("double_encoded", ['"{\\"city\\": ', '\\"Paris\\"}"'], '"{\\"city\\": \\"Paris\\"}"'),
    (
        "double_encoded_blank_first",
        [" ", '"{\\"city\\": \\"Paris\\"}"'],
        '"{\\"city\\": \\"Paris\\"}"',
    ),
    ("fenced_json", ['```json\n{"city": ', '"Paris"}\n```'], '```json\n{"city": "Paris"}\n```'),
    ("fenced_bare", ["``", '`\n{"city": "Paris"}\n```'], '```\n{"city": "Paris"}\n```'),
    ("text_before_object", ["Arguments: ", '{"city": "Paris"}'], 'Arguments: {"city": "Paris"}'),
    ("array", ["[1,", " 2]"], "[1, 2]"),
    ("not_json", ["nothing", " here"], "nothing here"),
    ("only_blanks", [" ", "\n"], " \n"),
    ("object_value", [{"city": "Paris"}], {"city": "Paris"}),
    ("list_value", [["Paris"]], ["Paris"]),
    (
        "snapshots",
        ["{", '{"city": ', '{"city": "Paris",', '{"city": "Paris", "unit": "c"}'],
        '{"city": "Paris", "unit": "c"}',
    ),
    (
        "snapshots_repeated_unchanged",
        ["{", '{"city": "Paris"', '{"city": "Paris"', '{"city": "Paris"}'],
        '{"city": "Paris"}',
    ),
    (
        "snapshots_double_encoded",
        ['"{\\"city\\": ', '"{\\"city\\": \\"Paris\\"}"'],
        '"{\\"city\\": \\"Paris\\"}"',
    ),
    ("snapshots_fenced", ["```json\n{", '```json\n{"a": 1}\n```'], '```json\n{"a": 1}\n```'),
    (
        "snapshots_first_ends_at_a_value",
        ['{"city": ', '{"city": "Paris"', '{"city": "Paris", "unit": "c"}'],
        '{"city": "Paris", "unit": "c"}',
    ),
    ("snapshots_after_blank", [" ", ' {"a":', ' {"a": 1}'], ' {"a": 1}'),
    ("nested_same_key", ['{"q":', '{"q":1}}'], '{"q":{"q":1}}'),
    ("nested_same_key_then_close", ['{"a": ', '{"a": 1}', "}"], '{"a": {"a": 1}}'),
    ("nested_repeat_of_a_whole_prefix", ['{"a": [', '{"a": [1]}]}'], '{"a": [{"a": [1]}]}'),
]


@pytest.mark.parametrize("name_last", [False, True], ids=["named_first", "named_last"])
@pytest.mark.parametrize(
    ("fragments", "whole"), [pytest.param(f, w, id=name) for name, f, w in _CASES]
)
def test_the_stream_gives_the_whole_answer_s_input(
    fragments: list[Any], whole: Any, name_last: bool
) -> None:
    stream = _streamed(fragments, name_last=name_last)
    expected = _whole_input(whole)
    assert orjson.loads(_input_json(stream)) == expected
    tool = sdk_final_message(stream).content[0]
    assert tool.type == "tool_use" and tool.input == expected


# Arguments of every shape the stream must agree on, cut into fragments anywhere.
_WHOLE = [
    '{"city": "Paris", "days": [1, 2], "opts": {"unit": "c"}}',
    '{"q":{"q":1}}',
    '{"a": {"a": {"b": 1}}}',
    '{"a": [{"a": [1, 2]}, "x"]}',
    '"{\\"city\\": \\"Paris\\", \\"n\\": 2}"',
    '```json\n{"city": "Paris"}\n```',
    ' \n```\n{"a": [1, {"b": "```"}]}\n```',
    'Call: {"city": "Paris"}',
    "[1, 2, 3]",
    '"just a string"',
]


def _cuts(text: str) -> Iterator[list[str]]:
    """``text`` in two fragments at every cut, and in three at every pair of cuts."""
    for first in range(1, len(text)):
        yield [text[:first], text[first:]]
        for second in range(first + 1, len(text)):
            yield [text[:first], text[first:second], text[second:]]


@pytest.mark.parametrize("whole", _WHOLE)
def test_every_cut_of_the_arguments_gives_the_whole_answer_s_input(whole: str) -> None:
    expected = parse_arguments(whole)
    for fragments in _cuts(whole):
        assert orjson.loads(_input_json(_streamed(fragments))) == expected, fragments
        if len(fragments) == 2:
            named_last = _streamed(fragments, name_last=True)
            assert orjson.loads(_input_json(named_last)) == expected, fragments


def test_cumulative_snapshots_cut_anywhere_give_the_final_arguments() -> None:
    rng = random.Random(5)
    for whole in (*_WHOLE, '{"city": "Paris", "unit": "c", "days": [1, {"d": 2}]}'):
        expected = parse_arguments(whole)
        for _ in range(60):
            ends = sorted(rng.sample(range(1, len(whole)), rng.randint(1, 5))) + [len(whole)]
            snapshots = [whole[:end] for end in ends]
            if rng.random() < 0.3:  # an unchanged snapshot sent again
                at = rng.randrange(len(snapshots))
                snapshots.insert(at, snapshots[at])
            name_last = rng.random() < 0.3
            stream = _streamed(snapshots, name_last=name_last)
            assert orjson.loads(_input_json(stream)) == expected, snapshots


def test_a_plain_call_streams_each_fragment_as_it_arrives() -> None:
    translator = StreamTranslator(_ctx(), message_id=MESSAGE_ID)
    fragments = ['{"city"', ': "Pa', 'ris", "q": {"q"', ": 1}}"]
    seen: list[str] = []
    for position, fragment in enumerate(fragments):
        out = translator.feed(_call(fragment, first=position == 0))
        deltas = [e for e in out if b"input_json_delta" in e]
        assert len(deltas) == 1, "nothing held back"
        payload = orjson.loads(deltas[0].split(b"data: ", 1)[1])
        seen.append(payload["delta"]["partial_json"])
    assert seen == fragments


def test_a_held_call_sends_its_repaired_arguments_when_it_closes() -> None:
    translator = StreamTranslator(_ctx(), message_id=MESSAGE_ID)
    out = translator.feed(_call('```json\n{"city": ', first=True))
    out += translator.feed(_call('"Paris"}\n```', first=False))
    assert not [e for e in out if b"content_block_delta" in e], "held until the call ends"
    closing = translator.feed(_finish())
    assert closing[0] == (
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"input_json_delta","partial_json":"{\\"city\\":\\"Paris\\"}"}}\n\n'
    )
    assert closing[1].startswith(b"event: content_block_stop\n")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("  ", True),
        ("{", True),
        ('{"a"', True),
        ('{"a": ', True),
        ('{"a": 1', True),
        ('{"a": -', True),
        ('{"a": 1.', True),
        ('{"a": 1e+', True),
        ('{"a": "x\\', True),
        ('{"a": "x\\u00', True),
        ('{"a": tr', True),
        ('{"a": [1, {"b": null}], "c": false}', True),
        ('"a string', True),
        ("[", True),
        ("[]", True),
        ("{}  ", True),
        ("{{", False),
        ('{"a":{"a":1}}}', False),
        ("{}{", False),
        ('{"a" 1', False),
        ('{"a": 01', False),
        ('{"a": 1.2.3}', False),
        ('{"a": tx', False),
        ('{"a": "x\\q"', False),
        ('{"a": "x\ny"', False),
        ("{,", False),
        ('{"a": 1,}', False),
        ("[1,]", False),
        ("]", False),
        ("```json", False),
        ('"a" "b"', False),
    ],
)
def test_is_json_prefix(text: str, expected: bool) -> None:
    assert is_json_prefix(text) is expected


def test_every_prefix_of_json_is_a_json_prefix_and_nothing_follows_a_whole_value() -> None:
    rng = random.Random(3)
    for _ in range(200):
        value = {
            f"k{i}": rng.choice(
                ['q"uote\\d', "ü ∑ 😀", 3.5, -7, 1e-9, True, None, [1, "two", {"x": [3]}], {}]
            )
            for i in range(rng.randint(0, 4))
        }
        option = orjson.OPT_INDENT_2 if rng.random() < 0.5 else 0
        text = orjson.dumps(value, option=option).decode()
        for cut in range(len(text) + 1):
            assert is_json_prefix(text[:cut]), text[:cut]
        assert not is_json_prefix(text + text)
        assert not is_json_prefix(text + ",")
