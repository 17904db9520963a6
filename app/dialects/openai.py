"""The OpenAI Chat Completions dialect: request validation, error envelope, model list.

Error types and codes follow PROTOCOL.md §5.6 and §6.11.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from typing import Any

from app.dialects.json_values import is_int, is_number
from app.errors import GatewayError, InvalidRequestError

# kind -> (type, code); statuses are the error's own except overloaded (529 -> 503).
_ENVELOPE = {
    "invalid_request": ("invalid_request_error", None),
    "authentication": ("invalid_request_error", "invalid_api_key"),
    "billing": ("insufficient_quota", "insufficient_quota"),
    "permission": ("permission_error", None),
    "not_found": ("invalid_request_error", "model_not_found"),
    "request_too_large": ("invalid_request_error", "request_too_large"),
    "rate_limit": ("rate_limit_error", "rate_limit_exceeded"),
    "api_error": ("server_error", None),
    "timeout": ("timeout", None),
    "overloaded": ("server_error", "overloaded"),
}

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_TOOL_CHOICES = ("none", "auto", "required")
# OpenAI's code for input past the context window: OpenAI clients test for it (Codex
# reports a full context window rather than retrying; LangChain raises its own error).
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
# Backends parse token limits as 32-bit integers; above it they fail with a 500 or wrap around.
MAX_TOKENS_LIMIT = 2**31 - 1


def error_status(err: GatewayError) -> int:
    return 503 if err.status == 529 else err.status


def error_object(err: GatewayError) -> dict[str, Any]:
    etype, code = _ENVELOPE.get(err.kind, ("server_error", None))
    return {
        "message": err.message,
        "type": etype,
        "param": err.param,
        "code": err.code if err.code is not None else code,
    }


def error_body(err: GatewayError, request_id: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": error_object(err)}


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _validate_image_url(param: str, image_url: Any) -> None:
    """An ``image_url`` part's URL; a ``data:`` URL must hold an image in valid base64.

    Other image media types than OpenAI's four are let through: local backends take more.
    """
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if isinstance(image_url, dict):
        param += ".url"
    if not isinstance(url, str) or not url:
        raise _bad(f"Missing required parameter: '{param}'.", param)
    if not url.startswith("data:"):
        return
    header, sep, payload = url[5:].partition(",")
    media_type = header.split(";", 1)[0].strip().lower()
    if not sep or not media_type.startswith("image/"):
        raise _bad(
            f"Invalid image in '{param}': expected data:image/<type>;base64,<data> "
            f"(got media type {media_type or 'none'!r}).",
            param,
        )
    if ";base64" in header.lower():
        try:
            binascii.a2b_base64(payload, strict_mode=True)
        except (binascii.Error, ValueError):
            raise _bad(
                f"Invalid base64 data in '{param}': the payload does not decode.", param
            ) from None


def _validate_part(param: str, part: dict[str, Any]) -> None:
    """Required fields of ``text`` and ``image_url`` parts; other part types pass as is."""
    ptype = part["type"]
    if ptype == "text" and not isinstance(part.get("text"), str):
        raise _bad(f"Invalid type for '{param}.text': expected a string.", f"{param}.text")
    if ptype == "image_url":
        if "image_url" not in part:
            raise _bad(f"Missing required parameter: '{param}.image_url'.", f"{param}.image_url")
        _validate_image_url(f"{param}.image_url", part["image_url"])


def _validate_tool_calls(param: str, tool_calls: Any) -> None:
    if not isinstance(tool_calls, list):
        raise _bad(f"Invalid type for '{param}': expected an array.", param)
    for k, tool_call in enumerate(tool_calls):
        path = f"{param}[{k}]"
        if not isinstance(tool_call, dict):
            raise _bad(f"Invalid type for '{path}': expected an object.", path)
        if tool_call.get("type", "function") != "function":
            continue
        function = tool_call.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise _bad(
                f"Missing required parameter: '{path}.function' (an object with a 'name').",
                f"{path}.function",
            )


def _validate_options(body: dict[str, Any]) -> None:
    """Types of the optional top-level fields a backend would otherwise choke on."""
    tools = body.get("tools")
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if tool.get("type") != "function":
            continue
        function = tool.get("function")
        if not isinstance(function, dict):
            raise _bad(
                f"Missing required parameter: 'tools[{i}].function'.", f"tools[{i}].function"
            )
        if not isinstance(function.get("name"), str) or not function["name"]:
            raise _bad(
                f"Missing required parameter: 'tools[{i}].function.name'.",
                f"tools[{i}].function.name",
            )
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and not (
        tool_choice in _TOOL_CHOICES or isinstance(tool_choice, dict)
    ):
        raise _bad(
            "Invalid value for 'tool_choice': expected 'none', 'auto', 'required' or an object.",
            "tool_choice",
        )
    response_format = body.get("response_format")
    if response_format is not None:
        if not isinstance(response_format, dict):
            raise _bad("Invalid type for 'response_format': expected an object.", "response_format")
        if not isinstance(response_format.get("type"), str):
            raise _bad(
                "Missing required parameter: 'response_format.type'.", "response_format.type"
            )
    if body.get("logit_bias") is not None and not isinstance(body["logit_bias"], dict):
        raise _bad("Invalid type for 'logit_bias': expected an object.", "logit_bias")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise _bad("Invalid type for 'user': expected a string.", "user")


def validate_model(body: Any) -> dict[str, Any]:
    """An OpenAI request body (chat's, embeddings'): a JSON object with a ``model`` string;
    returns it."""
    if not isinstance(body, dict):
        raise InvalidRequestError("Request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise _bad("you must provide a model parameter", "model")
    if not isinstance(model, str) or not model:
        raise _bad("model: expected a non-empty string", "model")
    return body


def validate_request(raw: Any) -> dict[str, Any]:
    """Check the top-level shape of a Chat Completions body; returns it.

    Raises InvalidRequestError with ``param`` naming the field.
    """
    body = validate_model(raw)
    messages = body.get("messages")
    if messages is None:
        raise _bad("Missing required parameter: 'messages'.", "messages")
    if not isinstance(messages, list):
        raise _bad("Invalid type for 'messages': expected an array.", "messages")
    if not messages:
        raise _bad(
            "Invalid 'messages': empty array. Expected an array with minimum length 1.",
            "messages",
        )
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"Invalid type for 'messages[{i}]': expected an object.", f"messages[{i}]")
        role = message.get("role")
        if role not in _ROLES:
            raise _bad(
                f"Invalid value for 'messages[{i}].role': {role!r} is not one of "
                + ", ".join(repr(r) for r in _ROLES)
                + ".",
                f"messages[{i}].role",
            )
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(
                f"Invalid type for 'messages[{i}].content': expected a string or an array.",
                f"messages[{i}].content",
            )
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _bad(
                        f"Invalid 'messages[{i}].content[{j}]': each part must be an object "
                        "with a string 'type'.",
                        f"messages[{i}].content[{j}]",
                    )
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise _bad(
                f"Missing required parameter: 'messages[{i}].tool_call_id'.",
                f"messages[{i}].tool_call_id",
            )
        if role in ("user", "system", "developer") and content is None:
            raise _bad(
                f"Missing required parameter: 'messages[{i}].content'.",
                f"messages[{i}].content",
            )
    for field in ("max_tokens", "max_completion_tokens", "n", "top_logprobs", "seed"):
        value = body.get(field)
        if value is not None and not is_int(value):
            raise _bad(f"Invalid type for '{field}': expected an integer.", field)
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is not None and value < 1:
            raise _bad(
                f"Invalid '{field}': integer below minimum value. Expected a value >= 1, "
                f"but got {value} instead.",
                field,
            )
        if value is not None and value > MAX_TOKENS_LIMIT:
            raise _bad(
                f"Invalid '{field}': integer above maximum value. Expected a value <= "
                f"{MAX_TOKENS_LIMIT}, but got {value} instead.",
                field,
            )
    temperature = body.get("temperature")
    if temperature is not None:
        if not is_number(temperature):
            raise _bad("Invalid type for 'temperature': expected a number.", "temperature")
        if not 0 <= temperature <= 2:
            raise _bad(
                f"Invalid 'temperature': expected a value between 0 and 2, got {temperature}.",
                "temperature",
            )
    top_p = body.get("top_p")
    if top_p is not None and (not is_number(top_p) or not 0 <= top_p <= 1):
        raise _bad("Invalid 'top_p': expected a number between 0 and 1.", "top_p")
    for field in ("presence_penalty", "frequency_penalty"):
        value = body.get(field)
        if value is not None and (not is_number(value) or not -2 <= value <= 2):
            raise _bad(f"Invalid '{field}': expected a number between -2 and 2.", field)
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise _bad("Invalid type for 'stream': expected a boolean.", "stream")
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise _bad("Invalid type for 'stop': expected a string or an array of strings.", "stop")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("Invalid type for 'tools': expected an array.", "tools")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
                raise _bad(
                    f"Invalid 'tools[{i}]': expected an object with a 'type'.", f"tools[{i}]"
                )
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise _bad("Invalid type for 'stream_options': expected an object.", "stream_options")
    return body


def validate_content(body: dict[str, Any]) -> None:
    """Required fields inside a body `validate_request` accepted: ``text`` and ``image_url``
    parts, assistant ``tool_calls``, function tools and the option objects.

    The gateway runs it on every route, so a passthrough backend never gets what it would
    refuse or fail on; translation raises its own errors for the same faults. Part types
    not checked here pass as is: a backend of the same dialect may support them.
    """
    for i, message in enumerate(body["messages"]):
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            _validate_part(f"messages[{i}].content[{j}]", part)
        if message.get("role") == "assistant" and message.get("tool_calls") is not None:
            _validate_tool_calls(f"messages[{i}].tool_calls", message["tool_calls"])
    _validate_options(body)


def _boolean(name: str, value: Any) -> None:
    if value is not True and value is not False:
        raise _bad(f"Invalid type for '{name}': expected a boolean.", name)


def _string(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise _bad(f"Invalid type for '{name}': expected a string.", name)


def _object(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise _bad(f"Invalid type for '{name}': expected an object.", name)


def _metadata(name: str, value: Any) -> None:
    """At most 16 pairs, keys up to 64 characters, string values up to 512 (the SDK's
    ``Metadata``; the same limits as the Responses route's ``metadata``)."""
    _object(name, value)
    if len(value) > 16:
        raise _bad(f"Invalid '{name}': expected at most 16 key-value pairs.", name)
    for key, item in value.items():
        if len(key) > 64:
            raise _bad(f"Invalid '{name}': a key is longer than 64 characters.", name)
        _string(f"{name}.{key}", item)
        if len(item) > 512:
            raise _bad(
                f"Invalid '{name}.{key}': expected a string of at most 512 characters.",
                f"{name}.{key}",
            )


_MODALITIES = ("text", "audio")


def _modalities(name: str, value: Any) -> None:
    if not isinstance(value, list):
        raise _bad(f"Invalid type for '{name}': expected an array of strings.", name)
    for i, item in enumerate(value):
        if item not in _MODALITIES:  # a tuple compares by ==: an unhashable item is no error
            raise _bad(
                f"Invalid value for '{name}[{i}]': expected 'text' or 'audio'.", f"{name}[{i}]"
            )


_STREAM_OPTIONS = ("include_usage", "include_obfuscation")


def _stream_options(name: str, value: Any) -> None:
    # The options OpenAI knows must be booleans; another server's own (vLLM's
    # continuous_usage_stats) are dropped with the rest, as unknown top-level fields are.
    _object(name, value)
    for key in _STREAM_OPTIONS:
        item = value.get(key)
        if item is not None:
            _boolean(f"{name}.{key}", item)


# The fields a translation for an Anthropic backend drops or maps to something else
# (`openai_to_anthropic.translate_request`), with the SDK's type of each
# (``completion_create_params.py``): no backend checks them there, so the gateway does.
# Fields `validate_request` and `validate_content` check on every route are not repeated.
_TRANSLATED_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "audio": _object,
    "logprobs": _boolean,
    "metadata": _metadata,
    "modalities": _modalities,
    "moderation": _object,
    "parallel_tool_calls": _boolean,
    "prediction": _object,
    "prompt_cache_key": _string,
    "prompt_cache_options": _object,
    "prompt_cache_retention": _string,
    "reasoning_effort": _string,
    "safety_identifier": _string,
    "service_tier": _string,
    "store": _boolean,
    "stream_options": _stream_options,
    "verbosity": _string,
    "web_search_options": _object,
}


def validate_translated(body: dict[str, Any]) -> None:
    """Types of the fields of a body `validate_request` accepted that its translation for
    another dialect drops or maps, as OpenAI itself would refuse them (400 naming the field).

    Only for translated requests: a backend of this dialect checks them itself, and a
    passthrough leaves the verdict to it. One look-up per field present, null being absent.
    """
    for name, value in body.items():
        check = _TRANSLATED_CHECKS.get(name)
        if check is not None and value is not None:
            check(name, value)


def model_object(model_id: str, created: int = 0, owned_by: str = "bridgekeeper") -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def models_list(entries: list[tuple[str, str]], created: int = 0) -> dict[str, Any]:
    """``{"object":"list","data":[...]}`` from (id, owned_by) pairs."""
    return {
        "object": "list",
        "data": [model_object(i, created, owner) for i, owner in entries],
    }
