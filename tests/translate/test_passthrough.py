"""The history changes a passed-through Anthropic request may get (pure functions)."""

from __future__ import annotations

from typing import Any

import pytest

from app.translate.passthrough import strip_refused_thinking, strip_unsigned_thinking

SIGNED = {"type": "thinking", "thinking": "t", "signature": "c2ln"}
UNSIGNED = {"type": "thinking", "thinking": "t", "signature": ""}
REDACTED = {"type": "redacted_thinking", "data": "ZGF0YQ=="}
CALL = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
TEXT = {"type": "text", "text": "a"}
REFUSED = "messages.3.content.0: Invalid `signature` in `thinking` block"


def body(last: list[Any], thinking: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": "m",
        "max_tokens": 2048,
        "messages": [
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": [SIGNED, REDACTED, TEXT]},
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": last},
            {"role": "user", "content": [RESULT] if CALL in last else "more"},
        ],
    }
    if thinking is not None:
        out["thinking"] = thinking
    return out


@pytest.mark.parametrize(
    "message",
    [
        REFUSED,
        "messages.1.content.0: invalid signature in thinking block",
        "messages.1.content.2: Invalid `data` in `redacted_thinking` block",
    ],
)
def test_every_thinking_block_goes_when_a_signature_is_refused(message: str) -> None:
    sent = body([SIGNED, TEXT])
    out = strip_refused_thinking(message, sent)
    assert out is not None
    assert [m["content"] for m in out["messages"][1::2]] == [[TEXT], [TEXT]]
    assert sent["messages"][1]["content"] == [SIGNED, REDACTED, TEXT]  # not changed in place


@pytest.mark.parametrize(
    ("thinking", "last", "kept"),
    [
        ({"type": "enabled", "budget_tokens": 1024}, [SIGNED, CALL], False),
        ({"type": "adaptive"}, [SIGNED, CALL], False),
        ({"type": "enabled", "budget_tokens": 1024}, [SIGNED, TEXT], True),
        ({"type": "disabled"}, [SIGNED, CALL], True),
    ],
)
def test_thinking_goes_off_only_when_the_last_call_lost_its_thinking(
    thinking: Any, last: list[Any], kept: bool
) -> None:
    """With thinking on, Anthropic wants the last assistant turn that calls a tool to start
    with genuine thinking, which cannot be made up."""
    out = strip_refused_thinking(REFUSED, body(last, thinking))
    assert out is not None
    assert ("thinking" in out) is kept


@pytest.mark.parametrize(
    "message",
    ["messages: at least one message is required", "Invalid `signature` in `tool_use` block"],
)
def test_other_errors_change_nothing(message: str) -> None:
    assert strip_refused_thinking(message, body([SIGNED, CALL])) is None


def test_nothing_to_drop_is_none() -> None:
    plain = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "q"}]}
    assert strip_refused_thinking(REFUSED, plain) is None


def test_unsigned_thinking_goes_and_signed_stays() -> None:
    sent = body([UNSIGNED, CALL], {"type": "enabled", "budget_tokens": 1024})
    out = strip_unsigned_thinking(sent)
    assert out["messages"][1]["content"] == [SIGNED, REDACTED, TEXT]
    assert out["messages"][3]["content"] == [CALL]
    assert "thinking" not in out
    untouched = body([SIGNED, CALL])
    assert strip_unsigned_thinking(untouched) is untouched
