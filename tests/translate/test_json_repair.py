"""Tool-call arguments from an OpenAI client's history made into objects (PROTOCOL.md §6.4:
"attempt repair, else {}"), and never an error for the conversation."""

from __future__ import annotations

import logging
import random
from typing import Any

import orjson
import pytest

from app.translate.json_repair import object_arguments
from app.translate.openai_to_anthropic import translate_request
from app.translate.options import BackendOptions


@pytest.mark.parametrize(
    ("raw", "value", "done"),
    [
        ('{"a": 1}', {"a": 1}, None),
        ('{"city": ', {"city": None}, "repaired"),
        ('{"city": "Par', {"city": "Par"}, "repaired"),
        ('{"a": "x", "b', {"a": "x"}, "repaired"),
        ('{"a": "x", "b": ', {"a": "x", "b": None}, "repaired"),
        ('{"a": [1, 2', {"a": [1, 2]}, "repaired"),
        ('{"a": {"b": [1, {"c": 2', {"a": {"b": [1, {"c": 2}]}}, "repaired"),
        ('{"a": 1,', {"a": 1}, "repaired"),
        ('{"a": "x\\', {"a": "x"}, "repaired"),
        ('{"a": "say \\"hi', {"a": 'say "hi'}, "repaired"),
        ('{"a": "}]"', {"a": "}]"}, "repaired"),
        ('```json\n{"a": 1}\n```', {"a": 1}, "repaired"),
        ('```\n{"a": 1}\n```', {"a": 1}, "repaired"),
        ("{", {}, "repaired"),
        ('["Paris"]', {}, "replaced"),
        ('"Paris"', {}, "replaced"),
        ("42", {}, "replaced"),
        ("null", {}, "replaced"),
        ("nonsense", {}, "replaced"),
        ("```json\n[1]\n```", {}, "replaced"),
    ],
)
def test_arguments_repaired_or_replaced(raw: str, value: dict[str, Any], done: str | None) -> None:
    assert object_arguments(raw) == (value, done)


def test_every_cut_of_an_object_gives_an_object() -> None:
    """A call cut off anywhere (``max_tokens`` hit mid-arguments) still gives an object."""
    rng = random.Random(11)
    for _ in range(200):
        value = {
            f"k{i}": rng.choice(
                ["plain", 'q"uote\\d', "ü ∑ 😀", 3.5, -7, True, None, [1, "two", {"x": [3]}], {}]
            )
            for i in range(rng.randint(1, 5))
        }
        raw = orjson.dumps(value).decode()
        if rng.random() < 0.5:
            raw = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
        assert object_arguments(raw) == (value, None)
        for cut in range(len(raw)):
            result, done = object_arguments(raw[:cut])
            assert type(result) is dict and done in ("repaired", "replaced"), raw[:cut]


def test_the_translated_request_keeps_the_conversation_and_logs_no_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "hunter2-secret"
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "login", "arguments": f'{{"password": "{secret}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        ],
    }
    with caplog.at_level(logging.WARNING):
        out, _ctx = translate_request(body, BackendOptions(target_model="m"))
    assert out["messages"][1]["content"][0]["input"] == {"password": secret}
    assert "messages[1].tool_calls[0].function.arguments" in caplog.text
    assert "repaired" in caplog.text and secret not in caplog.text
