"""The real Codex CLI through the gateway's Responses API, nothing changed but its base URL.

Codex (the npm package ``@openai/codex``, pinned in the Makefile) speaks only the Responses
API (its ``wire_api = "chat"`` is gone). It runs ``codex exec --json`` against the live
gateway, with a custom provider whose ``base_url`` is the gateway's ``/v1``, and the gateway
runs each turn on a fake Anthropic or OpenAI-compatible backend. Each test pins what Codex
did with the answers: it ran the command the backend asked for and sent its output back,
replayed the backend's signed thinking, and reported errors as errors.

``make codex`` (or ``.ci/run``) installs the binary into ``.cache/codex``; ``CODEX_BIN``
names another one. Without it these tests are skipped.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from app.db.models import UsageEvent
from app.dialects.sse import OPENAI_DONE, anthropic_event
from tests.conftest import Live, flushed
from tests.fakes import (
    FakeUpstream,
    SSEReply,
    anthropic_block,
    anthropic_message,
    anthropic_stream,
    openai_delta,
    openai_usage,
)

ROOT = Path(__file__).resolve().parents[2]
CODEX = os.environ.get("CODEX_BIN") or str(
    ROOT / ".cache" / "codex" / "node_modules" / ".bin" / "codex"
)

pytestmark = [
    pytest.mark.skipif(
        shutil.which(CODEX) is None, reason=f"Codex is not installed at {CODEX} (make codex)"
    ),
    pytest.mark.gen_test(timeout=90),
]

MODEL = "gpt-5-codex"
CLAUDE = "claude-sonnet-4-5"
LOCAL = "qwen3-coder"
COMMAND = "echo bridgekeeper-$((6*7))"
PRINTED = "bridgekeeper-42"
SIGNATURE = "EqQBCkYIARgCIkD" + "c" * 40


def anthropic_config(fake: FakeUpstream) -> str:
    return f"""
[[upstreams]]
name = "claude"
kind = "anthropic"
base_url = "{fake.url}"
keys = ["sk-ant"]

[[models]]
name = "{MODEL}"
upstream = "claude"
target = "{CLAUDE}"
"""


def openai_config(fake: FakeUpstream) -> str:
    return f"""
[[upstreams]]
name = "local"
kind = "openai"
base_url = "{fake.url}"
keys = ["sk-local"]

[[models]]
name = "{MODEL}"
upstream = "local"
target = "{LOCAL}"
"""


async def run_codex(
    live: Live,
    home: Path,
    prompt: str,
    *,
    key: str | None = None,
    retries: int = 0,
    settings: str = "",
) -> tuple[list[dict[str, Any]], str]:
    """``codex exec --json`` against the gateway: its JSONL events, and its stderr."""
    codex_home = home / "codex-home"
    work = home / "work"
    codex_home.mkdir(parents=True, exist_ok=True)
    work.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(
        f"""
model = "{MODEL}"
model_provider = "bridgekeeper"
approval_policy = "never"
sandbox_mode = "danger-full-access"
check_for_update_on_startup = false
{settings}

[model_providers.bridgekeeper]
name = "Bridgekeeper"
base_url = "{live.url}/v1"
wire_api = "responses"
env_key = "BRIDGEKEEPER_API_KEY"
supports_websockets = false
request_max_retries = {retries}
stream_max_retries = {retries}
"""
    )
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "CODEX_HOME": str(codex_home),
        "BRIDGEKEEPER_API_KEY": key or live.key,
        "NO_COLOR": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        CODEX,
        "exec",
        "--json",
        "--skip-git-repo-check",
        "--ephemeral",
        "-C",
        str(work),
        prompt,
        cwd=str(work),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 75)
    events = [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    return events, (out + err).decode(errors="replace")


async def usage_rows(live: Live) -> list[UsageEvent]:
    await flushed(live)
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UsageEvent).order_by(UsageEvent.id)))


def items(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [
        e["item"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == kind
    ]


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    return openai_delta(delta, finish, LOCAL, "chatcmpl-cx")


def usage_chunk(prompt: int, completion: int) -> bytes:
    return openai_usage(prompt, completion, LOCAL, chunk_id="chatcmpl-cx")


def chat_text_stream(text: str, prompt: int, completion: int) -> list[bytes]:
    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": text}),
        chunk({}, "stop"),
        usage_chunk(prompt, completion),
        OPENAI_DONE,
    ]


def anthropic_events(
    *blocks: tuple[dict[str, Any], list[dict[str, Any]]], stop: str
) -> list[bytes]:
    """A Messages stream of ``blocks`` (each its start block and its deltas)."""
    start = anthropic_message("", CLAUDE, 1500, 1)
    start.update(content=[], stop_reason=None)
    out = [anthropic_event("message_start", {"type": "message_start", "message": start})]
    for index, (block, deltas) in enumerate(blocks):
        out += anthropic_block(index, block, deltas)
    out += [
        anthropic_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 40},
            },
        ),
        anthropic_event("message_stop", {"type": "message_stop"}),
    ]
    return out


def exec_call_arguments() -> str:
    return orjson.dumps({"cmd": COMMAND}).decode()


async def test_codex_answers_through_anthropic(gateway, fake_anthropic, tmp_path):  # type: ignore[no-untyped-def]
    live = await gateway(anthropic_config(fake_anthropic))
    fake_anthropic.push(SSEReply(anthropic_stream(["Hello from ", "Claude."], CLAUDE, 900, 6)))
    events, output = await run_codex(live, tmp_path, "say hi")

    assert [m["text"] for m in items(events, "agent_message")] == ["Hello from Claude."], output
    assert events[-1] == {
        "type": "turn.completed",
        "usage": {
            "input_tokens": 900,
            "cached_input_tokens": 0,
            "cache_write_input_tokens": 0,
            "output_tokens": 6,
            "reasoning_output_tokens": 0,
        },
    }
    (sent,) = (r.json for r in fake_anthropic.received)
    assert sent["model"] == CLAUDE and sent["stream"] is True
    # Codex's developer messages are the system prompt; its prompt the last user turn.
    assert sent["system"][0]["text"].startswith("You are a coding agent running in the Codex CLI")
    assert sent["messages"][-1]["role"] == "user"
    assert "say hi" in orjson.dumps(sent["messages"][-1]).decode()
    # Its function tools go as they are, the namespace's flattened; web_search (hosted) cannot.
    names = [t["name"] for t in sent["tools"]]
    assert {"exec_command", "write_stdin", "multi_agent_v1__spawn_agent"} <= set(names)
    assert "web_search" not in names
    rows = await usage_rows(live)
    assert [
        (r.client_dialect, r.endpoint, r.requested_model, r.target_model, r.stream) for r in rows
    ] == [("openai", "responses", MODEL, CLAUDE, True)]
    assert [(r.input_tokens, r.output_tokens, r.status) for r in rows] == [(900, 6, "ok")]


async def test_codex_runs_a_command_an_openai_backend_asked_for(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    live = await gateway(openai_config(fake_openai))
    args = exec_call_arguments()
    call = {"index": 0, "id": "call_cx1", "type": "function"}
    fake_openai.push(
        SSEReply(
            [
                chunk({"role": "assistant", "content": None}),
                chunk(
                    {"tool_calls": [call | {"function": {"name": "exec_command", "arguments": ""}}]}
                ),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[:9]}}]}),
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[9:]}}]}),
                chunk({}, "tool_calls"),
                usage_chunk(2000, 30),
                OPENAI_DONE,
            ]
        ),
        SSEReply(chat_text_stream(f"It printed {PRINTED}.", 2100, 8)),
    )
    events, output = await run_codex(live, tmp_path, "run the greeting")

    (command,) = items(events, "command_execution")
    assert COMMAND in command["command"], output
    assert PRINTED in command["aggregated_output"]
    assert command["exit_code"] == 0
    assert [m["text"] for m in items(events, "agent_message")] == [f"It printed {PRINTED}."]
    first, second = (r.json for r in fake_openai.received)
    assert first["stream_options"] == {"include_usage": True}
    exec_tool = next(t for t in first["tools"] if t["function"]["name"] == "exec_command")
    assert "cmd" in exec_tool["function"]["parameters"]["properties"]
    # The call went back as Codex's assistant turn, and the command's output as its result.
    assistant, tool = second["messages"][-2:]
    assert assistant["tool_calls"] == [
        {
            "id": "call_cx1",
            "type": "function",
            "function": {"name": "exec_command", "arguments": args},
        }
    ]
    assert (tool["role"], tool["tool_call_id"]) == ("tool", "call_cx1")
    assert PRINTED in tool["content"]
    rows = await usage_rows(live)
    assert [(r.endpoint, r.input_tokens, r.output_tokens) for r in rows] == [
        ("responses", 2000, 30),
        ("responses", 2100, 8),
    ]


async def test_codex_replays_claudes_signed_thinking_through_a_tool_call(
    gateway, fake_anthropic, tmp_path
):  # type: ignore[no-untyped-def]
    live = await gateway(anthropic_config(fake_anthropic))
    args = exec_call_arguments()
    fake_anthropic.push(
        SSEReply(
            anthropic_events(
                (
                    {"type": "thinking", "thinking": "", "signature": ""},
                    [
                        {"type": "thinking_delta", "thinking": "The user wants "},
                        {"type": "thinking_delta", "thinking": "the greeting."},
                        {"type": "signature_delta", "signature": SIGNATURE},
                    ],
                ),
                (
                    {"type": "tool_use", "id": "toolu_cx1", "name": "exec_command", "input": {}},
                    [
                        {"type": "input_json_delta", "partial_json": args[:12]},
                        {"type": "input_json_delta", "partial_json": args[12:]},
                    ],
                ),
                stop="tool_use",
            )
        ),
        SSEReply(anthropic_stream([f"Done: {PRINTED}."], CLAUDE, 1700, 9)),
    )
    events, output = await run_codex(
        live,
        tmp_path,
        "run the greeting",
        settings='model_reasoning_effort = "high"\nmodel_supports_reasoning_summaries = true',
    )

    assert [r["text"] for r in items(events, "reasoning")] == ["The user wants the greeting."], (
        output
    )
    (command,) = items(events, "command_execution")
    assert PRINTED in command["aggregated_output"]
    assert [m["text"] for m in items(events, "agent_message")] == [f"Done: {PRINTED}."]
    first, second = (r.json for r in fake_anthropic.received)
    assert first["thinking"]["type"] == "enabled"  # Codex's model_reasoning_effort
    assistant, result = second["messages"][-2:]
    assert assistant == {
        "role": "assistant",
        "content": [
            {
                "type": "thinking",
                "thinking": "The user wants the greeting.",
                "signature": SIGNATURE,
            },
            {
                "type": "tool_use",
                "id": "toolu_cx1",
                "name": "exec_command",
                "input": {"cmd": COMMAND},
            },
        ],
    }
    (tool_result,) = [b for b in result["content"] if b["type"] == "tool_result"]
    assert tool_result["tool_use_id"] == "toolu_cx1"
    assert PRINTED in orjson.dumps(tool_result["content"]).decode()


async def test_codex_reports_a_wrong_key(gateway, fake_anthropic, tmp_path):  # type: ignore[no-untyped-def]
    """Codex retries even a 401 as many times as its provider's ``stream_max_retries`` says
    (``x-should-retry: false`` does not stop it), then fails the turn with the gateway's
    message and request id."""
    live = await gateway(anthropic_config(fake_anthropic))
    events, output = await run_codex(live, tmp_path, "say hi", key="bk-wrong", retries=2)
    (failed,) = [e for e in events if e["type"] == "turn.failed"]
    message = failed["error"]["message"]
    assert "unexpected status 401 Unauthorized: Invalid API key" in message, output
    rows = await usage_rows(live)
    assert [(r.http_status, r.key_name, r.endpoint) for r in rows] == [(401, None, "responses")] * 3
    assert rows[-1].request_id in message
    assert fake_anthropic.received == []


async def test_codex_retries_a_stream_the_backend_cut(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    """A stream cut mid-answer reaches Codex as ``response.failed``; Codex asks again, and
    the second answer is the one it shows."""
    live = await gateway(openai_config(fake_openai))
    fake_openai.push(
        SSEReply(
            [chunk({"role": "assistant", "content": "Half an "}), chunk({"content": "ans"})],
            cut=True,
        ),
        SSEReply(chat_text_stream("A whole answer.", 900, 4)),
    )
    events, output = await run_codex(live, tmp_path, "say hi", retries=1)
    assert [m["text"] for m in items(events, "agent_message")] == ["A whole answer."], output
    rows = await usage_rows(live)
    assert [(r.endpoint, r.status) for r in rows] == [("responses", "error"), ("responses", "ok")]


async def test_codex_reads_input_past_the_context_window_as_such(gateway, fake_anthropic, tmp_path):  # type: ignore[no-untyped-def]
    """The gateway's 400 for input past a route's ``context_window`` carries OpenAI's code
    ``context_length_exceeded``: Codex says its context window is full, and does not retry."""
    live = await gateway(anthropic_config(fake_anthropic) + "context_window = 3000\n")
    events, output = await run_codex(live, tmp_path, "say hi", retries=2)
    (failed,) = [e for e in events if e["type"] == "turn.failed"]
    assert "ran out of room in the model's context window" in failed["error"]["message"], output
    rows = await usage_rows(live)
    assert [(r.http_status, r.endpoint) for r in rows] == [(400, "responses")]
    assert (rows[0].error_message or "").startswith("input length and `max_tokens` exceed")
    assert fake_anthropic.received == []
