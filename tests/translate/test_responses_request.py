"""Golden tests for Responses API request -> Chat Completions request translation.

Every folder in tests/fixtures/responses_request/<case>/ is one case: ``request.json`` (a
Responses body) -> ``expected.json`` (the exact chat body) and ``expected_context.json``
(the `ResponsesContext`), or ``expected_error.json`` (status + OpenAI error body). Each
chat body must also pass the gateway's chat validation and the chat -> Anthropic
translator. Fixed ids: ``resp_test0000…`` and ``created_at=1700000000``.
``BRIDGEKEEPER_REGEN=1`` rewrites the expected files; review every diff by hand.
"""

from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.dialects import openai as openai_dialect
from app.errors import GatewayError, InvalidRequestError
from app.translate import openai_to_anthropic
from app.translate.anthropic_to_openai_messages import DOCUMENT_MARKER, IMAGE_MARKER
from app.translate.options import BackendOptions
from app.translate.responses_context import ResponsesContext, ToolOrigin, epoch_seconds
from app.translate.responses_input import tool_media_moved
from app.translate.responses_request import translate_request
from tests.translate.golden import REGEN, check_json, load
from tests.translate.junk import mutate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "responses_request"
CAPTURES = Path(__file__).resolve().parents[2].parent / "shared" / "captures"
CAPTURE_FILES = (
    sorted(CAPTURES.glob("codex/*/*_POST_v1_responses.json"))
    + sorted(CAPTURES.glob("openai-python-sdk/*/*_POST_v1_responses.json"))
    if CAPTURES.is_dir()
    else []
)
RESPONSE_ID = "resp_test00000000000000000000"
CREATED = 1700000000
ANTHROPIC = BackendOptions(target_model="claude-sonnet-4-5")


def cases() -> list[str]:
    return sorted(p.parent.name for p in FIXTURES.glob("*/request.json"))


def translate(body: Any) -> tuple[dict[str, Any], ResponsesContext]:
    return translate_request(body, response_id=RESPONSE_ID, created_at=CREATED)


def context_json(ctx: ResponsesContext) -> dict[str, Any]:
    """The context's data (its clock is a function, not data)."""
    data = dataclasses.asdict(ctx)
    assert data.pop("clock") is epoch_seconds
    return data


def assert_chat_pipeline_accepts(chat: dict[str, Any]) -> None:
    """What the gateway does next with the chat body: validate it, and (for an Anthropic
    backend) translate it."""
    openai_dialect.validate_request(chat)
    openai_dialect.validate_content(chat)
    openai_to_anthropic.translate_request(chat, ANTHROPIC)


# -- golden cases -----------------------------------------------------------------------------


def test_fixture_corpus_is_complete() -> None:
    folders = sorted(p for p in FIXTURES.iterdir() if p.is_dir())
    assert len(folders) >= 40
    for folder in folders:
        assert (folder / "request.json").exists(), f"{folder.name} has no request.json"
        outcomes = [(folder / n).exists() for n in ("expected.json", "expected_error.json")]
        assert sum(outcomes) == 1, f"{folder.name}: exactly one expected outcome"


@pytest.mark.parametrize("case", cases())
def test_request(case: str) -> None:
    folder = FIXTURES / case
    body = load(folder / "request.json")
    try:
        out, ctx = translate(body)
    except GatewayError as err:
        if not REGEN:
            assert (folder / "expected_error.json").exists(), f"unexpected error: {err.message}"
        check_json(
            folder / "expected_error.json",
            {"status": openai_dialect.error_status(err), "body": openai_dialect.error_body(err)},
        )
        assert isinstance(err, InvalidRequestError) and err.param
        return
    assert not (folder / "expected_error.json").exists(), "expected an error"
    check_json(folder / "expected.json", out)
    check_json(folder / "expected_context.json", context_json(ctx))
    assert_chat_pipeline_accepts(out)


# -- real client requests ---------------------------------------------------------------------


def capture_id(path: Path) -> str:
    return f"{path.parent.parent.name}/{path.parent.name}/{path.name}"


def test_captures_are_there() -> None:
    if not CAPTURE_FILES:
        pytest.skip(f"no captures under {CAPTURES}")
    assert len(CAPTURE_FILES) >= 19


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=capture_id)
def test_capture_translates_and_passes_the_chat_pipeline(path: Path) -> None:
    body = load(path)["body"]
    out, ctx = translate(body)
    assert_chat_pipeline_accepts(out)
    assert out["model"] == ctx.model == body["model"]
    assert ("stream_options" in out) is bool(body.get("stream"))
    assert ctx.encrypted_reasoning is ("reasoning.encrypted_content" in body.get("include", []))
    # Every function the model may call maps back to a tool of the request.
    for tool in out.get("tools", []):
        name = tool["function"]["name"]
        assert re.match(r"^[A-Za-z0-9_-]{1,64}$", name), name
        origin = ctx.tools.get(name)
        if origin is not None:
            assert name in (origin.name, f"{origin.namespace}__{origin.name}")
    # Codex's instructions all arrive, as system messages, in order.
    items = body["input"] if isinstance(body["input"], list) else []
    developer = [
        i for i in items if i.get("type", "message") == "message" and i["role"] == "developer"
    ]
    system = [m for m in out["messages"] if m["role"] == "system"]
    assert len(system) == len(developer) + (1 if body.get("instructions") else 0)


# -- behaviour not expressible as one fixture ---------------------------------------------------


def test_fresh_ids_and_time() -> None:
    import time

    before = int(time.time())
    _, ctx = translate_request({"model": "m", "input": "hi"})
    _, other = translate_request({"model": "m", "input": "hi"})
    assert re.fullmatch(r"resp_[0-9a-f]{24}", ctx.response_id)
    assert ctx.response_id != other.response_id
    assert before <= ctx.created_at <= int(time.time())


def test_request_is_not_mutated() -> None:
    for case in cases():
        body = load(FIXTURES / case / "request.json")
        before = orjson.dumps(body)
        try:
            translate(body)
        except InvalidRequestError:
            pass
        assert orjson.dumps(body) == before, case


def test_namespaced_and_custom_tools_map_back() -> None:
    _, ctx = translate(load(FIXTURES / "r14_namespace_tools_and_choice" / "request.json"))
    assert ctx.tools["crm__get_customer"] == ToolOrigin("get_customer", namespace="crm")
    assert ctx.tools["crm__query"] == ToolOrigin("query", namespace="crm", custom=True)
    assert "search" not in ctx.tools  # a plain function keeps its own name
    [long_name] = [n for n in ctx.tools if n.startswith("a_namespace")]
    assert len(long_name) <= 64
    assert ctx.tools[long_name].name == "and_a_long_tool_name_as_well"


def test_function_call_output_with_a_file_keeps_it_as_a_file_part() -> None:
    body = {
        "model": "m",
        "input": [
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {
                "type": "function_call_output",
                "call_id": "c1",
                "output": [{"type": "input_file", "file_data": "JVBERi0=", "filename": "r.pdf"}],
            },
        ],
    }
    out, _ = translate(body)
    assert out["messages"][1] == {
        "role": "tool",
        "tool_call_id": "c1",
        "content": [{"type": "file", "file": {"file_data": "JVBERi0=", "filename": "r.pdf"}}],
    }


def test_reasoning_between_text_and_calls_joins_the_same_assistant_message() -> None:
    body = {
        "model": "m",
        "input": [
            {"role": "user", "content": "go"},
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "On it."}],
            },
            {
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": "Call f."}],
                "encrypted_content": "Esig",
            },
            {"type": "web_search_call", "id": "ws", "status": "completed"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "done"},
        ],
    }
    out, _ = translate(body)
    assert [m["role"] for m in out["messages"]] == ["user", "assistant", "tool"]
    assistant = out["messages"][1]
    assert assistant["content"] == "On it." and assistant["reasoning_content"] == "Call f."
    assert assistant["thinking_blocks"] == [
        {"type": "thinking", "thinking": "Call f.", "signature": "Esig"}
    ]
    assert [c["id"] for c in assistant["tool_calls"]] == ["c1"]


def test_a_later_configuration_update_wins() -> None:
    body = {
        "model": "m",
        "reasoning": {"effort": "high"},
        "text": {"format": {"type": "json_object"}},
        "input": [
            {"role": "user", "content": "hi"},
            {"type": "configuration_update", "reasoning": {"effort": "low"}},
            {
                "type": "configuration_update",
                "reasoning": {"effort": "none"},
                "text": {"format": {"type": "text"}},
            },
        ],
    }
    out, ctx = translate(body)
    assert out["reasoning_effort"] == "none" and "response_format" not in out
    assert ctx.echo["reasoning"]["effort"] == "none"
    assert ctx.echo["text"] == {"format": {"type": "text"}}


@pytest.mark.parametrize(
    ("effort", "thinking"),
    [
        ("none", None),
        ("low", {"type": "enabled", "budget_tokens": 1024}),
    ],
)
def test_reasoning_effort_reaches_both_backends(effort: str, thinking: Any) -> None:
    """``none`` is sent on to a chat backend (GPT-5.1 reasons unless told not to) and means
    no thinking on an Anthropic one."""
    chat, _ = translate({"model": "m", "input": "hi", "reasoning": {"effort": effort}})
    assert chat["reasoning_effort"] == effort
    anthropic_body, _ = openai_to_anthropic.translate_request(chat, ANTHROPIC)
    assert anthropic_body.get("thinking") == thinking


def test_a_repeated_tool_definition_replaces_the_first() -> None:
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    body = {
        "model": "m",
        "tools": [tool],
        "input": [
            {
                "type": "additional_tools",
                "role": "developer",
                "tools": [{**tool, "description": "v2"}],
            },
            {"role": "user", "content": "hi"},
        ],
    }
    out, _ = translate(body)
    assert [t["function"].get("description") for t in out["tools"]] == ["v2"]


def test_two_tools_with_one_name_for_the_backend_are_a_400() -> None:
    """A top-level ``crm__lookup`` and ``lookup`` in namespace ``crm`` both become
    ``crm__lookup``: the second used to replace the first without a word."""
    function = {"type": "function", "name": "crm__lookup", "parameters": {"type": "object"}}
    inner = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    namespace = {"type": "namespace", "name": "crm", "description": "CRM", "tools": [inner]}
    for tools, param in (([function, namespace], "tools[1].tools[0].name"),
                         ([namespace, function], "tools[1].name")):  # fmt: skip
        with pytest.raises(InvalidRequestError) as info:
            translate({"model": "m", "input": "x", "tools": tools})
        assert info.value.param == param
        assert "'crm__lookup'" in info.value.message


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ([], None),
        ("hi", None),
        ({"model": ""}, "model"),
        ({"model": "m", "input": None}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": [None]}, "input[0]"),
        ({"model": "m", "input": [{}]}, "input[0]"),
        ({"model": "m", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"model": "m", "input": [{"role": "user"}]}, "input[0].content"),
        ({"model": "m", "input": [{"role": "user", "content": [5]}]}, "input[0].content[0]"),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0].text",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "input[0].content[0].type",
        ),
        (
            {
                "model": "m",
                "input": [
                    {
                        "role": "assistant",
                        "content": [{"type": "input_image", "image_url": "https://x"}],
                    }
                ],
            },
            "input[0].content[0].type",
        ),
        (
            {"model": "m", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
            "input[0].content[0].image_url",
        ),
        (
            {
                "model": "m",
                "input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": 5}],
            },
            "input[0].arguments",
        ),
        (
            {"model": "m", "input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
            "input[0].name",
        ),
        (
            {"model": "m", "input": [{"type": "function_call_output", "call_id": "c"}]},
            "input[0].output",
        ),
        (
            {
                "model": "m",
                "input": [{"type": "function_call_output", "call_id": "c", "output": 5}],
            },
            "input[0].output",
        ),
        (
            {"model": "m", "input": [{"type": "custom_tool_call", "call_id": "c", "name": "f"}]},
            "input[0].input",
        ),
        ({"model": "m", "input": [{"type": "reasoning", "summary": "x"}]}, "input[0].summary"),
        (
            {"model": "m", "input": [{"type": "reasoning", "summary": [{"type": "summary_text"}]}]},
            "input[0].summary[0].text",
        ),
        (
            {"model": "m", "input": [{"type": "reasoning", "summary": [], "encrypted_content": 1}]},
            "input[0].encrypted_content",
        ),
        ({"model": "m", "input": [{"type": "additional_tools", "tools": None}]}, "input[0].tools"),
        (
            {"model": "m", "input": [{"type": "configuration_update", "reasoning": "low"}]},
            "input[0].reasoning",
        ),
        ({"model": "m", "input": "x", "instructions": 5}, "instructions"),
        ({"model": "m", "input": "x", "tools": [5]}, "tools[0]"),
        ({"model": "m", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        (
            {
                "model": "m",
                "input": "x",
                "tools": [{"type": "function", "name": "f", "parameters": "x"}],
            },
            "tools[0].parameters",
        ),
        (
            {
                "model": "m",
                "input": "x",
                "tools": [{"type": "function", "name": "f", "strict": "yes"}],
            },
            "tools[0].strict",
        ),
        (
            {
                "model": "m",
                "input": "x",
                "tools": [{"type": "custom", "name": "f", "format": {"type": "yaml"}}],
            },
            "tools[0].format.type",
        ),
        (
            {
                "model": "m",
                "input": "x",
                "tools": [{"type": "namespace", "name": "n", "tools": [{"type": "web_search"}]}],
            },
            "tools[0].tools[0].type",
        ),
        (
            {"model": "m", "input": "x", "tools": [{"type": "namespace", "name": "n"}]},
            "tools[0].tools",
        ),
        ({"model": "m", "input": "x", "tool_choice": "always"}, "tool_choice"),
        ({"model": "m", "input": "x", "tool_choice": 1}, "tool_choice"),
        (
            {
                "model": "m",
                "input": "x",
                "tools": [{"type": "function", "name": "f"}],
                "tool_choice": {"type": "allowed_tools", "mode": "any", "tools": []},
            },
            "tool_choice.mode",
        ),
        (
            {
                "model": "m",
                "input": "x",
                "tools": [{"type": "function", "name": "f"}],
                "tool_choice": {"type": "teleport"},
            },
            "tool_choice.type",
        ),
        ({"model": "m", "input": "x", "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"model": "m", "input": "x", "top_p": "1"}, "top_p"),
        ({"model": "m", "input": "x", "max_output_tokens": 1.5}, "max_output_tokens"),
        ({"model": "m", "input": "x", "reasoning": "high"}, "reasoning"),
        ({"model": "m", "input": "x", "reasoning": {"summary": 1}}, "reasoning.summary"),
        ({"model": "m", "input": "x", "text": "json"}, "text"),
        ({"model": "m", "input": "x", "text": {"format": "json"}}, "text.format"),
        ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
        (
            {"model": "m", "input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}},
            "text.format.schema",
        ),
        ({"model": "m", "input": "x", "include": "reasoning.encrypted_content"}, "include"),
        ({"model": "m", "input": "x", "stream": "true"}, "stream"),
        ({"model": "m", "input": "x", "user": 5}, "user"),
        ({"model": "m", "input": "x", "metadata": []}, "metadata"),
        ({"model": "m", "input": "x", "metadata": {"a": 1}}, "metadata.a"),
        ({"model": "m", "input": "x", "metadata": {"a": "v" * 513}}, "metadata.a"),
        ({"model": "m", "input": "x", "metadata": {"k" * 65: "v"}}, "metadata"),
        ({"model": "m", "input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"model": "m", "input": "x", "store": "no"}, "store"),
        ({"model": "m", "input": "x", "background": "yes"}, "background"),
    ],
)
def test_malformed_bodies_are_400s(body: Any, param: str | None) -> None:
    with pytest.raises(InvalidRequestError) as info:
        translate(body)
    assert info.value.param == param
    assert openai_dialect.error_status(info.value) == 400


JUNK: list[Any] = [
    None, 0, -1, 2.5, True, "", "x", [], [None], [{}], {}, {"type": None},
    {"type": "input_text"}, {"type": "function"}, {"type": "message"}, "auto",
]  # fmt: skip


def test_mutated_requests_raise_only_invalid_request() -> None:
    rng = random.Random(20261121)
    bodies = [
        load(FIXTURES / case / "request.json")
        for case in cases()
        if (FIXTURES / case / "expected.json").exists()
    ]
    translated = 0
    for _ in range(3000):
        body = mutate(rng, rng.choice(bodies), JUNK)
        try:
            out, ctx = translate(body)
        except InvalidRequestError:
            continue
        translated += 1
        orjson.dumps(out)
        orjson.dumps(ctx.echo)
    assert translated > 500


def test_tool_media_moved_to_a_user_message_for_a_chat_backend() -> None:
    """Images and files of tool outputs go in one user message after the tool messages (a
    chat backend takes only text in a tool message); the rest is the same list."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}}
    pdf = {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBE"}}
    messages: list[Any] = [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "a"}, image]},
        {"role": "tool", "tool_call_id": "c2", "content": [pdf]},
        {"role": "tool", "tool_call_id": "c3", "content": "plain"},
        {"role": "user", "content": "next"},
    ]
    assert tool_media_moved(messages) == [
        {"role": "user", "content": "look"},
        {"role": "assistant", "content": None, "tool_calls": []},
        {"role": "tool", "tool_call_id": "c1", "content": "a\n" + IMAGE_MARKER},
        {"role": "tool", "tool_call_id": "c2", "content": DOCUMENT_MARKER},
        {"role": "tool", "tool_call_id": "c3", "content": "plain"},
        {"role": "user", "content": [image, pdf]},
        {"role": "user", "content": "next"},
    ]
    last = [{"role": "tool", "tool_call_id": "c1", "content": [image]}]
    assert tool_media_moved(last) == [
        {"role": "tool", "tool_call_id": "c1", "content": IMAGE_MARKER},
        {"role": "user", "content": [image]},
    ]
    text_only = messages[:2] + messages[4:]
    assert tool_media_moved(text_only) is text_only
