"""Chat Completions answer -> OpenAI Responses API ``Response`` object.

Also owns what the stream (`responses_stream`) builds the same way, so that its final
``response.completed`` equals this module's answer: item ids, output items, usage, status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict

import orjson

from app.dialects.json_values import is_int
from app.translate.anthropic_to_openai import reasoning_text
from app.translate.responses_context import REDACTED_PREFIX, ResponsesContext

ResponseStatus = Literal["in_progress", "completed", "incomplete", "failed"]
ItemStatus = Literal["in_progress", "completed", "incomplete"]

# Prefixes of the ids the gateway invents (the API's own: rs_, msg_, fc_, ctc_).
REASONING, MESSAGE, FUNCTION_CALL, CUSTOM_TOOL_CALL, CALL = "rs", "msg", "fc", "ctc", "call"
# The Response fields this side owns; the request's echo never overrides them.
_OWN_FIELDS = frozenset(
    {
        "id",
        "object",
        "created_at",
        "completed_at",
        "status",
        "error",
        "incomplete_details",
        "model",
        "output",
        "usage",
    }
)
# Codes ``ResponseError`` (openai SDK) admits; anything else is mapped (`response_error`).
_ERROR_CODES = frozenset(
    {
        "server_error",
        "rate_limit_exceeded",
        "invalid_prompt",
        "vector_store_timeout",
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "image_content_policy_violation",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "failed_to_download_image",
        "image_file_not_found",
    }
)


class SummaryText(TypedDict):
    type: Literal["summary_text"]
    text: str


class ReasoningItem(TypedDict):
    type: Literal["reasoning"]
    id: str
    summary: list[SummaryText]
    encrypted_content: NotRequired[str]


class OutputText(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[Any]


class Refusal(TypedDict):
    type: Literal["refusal"]
    refusal: str


class MessageItem(TypedDict):
    type: Literal["message"]
    id: str
    status: ItemStatus
    role: Literal["assistant"]
    content: list[OutputText | Refusal]


class FunctionCallItem(TypedDict):
    type: Literal["function_call"]
    id: str
    call_id: str
    name: str
    namespace: NotRequired[str]
    arguments: str
    status: ItemStatus


class CustomToolCallItem(TypedDict):
    # ResponseCustomToolCall has no ``status``.
    type: Literal["custom_tool_call"]
    id: str
    call_id: str
    name: str
    namespace: NotRequired[str]
    input: str


OutputItem = ReasoningItem | MessageItem | FunctionCallItem | CustomToolCallItem


class InputTokensDetails(TypedDict):
    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(TypedDict):
    reasoning_tokens: int


class ResponseUsage(TypedDict):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(TypedDict):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(TypedDict):
    code: str
    message: str
    param: str | None
    type: str | None


# -- ids ----------------------------------------------------------------------------------------


def item_id(ctx: ResponsesContext, prefix: str, output_index: int) -> str:
    """``<prefix>_<response id without "resp_">_<output index>``: unique per response and
    the same for the whole answer and the stream (golden files stay stable)."""
    _, sep, rest = ctx.response_id.partition("_")
    return f"{prefix}_{rest if sep and rest else ctx.response_id}_{output_index}"


# -- pieces ---------------------------------------------------------------------------------


def text_of(content: Any) -> str:
    """A chat ``content`` (or delta content) as text: a string, or the ``text`` parts of a
    list (Mistral's thinking models send a list); anything else is no text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def arguments_text(arguments: Any) -> str:
    """A tool call's ``arguments``: a string as it is; an object (Ollama's native shape) as
    JSON; anything else as nothing."""
    if isinstance(arguments, str):
        return arguments
    if isinstance(arguments, dict | list):
        return orjson.dumps(arguments).decode()
    return ""


def custom_input(arguments: str) -> str:
    """A custom tool's text: the ``input`` string of its ``{"input": …}`` arguments (the
    function the request side made of it), else the arguments as they are."""
    try:
        parsed = orjson.loads(arguments)
    except orjson.JSONDecodeError:
        return arguments
    if isinstance(parsed, dict) and isinstance(parsed.get("input"), str):
        return str(parsed["input"])
    return arguments


def reasoning_item(ident: str, text: str, encrypted: str | None = None) -> ReasoningItem:
    item: ReasoningItem = {
        "type": "reasoning",
        "id": ident,
        "summary": [{"type": "summary_text", "text": text}] if text else [],
    }
    if encrypted is not None:
        item["encrypted_content"] = encrypted
    return item


def output_text(text: str) -> OutputText:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def refusal_part(text: str) -> Refusal:
    return {"type": "refusal", "refusal": text}


def message_item(
    ident: str, content: list[OutputText | Refusal], status: ItemStatus
) -> MessageItem:
    return {
        "type": "message",
        "id": ident,
        "status": status,
        "role": "assistant",
        "content": content,
    }


def call_item(
    ctx: ResponsesContext,
    output_index: int,
    call_id: str,
    chat_name: str,
    arguments: str,
    status: ItemStatus,
) -> FunctionCallItem | CustomToolCallItem:
    """One chat tool call as the Responses item of the tool the client declared: a
    ``function_call`` (with ``namespace`` for a tool inside a namespace tool) or, for a
    ``custom`` tool, a ``custom_tool_call`` whose ``input`` is the text in the arguments."""
    origin = ctx.tools.get(chat_name)
    name = origin.name if origin is not None else chat_name
    namespace = origin.namespace if origin is not None else None
    if origin is not None and origin.custom:
        custom: CustomToolCallItem = {
            "type": "custom_tool_call",
            "id": item_id(ctx, CUSTOM_TOOL_CALL, output_index),
            "call_id": call_id,
            "name": name,
            "input": custom_input(arguments) if arguments else "",
        }
        if namespace:
            custom["namespace"] = namespace
        return custom
    call: FunctionCallItem = {
        "type": "function_call",
        "id": item_id(ctx, FUNCTION_CALL, output_index),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }
    if namespace:
        call["namespace"] = namespace
    return call


def _chat_call_item(
    ctx: ResponsesContext, call: Mapping[str, Any], output_index: int, status: ItemStatus
) -> FunctionCallItem | CustomToolCallItem:
    """One whole chat ``tool_calls`` entry as its Responses item (`call_item`); a call
    without an id gets ``call_…`` of its output index."""
    function = call.get("function")
    function = function if isinstance(function, dict) else {}
    name = function.get("name")
    call_id = call.get("id")
    return call_item(
        ctx,
        output_index,
        call_id if isinstance(call_id, str) and call_id else item_id(ctx, CALL, output_index),
        name if isinstance(name, str) else "",
        arguments_text(function.get("arguments")),
        status,
    )


def thinking_block_parts(block: Any, ctx: ResponsesContext) -> tuple[str, str | None] | None:
    """A LiteLLM-style ``thinking_blocks`` entry as (summary text, encrypted_content), or
    None for an entry of no other kind. ``encrypted_content`` (only with
    ``ctx.encrypted_reasoning``) is the block's signature, or a redacted block's data
    behind ``REDACTED_PREFIX``."""
    if not isinstance(block, dict):
        return None
    kind = block.get("type")
    if kind == "thinking":
        text = block.get("thinking")
        signature = block.get("signature")
        encrypted = signature if isinstance(signature, str) and signature else None
        return (
            text if isinstance(text, str) else "",
            encrypted if ctx.encrypted_reasoning else None,
        )
    if kind == "redacted_thinking":
        data = block.get("data")
        if ctx.encrypted_reasoning and isinstance(data, str) and data:
            return "", REDACTED_PREFIX + data
        return "", None
    return None


# -- status, usage, errors ------------------------------------------------------------------


def finish_status(finish_reason: Any) -> tuple[ResponseStatus, IncompleteDetails | None]:
    """A chat ``finish_reason`` as the Response's status and ``incomplete_details``."""
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _count(value: Any) -> int:
    return value if is_int(value) and value > 0 else 0


def response_usage(usage: Any) -> ResponseUsage | None:
    """A chat ``usage`` in the Responses shape (None without one). Reads DeepSeek's
    ``prompt_cache_hit_tokens`` when ``cached_tokens`` is missing; details default to 0."""
    if not isinstance(usage, dict):
        return None
    prompt = _count(usage.get("prompt_tokens"))
    completion = _count(usage.get("completion_tokens"))
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    cached = _count(details.get("cached_tokens")) or _count(usage.get("prompt_cache_hit_tokens"))
    out_details = usage.get("completion_tokens_details")
    out_details = out_details if isinstance(out_details, dict) else {}
    total = usage.get("total_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": cached,
            "cache_write_tokens": _count(details.get("cache_write_tokens")),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _count(out_details.get("reasoning_tokens"))},
        "total_tokens": total if is_int(total) and total >= 0 else prompt + completion,
    }


def response_error(error: Any) -> ResponseError:
    """The gateway's in-stream chat error (``{"message", "type", "param", "code"}``) as a
    Response ``error``. ``code`` must be one the Responses API knows: a rate limit stays
    ``rate_limit_exceeded`` (Codex waits and retries on it), an invalid request becomes
    ``invalid_prompt``, anything else ``server_error``; the chat ``type`` is kept."""
    err = error if isinstance(error, dict) else {}
    code, etype, message, param = (err.get(k) for k in ("code", "type", "message", "param"))
    if code in ("rate_limit_exceeded", "rate_limit_error") or etype == "rate_limit_error":
        mapped = "rate_limit_exceeded"
    elif isinstance(code, str) and code in _ERROR_CODES:
        mapped = code
    elif etype == "invalid_request_error":
        mapped = "invalid_prompt"
    else:
        mapped = "server_error"
    return {
        "code": mapped,
        "message": message if isinstance(message, str) and message else "upstream error",
        "param": param if isinstance(param, str) else None,
        "type": etype if isinstance(etype, str) else None,
    }


# -- the Response ---------------------------------------------------------------------------


def response_object(
    ctx: ResponsesContext,
    *,
    status: ResponseStatus,
    output: list[OutputItem],
    usage: ResponseUsage | None = None,
    incomplete_details: IncompleteDetails | None = None,
    error: ResponseError | None = None,
) -> dict[str, Any]:
    """The Response skeleton: the fields this side owns, the request defaults the API
    always sends (``tool_choice: "auto"``, ``tools: []``, ``parallel_tool_calls: true``,
    ``truncation: "disabled"``, ``metadata: {}``, nulls) and then ``ctx.echo`` over them.
    ``model`` is the name the client asked for, in every event of a stream as in a whole
    answer, whatever the backend calls it (the translated routes' rule). ``completed_at``
    is read from ``ctx.clock`` for a completed Response, null for any other status."""
    response: dict[str, Any] = {
        "id": ctx.response_id,
        "object": "response",
        "created_at": ctx.created_at,
        "status": status,
        "completed_at": ctx.clock() if status == "completed" else None,
        "error": error,
        "incomplete_details": incomplete_details,
        "instructions": None,
        "max_output_tokens": None,
        "model": ctx.model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": None,
        "temperature": None,
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": {},
    }
    for key, value in ctx.echo.items():
        if key not in _OWN_FIELDS:
            response[key] = value
    return response


def _first_choice(chat: dict[str, Any]) -> dict[str, Any]:
    choices = chat.get("choices")
    if not isinstance(choices, list):
        return {}
    dicts = [c for c in choices if isinstance(c, dict)]
    for choice in dicts:
        if choice.get("index", 0) == 0:
            return choice
    return dicts[0] if dicts else {}


def _ordered_output(
    parts: Sequence[Mapping[str, Any]], ctx: ResponsesContext, last_status: ItemStatus
) -> list[OutputItem]:
    """The items of an answer's ``parts`` (`translate_response`), in their order and as
    the stream (`responses_stream`) opens them for the same answer: text runs on in one
    message until a reasoning item or a call comes between; thinking that makes no item
    (`thinking_block_parts`) and empty text come between nothing."""
    runs: list[tuple[str, Any]] = []  # ("text", [text…]) | ("call", call) | ("reasoning", …)
    for part in parts:
        if not isinstance(part, Mapping):
            continue
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str) or not text:
                continue
            if runs and runs[-1][0] == "text":
                runs[-1][1].append(text)
            else:
                runs.append(("text", [text]))
        elif kind == "function":
            runs.append(("call", part))
        else:
            found = thinking_block_parts(part, ctx)
            if found is not None and (found[0] or found[1] is not None):
                runs.append(("reasoning", found))
    output: list[OutputItem] = []
    for n, (kind, value) in enumerate(runs):
        index = len(output)
        status = last_status if n == len(runs) - 1 else "completed"
        if kind == "text":
            ident = item_id(ctx, MESSAGE, index)
            output.append(message_item(ident, [output_text("".join(value))], status))
        elif kind == "call":
            output.append(_chat_call_item(ctx, value, index, status))
        else:
            output.append(reasoning_item(item_id(ctx, REASONING, index), *value))
    return output


def translate_response(
    chat: dict[str, Any],
    ctx: ResponsesContext,
    parts: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` as a Responses API ``Response``.

    Output order: reasoning item(s) (one per ``thinking_blocks`` entry, else one for
    ``reasoning_content``/``reasoning``), the message (text, then refusal), then one item
    per tool call. ``parts``, when the answer came with them (an Anthropic backend's,
    `openai_to_anthropic.translate_response_parts`), stand for the message's reasoning,
    content, refusal and tool calls: text parts, ``thinking_blocks`` entries and tool calls
    in the order the backend gave them, which the output then follows (a message before a
    call, another after it), as the stream does. Drops: choices past the first,
    ``logprobs``, annotations, the chat id, ``system_fingerprint``, ``service_tier``,
    legacy ``function_call``, redacted thinking and empty thinking unless they carry
    ``encrypted_content``. Invents: item ids (`item_id`), ``call_…`` ids for calls without
    one, the request defaults of `response_object`, and zero usage details. With
    ``finish_reason`` length or content_filter the Response is ``incomplete`` and so is its
    last item when that is a message or call.
    """
    choice = _first_choice(chat)
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    status, details = finish_status(choice.get("finish_reason"))
    last_status: ItemStatus = "incomplete" if status == "incomplete" else "completed"
    if parts is not None:
        return response_object(
            ctx,
            status=status,
            output=_ordered_output(parts, ctx, last_status),
            usage=response_usage(chat.get("usage")),
            incomplete_details=details,
        )
    output: list[OutputItem] = []

    blocks = message.get("thinking_blocks")
    found = [
        parts
        for parts in (
            thinking_block_parts(b, ctx) for b in (blocks if isinstance(blocks, list) else [])
        )
        if parts is not None
    ]
    if found:
        for text, encrypted in found:
            if text or encrypted is not None:
                output.append(reasoning_item(item_id(ctx, REASONING, len(output)), text, encrypted))
    else:
        text = reasoning_text(message)
        if text:
            output.append(reasoning_item(item_id(ctx, REASONING, len(output)), text))

    calls = message.get("tool_calls")
    calls = [c for c in calls if isinstance(c, dict)] if isinstance(calls, list) else []
    content: list[OutputText | Refusal] = []
    text = text_of(message.get("content"))
    if text:
        content.append(output_text(text))
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal:
        content.append(refusal_part(refusal))
    if content:
        output.append(
            message_item(
                item_id(ctx, MESSAGE, len(output)),
                content,
                last_status if not calls else "completed",
            )
        )
    for k, call in enumerate(calls):
        item_status = last_status if k == len(calls) - 1 else "completed"
        output.append(_chat_call_item(ctx, call, len(output), item_status))
    return response_object(
        ctx,
        status=status,
        output=output,
        usage=response_usage(chat.get("usage")),
        incomplete_details=details,
    )
