"""The Anthropic Messages dialect: request validation, error envelope, model-list pages.

Error types and statuses follow the SDK's ``_make_status_error`` (PROTOCOL.md §3.2).
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from app.dialects.json_values import is_int, is_number
from app.errors import GatewayError, InvalidRequestError

_TYPE_BY_KIND = {
    "invalid_request": "invalid_request_error",
    "authentication": "authentication_error",
    "billing": "billing_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "request_too_large": "request_too_large",
    "rate_limit": "rate_limit_error",
    "api_error": "api_error",
    "timeout": "timeout_error",
    "overloaded": "overloaded_error",
}

_ROLES = ("user", "assistant", "system")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
# Backends parse max_tokens as a 32-bit integer; above it they fail with a 500 or wrap around.
MAX_TOKENS_LIMIT = 2**31 - 1


def error_type(err: GatewayError) -> str:
    return _TYPE_BY_KIND.get(err.kind, "api_error")


def error_status(err: GatewayError) -> int:
    return err.status


def error_body(err: GatewayError, request_id: str | None = None) -> dict[str, Any]:
    """``{"type":"error","error":{...},"request_id":...}`` with the message verbatim."""
    body: dict[str, Any] = {
        "type": "error",
        "error": {"type": error_type(err), "message": err.message},
    }
    if request_id:
        body["request_id"] = request_id
    return body


def error_event(err: GatewayError) -> dict[str, Any]:
    """The in-stream ``error`` event for a failure after the first byte."""
    return {"type": "error", "error": {"type": error_type(err), "message": err.message}}


def _bad_base64(data: str) -> bool:
    try:
        binascii.a2b_base64(data, strict_mode=True)
    except (binascii.Error, ValueError):
        return True
    return False


def _validate_image(path: str, block: dict[str, Any]) -> None:
    source = block.get("source")
    if not isinstance(source, dict):
        raise InvalidRequestError(f"{path}.source: Field required (an object)")
    stype = source.get("type")
    if stype == "base64":
        if source.get("media_type") not in _IMAGE_TYPES:
            raise InvalidRequestError(
                f"{path}.source.media_type: Input should be "
                + ", ".join(_IMAGE_TYPES)
                + f" (got {source.get('media_type')!r})"
            )
        data = source.get("data")
        if not isinstance(data, str) or not data:
            raise InvalidRequestError(f"{path}.source.data: Field required (base64 image data)")
        if _bad_base64(data):
            raise InvalidRequestError(f"{path}.source.data: the image data is not valid base64")
    elif stype == "url":
        if not isinstance(source.get("url"), str) or not source["url"]:
            raise InvalidRequestError(f"{path}.source.url: Field required")
    elif stype == "file":
        if not isinstance(source.get("file_id"), str):
            raise InvalidRequestError(f"{path}.source.file_id: Field required")
    else:
        raise InvalidRequestError(
            f"{path}.source.type: Input should be 'base64', 'url' or 'file' (got {stype!r})"
        )


def _validate_block(path: str, block: dict[str, Any]) -> None:
    """Required fields of the block types every Anthropic backend knows; others pass as is."""
    btype = block["type"]
    if btype == "text":
        if not isinstance(block.get("text"), str):
            raise InvalidRequestError(f"{path}.text: Field required (a string)")
    elif btype == "image":
        _validate_image(path, block)
    elif btype == "tool_use":
        for name in ("id", "name"):
            if not isinstance(block.get(name), str) or not block[name]:
                raise InvalidRequestError(f"{path}.{name}: Field required (a non-empty string)")
        if not isinstance(block.get("input"), dict):
            raise InvalidRequestError(f"{path}.input: Input should be a valid dictionary")
    elif btype == "tool_result":
        tool_use_id = block.get("tool_use_id")
        if not isinstance(tool_use_id, str) or not tool_use_id:
            raise InvalidRequestError(
                f"{path}.tool_use_id: Field required (the id of the tool_use this answers)"
            )
        content = block.get("content")
        if content is not None and not isinstance(content, str | list):
            raise InvalidRequestError(
                f"{path}.content: Input should be a string or a list of content blocks"
            )
        for k, inner in enumerate(content if isinstance(content, list) else []):
            if not isinstance(inner, dict) or not isinstance(inner.get("type"), str):
                raise InvalidRequestError(
                    f"{path}.content.{k}: each content block must be an object with a string 'type'"
                )
            _validate_block(f"{path}.content.{k}", inner)


def validate_request(body: Any, *, count_tokens: bool = False) -> dict[str, Any]:
    """Check the top-level shape of a Messages (or count_tokens) body; returns it.

    Raises InvalidRequestError naming the field, in the wording of Anthropic's own
    errors (``max_tokens: Field required``). `validate_content` checks inside it.
    """
    if not isinstance(body, dict):
        raise InvalidRequestError("Request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise InvalidRequestError("model: Field required")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("model: Input should be a non-empty string")
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequestError("messages: Field required")
    if not isinstance(messages, list):
        raise InvalidRequestError("messages: Input should be a valid list")
    if not count_tokens and not messages:
        raise InvalidRequestError("messages: at least one message is required")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError(f"messages.{i}: Input should be an object")
        role = message.get("role")
        if role not in _ROLES:
            raise InvalidRequestError(
                f"messages.{i}.role: Input should be 'user' or 'assistant' (got {role!r})"
            )
        content = message.get("content")
        if not isinstance(content, str | list):
            raise InvalidRequestError(
                f"messages.{i}.content: Input should be a string or a list of content blocks"
            )
        if isinstance(content, list):
            for j, block in enumerate(content):
                if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                    raise InvalidRequestError(
                        f"messages.{i}.content.{j}: each content block must be an object "
                        "with a string 'type'"
                    )
    if not count_tokens:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise InvalidRequestError("max_tokens: Field required")
        if not is_int(max_tokens):
            raise InvalidRequestError("max_tokens: Input should be a valid integer")
        if max_tokens < 0:
            raise InvalidRequestError("max_tokens: Input should be greater than or equal to 0")
        if max_tokens > MAX_TOKENS_LIMIT:
            raise InvalidRequestError(
                f"max_tokens: Input should be less than or equal to {MAX_TOKENS_LIMIT}"
            )
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise InvalidRequestError("system: Input should be a string or a list of text blocks")
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise InvalidRequestError("stream: Input should be a valid boolean")
    temperature = body.get("temperature")
    if temperature is not None:
        if not is_number(temperature):
            raise InvalidRequestError("temperature: Input should be a valid number")
        if not 0 <= temperature <= 1:
            raise InvalidRequestError("temperature: Input should be between 0 and 1")
    for field in ("top_p",):
        value = body.get(field)
        if value is not None and (not is_number(value) or not 0 <= value <= 1):
            raise InvalidRequestError(f"{field}: Input should be a number between 0 and 1")
    top_k = body.get("top_k")
    if top_k is not None and (not is_int(top_k) or top_k < 0):
        raise InvalidRequestError("top_k: Input should be a non-negative integer")
    stops = body.get("stop_sequences")
    if stops is not None and (
        not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)
    ):
        raise InvalidRequestError("stop_sequences: Input should be a list of strings")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequestError("tools: Input should be a valid list")
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                raise InvalidRequestError(f"tools.{i}: each tool must be an object with a 'name'")
    tool_choice = body.get("tool_choice")
    if tool_choice is not None and (
        not isinstance(tool_choice, dict)
        or tool_choice.get("type") not in ("auto", "any", "tool", "none")
    ):
        raise InvalidRequestError(
            "tool_choice: Input should be an object with type 'auto', 'any', 'tool' or 'none'"
        )
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "tool":
        if not isinstance(tool_choice.get("name"), str):
            raise InvalidRequestError("tool_choice.name: Field required")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequestError("metadata: Input should be an object")
    thinking = body.get("thinking")
    if thinking is not None and (
        not isinstance(thinking, dict)
        or thinking.get("type") not in ("enabled", "disabled", "adaptive")
    ):
        raise InvalidRequestError(
            "thinking: Input should be an object with type 'enabled', 'disabled' or 'adaptive'"
        )
    return body


def validate_content(body: dict[str, Any]) -> None:
    """Required fields inside a body `validate_request` accepted: blocks of the types every
    Anthropic backend knows (text, image, tool_use, tool_result), system blocks, an
    enabled thinking budget and the option objects.

    The gateway runs it on every route, so a passthrough backend never gets what it would
    refuse or fail on; translation raises its own errors for the same faults. Block types
    not checked here pass as is: a backend of the same dialect may support them.
    """
    for i, message in enumerate(body["messages"]):
        content = message.get("content")
        for j, block in enumerate(content if isinstance(content, list) else []):
            if block["type"] == "text" and isinstance(block.get("text"), str):
                continue  # the common block, passed without building its path
            _validate_block(f"messages.{i}.content.{j}", block)
    system = body.get("system")
    for i, block in enumerate(system if isinstance(system, list) else []):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequestError(f"system.{i}: system blocks must be text blocks")
        if not isinstance(block.get("text"), str):
            raise InvalidRequestError(f"system.{i}.text: Field required (a string)")
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        if not is_int(thinking.get("budget_tokens")):
            raise InvalidRequestError("thinking.budget_tokens: Field required (an integer)")
    if body.get("service_tier") is not None and not isinstance(body["service_tier"], str):
        raise InvalidRequestError("service_tier: Input should be a valid string")
    if body.get("output_config") is not None and not isinstance(body["output_config"], dict):
        raise InvalidRequestError("output_config: Input should be an object")


def _metadata(value: Any) -> None:
    # MetadataParam has only user_id, and the API refuses any other key.
    if not isinstance(value, dict):
        raise InvalidRequestError("metadata: Input should be an object")
    for key, item in value.items():
        if key != "user_id":
            raise InvalidRequestError(f"metadata.{key}: Extra inputs are not permitted")
        if item is not None and not isinstance(item, str):
            raise InvalidRequestError("metadata.user_id: Input should be a valid string")


def _service_tier(value: Any) -> None:
    if value not in ("auto", "standard_only"):  # a tuple compares by ==: no hashing
        raise InvalidRequestError("service_tier: Input should be 'auto' or 'standard_only'")


def _speed(value: Any) -> None:
    if value not in ("standard", "fast"):
        raise InvalidRequestError("speed: Input should be 'standard' or 'fast'")


def _container(value: Any) -> None:
    if not isinstance(value, str | dict):
        raise InvalidRequestError("container: Input should be a valid string or an object")


def _inference_geo(value: Any) -> None:
    if not isinstance(value, str):
        raise InvalidRequestError("inference_geo: Input should be a valid string")


def _object_check(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, dict):
            raise InvalidRequestError(f"{name}: Input should be an object")

    return check


# The fields a translation for an OpenAI backend drops (`anthropic_to_openai.translate_request`)
# or maps (``metadata.user_id``), with the SDK's type of each (``message_create_params.py``,
# ``context_management`` from the beta one): no backend checks them there, so the gateway
# does. Unknown top-level fields stay dropped unchecked.
_TRANSLATED_CHECKS: dict[str, Callable[[Any], None]] = {
    "cache_control": _object_check("cache_control"),
    "container": _container,
    "context_management": _object_check("context_management"),
    "diagnostics": _object_check("diagnostics"),
    "inference_geo": _inference_geo,
    "metadata": _metadata,
    "service_tier": _service_tier,
    "speed": _speed,
}


def validate_translated(body: dict[str, Any]) -> None:
    """Types of the fields of a body `validate_request` accepted that its translation for
    another dialect drops or maps, in the wording of Anthropic's own 400s
    (``metadata.a: Extra inputs are not permitted``).

    Only for translated requests: a backend of this dialect checks them itself, and a
    passthrough leaves the verdict to it. One look-up per field present, null being absent.
    """
    for name, value in body.items():
        check = _TRANSLATED_CHECKS.get(name)
        if check is not None and value is not None:
            check(value)


def _rfc3339(epoch: int | float | None) -> str:
    return datetime.fromtimestamp(epoch or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def model_info(model_id: str, created: int | float | None = None) -> dict[str, Any]:
    return {
        "type": "model",
        "id": model_id,
        "display_name": model_id,
        "created_at": _rfc3339(created),
    }


def models_page(
    ids: list[str],
    *,
    limit: int = 20,
    after_id: str | None = None,
    before_id: str | None = None,
    created: int | float | None = None,
) -> dict[str, Any]:
    """One page of ``GET /v1/models`` over a stable order (PROTOCOL.md §1.10, §6.12)."""
    limit = max(1, min(limit, 1000))
    start, end = 0, len(ids)
    if after_id is not None:
        start = ids.index(after_id) + 1 if after_id in ids else len(ids)
        end = min(len(ids), start + limit)
        has_more = end < len(ids)
    elif before_id is not None:
        end = ids.index(before_id) if before_id in ids else 0
        start = max(0, end - limit)
        has_more = start > 0
    else:
        end = min(len(ids), limit)
        has_more = end < len(ids)
    page = ids[start:end]
    return {
        "data": [model_info(i, created) for i in page],
        "has_more": has_more,
        "first_id": page[0] if page else None,
        "last_id": page[-1] if page else None,
    }
