"""Which of the gateway's optional fields a backend's 400 refuses (`refused_params`)."""

from __future__ import annotations

import pytest

from app.translate.refused_params import (
    NULL_CONTENT,
    budget_refused,
    refused_params,
    without_refused,
)

SENT = {
    "model": "m",
    "messages": [],
    "reasoning_effort": "high",
    "stream_options": {"include_usage": True},
    "parallel_tool_calls": False,
    "user": "abc",
    "chat_template_kwargs": {"enable_thinking": False, "thinking": False},
}


@pytest.mark.parametrize(
    ("message", "refused"),
    [
        ("Unrecognized request argument supplied: reasoning_effort", ("reasoning_effort",)),
        ("Unsupported parameter: 'reasoning_effort' is not supported with this model.",
         ("reasoning_effort",)),
        ('"llama3.2:latest" does not support thinking', ("reasoning_effort",)),
        ("[{'type': 'extra_forbidden', 'loc': ('body', 'stream_options'), 'msg': 'Extra inputs "
         "are not permitted'}]", ("stream_options",)),
        ("parallel_tool_calls is not supported for this model", ("parallel_tool_calls",)),
        ("Unknown parameter: 'user'.", ("user",)),
        ("Unrecognized request argument supplied: chat_template_kwargs",
         ("chat_template_kwargs",)),
        ('{"detail":[{"type":"extra_forbidden","loc":["body","chat_template_kwargs"],"msg":'
         '"Extra inputs are not permitted","input":{"enable_thinking":false,"thinking":false}}]}',
         ("chat_template_kwargs",)),  # a FastAPI server with a strict schema
        ("messages.0.content: unsupported content", ()),
        ("max_tokens is too large: 32000", ()),
        ("reasoning_effort must be one of low, medium, high", ()),  # a value, not the field
        ("", ()),
    ],
)  # fmt: skip
def test_refused_fields(message: str, refused: tuple[str, ...]) -> None:
    assert refused_params(message, SENT) == refused


def test_only_fields_that_were_sent() -> None:
    assert refused_params("Unrecognized request argument supplied: top_k", SENT) == ()
    assert refused_params("model does not support thinking", {"model": "m"}) == ()
    unsent = "Unrecognized request argument supplied: chat_template_kwargs"
    assert refused_params(unsent, {"model": "m"}) == ()


CALLS_ONLY = {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1"}]}
HISTORY = {
    "model": "m",
    "messages": [
        {"role": "user", "content": "q"},
        CALLS_ONLY,
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"},
        {"role": "assistant", "content": "done"},
    ],
}


@pytest.mark.parametrize(
    "message",
    [
        "invalid message content type: <nil>",  # Ollama
        "Invalid 'content': 'content' field must be a string or an array of objects.",  # LM Studio
        "Invalid value for 'content': expected a string, got null.",
        "1 validation error: messages.1.content\n  Input should be a valid string",
    ],
)
def test_a_refused_null_content_goes_as_an_empty_string(message: str) -> None:
    assert refused_params(message, HISTORY) == (NULL_CONTENT,)
    body = dict(HISTORY)
    without_refused(body, (NULL_CONTENT,))
    assert body["messages"][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_1"}],
    }
    assert [m["content"] for m in body["messages"]] == ["q", "", "ok", "done"]
    assert HISTORY["messages"][1] is CALLS_ONLY and CALLS_ONLY["content"] is None  # a copy


def test_a_null_content_error_without_a_null_to_fill_is_not_a_refusal() -> None:
    plain = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    assert refused_params("invalid message content type: <nil>", plain) == ()


def test_without_refused_drops_fields_and_fills_nulls_together() -> None:
    body = dict(HISTORY, reasoning_effort="high", user="abc")
    without_refused(body, ("reasoning_effort", NULL_CONTENT))
    assert "reasoning_effort" not in body and body["user"] == "abc"
    assert body["messages"][1]["content"] == ""


OPUS_BUDGET_400 = (
    '"thinking.type.enabled" is not supported for this model. Use "thinking.type.adaptive" '
    'and "output_config.effort" to control thinking behavior.'
)


def test_a_refused_thinking_budget_is_told_apart() -> None:
    budgeted = {"thinking": {"type": "enabled", "budget_tokens": 4096}}
    assert budget_refused(OPUS_BUDGET_400, budgeted)
    assert not budget_refused(OPUS_BUDGET_400, {"thinking": {"type": "adaptive"}})
    assert not budget_refused(OPUS_BUDGET_400, {})
    assert not budget_refused("max_tokens: must be greater than thinking.budget_tokens", budgeted)
