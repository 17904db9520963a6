"""Anthropic Messages clients in front of OpenAI Chat Completions backends (direction A→O).

Owns the request's top-level fields and the non-streaming response (PROTOCOL.md §6.1-§6.14);
messages and tools are converted in ``anthropic_to_openai_messages``, backend errors in
``anthropic_to_openai_errors`` and the SSE state machine lives in ``anthropic_to_openai_stream``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import orjson

from app.dialects.anthropic import validate_translated
from app.dialects.tokens import estimate_anthropic_input
from app.dialects.usage import TextCount, Usage, from_openai, to_anthropic
from app.errors import InvalidRequestError, UpstreamError
from app.translate.anthropic_to_openai_errors import (
    context_limit,
    error_from_payload,
    upstream_error,
)
from app.translate.anthropic_to_openai_messages import (
    OpenAITool,
    convert_messages,
    convert_tools,
    history_tool_names,
    nonblank,
)
from app.translate.ids import ToolNames, new_message_id, new_tool_id, sanitize_tool_id
from app.translate.options import BackendOptions
from app.translate.think_tags import split_think_tags

__all__ = [
    "RequestContext",
    "context_limit",
    "count_tokens_request",
    "error_from_payload",
    "translate_request",
    "translate_response",
    "upstream_error",
]

log = logging.getLogger(__name__)

EFFORTS = ("low", "medium", "high", "xhigh", "max")


class ThinkingBlock(TypedDict):
    type: Literal["thinking"]
    thinking: str
    signature: str


class TextBlock(TypedDict):
    type: Literal["text"]
    text: str


class ToolUseBlock(TypedDict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


@dataclass
class RequestContext:
    """What the response and stream side need to know about the client's request."""

    client_model: str
    names: ToolNames
    thinking: bool
    stop_sequences: list[str] = field(default_factory=list)
    input_estimate: int = 1
    stream: bool = False


# ---------------------------------------------------------------------------------------------
# Request


def _reasoning_effort(body: dict[str, Any], opts: BackendOptions) -> str | None:
    thinking = body.get("thinking")
    output_config = body.get("output_config")
    effort = output_config.get("effort") if isinstance(output_config, dict) else None
    if effort is not None and effort not in EFFORTS:
        raise InvalidRequestError("output_config.effort: Input should be " + ", ".join(EFFORTS))
    if opts.reasoning == "off" or not isinstance(thinking, dict):
        return None
    ttype = thinking.get("type")
    if ttype == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise InvalidRequestError("thinking.budget_tokens: Field required (an integer)")
        if budget <= 1024:
            return "low"
        return "medium" if budget <= 4096 else "high"
    if ttype == "adaptive":
        # xhigh/max are not understood by vLLM, llama.cpp or most OpenAI models: clamp to high.
        if effort in ("xhigh", "max"):
            return "high"
        return effort if isinstance(effort, str) else "medium"
    return None


def _response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    output_config = body.get("output_config")
    if output_config is None:
        return None
    if not isinstance(output_config, dict):
        raise InvalidRequestError("output_config: Input should be an object")
    fmt = output_config.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        raise InvalidRequestError("output_config.format: type must be 'json_schema'")
    schema = fmt.get("schema")
    if not isinstance(schema, dict):
        raise InvalidRequestError("output_config.format.schema: Field required (a JSON Schema)")
    return {
        "type": "json_schema",
        "json_schema": {"name": "structured_output", "schema": schema, "strict": False},
    }


def _tool_choice(
    body: dict[str, Any], tools: list[OpenAITool], dropped: set[str], names: ToolNames
) -> tuple[Any, bool]:
    """(OpenAI tool_choice or None, parallel_tool_calls disabled)."""
    choice = body.get("tool_choice")
    if choice is None:
        return None, False
    if not isinstance(choice, dict):
        raise InvalidRequestError("tool_choice: Input should be an object")
    ctype = choice.get("type")
    if ctype == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequestError("tool_choice.name: Field required")
        if name in dropped:
            raise InvalidRequestError(
                f"tool_choice.name: {name!r} is an Anthropic server tool, which this backend "
                "cannot run"
            )
        if not any(t["function"]["name"] == names.to_backend(name) for t in tools):
            raise InvalidRequestError(f"tool_choice.name: no tool named {name!r} in tools")
    if not tools:
        return None, False
    no_parallel = choice.get("disable_parallel_tool_use") is True and ctype != "none"
    if ctype == "auto":
        return "auto", no_parallel
    if ctype == "any":
        return "required", no_parallel
    if ctype == "none":
        return "none", False
    if ctype == "tool":
        named = {"type": "function", "function": {"name": names.to_backend(choice["name"])}}
        return named, no_parallel
    raise InvalidRequestError("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")


# Anthropic's 400s for a turn of blank text (anthropics/claude-code#23440, LibreChat-AI/agents#124
# tried each shape on the API): "" anywhere, whitespace when the turn has nothing else.
_EMPTY_TURN = (
    "all messages must have non-empty content except for the optional final assistant message"
)
_EMPTY_TEXT = "messages: text content blocks must be non-empty"
_BLANK_TEXT = "messages: text content blocks must contain non-whitespace text"


def _blank_prompt(messages: list[Any]) -> str | None:
    """Anthropic's 400 for the last user turn when it holds nothing but blank text, else None.

    Its blocks would be dropped (§6.2), leaving the backend a conversation without the
    prompt, or none at all. Blank turns earlier in the history are dropped as before: the
    conversation still ends with what the user asked.
    """
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "user":
            break
    else:
        return None
    content = messages[i]["content"]
    if isinstance(content, str):
        if not content:
            return f"messages.{i}: {_EMPTY_TURN}"
        return _BLANK_TEXT if content.isspace() else None
    if not content:
        return f"messages.{i}: {_EMPTY_TURN}"
    empty = False
    for block in content:
        if block["type"] != "text":
            return None  # a tool result, an image, a document: the turn says something
        text = block["text"]
        if text and not text.isspace():
            return None
        empty = empty or not text
    return _EMPTY_TEXT if empty else _BLANK_TEXT


def translate_request(
    body: dict[str, Any], opts: BackendOptions, *, fields_checked: bool = False
) -> tuple[dict[str, Any], RequestContext]:
    """An Anthropic Messages body as an OpenAI chat.completions body, plus its RequestContext.

    Drops: ``cache_control`` everywhere, ``container``, ``context_management``,
    ``service_tier``, ``inference_geo``, unknown top-level fields, server tools and their
    blocks, ``redacted_thinking``, signatures, empty/whitespace text blocks, Claude Code's
    billing line in ``system``, assistant turns left empty, ``top_k`` unless ``opts.top_k``,
    thinking text unless ``opts.reasoning`` replays it (`REPLAYED`).
    Invents: one leading system message (``system`` and every ``role: "system"`` message,
    joined by blank lines), ``(no result)`` tool messages for unanswered calls,
    ``[tool error]`` prefixes, text markers for media moved out of tool results,
    ``reasoning_effort`` from the thinking budget, with ``opts.chat_template_thinking``
    ``chat_template_kwargs`` (``enable_thinking`` and ``thinking``, true exactly when
    ``reasoning_effort`` is sent), ``user`` = sha256 of ``metadata.user_id``,
    ``stream_options.include_usage``.
    Refuses ``max_tokens: 0``: Anthropic takes it to pre-warm the prompt cache without an
    answer (PROTOCOL.md §1.2), which no Chat Completions backend can do (they refuse 0); a
    last user turn of nothing but blank text, and a conversation left with no message, as
    Anthropic refuses them (the backend would get no prompt); dropped or mapped fields of
    the wrong type (`validate_translated`), which no backend would check, unless
    ``fields_checked`` says the caller did (the gateway checks the client's own body, before
    a route's ``params``, which are meant for the backend, are merged in).
    """
    if body.get("max_tokens") == 0:
        raise InvalidRequestError(
            "max_tokens: Input should be greater than or equal to 1 on this model "
            "(0, to pre-warm the prompt cache without a response, needs an Anthropic backend)"
        )
    if not fields_checked:
        validate_translated(body)
    names = ToolNames()
    tools, dropped = convert_tools(body, names)
    for name in history_tool_names(body):
        names.add(name)
    messages = convert_messages(body, opts, names)
    blank = _blank_prompt(body["messages"])
    if blank is not None:
        raise InvalidRequestError(blank)
    if not messages or (len(messages) == 1 and messages[0]["role"] == "system"):
        raise InvalidRequestError("messages: at least one non-empty message is required")

    out: dict[str, Any] = {"model": opts.target_model, "messages": messages}
    if body.get("max_tokens") is not None:
        out[opts.max_tokens_field] = body["max_tokens"]
    for key in ("temperature", "top_p") if opts.sampling else ():
        if body.get(key) is not None:
            out[key] = body[key]
    if opts.top_k and body.get("top_k") is not None:
        out["top_k"] = body["top_k"]
    raw_stops = body.get("stop_sequences")
    if raw_stops is not None and not isinstance(raw_stops, list):
        raise InvalidRequestError("stop_sequences: Input should be a list of strings")
    stops = [s for s in raw_stops or [] if isinstance(s, str) and s]
    if stops:
        out["stop"] = stops[: opts.max_stop_sequences]
    stream = body.get("stream") is True
    if stream:
        out["stream"] = True
        if not opts.strict_schema:
            out["stream_options"] = {"include_usage": True}
    tool_choice, no_parallel = _tool_choice(body, tools, dropped, names)
    if tools:
        out["tools"] = tools
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
        if no_parallel:
            out["parallel_tool_calls"] = False
    effort = _reasoning_effort(body, opts)
    if effort is not None:
        out["reasoning_effort"] = effort
    if opts.chat_template_thinking:
        # Hybrid models behind vLLM, SGLang or llama.cpp ignore reasoning_effort: their chat
        # template reads enable_thinking (Qwen3, GLM-4.5) or thinking (DeepSeek-V3.1), and
        # Qwen3 thinks unless told not to (PROTOCOL.md §6.7's per-backend switch).
        thinks = effort is not None
        out["chat_template_kwargs"] = {"enable_thinking": thinks, "thinking": thinks}
    response_format = _response_format(body)
    if response_format is not None:
        out["response_format"] = response_format
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and not opts.strict_schema:
        user_id = metadata.get("user_id")
        if isinstance(user_id, str) and user_id:
            # Claude Code's id is ~150 characters; OpenAI-side `user` limits are 64-128.
            out["user"] = hashlib.sha256(user_id.encode()).hexdigest()

    thinking = body.get("thinking")
    wants_thinking = (
        isinstance(thinking, dict)
        and thinking.get("type") in ("enabled", "adaptive")
        and thinking.get("display") != "omitted"
    )
    ctx = RequestContext(
        client_model=str(body.get("model") or ""),
        names=names,
        thinking=wants_thinking,
        stop_sequences=stops,
        input_estimate=(
            opts.input_estimate
            if opts.input_estimate is not None
            else estimate_anthropic_input(body)
        ),
        stream=stream,
    )
    return out, ctx


def count_tokens_request(body: dict[str, Any], opts: BackendOptions) -> dict[str, Any]:
    """The ``{"model", "messages", "tools"?}`` a backend ``/tokenize`` endpoint counts.

    The same message and tool translation as `translate_request`; generation controls,
    ``tool_choice`` and reasoning settings are left out because they add no input tokens.
    """
    names = ToolNames()
    tools, _ = convert_tools(body, names)
    for name in history_tool_names(body):
        names.add(name)
    out: dict[str, Any] = {
        "model": opts.target_model,
        "messages": convert_messages(body, opts, names),
    }
    if tools:
        out["tools"] = tools
    return out


# ---------------------------------------------------------------------------------------------
# Response


def reasoning_text(obj: dict[str, Any]) -> str:
    """Reasoning text of a message or delta: ``reasoning_content`` (DeepSeek, SGLang, older
    vLLM) or ``reasoning`` (vLLM ≥ 0.9, OpenRouter, llama.cpp), whichever is non-empty."""
    for key in ("reasoning_content", "reasoning"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            return value
    return ""


def stop_reason(
    finish_reason: str | None, had_tools: bool, matched: str | None
) -> tuple[str, str | None]:
    """Anthropic (stop_reason, stop_sequence) for an OpenAI finish (PROTOCOL.md §6.6)."""
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "content_filter":
        return "refusal", None
    if had_tools:
        # llama.cpp/Ollama-style backends finish tool turns with "stop"; Claude Code only runs
        # tools on stop_reason "tool_use" (anthropics/claude-code#16785).
        return "tool_use", None
    if finish_reason == "stop" and matched is not None:
        return "stop_sequence", matched
    return "end_turn", None


def matched_stop(choice: dict[str, Any], stop_sequences: list[str]) -> str | None:
    """The requested stop sequence the backend says it matched (vLLM ``stop_reason``,
    SGLang ``matched_stop``); token ids and unknown strings give None."""
    for key in ("stop_reason", "matched_stop"):
        value = choice.get(key)
        if isinstance(value, str) and value in stop_sequences:
            return value
    return None


_FENCE = re.compile(r"\A\s*```(?:json)?\s*(.*?)\s*```\s*\Z", re.DOTALL)
# orjson has no raw_decode; the stdlib decoder reads a complete object that has junk after it.
_DECODER = json.JSONDecoder()
_UNPARSABLE = object()


def _loads(text: str) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _UNPARSABLE


def parse_arguments(raw: Any) -> dict[str, Any]:
    """Tool-call ``arguments`` as the object Anthropic's ``input`` must be.

    Accepts an object (Ollama-style servers), JSON text, JSON in a code fence, double-encoded
    JSON and a complete object followed by junk; anything else becomes ``{}`` with a warning
    (never a string ``input``, which clients reject). Truncated JSON is deliberately not
    completed: closing ``{"command": "rm -rf /tmp/bui`` would hand the client a truncated
    command to run, while ``{}`` fails its schema check and goes back to the model.
    """
    if isinstance(raw, dict):
        return raw
    if raw is None:
        return {}
    if not isinstance(raw, str):
        log.warning("tool arguments of type %s replaced by {}", type(raw).__name__)
        return {}
    value = arguments_object(raw)
    if value is not None:
        return value
    if raw.strip():
        log.warning("unparsable tool arguments replaced by {}: %.200s", raw)
    return {}


def arguments_object(raw: str) -> dict[str, Any] | None:
    """The object in arguments text as `parse_arguments` repairs it, or None when there is
    none (blank text included); the stream asks which of two readings holds one."""
    text = raw.strip()
    if not text:
        return None
    fence = _FENCE.match(text)
    if fence:
        text = fence.group(1)
    value = _loads(text)
    if isinstance(value, str):
        value = _loads(value.strip())
    if value is _UNPARSABLE:
        start = text.find("{")
        if start >= 0:
            try:
                value, _ = _DECODER.raw_decode(text, start)
            except (ValueError, RecursionError):  # nested past Python's recursion limit
                value = None
    return value if isinstance(value, dict) else None


def final_usage(upstream: Usage | None, input_estimate: int, output: TextCount) -> Usage:
    """Upstream usage, or an estimate (``estimated=True``) when it sent none.

    An ``output_tokens`` of 0 after content was produced is replaced by the estimate too:
    Claude Code overwrites its count with whatever the final usage says.
    """
    produced = output.chars > 0
    if upstream is None:
        tokens = max(1, output.tokens) if produced else 0
        return Usage(input_tokens=input_estimate, output_tokens=tokens, estimated=True)
    usage = Usage(
        input_tokens=upstream.input_tokens,
        output_tokens=upstream.output_tokens,
        cache_read_tokens=upstream.cache_read_tokens,
        cache_write_tokens=upstream.cache_write_tokens,
        reasoning_tokens=upstream.reasoning_tokens,
        estimated=upstream.estimated,
    )
    if usage.output_tokens == 0 and produced:
        usage.output_tokens = max(1, output.tokens)
        usage.estimated = True
    if usage.prompt_tokens == 0:
        usage.input_tokens = input_estimate
        usage.estimated = True
    return usage


def _message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        # A few servers answer with content parts even without being asked to.
        content = "".join(
            p.get("text", "")
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    texts = [t for t in (content, message.get("refusal")) if isinstance(t, str) and nonblank(t)]
    return "\n\n".join(texts)


def _thinking_and_text(message: dict[str, Any]) -> tuple[str, str]:
    """A message's thinking and text as its stream gives them: the reasoning field, then
    what the content writes inline as ``<think>…</think>`` at its start (PROTOCOL.md §5.5),
    as one thinking text, and the content after the tag.

    When a backend sends both, the stream continues the reasoning's open thinking block
    with the inline part; the two are joined the same way here, without a separator.
    """
    reasoning = reasoning_text(message)
    text = _message_text(message)
    split = split_think_tags(text)
    if split is None:
        return reasoning, text
    inline, text = split
    return reasoning + inline, text


def _tool_use_blocks(message: dict[str, Any], names: ToolNames) -> list[ToolUseBlock]:
    calls = message.get("tool_calls")
    raw_calls: list[Any] = list(calls) if isinstance(calls, list) else []
    legacy = message.get("function_call")
    if isinstance(legacy, dict):
        raw_calls.append({"type": "function", "function": legacy})
    blocks: list[ToolUseBlock] = []
    for call in raw_calls:
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            continue
        function = call.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(function, dict) or not isinstance(name, str) or not name:
            log.warning("dropping a tool call without a function name: %.200r", call)
            continue
        raw_id = call.get("id")
        blocks.append(
            {
                "type": "tool_use",
                "id": sanitize_tool_id(raw_id)
                if isinstance(raw_id, str) and raw_id
                else new_tool_id(),
                "name": names.to_client(name),
                "input": parse_arguments(function.get("arguments")),
            }
        )
    return blocks


def translate_response(
    resp: dict[str, Any], ctx: RequestContext, *, message_id: str | None = None
) -> dict[str, Any]:
    """An OpenAI chat.completion as an Anthropic Message (PROTOCOL.md §6.14).

    Uses ``choices[0]`` only. Drops: other choices, ``logprobs``, ``annotations``,
    ``system_fingerprint``, reasoning text (inline ``<think>`` included) unless
    ``ctx.thinking``, whitespace-only text. Splits reasoning written inline as
    ``<think>…</think>`` at the start of the content into the thinking block, after the
    reasoning field's text when there is one too, as the stream does (`_thinking_and_text`).
    Invents: the ``msg_…`` id (unless given), ``signature: ""`` on thinking blocks,
    ``toolu_…`` ids for calls without one, and estimated usage when the backend sent none.
    """
    if not isinstance(resp, dict):
        raise UpstreamError("upstream returned a response that is not a JSON object")
    if resp.get("error"):
        raise error_from_payload(resp["error"])
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamError("upstream returned no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        message = {}

    content: list[ThinkingBlock | TextBlock | ToolUseBlock] = []
    reasoning, text = _thinking_and_text(message)
    if reasoning and ctx.thinking:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    if nonblank(text):
        content.append({"type": "text", "text": text})
    tool_blocks = _tool_use_blocks(message, ctx.names)
    content.extend(tool_blocks)

    finish = choice.get("finish_reason")
    reason, sequence = stop_reason(
        finish if isinstance(finish, str) else None,
        bool(tool_blocks),
        matched_stop(choice, ctx.stop_sequences),
    )
    output = TextCount()
    for piece in [reasoning, text]:
        output.add(piece)
    for block in tool_blocks:
        output.add(ctx.names.to_backend(block["name"]))  # the name as the model wrote it
        output.add(orjson.dumps(block["input"]).decode())
    usage = final_usage(from_openai(resp.get("usage")), ctx.input_estimate, output)
    return {
        "id": message_id or new_message_id(),
        "type": "message",
        "role": "assistant",
        "model": ctx.client_model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": to_anthropic(usage),
    }
