"""The real Claude Code CLI through the gateway, nothing changed but its base URL.

Claude Code (the npm package ``@anthropic-ai/claude-code``, pinned in ``.ci/run``) runs
in print mode (``claude -p``) against the live gateway, which translates to a fake
OpenAI-compatible backend or passes through to a fake Anthropic one. Each test pins what
Claude Code did with the gateway's answers: it ran the tool the backend asked for and
sent the output back, showed the backend's thinking, answered the context-limit error by
asking again with fewer tokens, and reported a bad key as one.

``make claude-code`` (or ``.ci/run``) installs the binary into ``.cache/claude-code``;
``CLAUDE_CODE_BIN`` names another one. Without it these tests are skipped, as the browser
tests are without Chromium.
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
from app.dialects.sse import OPENAI_DONE, anthropic_event, openai_chunk
from app.translate.ids import sanitize_tool_id
from tests.conftest import Live, flushed
from tests.fakes import (
    FakeUpstream,
    JsonReply,
    SSEReply,
    anthropic_message,
    anthropic_stream,
    openai_stream,
)

ROOT = Path(__file__).resolve().parents[2]
CLAUDE = os.environ.get("CLAUDE_CODE_BIN") or str(
    ROOT / ".cache" / "claude-code" / "node_modules" / ".bin" / "claude"
)

pytestmark = [
    pytest.mark.skipif(
        shutil.which(CLAUDE) is None,
        reason=f"Claude Code is not installed at {CLAUDE} (make claude-code)",
    ),
    pytest.mark.gen_test(timeout=90),
]

MODEL = "claude-sonnet-4-5"
TARGET = "qwen3-coder"
# What the backend asks Claude Code to run, and what running it prints.
COMMAND = "echo bridgekeeper-$((6*7))"
PRINTED = "bridgekeeper-42"
# A 1x1 PNG.
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
BASE_CHUNK = {"id": "chatcmpl-cc", "object": "chat.completion.chunk", "created": 1700000000}


def openai_config(fake: FakeUpstream, reasoning: str = "strip", extra: str = "") -> str:
    """``claude-*`` on the fake OpenAI backend; ``extra``: more lines for the upstream."""
    return f"""
[[upstreams]]
name = "local"
kind = "openai"
base_url = "{fake.url}"
keys = ["sk-local"]
reasoning = "{reasoning}"
{extra}

[[models]]
name = "claude-*"
upstream = "local"
target = "{TARGET}"
"""


def anthropic_config(fake: FakeUpstream) -> str:
    return f"""
[[upstreams]]
name = "cloud"
kind = "anthropic"
base_url = "{fake.url}"
keys = ["sk-ant-cloud"]

[[models]]
name = "claude-*"
upstream = "cloud"
"""


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return openai_chunk(dict(BASE_CHUNK, model=TARGET, choices=[choice], **extra))


def usage(prompt: int, completion: int) -> bytes:
    counts = {"prompt_tokens": prompt, "completion_tokens": completion}
    return openai_chunk(
        dict(
            BASE_CHUNK,
            model=TARGET,
            choices=[],
            usage=counts | {"total_tokens": prompt + completion},
        )
    )


def bash_call_stream(
    reasoning: str = "", call_id: str = "call_cc1", finish: str = "tool_calls"
) -> list[bytes]:
    """An OpenAI stream asking for one Bash call, its arguments cut in three fragments
    (and, with ``reasoning``, thinking first, as vLLM's ``reasoning_content``)."""
    args = orjson.dumps({"command": COMMAND, "description": "Print a greeting"}).decode()
    out = [chunk({"role": "assistant", "content": None})]
    if reasoning:
        half = len(reasoning) // 2
        out += [chunk({"reasoning_content": reasoning[:half]})]
        out += [chunk({"reasoning_content": reasoning[half:]})]
    call = {"index": 0, "id": call_id, "type": "function"}
    out.append(chunk({"tool_calls": [call | {"function": {"name": "Bash", "arguments": ""}}]}))
    for piece in (args[:10], args[10:30], args[30:]):
        out.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
    return out + [chunk({}, finish), usage(1200, 30), OPENAI_DONE]


async def run_claude(
    live: Live,
    home: Path,
    *args: str,
    base_url: str | None = None,
    model: str = MODEL,
    key_variable: str = "ANTHROPIC_API_KEY",
    stdin: bytes | None = None,
) -> list[dict[str, Any]]:
    """``claude -p`` against the gateway; its ``stream-json`` events, one dict each
    (``stdin``: what Claude Code reads, for ``--input-format stream-json``)."""
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": base_url or live.url,
        key_variable: live.key,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        CLAUDE,
        "-p",
        *args,
        "--model",
        model,
        "--output-format",
        "stream-json",
        "--verbose",
        cwd=str(home),
        env=env,
        stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), 75)
    events = [orjson.loads(line) for line in out.splitlines() if line.startswith(b"{")]
    assert events and events[-1]["type"] == "result", (out + err).decode(errors="replace")[-2000:]
    return events


async def usage_rows(live: Live) -> list[UsageEvent]:
    await flushed(live)
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UsageEvent).order_by(UsageEvent.id)))


def blocks(events: list[dict[str, Any]], role: str) -> list[dict[str, Any]]:
    """Every content block of the ``role`` messages Claude Code reported, in order."""
    return [b for e in events if e["type"] == role for b in e["message"]["content"]]


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body["messages"] if m["role"] == "tool"]


async def test_claude_code_runs_a_tool_a_translated_stream_asked_for(
    gateway, fake_openai, tmp_path
):  # type: ignore[no-untyped-def]
    live = await gateway(openai_config(fake_openai))
    fake_openai.push(
        SSEReply(bash_call_stream()),
        SSEReply(openai_stream(["The command printed ", PRINTED, "."], TARGET, prompt=1300)),
    )
    events = await run_claude(
        live, tmp_path / "home", "Say hello from the shell", "--allowedTools", "Bash"
    )

    first, second = (r.json for r in fake_openai.received)
    assert first["model"] == TARGET and first["stream"] is True
    assert "Bash" in [t["function"]["name"] for t in first["tools"]]
    assert first["messages"][0]["role"] == "system"
    # Claude Code ran the command and sent its output back as the call's tool message.
    (tool,) = tool_messages(second)
    assert tool["tool_call_id"] == "call_cc1"
    assert PRINTED in tool["content"]
    (call,) = second["messages"][-2]["tool_calls"]
    assert call["id"] == "call_cc1"
    assert orjson.loads(call["function"]["arguments"]) == {
        "command": COMMAND,
        "description": "Print a greeting",
    }
    uses = [b for b in blocks(events, "assistant") if b["type"] == "tool_use"]
    assert [(u["name"], u["input"]["command"]) for u in uses] == [("Bash", COMMAND)]
    result = events[-1]
    assert result["subtype"] == "success" and result["is_error"] is False
    assert result["result"] == f"The command printed {PRINTED}."
    assert result["num_turns"] == 2
    rows = await usage_rows(live)
    assert [(r.key_name, r.requested_model, r.target_model, r.stream) for r in rows] == [
        ("tester", MODEL, TARGET, True)
    ] * 2
    assert [(r.input_tokens, r.output_tokens, r.status) for r in rows] == [
        (1200, 30, "ok"),
        (1300, 7, "ok"),
    ]


async def test_a_file_written_from_arguments_cut_in_small_fragments(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    """Write's arguments streamed three characters at a time, escapes and multi-byte
    characters cut in the middle: the file Claude Code writes holds exactly the content."""
    live = await gateway(openai_config(fake_openai))
    home = tmp_path / "home"
    target = home / "notes.txt"
    content = 'Line "one"\n\tTabbed — ünïcode ✓ 🚀\nback\\slash {"json": [1, 2]}\n'
    args = orjson.dumps({"file_path": str(target), "content": content}).decode()
    out = [chunk({"role": "assistant", "content": None})]
    call = {"index": 0, "id": "call_w1", "type": "function"}
    out.append(chunk({"tool_calls": [call | {"function": {"name": "Write", "arguments": ""}}]}))
    for at in range(0, len(args), 3):
        piece = {"index": 0, "function": {"arguments": args[at : at + 3]}}
        out.append(chunk({"tool_calls": [piece]}))
    out += [chunk({}, "tool_calls"), usage(1200, 90), OPENAI_DONE]
    fake_openai.push(SSEReply(out), SSEReply(openai_stream(["Written."], TARGET)))
    events = await run_claude(live, home, "Write the notes", "--allowedTools", "Write")

    assert target.read_text(encoding="utf-8") == content
    (tool,) = tool_messages(fake_openai.received[1].json)
    assert tool["tool_call_id"] == "call_w1"
    assert events[-1]["result"] == "Written."


def call_stream(call_id: str, name: str, arguments: dict[str, Any]) -> list[bytes]:
    """An OpenAI stream asking for one call, its arguments in one fragment."""
    call = {"index": 0, "id": call_id, "type": "function"}
    fn = {"name": name, "arguments": orjson.dumps(arguments).decode()}
    return [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [call | {"function": fn}]}),
        chunk({}, "tool_calls"),
        usage(1200, 30),
        OPENAI_DONE,
    ]


async def test_a_read_then_edit_loop_over_three_turns(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    """Claude Code edits only a file it has read: Read, then Edit, then the answer, each
    turn's history carrying the earlier calls and results in order."""
    live = await gateway(openai_config(fake_openai))
    home = tmp_path / "home"
    home.mkdir()
    target = home / "greeting.txt"
    target.write_text("hello world\n")
    edit = {"file_path": str(target), "old_string": "world", "new_string": "gateway"}
    fake_openai.push(
        SSEReply(call_stream("call_r1", "Read", {"file_path": str(target)})),
        SSEReply(call_stream("call_e1", "Edit", edit)),
        SSEReply(openai_stream(["Edited."], TARGET)),
    )
    events = await run_claude(live, home, "Greet the gateway", "--allowedTools", "Read,Edit")

    assert target.read_text() == "hello gateway\n"
    history = fake_openai.received[2].json["messages"]
    calls = [c["id"] for m in history if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    assert calls == ["call_r1", "call_e1"]
    results = [(m["tool_call_id"], m["content"]) for m in history if m["role"] == "tool"]
    assert [r[0] for r in results] == ["call_r1", "call_e1"]
    assert "hello world" in results[0][1]
    assert events[-1]["result"] == "Edited."
    assert events[-1]["num_turns"] == 3


async def test_claude_code_runs_a_call_from_a_llama_style_stream(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    """Two habits of local backends that leave Claude Code stuck without the gateway: a
    tool call ending with ``finish_reason: "stop"`` (llama.cpp, Ollama), and an id that is
    not one Anthropic accepts (Kimi's ``functions.Bash:0``)."""
    live = await gateway(openai_config(fake_openai))
    fake_openai.push(
        SSEReply(bash_call_stream(call_id="functions.Bash:0", finish="stop")),
        SSEReply(openai_stream(["Ran it."], TARGET)),
    )
    events = await run_claude(live, tmp_path / "home", "Say hello", "--allowedTools", "Bash")

    (use,) = [b for b in blocks(events, "assistant") if b["type"] == "tool_use"]
    assert use["id"] == sanitize_tool_id("functions.Bash:0")
    assert use["id"].startswith("functions_Bash_0_")
    second = fake_openai.received[1].json
    (tool,) = tool_messages(second)
    assert tool["tool_call_id"] == use["id"]
    assert PRINTED in tool["content"]
    assert second["messages"][-2]["tool_calls"][0]["id"] == use["id"]
    assert events[-1]["result"] == "Ran it."


async def test_claude_code_runs_parallel_calls_and_answers_each(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    """Two calls in one turn, their fragments interleaved as some backends send them, on
    the gateway's ``/anthropic`` prefix: Claude Code runs both and answers each by id."""
    live = await gateway(openai_config(fake_openai))
    commands = ["echo first-$((1+1))", "echo second-$((2+2))"]
    out = [chunk({"role": "assistant", "content": None})]
    for i in (0, 1):
        call = {"index": i, "id": f"call_par{i}", "type": "function"}
        out.append(chunk({"tool_calls": [call | {"function": {"name": "Bash", "arguments": ""}}]}))
    args = [orjson.dumps({"command": c, "description": "Print"}).decode() for c in commands]
    for piece in range(0, 40, 8):  # call 0 and call 1 take turns
        for i in (0, 1):
            part = {"index": i, "function": {"arguments": args[i][piece : piece + 8]}}
            out.append(chunk({"tool_calls": [part]}))
    for i in (0, 1):
        out.append(chunk({"tool_calls": [{"index": i, "function": {"arguments": args[i][40:]}}]}))
    out += [chunk({}, "tool_calls"), usage(1200, 60), OPENAI_DONE]
    fake_openai.push(SSEReply(out), SSEReply(openai_stream(["Both ran."], TARGET)))
    events = await run_claude(
        live,
        tmp_path / "home",
        "Print two things",
        "--allowedTools",
        "Bash",
        base_url=live.url + "/anthropic",
    )

    uses = [b for b in blocks(events, "assistant") if b["type"] == "tool_use"]
    assert [u["input"]["command"] for u in uses] == commands
    second = fake_openai.received[1].json
    replies = {m["tool_call_id"]: m["content"] for m in tool_messages(second)}
    assert set(replies) == {"call_par0", "call_par1"}
    assert "first-2" in replies["call_par0"] and "second-4" in replies["call_par1"]
    assert [c["id"] for c in second["messages"][-3]["tool_calls"]] == ["call_par0", "call_par1"]
    assert events[-1]["result"] == "Both ran."


async def test_an_image_from_claude_code_reaches_the_backend_as_a_data_url(
    gateway, fake_openai, tmp_path
):  # type: ignore[no-untyped-def]
    live = await gateway(openai_config(fake_openai))
    fake_openai.push(SSEReply(openai_stream(["A red pixel."], TARGET)))
    image = {"type": "base64", "media_type": "image/png", "data": PNG}
    turn = {
        "type": "user",
        "message": {
            "role": "user",
            "content": [{"type": "image", "source": image}, {"type": "text", "text": "What?"}],
        },
    }
    events = await run_claude(
        live,
        tmp_path / "home",
        "--input-format",
        "stream-json",
        stdin=orjson.dumps(turn) + b"\n",
    )

    parts = fake_openai.received[0].json["messages"][-1]["content"]
    urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
    assert urls == [f"data:image/png;base64,{PNG}"]
    assert parts[-1] == {"type": "text", "text": "What?"}
    assert events[-1]["result"] == "A red pixel."


async def test_claude_code_shows_backend_thinking_and_replays_it(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    """vLLM-style ``reasoning_content`` reaches Claude Code as a thinking block; with
    ``reasoning = "replay"`` the next turn sends it back to the backend."""
    live = await gateway(openai_config(fake_openai, reasoning="replay"))
    thought = "The user wants a greeting; the shell can print one."
    fake_openai.push(
        SSEReply(bash_call_stream(reasoning=thought)),
        SSEReply(openai_stream(["Done."], TARGET, prompt=1300)),
    )
    events = await run_claude(
        live, tmp_path / "home", "Say hello from the shell", "--allowedTools", "Bash"
    )

    thinking = [b for b in blocks(events, "assistant") if b["type"] == "thinking"]
    assert [b["thinking"] for b in thinking] == [thought]
    second = fake_openai.received[1].json
    assistant = second["messages"][-2]
    assert assistant["reasoning_content"] == thought
    assert assistant["tool_calls"][0]["function"]["name"] == "Bash"
    assert events[-1]["result"] == "Done."


async def test_inline_think_tags_reach_claude_code_as_thinking(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    """A backend without a reasoning parser writes ``<think>…</think>`` into the content:
    Claude Code gets a thinking block and the answer alone, and the next turn does not
    send the tags back as the model's words."""
    live = await gateway(openai_config(fake_openai))
    pieces = ["<thi", "nk>\nThe shell", " can greet.</think>", "\n\n", "Running it."]
    stream = bash_call_stream()
    stream[1:1] = [chunk({"content": p}) for p in pieces]
    fake_openai.push(SSEReply(stream), SSEReply(openai_stream(["Done."], TARGET)))
    events = await run_claude(
        live, tmp_path / "home", "Say hello from the shell", "--allowedTools", "Bash"
    )

    said = [b for b in blocks(events, "assistant") if b["type"] in ("thinking", "text")]
    assert [(b["type"], b.get("thinking", b.get("text"))) for b in said] == [
        ("thinking", "\nThe shell can greet."),
        ("text", "Running it."),
        ("text", "Done."),
    ]
    assistant = fake_openai.received[1].json["messages"][-2]
    assert assistant["content"] == "Running it."
    assert assistant["tool_calls"][0]["function"]["name"] == "Bash"
    assert events[-1]["result"] == "Done."


async def test_claude_code_s_context_view_counts_with_the_backend_s_tokenizer(
    gateway, fake_openai, tmp_path
):  # type: ignore[no-untyped-def]
    """``/context`` counts the system prompt, each tool and the messages through
    ``count_tokens``: with a ``tokenize_url`` every count is the backend tokenizer's."""
    plain = fake_openai.default_reply

    def tokenizer(received: Any) -> Any:
        if not received.path.endswith("/tokenize"):
            return plain(received)
        body = received.json  # 1,000 a request, 10 a tool, 1 a message
        count = 1000 + 10 * len(body.get("tools") or ()) + len(body["messages"])
        return JsonReply(body={"count": count, "max_model_len": 131072, "tokens": []})

    fake_openai.default_reply = tokenizer
    tokenize_url = f"http://127.0.0.1:{fake_openai.port}/tokenize"
    live = await gateway(openai_config(fake_openai, extra=f'tokenize_url = "{tokenize_url}"'))
    events = await run_claude(live, tmp_path / "home", "/context")

    asked = [r for r in fake_openai.received if r.path == "/tokenize"]
    assert len(asked) == len(fake_openai.received) >= 10
    with_tools = [r.json["tools"] for r in asked if r.json.get("tools")]
    assert with_tools and all(t["type"] == "function" for ts in with_tools for t in ts)
    rows = await usage_rows(live)
    assert [(r.endpoint, r.status) for r in rows] == [("count_tokens", "ok")] * len(asked)
    shown = events[-1]["result"]
    assert "**Tokens:**" in shown
    assert "| Messages | 1k |" in shown  # "foo" alone: 1,001 by the tokenizer


async def test_claude_code_asks_again_under_a_backend_s_output_limit(
    gateway, fake_openai, tmp_path
):  # type: ignore[no-untyped-def]
    """A backend refusing Claude Code's max_tokens: the gateway's context-limit wording
    makes Claude Code lower it and ask again, and the user never sees the error."""
    live = await gateway(openai_config(fake_openai))
    message = (
        "max_tokens is too large: 64000. This model supports at most 16384 completion tokens, "
        "whereas you provided 64000."
    )
    error = {"message": message, "type": "invalid_request_error", "param": "max_tokens"}
    fake_openai.push(
        JsonReply(400, {"error": error | {"code": "invalid_value"}}),
        SSEReply(openai_stream(["Hello."], TARGET)),
    )
    events = await run_claude(live, tmp_path / "home", "Say hello")

    first, second = (r.json for r in fake_openai.received)
    assert first["max_tokens"] > 16384
    assert 0 < second["max_tokens"] <= 16384
    assert events[-1]["result"] == "Hello."
    assert events[-1]["is_error"] is False


async def test_input_past_the_context_window_reads_as_prompt_too_long(
    gateway, fake_openai, tmp_path
):  # type: ignore[no-untyped-def]
    """A route's context window smaller than Claude Code's first request: the gateway's 400
    is one Claude Code recognises as its own "prompt is too long" (which it answers by
    compacting a longer conversation), and the backend is never asked."""
    live = await gateway(openai_config(fake_openai) + "context_window = 8000\n")
    events = await run_claude(live, tmp_path / "home", "Say hello")

    assert fake_openai.received == []
    result = events[-1]
    assert (result["is_error"], result["api_error_status"]) == (True, 400)
    assert result["result"].startswith("Prompt is too long")


async def test_claude_code_compacts_a_session_through_a_translated_backend(
    gateway, fake_openai, tmp_path
):  # type: ignore[no-untyped-def]
    """``/compact`` on a session with a tool call in it: the summary request carries the
    whole history in the backend's dialect, and the backend's summary becomes the start
    of the compacted session."""
    live = await gateway(openai_config(fake_openai))
    home = tmp_path / "home"
    fake_openai.push(SSEReply(bash_call_stream()), SSEReply(openai_stream(["Hello."], TARGET)))
    await run_claude(live, home, "Say hello from the shell", "--allowedTools", "Bash")
    fake_openai.push(SSEReply(openai_stream(["Hello again."], TARGET)))
    await run_claude(live, home, "And again", "--continue")
    summary = "<analysis>Greetings.</analysis>\n<summary>The user was greeted twice.</summary>"
    fake_openai.push(SSEReply(openai_stream([summary], TARGET)))
    events = await run_claude(live, home, "/compact", "--continue")

    asked = fake_openai.received[3].json
    roles = [m["role"] for m in asked["messages"]]
    assert roles[:2] == ["system", "user"] and "tool" in roles
    (tool,) = tool_messages(asked)
    assert PRINTED in tool["content"]
    statuses = [e.get("compact_result") for e in events if e.get("subtype") == "status"]
    assert "success" in statuses
    continued = [
        e["message"]["content"]
        for e in events
        if e["type"] == "user" and isinstance(e["message"]["content"], str)
    ]
    assert any("The user was greeted twice." in text for text in continued)


async def test_a_subagent_runs_its_own_requests_through_the_gateway(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    """The backend asks for the Agent tool: Claude Code's subagent sends requests of its own
    (its own prompt and tool set), and its answer comes back to the main loop as the call's
    result."""
    live = await gateway(openai_config(fake_openai))
    task = {
        "description": "Greet",
        "prompt": "Say hi in two words",
        "subagent_type": "general-purpose",
    }
    fake_openai.push(
        SSEReply(call_stream("call_a1", "Agent", task)),
        SSEReply(openai_stream(["Hi there."], TARGET)),
        SSEReply(openai_stream(["The agent said hi."], TARGET)),
    )
    events = await run_claude(
        live, tmp_path / "home", "Ask an agent to greet", "--allowedTools", "Agent"
    )

    main, sub, back = (r.json for r in fake_openai.received)
    assert "Say hi in two words" in orjson.dumps(sub["messages"][1:]).decode()
    assert sub["messages"][0]["role"] == "system"
    assert sub["messages"][0] != main["messages"][0]  # the subagent's own system prompt
    assert len(sub["tools"]) < len(main["tools"])
    (tool,) = tool_messages(back)
    assert tool["tool_call_id"] == "call_a1" and tool["content"].startswith("Hi there.")
    assert [e["status"] for e in events if e.get("subtype") == "task_notification"] == ["completed"]
    assert events[-1]["result"] == "The agent said hi."
    rows = await usage_rows(live)
    assert len(rows) == 3


async def test_claude_code_through_to_an_anthropic_backend(gateway, fake_anthropic, tmp_path):  # type: ignore[no-untyped-def]
    """Same dialect: Claude Code's request reaches the backend with the upstream key, and
    a tool round trip works on the backend's own stream."""
    live = await gateway(anthropic_config(fake_anthropic))
    call_id = "toolu_01CcBridgekeeper"
    args = orjson.dumps({"command": COMMAND, "description": "Print a greeting"}).decode()
    start = anthropic_message("", MODEL) | {"content": [], "stop_reason": None}
    tool_stream = [
        anthropic_event("message_start", {"type": "message_start", "message": start}),
        anthropic_event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "tool_use", "id": call_id, "name": "Bash", "input": {}},
            },
        ),
        anthropic_event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "input_json_delta", "partial_json": args},
            },
        ),
        anthropic_event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        anthropic_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"output_tokens": 25},
            },
        ),
        anthropic_event("message_stop", {"type": "message_stop"}),
    ]
    fake_anthropic.push(
        SSEReply(tool_stream), SSEReply(anthropic_stream(["It printed 42."], MODEL))
    )
    events = await run_claude(
        live, tmp_path / "home", "Say hello from the shell", "--allowedTools", "Bash"
    )

    first, second = fake_anthropic.received
    assert first.headers["X-Api-Key"] == "sk-ant-cloud"
    assert live.key not in orjson.dumps(dict(first.headers)).decode()
    assert first.json["model"] == MODEL
    results = [
        b
        for m in second.json["messages"]
        if m["role"] == "user" and isinstance(m["content"], list)
        for b in m["content"]
        if b.get("type") == "tool_result"
    ]
    assert [r["tool_use_id"] for r in results] == [call_id]
    assert PRINTED in orjson.dumps(results[0]["content"]).decode()
    assert events[-1]["result"] == "It printed 42."


async def test_claude_code_with_the_key_as_an_auth_token(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    """``ANTHROPIC_AUTH_TOKEN`` (sent as ``Authorization: Bearer``) works as the API key does."""
    live = await gateway(openai_config(fake_openai))
    fake_openai.push(SSEReply(openai_stream(["Hello."], TARGET)))
    events = await run_claude(
        live, tmp_path / "home", "Say hello", key_variable="ANTHROPIC_AUTH_TOKEN"
    )
    assert events[-1]["result"] == "Hello."
    assert fake_openai.received[0].headers["Authorization"] == "Bearer sk-local"


async def test_claude_code_reports_a_key_the_gateway_does_not_know(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    """At once: without ``x-should-retry: false`` Claude Code retries a 401 ten times, for
    minutes, before it says anything."""
    live = await gateway(openai_config(fake_openai))
    live.key = "bk-not-a-key-of-this-gateway-0000"
    events = await run_claude(live, tmp_path / "home", "Say hello")

    assert fake_openai.received == []
    assert [e for e in events if e.get("subtype") == "api_retry"] == []
    result = events[-1]
    assert result["is_error"] is True
    assert result["api_error_status"] == 401
    assert "Invalid API key" in result["result"]


async def test_a_session_moved_to_an_anthropic_backend_keeps_working(
    gateway, fake_openai, fake_anthropic, tmp_path
):  # type: ignore[no-untyped-def]
    """A local model's thinking has no signature, which a real Anthropic backend refuses:
    when the user switches the same session to a model on Anthropic (``--continue
    --model``), the gateway leaves those blocks out and the rest of the history goes as is."""
    live = await gateway(
        f"""
[[upstreams]]
name = "local"
kind = "openai"
base_url = "{fake_openai.url}"
keys = ["sk-local"]

[[upstreams]]
name = "cloud"
kind = "anthropic"
base_url = "{fake_anthropic.url}"
keys = ["sk-ant-cloud"]

[[models]]
name = "claude-sonnet-*"
upstream = "local"
target = "{TARGET}"

[[models]]
name = "claude-opus-*"
upstream = "cloud"
"""
    )
    thought = "A shell command prints it."
    fake_openai.push(
        SSEReply(bash_call_stream(reasoning=thought)),
        SSEReply(openai_stream(["Printed."], TARGET)),
    )
    home = tmp_path / "home"
    await run_claude(live, home, "Say hello from the shell", "--allowedTools", "Bash")
    fake_anthropic.push(SSEReply(anthropic_stream(["Still here."], "claude-opus-4-5")))
    events = await run_claude(live, home, "And now?", "--continue", model="claude-opus-4-5")

    (sent,) = fake_anthropic.received
    history = sent.json["messages"]
    kinds = [
        [b["type"] for b in m["content"]] if isinstance(m["content"], list) else ["text"]
        for m in history
    ]
    assert not any("thinking" in k for k in kinds)
    assert ["tool_use"] in kinds  # the assistant turn kept its call, minus the thinking
    uses = [b for m in history if isinstance(m["content"], list) for b in m["content"]]
    assert [b["input"]["command"] for b in uses if b["type"] == "tool_use"] == [COMMAND]
    assert events[-1]["result"] == "Still here."


async def test_claude_code_retries_an_overloaded_backend(gateway, fake_openai, tmp_path):  # type: ignore[no-untyped-def]
    """A backend's 503 reaches Claude Code as Anthropic's 529 ``overloaded_error``, which it
    retries by itself; the second answer is the one the user sees."""
    live = await gateway(openai_config(fake_openai))
    busy = {"error": {"message": "Server is busy", "type": "server_error", "code": None}}
    fake_openai.push(JsonReply(503, busy), SSEReply(openai_stream(["Back."], TARGET)))
    events = await run_claude(live, tmp_path / "home", "Say hello")

    retries = [e for e in events if e.get("subtype") == "api_retry"]
    assert [r["error_status"] for r in retries] == [529]
    assert len(fake_openai.received) == 2
    assert events[-1]["result"] == "Back."


async def test_failing_over_mid_tool_loop_drops_the_first_backend_s_signatures(
    gateway, fake_anthropic, tmp_path
):  # type: ignore[no-untyped-def]
    """Thinking signed by one Anthropic-compatible backend is refused by another. Claude
    Code sends the thinking of the turn that called a tool along with the tool's result;
    when that request fails over to the route's fallback on another backend, its 400 names
    the signature, and the gateway asks again without the history's thinking (and, as
    the last turn calls a tool, without thinking for that request)."""
    other = await FakeUpstream("anthropic").start()
    try:
        live = await gateway(
            f"""
[[upstreams]]
name = "first"
kind = "anthropic"
base_url = "{fake_anthropic.url}"
keys = ["sk-ant-first"]

[[upstreams]]
name = "second"
kind = "anthropic"
base_url = "{other.url}"
keys = ["sk-ant-second"]

[[models]]
name = "{MODEL}"
upstream = "first"
fallbacks = ["backup"]

[[models]]
name = "backup"
upstream = "second"
target = "{MODEL}"
"""
        )
        args = orjson.dumps({"command": COMMAND, "description": "Print a greeting"}).decode()
        start = anthropic_message("", MODEL) | {"content": [], "stop_reason": None}

        def event(kind: str, **fields: Any) -> bytes:
            return anthropic_event(kind, {"type": kind, **fields})

        def delta(index: int, **fields: Any) -> bytes:
            return event("content_block_delta", index=index, delta=fields)

        thinking = {"type": "thinking", "thinking": "", "signature": ""}
        call = {"type": "tool_use", "id": "toolu_01Moved", "name": "Bash", "input": {}}
        signed_call = [
            event("message_start", message=start),
            event("content_block_start", index=0, content_block=thinking),
            delta(0, type="thinking_delta", thinking="The shell can greet."),
            delta(0, type="signature_delta", signature="c2lnbmVkLWJ5LWZpcnN0"),
            event("content_block_stop", index=0),
            event("content_block_start", index=1, content_block=call),
            delta(1, type="input_json_delta", partial_json=args),
            event("content_block_stop", index=1),
            event(
                "message_delta",
                delta={"stop_reason": "tool_use", "stop_sequence": None},
                usage={"output_tokens": 40},
            ),
            event("message_stop"),
        ]
        overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
        fake_anthropic.push(SSEReply(signed_call), JsonReply(529, overloaded))
        refusal = {
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "message": "messages.1.content.0: Invalid `signature` in `thinking` block",
            },
        }
        other.push(JsonReply(400, refusal), SSEReply(anthropic_stream(["Greeted."], MODEL)))
        events = await run_claude(
            live, tmp_path / "home", "Say hello from the shell", "--allowedTools", "Bash"
        )
    finally:
        await other.stop()

    refused, retried = (r.json for r in other.received)
    turn = refused["messages"][-2]
    assert [b["type"] for b in turn["content"]] == ["thinking", "tool_use"]
    assert turn["content"][0]["signature"] == "c2lnbmVkLWJ5LWZpcnN0"
    assert "thinking" in refused
    assert [b["type"] for b in retried["messages"][-2]["content"]] == ["tool_use"]
    assert "thinking" not in retried
    assert retried["messages"][:-2] == refused["messages"][:-2]
    assert retried["messages"][-1] == refused["messages"][-1]  # the tool's result
    assert PRINTED in orjson.dumps(retried["messages"][-1]).decode()
    assert events[-1]["result"] == "Greeted."
    assert events[-1]["is_error"] is False
