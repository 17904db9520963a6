"""Which of the gateway's optional fields a backend's 400 refuses (`refused_params`)."""

from __future__ import annotations

import pytest

from app.translate.refused_params import refused_params

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
