"""OpenAI Chat Completions client -> Anthropic Messages backend: request, response and errors.

`translate_request` builds the Messages body (PROTOCOL.md §6.3-§6.8), `translate_response`
turns the backend's Message into a ``chat.completion`` (§6.14; `translate_response_parts`
also gives its pieces in the content blocks' order), and `upstream_error` maps the backend's
non-2xx answer (§6.11). The stream lives in `openai_to_anthropic_stream`.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict

import orjson

from app.dialects.json_values import is_int, is_number
from app.dialects.openai import CONTEXT_LENGTH_EXCEEDED, validate_translated
from app.dialects.usage import from_anthropic, to_openai
from app.errors import GatewayError, InvalidRequestError, OverloadedError, from_upstream_status
from app.translate.ids import ToolNames, new_completion_id, new_tool_id
from app.translate.openai_to_anthropic_messages import (
    AnthropicMessage,
    Block,
    Turn,
    convert_messages,
    to_wire,
)
from app.translate.options import BackendOptions

log = logging.getLogger(__name__)

# OpenAI reasoning_effort -> Anthropic thinking budget (PROTOCOL.md §6.7; LiteLLM's table).
THINKING_BUDGETS = {
    "minimal": 1024,
    "low": 1024,
    "medium": 2048,
    "high": 4096,
    "xhigh": 8192,
    "max": 16384,
}
# OpenAI reasoning_effort -> Anthropic output_config.effort, for models that think
# adaptively (`adaptive_thinking`): the levels every such model takes (the SDK's
# EffortCapability: low, medium, high and max always, xhigh only on some).
ADAPTIVE_EFFORTS = {
    "minimal": "low",
    "low": "low",
    "medium": "medium",
    "high": "high",
    "xhigh": "high",
    "max": "max",
}
# Opus 4.7 and later default to "omitted" (signed but empty thinking blocks): a client that
# asks for reasoning_effort wants the reasoning_content.
ADAPTIVE_THINKING = {"type": "adaptive", "display": "summarized"}
MIN_THINKING_BUDGET = 1024
# Head room above the budget when max_tokens must be raised (§6.3, as ENTERPILOT/GoModel#83).
THINKING_HEADROOM = 1024

# Name of the forced tool for response_format json_schema when the schema's name cannot be used.
DEFAULT_JSON_TOOL = "json_tool_call"
JSON_TOOL_DESCRIPTION = "Respond to the user by calling this tool; its input is the final answer."
JSON_OBJECT_INSTRUCTION = (
    "Respond with a single valid JSON object and nothing else: no text before or after it "
    "and no Markdown code fences."
)

# Anthropic's words for input past the context window ("prompt is too long: 210000 tokens
# > 200000 maximum", "input length and `max_tokens` exceed context limit: …").
_CONTEXT_EXCEEDED = re.compile(r"prompt is too long|exceed context limit", re.I)
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_USER_ID = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
_SERVICE_TIERS = {"auto": "auto", "default": "standard_only"}

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]
_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


class AnthropicRequest(TypedDict):
    """The Messages body this module builds (only the keys it can set)."""

    model: str
    max_tokens: int
    messages: list[AnthropicMessage]
    system: NotRequired[list[Block]]
    stop_sequences: NotRequired[list[str]]
    temperature: NotRequired[float]
    top_p: NotRequired[float]
    top_k: NotRequired[int]
    tools: NotRequired[list[Block]]
    tool_choice: NotRequired[dict[str, Any]]
    thinking: NotRequired[dict[str, Any]]
    output_config: NotRequired[dict[str, Any]]
    metadata: NotRequired[dict[str, str]]
    service_tier: NotRequired[str]
    stream: NotRequired[bool]


class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: dict[str, str]


class FunctionCall(TypedDict):
    name: str
    arguments: str


class TextPart(TypedDict):
    type: Literal["text"]
    text: str


# One piece of an answer, in its chat shape, in the order of the Message's content blocks
# (`translate_response_parts`): a text part, a ``thinking_blocks`` entry or a tool call.
AnswerPart = TextPart | ToolCall | Block


class ChatMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    refusal: None
    reasoning_content: NotRequired[str]
    thinking_blocks: NotRequired[list[Block]]
    tool_calls: NotRequired[list[ToolCall]]
    function_call: NotRequired[FunctionCall]


class Choice(TypedDict):
    index: int
    message: ChatMessage
    finish_reason: FinishReason
    logprobs: None


class ChatCompletion(TypedDict):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: dict[str, Any]
    system_fingerprint: None


@dataclass
class RequestContext:
    """What the response side needs to know about the request it answers."""

    client_model: str  # model name the client asked for (echoed back)
    names: ToolNames  # reversible tool-name map
    include_usage: bool  # client asked stream_options.include_usage
    json_tool: str | None  # synthetic forced tool for response_format json_schema, if any
    reasoning: bool  # expose thinking as reasoning_content
    stream: bool
    # The client called with the legacy `functions` (no `tools`): it reads one
    # `function_call` and finish_reason "function_call", never `tool_calls`.
    legacy_functions: bool = False


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _reject_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n is not None and n != 1:
        raise _bad(f"Invalid 'n': this model returns exactly one choice (n=1), got {n}.", "n")
    if body.get("logprobs") is True:
        raise _bad(
            "Invalid 'logprobs': log probabilities are not available for this model.", "logprobs"
        )
    if body.get("top_logprobs") not in (None, 0):
        raise _bad(
            "Invalid 'top_logprobs': log probabilities are not available for this model.",
            "top_logprobs",
        )


def _input_schema(params: Any, param: str) -> dict[str, Any]:
    if params is None or params == {}:
        return {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise _bad(f"Invalid type for '{param}': expected a JSON Schema object.", param)
    if "type" not in params:
        return {"type": "object", **params}
    return params


def _tool_def(fn: Any, param: str, names: ToolNames) -> Block:
    if not isinstance(fn, dict):
        raise _bad(f"Missing required parameter: '{param}'.", param)
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(f"Missing required parameter: '{param}.name'.", f"{param}.name")
    tool: Block = {"name": names.add(name)}
    description = fn.get("description")
    if isinstance(description, str) and description:
        tool["description"] = description
    tool["input_schema"] = _input_schema(fn.get("parameters"), f"{param}.parameters")
    return tool


def _tools(body: dict[str, Any], names: ToolNames) -> list[Block]:
    tools: list[Block] = []
    raw = body.get("tools")
    for i, tool in enumerate(raw if isinstance(raw, list) else []):
        kind = tool.get("type")
        if kind == "function":
            tools.append(_tool_def(tool.get("function"), f"tools[{i}].function", names))
        elif kind == "custom":
            raise _bad(
                f"Invalid 'tools[{i}]': custom (free-form) tools are not supported by this model; "
                "use function tools.",
                f"tools[{i}]",
            )
        else:
            raise _bad(f"Invalid 'tools[{i}].type': {kind!r} is not supported.", f"tools[{i}].type")
    functions = body.get("functions")
    if functions is not None and not isinstance(functions, list):
        raise _bad("Invalid type for 'functions': expected an array.", "functions")
    for i, fn in enumerate(functions or []):
        tools.append(_tool_def(fn, f"functions[{i}]", names))
    return tools


def _named_choice(name: Any, param: str, tools: list[Block], names: ToolNames) -> dict[str, Any]:
    if not isinstance(name, str) or not name:
        raise _bad(f"Missing required parameter: '{param}'.", param)
    backend = names.to_backend(name)
    if tools and not any(t["name"] == backend for t in tools):
        raise _bad(f"Invalid '{param}': no tool named {name!r} is in 'tools'.", param)
    return {"type": "tool", "name": backend}


def _legacy_functions(body: dict[str, Any]) -> bool:
    """True when the tools come from the legacy ``functions`` field alone."""
    return bool(body.get("functions")) and not body.get("tools")


def _tool_choice(
    body: dict[str, Any], tools: list[Block], names: ToolNames, *, legacy: bool
) -> tuple[list[Block], dict[str, Any] | None]:
    """Tools (narrowed by allowed_tools) and Anthropic tool_choice; both dropped without tools.

    Parallel tool use is off for ``parallel_tool_calls: false`` and for a ``legacy``
    functions client, whose answer holds one ``function_call``.
    """
    raw = body.get("tool_choice")
    param = "tool_choice"
    if raw is None and body.get("function_call") is not None:
        raw, param = body["function_call"], "function_call"
        if isinstance(raw, dict):
            raw = {"type": "function", "function": raw}
    choice: dict[str, Any] | None
    if raw is None:
        choice = None
    elif raw in ("auto", "required", "none"):
        choice = {"type": {"auto": "auto", "required": "any", "none": "none"}[raw]}
    elif isinstance(raw, dict) and raw.get("type") == "function":
        fn = raw.get("function")
        choice = _named_choice(
            fn.get("name") if isinstance(fn, dict) else None, f"{param}.function.name", tools, names
        )
    elif isinstance(raw, dict) and raw.get("type") == "allowed_tools":
        allowed = raw.get("allowed_tools")
        listed = allowed.get("tools") if isinstance(allowed, dict) else None
        mode = allowed.get("mode") if isinstance(allowed, dict) else None
        if not isinstance(listed, list) or mode not in ("auto", "required"):
            raise _bad(
                "Invalid 'tool_choice.allowed_tools': expected "
                "{mode: 'auto'|'required', tools: [...]}.",
                "tool_choice.allowed_tools",
            )
        keep = set()
        for entry in listed:
            fn = entry.get("function") if isinstance(entry, dict) else None
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                keep.add(names.to_backend(fn["name"]))
        tools = [t for t in tools if t["name"] in keep]
        choice = {"type": "auto" if mode == "auto" else "any"}
    elif isinstance(raw, dict) and raw.get("type") == "custom":
        raise _bad("Invalid 'tool_choice': custom tools are not supported by this model.", param)
    else:
        raise _bad(f"Invalid value for '{param}'.", param)
    if not tools:
        return [], None
    no_parallel = legacy or body.get("parallel_tool_calls") is False
    if no_parallel and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    return tools, choice


def _thinking(
    body: dict[str, Any], opts: BackendOptions
) -> tuple[dict[str, Any] | None, str | None]:
    """The Anthropic thinking config asked for by ``thinking`` (wins) or ``reasoning_effort``,
    and the ``output_config.effort`` to go with it: a model that thinks adaptively is
    asked with an effort, not a budget; one that refused budgets, even for a client's own
    ``thinking`` config."""
    effort = body.get("reasoning_effort")
    if body.get("thinking") is None and opts.adaptive_thinking and effort in ADAPTIVE_EFFORTS:
        return dict(ADAPTIVE_THINKING), ADAPTIVE_EFFORTS[effort]
    config = _thinking_config(body)
    if opts.budgets_refused and config is not None and config["type"] == "enabled":
        budget = config["budget_tokens"]
        level = next(e for e, most in _EFFORT_FOR_BUDGET if budget <= most)
        return dict(ADAPTIVE_THINKING), level
    return config, None


# A budget as an effort level, by the budgets reasoning_effort maps to (THINKING_BUDGETS).
_EFFORT_FOR_BUDGET = (("low", 1024), ("medium", 2048), ("high", 8192), ("max", 1 << 62))


def _thinking_config(body: dict[str, Any]) -> dict[str, Any] | None:
    raw = body.get("thinking")
    if raw is not None:
        if not isinstance(raw, dict):
            raise _bad("Invalid type for 'thinking': expected an object.", "thinking")
        kind = raw.get("type")
        if kind == "disabled":
            return None
        if kind == "enabled":
            budget = raw.get("budget_tokens")
            if not is_int(budget) or budget < MIN_THINKING_BUDGET:
                raise _bad(
                    "Invalid 'thinking.budget_tokens': expected an integer >= "
                    f"{MIN_THINKING_BUDGET}.",
                    "thinking.budget_tokens",
                )
            out: dict[str, Any] = {"type": "enabled", "budget_tokens": budget}
        elif kind == "adaptive":
            out = {"type": "adaptive"}
        else:
            raise _bad(
                "Invalid 'thinking.type': expected 'enabled', 'adaptive' or 'disabled'.",
                "thinking.type",
            )
        if raw.get("display") in ("summarized", "omitted"):
            out["display"] = raw["display"]
        return out
    effort = body.get("reasoning_effort")
    if effort is None or effort == "none":
        return None
    if not isinstance(effort, str) or effort not in THINKING_BUDGETS:
        raise _bad(
            f"Invalid value for 'reasoning_effort': {effort!r}; expected one of none, "
            + ", ".join(THINKING_BUDGETS)
            + ".",
            "reasoning_effort",
        )
    return {"type": "enabled", "budget_tokens": THINKING_BUDGETS[effort]}


def _fit_thinking(
    thinking: dict[str, Any], budget: int, limit: int | None
) -> tuple[int, dict[str, Any] | None]:
    """(max_tokens, thinking) for a max_tokens not above the budget (§1.2: budget < max_tokens).

    max_tokens is raised above the budget, but never past the route's ``limit``: there the
    budget shrinks instead, and thinking is dropped when not even the minimum budget fits.
    """
    raised = budget + THINKING_HEADROOM
    if limit is None or raised <= limit:
        return raised, thinking
    fitted = max(MIN_THINKING_BUDGET, limit - THINKING_HEADROOM)
    if fitted >= limit:
        return limit, None
    return limit, {**thinking, "budget_tokens": fitted}


def _thinking_possible(turns: list[Turn]) -> bool:
    """False when the last assistant turn needs a signed thinking block it does not have (§1.2)."""
    for pos in range(len(turns) - 1, -1, -1):
        turn = turns[pos]
        if turn.role != "assistant":
            continue
        has_tool_use = any(b["type"] == "tool_use" for b in turn.blocks)
        if not has_tool_use and pos != len(turns) - 1:
            return True
        return turn.blocks[0]["type"] in ("thinking", "redacted_thinking")
    return True


def _json_tool_name(json_schema: dict[str, Any], tools: list[Block]) -> str:
    name = json_schema.get("name")
    taken = {t["name"] for t in tools}
    if isinstance(name, str) and _TOOL_NAME.match(name) and name not in taken:
        return name
    return DEFAULT_JSON_TOOL


def _user_id(body: dict[str, Any]) -> str | None:
    for field in ("safety_identifier", "user"):
        value = body.get(field)
        if isinstance(value, str) and value:
            # Anthropic rejects e-mails and long ids; the pattern already excludes '@' (§8.2 #18).
            if _USER_ID.match(value):
                return value
            return hashlib.sha256(value.encode("utf-8")).hexdigest()
    return None


def _stop_sequences(stop: Any) -> list[str]:
    items = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    # Anthropic rejects empty and whitespace-only stop sequences (BerriAI/litellm#3286).
    return [s for s in items if isinstance(s, str) and s.strip()]


def _cacheable(block: Block) -> bool:
    return block["type"] not in ("thinking", "redacted_thinking")


def _add_cache_breakpoints(system: list[Block], turns: list[Turn]) -> None:
    """``cache_control`` on the last system block and on the last stable turn.

    The last stable turn is the turn just before the final user turn: it is the end of the
    prefix the next request will repeat verbatim, so this request writes and the next reads it.
    """
    mark = {"type": "ephemeral"}
    if system:
        system[-1] = {**system[-1], "cache_control": mark}
    last_user = max((i for i, t in enumerate(turns) if t.role == "user"), default=-1)
    if last_user < 1:
        return
    blocks = turns[last_user - 1].blocks
    for j in range(len(blocks) - 1, -1, -1):
        if _cacheable(blocks[j]):
            blocks[j] = {**blocks[j], "cache_control": mark}
            return


def _json_choice(
    json_tool: str, tools: list[Block], choice: dict[str, Any] | None
) -> dict[str, Any]:
    """tool_choice in forced-tool JSON mode: the answer must be the JSON tool or a real tool call.

    Without client tools (or with ``none``) the JSON tool itself is forced; with client tools
    ``auto`` becomes ``any`` and ``any``/named choices stay, so real tool calls remain possible.
    """
    if not tools or (choice is not None and choice["type"] == "none"):
        return {"type": "tool", "name": json_tool}
    if choice is None or choice["type"] == "auto":
        forced: dict[str, Any] = {"type": "any"}
    else:
        forced = {k: v for k, v in choice.items() if k != "disable_parallel_tool_use"}
    if choice is not None and choice.get("disable_parallel_tool_use"):
        forced["disable_parallel_tool_use"] = True
    return forced


def _response_format(
    raw: Any,
    system: list[Block],
    tools: list[Block],
    choice: dict[str, Any] | None,
    *,
    thinking: bool,
) -> tuple[list[Block], dict[str, Any] | None, str | None]:
    """Tools, tool_choice and JSON tool name after applying ``response_format`` (§6.8).

    ``json_object`` appends an instruction to ``system``; ``json_schema`` adds a forced tool,
    or (with thinking on, or a schema whose top type is not an object) the same instruction
    plus the schema.
    """
    if raw is None:
        return tools, choice, None
    if not isinstance(raw, dict):
        raise _bad("Invalid type for 'response_format': expected an object.", "response_format")
    kind = raw.get("type")
    if kind == "text":
        return tools, choice, None
    if kind == "json_object":
        system.append({"type": "text", "text": JSON_OBJECT_INSTRUCTION})
        return tools, choice, None
    if kind != "json_schema":
        raise _bad(
            f"Invalid 'response_format.type': {kind!r}; expected text, json_object or json_schema.",
            "response_format.type",
        )
    spec = raw.get("json_schema")
    if not isinstance(spec, dict):
        raise _bad(
            "Missing required parameter: 'response_format.json_schema'.",
            "response_format.json_schema",
        )
    schema = spec.get("schema")
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise _bad(
            "Invalid type for 'response_format.json_schema.schema': expected an object.",
            "response_format.json_schema.schema",
        )
    if thinking or schema.get("type") != "object":
        # Forced tool use is invalid with thinking, and tool input must be an object (§6.8).
        text = (
            JSON_OBJECT_INSTRUCTION
            + "\nThe JSON must conform to this JSON Schema:\n"
            + orjson.dumps(schema).decode()
        )
        system.append({"type": "text", "text": text})
        return tools, choice, None
    name = _json_tool_name(spec, tools)
    description = spec.get("description")
    json_def: Block = {
        "name": name,
        "description": description
        if isinstance(description, str) and description
        else JSON_TOOL_DESCRIPTION,
        "input_schema": schema,
    }
    return [*tools, json_def], _json_choice(name, tools, choice), name


def translate_request(
    body: dict[str, Any], opts: BackendOptions, *, fields_checked: bool = False
) -> tuple[dict[str, Any], RequestContext]:
    """The Anthropic Messages body for a top-level-validated Chat Completions ``body``.

    Rejects (400): ``n`` != 1, ``logprobs``/``top_logprobs``, custom tools and tool_choice,
    ``file_id``, ``input_audio``, unsupported images, undecodable data, bad tool arguments,
    dropped or mapped fields of the wrong type (`validate_translated`: no backend checks them;
    skipped when ``fields_checked``: the gateway checks the client's own body, before a route's
    ``params``, meant for the backend, are merged in).
    Drops: ``seed``, ``presence_penalty``, ``frequency_penalty``, ``logit_bias``, ``store``,
    ``metadata``, ``modalities``, ``audio``, ``prediction``, ``verbosity``, ``web_search_options``,
    ``prompt_cache_key``/``_retention``/``_options``, ``moderation``, ``stream_options``
    (recorded in the context), tool ``strict``, ``top_p`` when ``temperature`` is set,
    sampling parameters when thinking is on, ``tool_choice``/``parallel_tool_calls``
    without tools, unknown ``service_tier`` values, thinking when ``opts.max_tokens_limit``
    cannot hold the minimum budget. Invents: ``max_tokens`` (the default, or raised above the
    thinking budget; never past ``opts.max_tokens_limit``, where the budget shrinks instead), the
    ``json_tool_call``-style forced tool and the JSON instruction for ``response_format``,
    ``cache_control`` when ``opts.prompt_cache``, a hashed ``metadata.user_id`` for
    identifiers Anthropic would reject, and for a model that thinks adaptively
    (``opts.adaptive_thinking``) ``thinking: {"type": "adaptive"}`` with an
    ``output_config.effort`` instead of a budget for ``reasoning_effort``, and
    ``disable_parallel_tool_use`` for a legacy ``functions`` client (one ``function_call``
    an answer).
    """
    if not fields_checked:
        validate_translated(body)
    _reject_unsupported(body)
    stream = body.get("stream") is True
    stream_options = body.get("stream_options")
    include_usage = (
        stream and isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    )
    names = ToolNames()
    tools = _tools(body, names)
    convo = convert_messages(body["messages"], names)
    system, turns = convo.system, convo.turns
    legacy = _legacy_functions(body)
    tools, choice = _tool_choice(body, tools, names, legacy=legacy)

    thinking, effort = _thinking(body, opts)
    if thinking is not None and not _thinking_possible(turns):
        # Signatures cannot be fabricated: without the genuine block, thinking must be off.
        thinking = effort = None

    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = opts.default_max_tokens
        if opts.max_tokens_limit is not None:
            # A context window with no cap leaves less room than the 4096 default.
            max_tokens = min(max_tokens, opts.max_tokens_limit)
    if not is_int(max_tokens) or max_tokens < 1:
        raise _bad("Invalid 'max_tokens': expected a positive integer.", "max_tokens")
    budget = thinking.get("budget_tokens") if thinking else None
    if thinking is not None and is_int(budget) and max_tokens <= budget:
        max_tokens, thinking = _fit_thinking(thinking, budget, opts.max_tokens_limit)

    tools, choice, json_tool = _response_format(
        body.get("response_format"), system, tools, choice, thinking=thinking is not None
    )

    if opts.prompt_cache:
        _add_cache_breakpoints(system, turns)

    out: dict[str, Any] = {"model": opts.target_model, "max_tokens": max_tokens}
    if system:
        out["system"] = system
    out["messages"] = to_wire(turns)
    stop = _stop_sequences(body.get("stop"))
    if stop:
        out["stop_sequences"] = stop
    if thinking is None:
        temperature = body.get("temperature")
        if temperature is not None:
            out["temperature"] = min(max(temperature, 0), 1)
        elif body.get("top_p") is not None:
            out["top_p"] = body["top_p"]
        top_k = body.get("top_k")
        if is_int(top_k) and top_k > 0:
            out["top_k"] = top_k
    elif is_number(body.get("top_p")) and 0.95 <= body["top_p"] <= 1:
        out["top_p"] = body["top_p"]  # the only top_p thinking allows (§1.2)
    if tools:
        out["tools"] = tools
        if choice is not None:
            if thinking is not None and choice["type"] in ("any", "tool"):
                # Forced tool use is rejected with thinking on (§1.2): the model may still call
                # it. Said in the log, as §6.5 asks: the client asked for more.
                log.info("tool_choice %r sent as 'auto': thinking is on", choice["type"])
                choice = {k: v for k, v in choice.items() if k != "name"} | {"type": "auto"}
            out["tool_choice"] = choice
    if thinking is not None:
        out["thinking"] = thinking
        if effort is not None:
            out["output_config"] = {"effort": effort}
    user_id = _user_id(body)
    if user_id is not None:
        out["metadata"] = {"user_id": user_id}
    tier = body.get("service_tier")
    if isinstance(tier, str) and tier in _SERVICE_TIERS:
        out["service_tier"] = _SERVICE_TIERS[tier]
    if stream:
        out["stream"] = True

    ctx = RequestContext(
        client_model=str(body.get("model")),
        names=names,
        include_usage=include_usage,
        json_tool=json_tool,
        reasoning=thinking is not None,
        stream=stream,
        legacy_functions=legacy,
    )
    return out, ctx


def finish_reason(stop_reason: Any, *, tool_calls: bool, legacy: bool = False) -> FinishReason:
    """OpenAI ``finish_reason`` for an Anthropic ``stop_reason`` (§6.6).

    ``tool_use`` without a client-visible tool call (JSON mode, server tools) is ``stop``,
    and ``function_call`` for a ``legacy`` functions client; a missing or unknown reason is
    ``stop``.
    """
    reason = _FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"
    if reason == "tool_calls":
        if not tool_calls:
            return "stop"
        if legacy:
            return "function_call"
    return reason


def completion_id_for(message_id: Any) -> str:
    """``chatcmpl-<suffix>`` of an Anthropic ``msg_<suffix>`` id, else a fresh one (§6.10)."""
    if isinstance(message_id, str) and message_id.startswith("msg_") and len(message_id) > 4:
        return "chatcmpl-" + message_id[4:]
    return new_completion_id()


def json_text(value: Any) -> str:
    return orjson.dumps(value).decode()


def translate_response(
    resp: dict[str, Any],
    ctx: RequestContext,
    *,
    completion_id: str | None = None,
    created: int | None = None,
) -> dict[str, Any]:
    """The ``chat.completion`` for an Anthropic ``Message`` (§6.14): see
    `translate_response_parts`, which also gives the answer's pieces in order."""
    completion, _ = translate_response_parts(
        resp, ctx, completion_id=completion_id, created=created
    )
    return completion


def translate_response_parts(
    resp: dict[str, Any],
    ctx: RequestContext,
    *,
    completion_id: str | None = None,
    created: int | None = None,
) -> tuple[dict[str, Any], list[AnswerPart]]:
    """The ``chat.completion`` for an Anthropic ``Message`` (§6.14), and the message's
    text, thinking and tool calls as one list in the order of the content blocks.

    The chat message has one ``content`` string beside its ``tool_calls``, so text after a
    tool call (or thinking between calls) loses its place there; the parts keep it, for a
    client whose answer has room for the order (the Responses API's output items, as its
    stream gives them). They hold what the message holds: a ``{"type": "text"}`` part per
    text block (in JSON mode only the forced call's input, where that call was), and, as
    the same objects, each ``thinking_blocks`` entry and each ``tool_calls`` entry (for a
    legacy functions client the one call it gets).

    Drops ``redacted_thinking`` text, signatures (kept only inside ``thinking_blocks``),
    server-tool blocks, citations, ``stop_sequence``, ``container`` and the message id
    (``chatcmpl-`` + its suffix when no ``completion_id`` is given). Invents ``toolu_`` ids
    for tool_use blocks without one,
    ``system_fingerprint: null``, ``refusal: null``, ``logprobs: null``, and in JSON mode
    replaces the forced tool call with its input as ``content``. ``reasoning_content`` and
    LiteLLM-style ``thinking_blocks`` (for round-trips) appear only when thinking was asked for.
    A legacy functions client (``ctx.legacy_functions``) gets the first call as
    ``function_call`` (the legacy shape has no ids and room for one) and finish_reason
    ``function_call``; any later call is dropped, with a warning.
    """
    if not isinstance(resp, dict):
        resp = {}
    blocks = resp.get("content")
    texts: list[str] = []
    reasoning: list[str] = []
    thinking_blocks: list[Block] = []
    tool_calls: list[ToolCall] = []
    json_content: str | None = None
    parts: list[AnswerPart] = []
    json_part: TextPart | None = None
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        text = block.get("text")
        if kind == "text" and isinstance(text, str):
            texts.append(text)
            parts.append({"type": "text", "text": text})
        elif kind == "thinking":
            raw_thinking = block.get("thinking")
            thinking = raw_thinking if isinstance(raw_thinking, str) else ""
            reasoning.append(thinking)
            thinking_blocks.append(
                {
                    "type": "thinking",
                    "thinking": thinking,
                    "signature": block.get("signature") or "",
                }
            )
            if ctx.reasoning:
                parts.append(thinking_blocks[-1])
        elif kind == "redacted_thinking":
            thinking_blocks.append({"type": "redacted_thinking", "data": block.get("data") or ""})
            if ctx.reasoning:
                parts.append(thinking_blocks[-1])
        elif kind == "tool_use":
            raw_name, raw_input = block.get("name"), block.get("input")
            name = raw_name if isinstance(raw_name, str) else ""
            tool_input = raw_input if isinstance(raw_input, dict) else {}
            if ctx.json_tool is not None and name == ctx.json_tool:
                if json_content is None:
                    json_content = json_text(tool_input)
                    json_part = {"type": "text", "text": json_content}
                    parts.append(json_part)
                continue
            tool_id = block.get("id")
            tool_calls.append(
                {
                    "id": tool_id if isinstance(tool_id, str) and tool_id else new_tool_id(),
                    "type": "function",
                    "function": {
                        "name": ctx.names.to_client(name),
                        "arguments": json_text(tool_input),
                    },
                }
            )
            if not ctx.legacy_functions or len(tool_calls) == 1:
                parts.append(tool_calls[-1])

    message: ChatMessage = {
        "role": "assistant",
        "content": json_content if json_content is not None else "".join(texts) or None,
        "refusal": None,
    }
    if ctx.reasoning and reasoning:
        message["reasoning_content"] = "".join(reasoning)
    if ctx.reasoning and thinking_blocks:
        message["thinking_blocks"] = thinking_blocks
    if tool_calls and ctx.legacy_functions:
        if len(tool_calls) > 1:
            log.warning(
                "legacy function_call answer: %d tool calls, the first sent", len(tool_calls)
            )
        function = tool_calls[0]["function"]
        message["function_call"] = {"name": function["name"], "arguments": function["arguments"]}
    elif tool_calls:
        message["tool_calls"] = tool_calls
    if json_part is not None:
        parts = [part for part in parts if part["type"] != "text" or part is json_part]
    usage = from_anthropic(resp.get("usage"))
    completion: ChatCompletion = {
        "id": completion_id or completion_id_for(resp.get("id")),
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": ctx.client_model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish_reason(
                    resp.get("stop_reason"),
                    tool_calls=bool(tool_calls),
                    legacy=ctx.legacy_functions,
                ),
                "logprobs": None,
            }
        ],
        "usage": to_openai(usage),
        "system_fingerprint": None,
    }
    return dict(completion), parts


# Longest upstream error text echoed to the client (an HTML error page can be huge).
MAX_ERROR_TEXT = 2000


def _error_text(body: bytes) -> tuple[str, str | None]:
    """``(message, anthropic error type)`` of an upstream error body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            etype = err.get("type")
            return err["message"], etype if isinstance(etype, str) else None
        if isinstance(err, str) and err:
            return err, None
        if isinstance(data.get("message"), str):
            return data["message"], None
    text = body.decode("utf-8", "replace").strip()
    return text[:MAX_ERROR_TEXT], None


def upstream_error(status: int, body: bytes, retry_after: float | None = None) -> GatewayError:
    """The client-facing error for an Anthropic backend's non-2xx answer.

    The message is the backend's verbatim (``error.message`` of the Anthropic envelope, the
    text of an HTML/plain body cut to 2000 characters, or ``"upstream returned HTTP <status>"``
    when empty). Status maps via `from_upstream_status`; an ``overloaded_error`` body is an
    overload whatever its status.
    """
    message, etype = _error_text(body)
    if not message:
        message = f"upstream returned HTTP {status}"
    if etype == "overloaded_error":
        return OverloadedError(message, retry_after=retry_after)
    err = from_upstream_status(status, message, retry_after=retry_after)
    if status == 400 and _CONTEXT_EXCEEDED.search(message):
        err.code = CONTEXT_LENGTH_EXCEEDED
    return err
