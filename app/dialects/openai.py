"""The OpenAI Chat Completions dialect: request validation, error envelope, model list.

Error types and codes follow PROTOCOL.md §5.6 and §6.11.
"""

from __future__ import annotations

from typing import Any

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
_NUMBER = (int, float)


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def validate_request(body: Any) -> dict[str, Any]:
    """Check the top-level shape of a Chat Completions body; returns it.

    Raises InvalidRequestError with ``param`` naming the field.
    """
    if not isinstance(body, dict):
        raise InvalidRequestError("Request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise _bad("you must provide a model parameter", "model")
    if not isinstance(model, str) or not model:
        raise _bad("model: expected a non-empty string", "model")
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
        if value is not None and not _is_int(value):
            raise _bad(f"Invalid type for '{field}': expected an integer.", field)
    for field in ("max_tokens", "max_completion_tokens"):
        value = body.get(field)
        if value is not None and value < 1:
            raise _bad(
                f"Invalid '{field}': integer below minimum value. Expected a value >= 1, "
                f"but got {value} instead.",
                field,
            )
    temperature = body.get("temperature")
    if temperature is not None:
        if not _is_number(temperature):
            raise _bad("Invalid type for 'temperature': expected a number.", "temperature")
        if not 0 <= temperature <= 2:
            raise _bad(
                f"Invalid 'temperature': expected a value between 0 and 2, got {temperature}.",
                "temperature",
            )
    top_p = body.get("top_p")
    if top_p is not None and (not _is_number(top_p) or not 0 <= top_p <= 1):
        raise _bad("Invalid 'top_p': expected a number between 0 and 1.", "top_p")
    for field in ("presence_penalty", "frequency_penalty"):
        value = body.get(field)
        if value is not None and (not _is_number(value) or not -2 <= value <= 2):
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


def model_object(model_id: str, created: int = 0, owned_by: str = "bridgekeeper") -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


def models_list(entries: list[tuple[str, str]], created: int = 0) -> dict[str, Any]:
    """``{"object":"list","data":[...]}`` from (id, owned_by) pairs."""
    return {
        "object": "list",
        "data": [model_object(i, created, owner) for i, owner in entries],
    }
