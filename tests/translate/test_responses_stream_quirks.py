"""Backend quirks in a chat stream that the Responses stream (`responses_sse`,
`responses_stream`) must undo: an emoji cut between its two UTF-16 halves, parallel calls
that share one index, arguments sent as cumulative snapshots.

Each case feeds the chat SSE bytes as an OpenAI-compatible backend writes them and pins
the exact events; the final Response is the one `translate_response` makes of the same
answer sent whole, and what the ``openai`` SDK accumulates from the events.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.translate.responses_answer import translate_response
from app.translate.responses_sse import ResponsesSSE
from tests.translate.test_responses_answer import (
    STREAM_EVENT,
    events_of,
    plain_ctx,
    sdk_stream_result,
)

USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def chat_sse(deltas: list[str], finish: str) -> bytes:
    """A chat stream whose choice-0 deltas are the JSON texts in ``deltas``, written as
    they are (escapes included), then ``finish``, usage and ``[DONE]``."""
    head = '{"id":"chatcmpl-q","object":"chat.completion.chunk","created":1700000000,"model":"q"'
    chunks = [
        f'{head},"choices":[{{"index":0,"delta":{d},"finish_reason":null}}]}}' for d in deltas
    ]
    chunks.append(f'{head},"choices":[{{"index":0,"delta":{{}},"finish_reason":"{finish}"}}]}}')
    chunks.append(f'{head},"choices":[],"usage":{orjson.dumps(USAGE).decode()}}}')
    chunks.append("[DONE]")
    return "".join(f"data: {c}\n\n" for c in chunks).encode()


def whole_answer(message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-q",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "q",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": USAGE,
    }


def streamed(data: bytes, piece: int | None = None) -> bytes:
    """The Responses stream of chat SSE ``data``, fed whole or ``piece`` bytes at a time."""
    sse = ResponsesSSE(plain_ctx())
    pieces = [data] if piece is None else [data[i : i + piece] for i in range(0, len(data), piece)]
    return b"".join(sse.feed(p) for p in pieces) + sse.finish()


def outline(events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Each event's type, output index and what it says (a delta, a done text, an item)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        kind = event["type"]
        if kind in ("response.output_item.added", "response.output_item.done"):
            item = event["item"]
            said: Any = (item["type"], item["id"], item.get("status"))
            if item["type"] == "function_call":
                said += (item["call_id"], item["name"], item["arguments"])
            elif item["type"] == "message":
                said += (tuple(part["text"] for part in item["content"]),)
        elif kind.endswith(".delta"):
            said = event["delta"]
        elif kind in ("response.output_text.done", "response.function_call_arguments.done"):
            said = event.get("text", event.get("arguments"))
        elif kind.startswith("response.content_part."):
            said = event["part"]["text"]
        else:
            said = event["response"]["status"]
        out.append((kind, event.get("output_index"), said))
    return out


def check_against_whole(chat: bytes, whole: dict[str, Any]) -> list[dict[str, Any]]:
    """The Responses stream of ``chat`` is well formed and the same when the chat bytes come
    one at a time; its final Response is the one of the ``whole`` answer, and the SDK
    accumulates the same items from its events. Returns the events."""
    data = streamed(chat)
    assert streamed(chat, piece=1) == data
    events = events_of(data)
    for event in events:
        assert STREAM_EVENT.validate_python(event).to_dict() == event
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    final = events[-1]["response"]
    assert final == translate_response(whole, plain_ctx())
    done = {
        e["output_index"]: e["item"] for e in events if e["type"] == "response.output_item.done"
    }
    assert [done[i] for i in sorted(done)] == final["output"]
    assert sdk_stream_result(data)["output"] == final["output"]
    return events


# -- an emoji cut between its UTF-16 halves -----------------------------------------------------


def test_surrogate_halves_across_two_chunks_join_into_one_character() -> None:
    """Node servers escape each half of a pair in its own chunk (valid JSON that orjson
    refuses): the text is neither lost nor mangled, and the emoji goes out whole."""
    data = chat_sse(
        [
            '{"role":"assistant","content":""}',
            '{"content":"Hi \\ud83d"}',
            '{"content":"\\ude00 there"}',
        ],
        "stop",
    )
    events = check_against_whole(
        data, whole_answer({"role": "assistant", "content": "Hi \U0001f600 there"}, "stop")
    )
    item = ("message", "msg_t_0", "in_progress", ())
    done = ("message", "msg_t_0", "completed", ("Hi \U0001f600 there",))
    assert outline(events) == [
        ("response.created", None, "in_progress"),
        ("response.in_progress", None, "in_progress"),
        ("response.output_item.added", 0, item),
        ("response.content_part.added", 0, ""),
        ("response.output_text.delta", 0, "Hi "),
        ("response.output_text.delta", 0, "\U0001f600 there"),
        ("response.output_text.done", 0, "Hi \U0001f600 there"),
        ("response.content_part.done", 0, "Hi \U0001f600 there"),
        ("response.output_item.done", 0, done),
        ("response.completed", None, "completed"),
    ]


def test_surrogate_halves_in_tool_arguments_join_into_one_character() -> None:
    data = chat_sse(
        [
            '{"tool_calls":[{"index":0,"id":"call_1","type":"function",'
            '"function":{"name":"say","arguments":"{\\"e\\": \\"\\ud83d"}}]}',
            '{"tool_calls":[{"index":0,"function":{"arguments":"\\ude03\\"}"}}]}',
        ],
        "tool_calls",
    )
    arguments = '{"e": "\U0001f603"}'
    call = {"id": "call_1", "type": "function", "function": {"name": "say", "arguments": arguments}}
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    events = check_against_whole(data, whole_answer(message, "tool_calls"))
    assert [(e["type"], e.get("delta")) for e in events if "arguments" in e["type"]] == [
        ("response.function_call_arguments.delta", '{"e": "'),
        ("response.function_call_arguments.delta", '\U0001f603"}'),
        ("response.function_call_arguments.done", None),
    ]


# -- parallel calls that all use index 0 ---------------------------------------------------------


def test_parallel_calls_sharing_index_0_are_told_apart_by_id() -> None:
    """Gemini's OpenAI layer and some Qwen servers number every parallel call 0 (PROTOCOL.md
    §5.5): a new id on the index is the next call, and the fragments after it are its."""
    data = chat_sse(
        [
            '{"role":"assistant","content":null}',
            '{"tool_calls":[{"index":0,"id":"call_1","type":"function",'
            '"function":{"name":"lookup","arguments":""}}]}',
            '{"tool_calls":[{"index":0,"function":{"arguments":"{\\"q\\""}}]}',
            '{"tool_calls":[{"index":0,"id":"call_1","function":{"arguments":": 1}"}}]}',
            '{"tool_calls":[{"index":0,"id":"call_2","type":"function",'
            '"function":{"name":"get_weather","arguments":"{\\"city\\": "}}]}',
            '{"tool_calls":[{"index":0,"function":{"arguments":"\\"Rome\\"}"}}]}',
        ],
        "tool_calls",
    )
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "lookup", "arguments": '{"q": 1}'},
        },
        {
            "id": "call_2",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
        },
    ]
    message = {"role": "assistant", "content": None, "tool_calls": calls}
    events = check_against_whole(data, whole_answer(message, "tool_calls"))
    first = ("function_call", "fc_t_0", "in_progress", "call_1", "lookup", "")
    second = ("function_call", "fc_t_1", "in_progress", "call_2", "get_weather", "")
    assert outline(events) == [
        ("response.created", None, "in_progress"),
        ("response.in_progress", None, "in_progress"),
        ("response.output_item.added", 0, first),
        ("response.function_call_arguments.delta", 0, '{"q"'),
        ("response.function_call_arguments.delta", 0, ": 1}"),
        ("response.function_call_arguments.done", 0, '{"q": 1}'),
        ("response.output_item.done", 0, first[:2] + ("completed",) + first[3:5] + ('{"q": 1}',)),
        ("response.output_item.added", 1, second),
        ("response.function_call_arguments.delta", 1, '{"city": '),
        ("response.function_call_arguments.delta", 1, '"Rome"}'),
        ("response.function_call_arguments.done", 1, '{"city": "Rome"}'),
        (
            "response.output_item.done",
            1,
            second[:2] + ("completed",) + second[3:5] + ('{"city": "Rome"}',),
        ),
        ("response.completed", None, "completed"),
    ]


# -- arguments as cumulative snapshots -----------------------------------------------------------


@pytest.mark.parametrize(
    ("fragments", "deltas"),
    [
        # Each fragment repeats all before it: only its new end is new.
        (['{\\"city\\": ', '{\\"city\\": \\"Paris\\"}'], ['{"city": ', '"Paris"}']),
        (
            ["{", '{\\"city\\": ', '{\\"city\\": \\"Paris\\"}'],
            ["{", '"city": ', '"Paris"}'],
        ),
        (["", '{\\"city\\": ', '{\\"city\\": \\"Paris\\"}'], ['{"city": ', '"Paris"}']),
        # A snapshot sent again, unchanged, adds nothing.
        (
            [
                "{",
                '{\\"city\\": \\"Paris\\"',
                '{\\"city\\": \\"Paris\\"',
                '{\\"city\\": \\"Paris\\"}',
            ],
            ["{", '"city": "Paris"', "}"],
        ),
        # Plain deltas stay as they are.
        (['{\\"ci', 'ty\\": \\"Paris\\"}'], ['{"ci', 'ty": "Paris"}']),
    ],
)
def test_cumulative_argument_snapshots_go_out_as_their_new_part(
    fragments: list[str], deltas: list[str]
) -> None:
    """Some gateways send each argument fragment as a snapshot of all so far (PROTOCOL.md
    §5.5): the deltas add up to the arguments, as the Anthropic client's stream does."""
    check_argument_deltas(fragments, deltas)


def check_argument_deltas(fragments: list[str], deltas: list[str]) -> None:
    """One call whose argument ``fragments`` (JSON string bodies, escaped) go out as the
    exact ``deltas``, and end as their sum, as the whole answer has them."""
    head = '{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"lookup",'
    data = chat_sse(
        [f'{head}"arguments":"{fragments[0]}"}}}}]}}']
        + [
            f'{{"tool_calls":[{{"index":0,"function":{{"arguments":"{f}"}}}}]}}'
            for f in fragments[1:]
        ],
        "tool_calls",
    )
    arguments = "".join(deltas)
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": arguments},
    }
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    events = check_against_whole(data, whole_answer(message, "tool_calls"))
    added = ("function_call", "fc_t_0", "in_progress", "call_1", "lookup", "")
    assert outline(events) == [
        ("response.created", None, "in_progress"),
        ("response.in_progress", None, "in_progress"),
        ("response.output_item.added", 0, added),
        *[("response.function_call_arguments.delta", 0, d) for d in deltas],
        ("response.function_call_arguments.done", 0, arguments),
        ("response.output_item.done", 0, added[:2] + ("completed",) + added[3:5] + (arguments,)),
        ("response.completed", None, "completed"),
    ]


@pytest.mark.parametrize(
    ("fragments", "deltas"),
    [
        # Starts with all so far, but only a delta makes JSON of it: a nested object that
        # repeats its parent's key (a startswith rule took it for a snapshot: ``{"q":1}}``).
        (['{\\"q\\":', '{\\"q\\":1}}'], ['{"q":', '{"q":1}}']),
        # Both readings are JSON until the call ends: it is held from the second fragment,
        # and the reading that makes an object goes out at its close, in one delta.
        (['{\\"a\\":', '{\\"a\\":', "1}}"], ['{"a":', '{"a":1}}']),
        (['{\\"a\\": ', '{\\"a\\": 1}', "}"], ['{"a": ', '{"a": 1}}']),
        # The same, resolved the other way: snapshots, trimmed to their new part.
        (
            ['{\\"a\\": ', '{\\"a\\": 1', '{\\"a\\": 1, \\"b\\": 2}'],
            ['{"a": ', '1, "b": 2}'],
        ),
    ],
)
def test_a_fragment_that_repeats_all_so_far_is_a_snapshot_only_by_the_json_grammar(
    fragments: list[str], deltas: list[str]
) -> None:
    """The rule the Anthropic client's stream follows (`chat_deltas.ToolArguments`): a
    fragment that starts with everything received is a snapshot when the JSON grammar says
    so, a delta when only a delta can still be JSON."""
    check_argument_deltas(fragments, deltas)


# -- content and refusal -------------------------------------------------------------------------


def test_content_then_refusal_are_two_parts_as_in_the_whole_answer() -> None:
    """The whole answer makes the content one part and the refusal another; so does the
    stream, with nothing between them (the Anthropic client's single text joins them)."""
    data = chat_sse(
        ['{"role":"assistant","content":"Sure"}', '{"content":"."}', '{"refusal":"No, "}'],
        "stop",
    )
    events = check_against_whole(
        data,
        whole_answer({"role": "assistant", "content": "Sure.", "refusal": "No, "}, "stop"),
    )
    assert [
        (e["type"], e["delta"] if "delta" in e else e["part"]["type"])
        for e in events
        if e["type"].startswith("response.content_part.") or e["type"].endswith(".delta")
    ] == [
        ("response.content_part.added", "output_text"),
        ("response.output_text.delta", "Sure"),
        ("response.output_text.delta", "."),
        ("response.content_part.done", "output_text"),
        ("response.content_part.added", "refusal"),
        ("response.refusal.delta", "No, "),
        ("response.content_part.done", "refusal"),
    ]
