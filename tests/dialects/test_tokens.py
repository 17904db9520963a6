"""The local token estimate of a request body: tool results counted with the blocks inside
them, however deep a client nests them."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from app.dialects.tokens import (
    MESSAGE_OVERHEAD,
    estimate_anthropic_input,
    estimate_openai_input,
    estimate_text,
)

TEXT = "the weather in Paris is sunny"


def nested_results(depth: int) -> dict[str, Any]:
    """A tool result holding a tool result ... ``depth`` of them around one text block."""
    block: dict[str, Any] = {"type": "text", "text": TEXT}
    for _ in range(depth):
        block = {"type": "tool_result", "tool_use_id": "toolu_1", "content": [block]}
    return block


def as_read(depth: int, dialect: str) -> dict[str, Any]:
    """A body with ``nested_results(depth)`` as the gateway has it: parsed by orjson, which
    reads 1,024 levels (so the test does not depend on Python's recursion to build it)."""
    inner = orjson.dumps({"type": "text", "text": TEXT}).decode()
    head = '{"type":"tool_result","tool_use_id":"toolu_1","content":['
    block = head * depth + inner + "]}" * depth
    extra = '"max_tokens":16,' if dialect == "anthropic" else ""
    body = orjson.loads(
        f'{{"model":"m",{extra}"messages":[{{"role":"user","content":[{block}]}}]}}'
    )
    assert isinstance(body, dict)
    return body


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_a_tool_result_counts_the_blocks_inside_it(depth: int) -> None:
    body = {"messages": [{"role": "user", "content": [nested_results(depth)]}]}
    expected = MESSAGE_OVERHEAD + depth * MESSAGE_OVERHEAD + estimate_text(TEXT)
    assert estimate_anthropic_input(body) == expected


def test_a_tool_result_with_text_content_counts_it() -> None:
    block = {"type": "tool_result", "tool_use_id": "toolu_1", "content": TEXT}
    body = {"messages": [{"role": "user", "content": [block]}]}
    assert estimate_anthropic_input(body) == 2 * MESSAGE_OVERHEAD + estimate_text(TEXT)


@pytest.mark.parametrize(
    ("dialect", "estimate"),
    [("anthropic", estimate_anthropic_input), ("openai", estimate_openai_input)],
)
def test_tool_results_nested_as_deep_as_json_is_read_are_counted(
    dialect: str, estimate: Any
) -> None:
    # 509 tool results are 1,018 levels: past Python's recursion limit when the estimate
    # recursed (two frames a level), a RecursionError and a 500 (mutation fuzz,
    # tests/reliability/test_mutation_fuzz.py). An OpenAI client's part of an unknown type
    # reaches the estimate unchecked too.
    body = as_read(509, dialect)
    expected = MESSAGE_OVERHEAD + 509 * MESSAGE_OVERHEAD + estimate_text(TEXT)
    assert estimate(body) == expected
