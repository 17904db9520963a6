"""Every Chat Completions request captured from the real ``openai`` SDK translates into a valid
Anthropic Messages request (PROTOCOL.md §1.2 constraints, §6.3, §6.4).

Captures live outside the repository, in ``../shared/captures/openai-python-sdk/<version>/``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.dialects.openai import validate_request
from app.translate.openai_to_anthropic import translate_request
from app.translate.options import BackendOptions

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "captures" / "openai-python-sdk"
FILES = sorted(CAPTURES.glob("*/*_POST_v1_chat_completions.json")) if CAPTURES.is_dir() else []
ID_OK = re.compile(r"^[A-Za-z0-9_-]+$")
OPTIONS = BackendOptions(target_model="claude-sonnet-4-5", default_max_tokens=2048)


def blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    content = message["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def capture_id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


@pytest.fixture(scope="module", autouse=True)
def _require_captures() -> None:
    if not FILES:
        pytest.skip(f"no openai-python-sdk captures under {CAPTURES}")


def test_captures_cover_all_sdk_versions() -> None:
    versions = {p.parent.name for p in FILES}
    assert len(versions) >= 3, versions
    assert len(FILES) >= 15


@pytest.mark.parametrize("path", FILES, ids=capture_id)
def test_capture_translates_to_a_valid_anthropic_request(path: Path) -> None:
    body = orjson.loads(path.read_bytes())["body"]
    out, ctx = translate_request(validate_request(body), OPTIONS)

    assert out["model"] == "claude-sonnet-4-5" and ctx.client_model == body["model"]
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or 2048
    assert isinstance(out["max_tokens"], int) and out["max_tokens"] == max_tokens
    assert out.get("stream", False) is bool(body.get("stream"))
    include_usage = bool(body.get("stream")) and bool(
        (body.get("stream_options") or {}).get("include_usage")
    )
    assert ctx.include_usage is include_usage

    # System hoisted: no system role left in messages; every system text is in `system`.
    system_texts = [m["content"] for m in body["messages"] if m["role"] in ("system", "developer")]
    assert [b["text"] for b in out.get("system", [])] == system_texts
    assert all(b["type"] == "text" for b in out.get("system", []))

    messages = out["messages"]
    roles = [m["role"] for m in messages]
    assert roles[0] == "user"
    assert set(roles) <= {"user", "assistant"}
    assert all(a != b for a, b in zip(roles, roles[1:], strict=False)), roles

    for i, message in enumerate(messages):
        kinds = [b["type"] for b in blocks(message)]
        for block in blocks(message):
            if block["type"] == "text":
                assert block["text"].strip()
        if "tool_result" in kinds:
            assert message["role"] == "user"
            n_results = kinds.count("tool_result")
            assert kinds[:n_results] == ["tool_result"] * n_results, kinds
        uses = [b for b in blocks(message) if b["type"] == "tool_use"]
        for use in uses:
            assert ID_OK.match(use["id"]) and isinstance(use["input"], dict)
        if uses:
            answer = messages[i + 1]
            assert answer["role"] == "user"
            results = [b for b in blocks(answer) if b["type"] == "tool_result"]
            assert [r["tool_use_id"] for r in results] == [u["id"] for u in uses]
            for result in results:
                assert ID_OK.match(result["tool_use_id"])

    tools = body.get("tools") or []
    assert [t["name"] for t in out.get("tools", [])] == [t["function"]["name"] for t in tools]
    for tool, source in zip(out.get("tools", []), tools, strict=True):
        assert tool["input_schema"] == source["function"]["parameters"]
        assert tool["description"] == source["function"]["description"]
    if body.get("tool_choice") == "auto":
        assert out["tool_choice"] == {"type": "auto"}


def test_tool_round_trip_capture_keeps_call_and_result_paired() -> None:
    path = next(p for p in FILES if p.name.startswith("0004"))
    body = orjson.loads(path.read_bytes())["body"]
    call = body["messages"][1]["tool_calls"][0]
    out, _ = translate_request(validate_request(body), OPTIONS)
    assert out["messages"][1:] == [
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": call["id"],
                    "name": "get_weather",
                    "input": {"location": "Paris"},
                }
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "18C sunny"}],
        },
    ]
