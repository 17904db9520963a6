"""OpenAI Responses API request -> Chat Completions request.

The gateway serves ``POST /v1/responses`` by sending the chat body built here through its
usual pipeline; the `ResponsesContext` returned with it is what the answer side needs.
"""

from __future__ import annotations

import re
import time
from typing import Any

import orjson

from app.dialects.openai import MAX_TOKENS_LIMIT
from app.errors import InvalidRequestError
from app.translate.ids import random_hex
from app.translate.responses_context import ENCRYPTED_REASONING, ResponsesContext
from app.translate.responses_input import Conversation
from app.translate.responses_tools import ToolSet, tool_choice
from app.translate.responses_values import (
    bad,
    effort_at,
    name_at,
    object_at,
    optional_field,
    string_at,
)

# Request fields that need state the gateway does not keep.
_STATEFUL = {
    "previous_response_id": "this gateway stores no responses; send the whole conversation "
    "as 'input'",
    "conversation": "this gateway stores no conversations; send the whole conversation as 'input'",
    "prompt": "this gateway stores no prompts; send the instructions and input themselves",
}


def _response_format(fmt: dict[str, Any] | None, param: str) -> dict[str, Any] | None:
    if fmt is None:
        return None
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise bad(
            f"Invalid value for '{param}.type': {kind!r}; expected 'text', 'json_schema' or "
            "'json_object'.",
            f"{param}.type",
        )
    spec: dict[str, Any] = {"name": name_at(fmt.get("name"), f"{param}.name")}
    if fmt.get("description") is not None:
        spec["description"] = string_at(fmt["description"], f"{param}.description")
    if fmt.get("schema") is None:
        raise bad(f"Missing required parameter: '{param}.schema'.", f"{param}.schema")
    spec["schema"] = object_at(fmt["schema"], f"{param}.schema")
    strict = fmt.get("strict")
    if strict is not None:
        if not isinstance(strict, bool):
            raise bad(f"Invalid type for '{param}.strict': expected a boolean.", f"{param}.strict")
        spec["strict"] = strict
    return {"type": "json_schema", "json_schema": spec}


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    """``metadata`` as OpenAI takes it (at most 16 pairs, keys up to 64 characters, string
    values up to 512): the Response echoes it, and the SDK's own type refuses more."""
    metadata: dict[str, Any] = optional_field(body, "metadata", "object") or {}
    if len(metadata) > 16:
        raise bad("Invalid 'metadata': expected at most 16 key-value pairs.", "metadata")
    for key, value in metadata.items():
        if len(key) > 64:
            raise bad("Invalid 'metadata': a key is longer than 64 characters.", "metadata")
        if not isinstance(value, str) or len(value) > 512:
            raise bad(
                f"Invalid 'metadata.{key}': expected a string of at most 512 characters.",
                f"metadata.{key}",
            )
    return metadata


def _echo(
    body: dict[str, Any], instructions: str | None, convo: Conversation, text: dict[str, Any]
) -> dict[str, Any]:
    """The request fields a Response repeats, in its shape, as they were in force."""
    reasoning = optional_field(body, "reasoning", "object") or {}
    effort = convo.effort if convo.effort_updated else reasoning.get("effort")
    text_format = convo.text_format or text.get("format") or {"type": "text"}
    return {
        "instructions": instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": optional_field(body, "max_tool_calls", "integer"),
        "metadata": _metadata(body),
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "previous_response_id": None,
        "prompt_cache_key": optional_field(body, "prompt_cache_key", "string"),
        "reasoning": {
            "effort": effort,
            "summary": None,
            **{k: v for k, v in reasoning.items() if k != "effort"},
        },
        "safety_identifier": optional_field(body, "safety_identifier", "string"),
        "store": optional_field(body, "store", "boolean") is True,
        "temperature": body.get("temperature"),
        "text": {"format": text_format, **{k: v for k, v in text.items() if k != "format"}},
        "tool_choice": body["tool_choice"] if body.get("tool_choice") is not None else "auto",
        "tools": body.get("tools") or [],
        "top_logprobs": optional_field(body, "top_logprobs", "integer"),
        "top_p": body.get("top_p"),
        "truncation": optional_field(body, "truncation", "string") or "disabled",
        "user": optional_field(body, "user", "string"),
    }


def translate_request(
    body: Any, *, response_id: str | None = None, created_at: int | None = None
) -> tuple[dict[str, Any], ResponsesContext]:
    """The Chat Completions body for a Responses API ``body``, and the context of its answer.

    Rejects (400): ``previous_response_id``, ``conversation``, ``prompt`` and ``background``
    (the gateway keeps no state), file ids and file URLs, input items that cannot be
    replayed (computer, shell, local_shell and apply_patch calls, MCP approval responses,
    compaction, item references), unknown item and tool types.
    Drops: hosted tools (a ``tool_choice`` naming one becomes ``auto``); the items of hosted
    tools whose outcome the later messages hold (web and file search, image generation,
    code interpreter, MCP calls and listings, tool search calls, programs); reasoning items
    with no assistant output after them and OpenAI's own encrypted reasoning; item ids,
    statuses and ``phase``; namespace descriptions; tools' ``defer_loading``,
    ``allowed_callers`` and ``output_schema``; output annotations and logprobs; image
    ``detail`` values chat lacks (``original`` is sent as ``high``); ``store``,
    ``metadata``, ``prompt_cache_key``/``_retention``/``_options``, ``client_metadata``,
    ``service_tier``, ``truncation``, ``top_logprobs``, ``max_tool_calls``,
    ``text.verbosity``, ``stream_options``, ``context_management``, ``reasoning.summary``
    and ``include`` (``reasoning.encrypted_content`` is kept in the context); ``tool_choice``
    and ``parallel_tool_calls`` when no tool is left.
    Invents: a system message for ``instructions`` (and ``system`` for ``developer``),
    ``<namespace>__<name>`` function names, a ``{"input": string}`` schema for custom tools,
    ``reasoning_content`` and LiteLLM-style ``thinking_blocks`` from reasoning items,
    ``stream_options.include_usage`` on a stream, ``user`` from ``safety_identifier``, and
    ``max_completion_tokens`` from ``max_output_tokens`` (the gateway renames it for the
    backend).
    """
    if not isinstance(body, dict):
        raise InvalidRequestError("Request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise bad("you must provide a model parameter", "model")
    if not isinstance(model, str) or not model:
        raise bad("model: expected a non-empty string", "model")
    for key, why in _STATEFUL.items():
        if body.get(key) is not None:
            raise bad(f"Invalid '{key}': {why}.", key)
    if optional_field(body, "background", "boolean"):
        raise bad(
            "Invalid 'background': this gateway runs no background responses; send the "
            "request without it (streaming keeps a long response alive).",
            "background",
        )
    instructions = optional_field(body, "instructions", "string")

    tools = ToolSet()
    if body.get("tools") is not None:
        tools.add_all(body["tools"], "tools")
    convo = Conversation(tools)
    origins: list[str] = []  # the field each chat message came from
    if instructions:
        convo.messages.append({"role": "system", "content": instructions})
        origins.append("instructions")
    raw_input = body.get("input")
    if isinstance(raw_input, str):
        convo.messages.append({"role": "user", "content": raw_input})
        origins.append("input")
    elif isinstance(raw_input, list):
        for i, item in enumerate(raw_input):
            before = len(convo.messages)
            convo.item(i, item)
            origins += [f"input[{i}]"] * (len(convo.messages) - before)
    elif raw_input is not None:
        raise bad("Invalid type for 'input': expected a string or an array.", "input")
    if not convo.messages:
        raise bad("Missing required parameter: 'input'.", "input")

    out: dict[str, Any] = {"model": model, "messages": convo.messages}
    choice = tool_choice(body.get("tool_choice"), tools)
    parallel = optional_field(body, "parallel_tool_calls", "boolean")
    if tools.defs:
        out["tools"] = list(tools.defs.values())
        if choice is not None:
            out["tool_choice"] = choice
        if parallel is not None:
            out["parallel_tool_calls"] = parallel
    for key in ("temperature", "top_p"):
        value = optional_field(body, key, "number")
        if value is not None:
            out[key] = value
    max_output = optional_field(body, "max_output_tokens", "integer")
    if max_output is not None:
        if not 1 <= max_output <= MAX_TOKENS_LIMIT:
            raise bad(
                f"Invalid 'max_output_tokens': expected an integer from 1 to {MAX_TOKENS_LIMIT}, "
                f"got {max_output}.",
                "max_output_tokens",
            )
        out["max_completion_tokens"] = max_output

    reasoning = optional_field(body, "reasoning", "object") or {}
    effort = effort_at(reasoning.get("effort"), "reasoning.effort")
    if convo.effort_updated:
        effort = convo.effort
    if reasoning.get("summary") is not None:
        string_at(reasoning["summary"], "reasoning.summary")
    if effort is not None:  # "none" too: GPT-5.1 reasons by default; an Anthropic route drops it
        out["reasoning_effort"] = effort

    text = optional_field(body, "text", "object") or {}
    text_format, format_param = convo.text_format, convo.text_format_param
    if text_format is None and text.get("format") is not None:
        text_format = object_at(text["format"], "text.format")
    response_format = _response_format(text_format, format_param)
    if response_format is not None:
        out["response_format"] = response_format

    user = optional_field(body, "safety_identifier", "string") or optional_field(
        body, "user", "string"
    )
    if user:
        out["user"] = user
    if optional_field(body, "stream", "boolean"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}

    include = optional_field(body, "include", "array") or []
    ctx = ResponsesContext(
        response_id=response_id if response_id is not None else "resp_" + random_hex(),
        created_at=created_at if created_at is not None else int(time.time()),
        model=model,
        echo=_echo(body, instructions, convo, text),
        encrypted_reasoning=ENCRYPTED_REASONING in include,
        tools=tools.origins,
        origins=origins,
    )
    return out, ctx


_CHAT_MESSAGE = re.compile(r"messages\[(\d+)\]")


def _blamed(text: str, ctx: ResponsesContext, count: int = 0) -> str:
    """``text`` with a chat body's ``messages[i]`` named as the Responses field it came from."""

    def origin(found: re.Match[str]) -> str:
        at = int(found.group(1))
        return ctx.origins[at] if at < len(ctx.origins) else found.group(0)

    return _CHAT_MESSAGE.sub(origin, text, count=count)


def blame_input(err: InvalidRequestError, ctx: ResponsesContext) -> None:
    """``err``, from checking the chat body made of a Responses request, made to name the
    Responses field its message came from (``messages[2]`` -> ``input[1]``)."""
    if err.param is not None:
        err.param = _blamed(err.param, ctx, count=1)
    err.message = _blamed(err.message, ctx)
    err.args = (err.message,)


def blame_error_body(body: bytes, ctx: ResponsesContext) -> bytes:
    """A backend's OpenAI error envelope about the chat body made of a Responses request,
    naming the Responses fields instead (its ``param`` said ``messages[1].content``, which
    the client never sent); anything else as it came."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return body
    changed = False
    for field, count in (("param", 1), ("message", 0)):
        value = error.get(field)
        if isinstance(value, str):
            blamed = _blamed(value, ctx, count)
            changed |= blamed != value
            error[field] = blamed
    return orjson.dumps(data) if changed else body
