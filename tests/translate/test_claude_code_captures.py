"""Every request Claude Code really sent (``/work/shared/captures/claude-code``) translates
into an OpenAI body that strict backends accept (PROTOCOL.md §6.1, §6.2, §9).

The captures live next to the repository; the module is skipped only when they are absent.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.translate.anthropic_to_openai import count_tokens_request, translate_request
from app.translate.options import BackendOptions

CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "captures"
CLAUDE_CODE = CAPTURES / "claude-code"
ID_RE = re.compile(r"^[A-Za-z0-9_-]+$")
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
POLICIES = ("replay", "strip", "off")

if not CLAUDE_CODE.is_dir():
    pytest.skip(f"no Claude Code captures at {CLAUDE_CODE}", allow_module_level=True)

CAPTURE_FILES = sorted(CLAUDE_CODE.glob("*/*_POST_v1_messages*.json"))


def _body(path: Path) -> dict[str, Any]:
    body = orjson.loads(path.read_bytes())["body"]
    assert isinstance(body, dict)
    return body


def _walk(value: Any) -> Any:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


def _system_texts(body: dict[str, Any]) -> list[str]:
    texts: list[str] = []
    system = body.get("system")
    if isinstance(system, str):
        texts.append(system)
    elif isinstance(system, list):
        texts += [b["text"] for b in system if b.get("type") == "text"]
    for message in body["messages"]:
        if message["role"] == "system":
            content = message["content"]
            texts += [content] if isinstance(content, str) else [b["text"] for b in content]
    return [t for t in texts if t.strip() and not t.startswith("x-anthropic-billing-header:")]


def _tool_names(body: dict[str, Any]) -> list[str]:
    return [t["name"] for t in body.get("tools") or [] if t.get("type") in (None, "custom")]


def check_openai_messages(messages: list[dict[str, Any]]) -> None:
    """Strict-backend rules: one leading system message, tool messages right after the
    assistant turn they answer, every call answered, no empty text, valid ids."""
    roles = [m["role"] for m in messages]
    assert "system" not in roles[1:], "only one system message, and it comes first"
    pending: set[str] = set()
    previous = ""
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "tool":
            assert previous in ("assistant", "tool"), f"messages.{i}: tool after {previous}"
            assert message["tool_call_id"] in pending, f"messages.{i}: answers no open call"
            pending.discard(message["tool_call_id"])
            assert isinstance(message["content"], str)
        else:
            assert not pending, f"messages.{i}: calls {pending} left unanswered"
        if role == "assistant":
            calls = message.get("tool_calls") or []
            assert message.get("content") is not None or calls
            pending = {call["id"] for call in calls}
            for call in calls:
                assert ID_RE.match(call["id"])
                assert isinstance(orjson.loads(call["function"]["arguments"]), dict)
        content = message.get("content")
        if isinstance(content, str) and role != "tool":
            assert content.strip(), f"messages.{i}: empty text"
        elif isinstance(content, list):
            for part in content:
                if part["type"] == "text":
                    assert part["text"].strip(), f"messages.{i}: empty text part"
        previous = role
    assert not pending, "the last assistant turn's calls are unanswered"


def test_captures_present() -> None:
    assert len(CAPTURE_FILES) >= 30
    assert any("count_tokens" in p.name for p in CAPTURE_FILES)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("path", CAPTURE_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_capture_translates(path: Path, policy: str) -> None:
    body = _body(path)
    opts = BackendOptions(target_model="qwen3-coder", reasoning=policy)
    out, ctx = translate_request(body, opts)
    messages = out["messages"]

    assert out["model"] == "qwen3-coder"
    assert ctx.client_model == body["model"]
    assert out.get("max_tokens") == body.get("max_tokens")
    check_openai_messages(messages)

    system = _system_texts(body)
    if system:
        assert messages[0]["role"] == "system"
        assert messages[0]["content"] == "\n\n".join(system)
    text = orjson.dumps(out).decode()
    assert "x-anthropic-billing-header" not in text
    for node in _walk(out):
        if isinstance(node, dict):
            assert "cache_control" not in node
    for key in ("context_management", "metadata", "thinking", "output_config", "system"):
        assert key not in out

    names = _tool_names(body)
    sent = [t["function"]["name"] for t in out.get("tools", [])]
    assert sent == names, "Claude Code's tool names go through unchanged, in order"
    assert all(NAME_RE.match(name) for name in sent)
    for message in messages:
        for call in message.get("tool_calls") or []:
            assert call["function"]["name"] in sent
        if message["role"] == "tool":
            assert ID_RE.match(message["tool_call_id"])

    if body.get("stream"):
        assert out["stream"] is True
        assert out["stream_options"] == {"include_usage": True}
    else:
        assert "stream" not in out and "stream_options" not in out

    user_id = (body.get("metadata") or {}).get("user_id")
    if user_id:
        assert re.fullmatch(r"[0-9a-f]{64}", out["user"])

    thinking = body.get("thinking")
    if thinking and policy != "off":
        # Claude Code asks for budget 31999 or adaptive with effort "high".
        assert out["reasoning_effort"] == "high"
        assert ctx.thinking is True
    else:
        assert "reasoning_effort" not in out
    replayed = [m for m in messages if "reasoning_content" in m]
    has_thinking_history = any(
        isinstance(m["content"], list) and any(b.get("type") == "thinking" for b in m["content"])
        for m in body["messages"]
        if m["role"] == "assistant"
    )
    assert bool(replayed) == (policy == "replay" and has_thinking_history)
    assert ctx.input_estimate > 0


def test_tool_round_trip_capture_keeps_pairing_and_error_flag() -> None:
    body = _body(CLAUDE_CODE / "21-webfetch-smallfast" / "0002_POST_v1_messages.json")
    out, _ = translate_request(body, BackendOptions(target_model="m", reasoning="replay"))
    assistant, tool = out["messages"][-2:]
    call = assistant["tool_calls"][0]
    original = body["messages"][1]["content"][1]
    assert call["id"] == original["id"] and call["function"]["name"] == "WebFetch"
    assert orjson.loads(call["function"]["arguments"]) == original["input"]
    assert assistant["content"] is None
    assert assistant["reasoning_content"] == body["messages"][1]["content"][0]["thinking"]
    assert tool == {
        "role": "tool",
        "tool_call_id": original["id"],
        "content": "[tool error] " + body["messages"][2]["content"][0]["content"],
    }


def test_mid_conversation_system_message_is_hoisted() -> None:
    body = _body(CLAUDE_CODE / "12-default-model-tool-thinking" / "0002_POST_v1_messages.json")
    assert body["messages"][1]["role"] == "system"
    out, _ = translate_request(body, BackendOptions(target_model="m"))
    roles = [m["role"] for m in out["messages"]]
    assert roles == ["system", "user", "assistant", "tool"]
    assert out["messages"][0]["content"].endswith(body["messages"][1]["content"])
    # Claude Code's two user text blocks (reminder + prompt) become one string.
    first_user = body["messages"][0]["content"]
    assert out["messages"][1]["content"] == "\n\n".join(b["text"] for b in first_user)


@pytest.mark.parametrize(
    "path",
    [p for p in CAPTURE_FILES if "count_tokens" in p.name],
    ids=lambda p: f"{p.parent.name}/{p.stem}",
)
def test_count_tokens_capture(path: Path) -> None:
    body = _body(path)
    out = count_tokens_request(body, BackendOptions(target_model="m"))
    assert set(out) <= {"model", "messages", "tools"}
    check_openai_messages(out["messages"])
    assert [t["function"]["name"] for t in out.get("tools", [])] == _tool_names(body)
