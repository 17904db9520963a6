"""OpenAI ``messages[]`` -> Anthropic ``system`` blocks and alternating user/assistant turns.

Implements PROTOCOL.md §6.4: system hoisting, content-part conversion, tool results
grouped first in one user turn, same-role merging and tool_use/tool_result pairing repair,
so the result satisfies every message constraint of §1.2.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from app.errors import InvalidRequestError
from app.translate.ids import ToolNames, sanitize_tool_id
from app.translate.json_repair import object_arguments

log = logging.getLogger(__name__)
Block = dict[str, Any]
Role = Literal["user", "assistant"]

# Anthropic accepts only these image types (PROTOCOL.md §1.5); "image/jpg" is a common misspelling.
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_MEDIA_ALIASES = {"image/jpg": "image/jpeg"}
_DATA_URL = re.compile(r"^data:(?P<mime>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.S)
_SPACE = re.compile(r"\s+")

# Text of the user turn put in front of a conversation that starts with the assistant
# (Bedrock and older deployments reject that: PROTOCOL.md §1.2) or that has no turn at all.
CONTINUE_TEXT = "(continue)"
# Content of the tool_result synthesized for a tool call the client never answered (§6.4 step 4).
NO_RESULT_TEXT = "(no result)"


class AnthropicMessage(TypedDict):
    role: Role
    content: str | list[Block]


@dataclass(slots=True)
class Turn:
    """One Anthropic message under construction."""

    role: Role
    blocks: list[Block] = field(default_factory=list)


@dataclass(slots=True)
class Conversation:
    """What `convert_messages` returns: hoisted system blocks and repaired turns."""

    system: list[Block]
    turns: list[Turn]


def _bad(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(message, param=param)


def _text_block(text: str) -> Block:
    return {"type": "text", "text": text}


def _blank(text: str) -> bool:
    return not text.strip()


def _data_url(url: str, param: str) -> tuple[str, str]:
    """``(media_type, base64 payload)`` of a ``data:`` URL; the payload must decode."""
    m = _DATA_URL.match(url)
    if m is None:
        raise _bad(
            f"Invalid data URL in '{param}': expected data:<media type>;base64,<data>.", param
        )
    params = [p.strip().lower() for p in m.group("params").split(";") if p.strip()]
    if "base64" not in params:
        raise _bad(
            f"Invalid data URL in '{param}': only base64-encoded data URLs are supported.", param
        )
    media = m.group("mime").strip().lower()
    media = _MEDIA_ALIASES.get(media, media)
    payload = _SPACE.sub("", m.group("data"))
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(
            f"Invalid base64 data in '{param}': the payload does not decode.", param
        ) from None
    if not raw:
        raise _bad(f"Invalid data URL in '{param}': the payload is empty.", param)
    return media, payload


def _image_block(part: dict[str, Any], param: str) -> Block:
    image = part.get("image_url")
    # Some clients send the URL string directly instead of {"url": ...}.
    url = image.get("url") if isinstance(image, dict) else image
    url_param = f"{param}.image_url.url" if isinstance(image, dict) else f"{param}.image_url"
    if not isinstance(url, str) or not url:
        raise _bad(f"Missing required parameter: '{url_param}'.", url_param)
    if url.startswith("data:"):
        media, payload = _data_url(url, url_param)
        if media not in IMAGE_TYPES:
            raise _bad(
                f"Invalid image in '{url_param}': media type {media or '(none)'!r} is not "
                "supported; use image/jpeg, image/png, image/gif or image/webp.",
                url_param,
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": payload}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise _bad(
        f"Invalid image URL in '{url_param}': expected an http(s) URL or a base64 data URL.",
        url_param,
    )


def _file_block(part: dict[str, Any], param: str) -> Block:
    file = part.get("file")
    if not isinstance(file, dict):
        raise _bad(f"Invalid type for '{param}.file': expected an object.", f"{param}.file")
    if file.get("file_id") is not None:
        raise _bad(
            f"Invalid '{param}.file.file_id': uploaded file ids are not supported by this model; "
            "send the file inline as file_data.",
            f"{param}.file.file_id",
        )
    data = file.get("file_data")
    data_param = f"{param}.file.file_data"
    if not isinstance(data, str) or not data:
        raise _bad(f"Missing required parameter: '{data_param}'.", data_param)
    if data.startswith("data:"):
        media, payload = _data_url(data, data_param)
    else:
        # Bare base64 (the SDK's documented form); only a PDF is recognisable from its bytes.
        media, payload = "", _SPACE.sub("", data)
        try:
            if base64.b64decode(payload, validate=True).startswith(b"%PDF-"):
                media = "application/pdf"
        except (binascii.Error, ValueError):
            raise _bad(
                f"Invalid base64 data in '{data_param}': the payload does not decode.", data_param
            ) from None
    if media == "application/pdf":
        block: Block = {
            "type": "document",
            "source": {"type": "base64", "media_type": "application/pdf", "data": payload},
        }
    elif media == "text/plain":
        text = base64.b64decode(payload).decode("utf-8", "replace")
        block = {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": text},
        }
    else:
        raise _bad(
            f"Invalid file in '{data_param}': media type {media or '(unknown)'!r} is not "
            "supported; use a PDF (data:application/pdf;base64,...) or plain text.",
            data_param,
        )
    filename = file.get("filename")
    if isinstance(filename, str) and filename.strip():
        block["title"] = filename
    return block


def _user_blocks(content: Any, param: str) -> list[Block]:
    if isinstance(content, str):
        return [] if _blank(content) else [_text_block(content)]
    if not isinstance(content, list):
        return []
    blocks: list[Block] = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"Invalid type for '{p}.text': expected a string.", f"{p}.text")
            if not _blank(text):
                blocks.append(_text_block(text))
        elif kind == "image_url":
            blocks.append(_image_block(part, p))
        elif kind == "file":
            blocks.append(_file_block(part, p))
        elif kind == "input_audio":
            raise _bad(f"Invalid '{p}': audio input is not supported by this model.", p)
        else:
            raise _bad(f"Invalid '{p}.type': content part type {kind!r} is not supported here.", p)
    return blocks


def _system_blocks(content: Any, param: str) -> list[Block]:
    if isinstance(content, str):
        return [] if _blank(content) else [_text_block(content)]
    blocks: list[Block] = []
    for j, part in enumerate(content if isinstance(content, list) else []):
        text = part.get("text")
        if part.get("type") != "text" or not isinstance(text, str):
            raise _bad(
                f"Invalid '{param}[{j}]': system and developer messages accept only text parts.",
                f"{param}[{j}]",
            )
        if not _blank(text):
            blocks.append(_text_block(text))
    return blocks


def _tool_result_content(content: Any, param: str) -> str | list[Block] | None:
    """A tool message's content; None when it is empty (``content`` omitted = no output)."""
    if isinstance(content, str):
        return None if _blank(content) else content
    if not isinstance(content, list):
        return None
    blocks: list[Block] = []
    for j, part in enumerate(content):
        p = f"{param}[{j}]"
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise _bad(f"Invalid type for '{p}.text': expected a string.", f"{p}.text")
            if not _blank(text):
                blocks.append(_text_block(text))
        elif kind == "image_url":
            # Not in OpenAI's schema for tool messages, but Anthropic tool results take images.
            blocks.append(_image_block(part, p))
        else:
            raise _bad(f"Invalid '{p}.type': tool messages accept only text parts.", p)
    return blocks or None


def _tool_result(tool_use_id: str, content: str | list[Block] | None) -> Block:
    block: Block = {"type": "tool_result", "tool_use_id": tool_use_id}
    if content is not None:
        block["content"] = content
    return block


def _arguments(raw: Any, param: str) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if raw is None or (isinstance(raw, str) and _blank(raw)):
        return {}
    if not isinstance(raw, str):
        raise _bad(f"Invalid type for '{param}': expected a JSON string.", param)
    value, done = object_arguments(raw)
    if done is not None:
        # A model's own call, cut off or malformed, in the history: refusing it would fail
        # every later turn of the conversation (§6.4). The arguments are not logged.
        log.warning("%s: tool-call arguments that are not a JSON object %s", param, done)
    return value


def _tool_use(tool_id: str, name: Any, raw_args: Any, names: ToolNames, param: str) -> Block:
    if not isinstance(name, str) or not name:
        raise _bad(f"Missing required parameter: '{param}.name'.", f"{param}.name")
    return {
        "type": "tool_use",
        "id": sanitize_tool_id(tool_id),
        "name": names.to_backend(name),
        "input": _arguments(raw_args, f"{param}.arguments"),
    }


def _thinking_blocks(raw: Any) -> list[Block]:
    """LiteLLM-style ``thinking_blocks`` kept only when genuinely signed (§1.2: never fabricate)."""
    blocks: list[Block] = []
    for b in raw if isinstance(raw, list) else []:
        if not isinstance(b, dict):
            continue
        if b.get("type") == "thinking":
            thinking, signature = b.get("thinking"), b.get("signature")
            if isinstance(thinking, str) and isinstance(signature, str) and signature:
                blocks.append({"type": "thinking", "thinking": thinking, "signature": signature})
        elif b.get("type") == "redacted_thinking":
            data = b.get("data")
            if isinstance(data, str) and data:
                blocks.append({"type": "redacted_thinking", "data": data})
    return blocks


class _Builder:
    """Walks the client's messages once, building system blocks and raw turns."""

    def __init__(self, names: ToolNames) -> None:
        self.names = names
        self.system: list[Block] = []
        self.turns: list[Turn] = []
        # Legacy function calling has no ids: name -> synthesized id of the last function_call.
        self.legacy_pending: dict[str, str] = {}

    def push(self, role: Role, blocks: list[Block]) -> None:
        if not blocks:
            return
        if self.turns and self.turns[-1].role == role:
            self.turns[-1].blocks.extend(blocks)
        else:
            self.turns.append(Turn(role, list(blocks)))

    def message(self, i: int, msg: dict[str, Any]) -> None:
        role = msg.get("role")
        content = msg.get("content")
        param = f"messages[{i}]"
        if role in ("system", "developer"):
            self.system.extend(_system_blocks(content, f"{param}.content"))
        elif role == "user":
            self.push("user", _user_blocks(content, f"{param}.content"))
        elif role == "assistant":
            self.push("assistant", self.assistant(i, msg))
        elif role == "tool":
            tool_call_id = msg.get("tool_call_id")
            if not isinstance(tool_call_id, str) or not tool_call_id:
                raise _bad(
                    f"Missing required parameter: '{param}.tool_call_id'.", f"{param}.tool_call_id"
                )
            result = _tool_result_content(content, f"{param}.content")
            self.push("user", [_tool_result(sanitize_tool_id(tool_call_id), result)])
        elif role == "function":
            name = msg.get("name")
            tool_id = self.legacy_pending.pop(name, None) if isinstance(name, str) else None
            # An id no tool_use carries: the pairing pass turns the result into text.
            result = _tool_result_content(content, f"{param}.content")
            self.push("user", [_tool_result(tool_id or f"call_legacy_{i}", result)])
        else:
            raise _bad(f"Invalid value for '{param}.role': {role!r}.", f"{param}.role")

    def assistant(self, i: int, msg: dict[str, Any]) -> list[Block]:
        param = f"messages[{i}]"
        blocks: list[Block] = []
        content = msg.get("content")
        if isinstance(content, str):
            if not _blank(content):
                blocks.append(_text_block(content))
        elif isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type")
                text = part.get("refusal") if kind == "refusal" else part.get("text")
                if kind not in ("text", "refusal"):
                    raise _bad(
                        f"Invalid '{param}.content[{j}].type': assistant messages accept only "
                        "text and refusal parts.",
                        f"{param}.content[{j}]",
                    )
                if not isinstance(text, str):
                    raise _bad(
                        f"Invalid type for '{param}.content[{j}]': expected a string {kind}.",
                        f"{param}.content[{j}]",
                    )
                if not _blank(text):
                    blocks.append(_text_block(text))
        elif content is not None:
            raise _bad(f"Invalid type for '{param}.content'.", f"{param}.content")
        refusal = msg.get("refusal")
        if isinstance(refusal, str) and not _blank(refusal):
            blocks.append(_text_block(refusal))

        tool_calls = msg.get("tool_calls")
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise _bad(
                f"Invalid type for '{param}.tool_calls': expected an array.", f"{param}.tool_calls"
            )
        for j, call in enumerate(tool_calls or []):
            p = f"{param}.tool_calls[{j}]"
            if not isinstance(call, dict):
                raise _bad(f"Invalid type for '{p}': expected an object.", p)
            if call.get("type", "function") != "function":
                raise _bad(
                    f"Invalid '{p}.type': only function tool calls are supported.", f"{p}.type"
                )
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:
                raise _bad(f"Missing required parameter: '{p}.id'.", f"{p}.id")
            function = call.get("function")
            if not isinstance(function, dict):
                raise _bad(f"Missing required parameter: '{p}.function'.", f"{p}.function")
            blocks.append(
                _tool_use(
                    call_id,
                    function.get("name"),
                    function.get("arguments"),
                    self.names,
                    f"{p}.function",
                )
            )

        function_call = msg.get("function_call")
        if function_call is not None:
            if not isinstance(function_call, dict):
                raise _bad(f"Invalid type for '{param}.function_call'.", f"{param}.function_call")
            legacy_id = f"call_legacy_{i}"
            name = function_call.get("name")
            blocks.append(
                _tool_use(
                    legacy_id,
                    name,
                    function_call.get("arguments"),
                    self.names,
                    f"{param}.function_call",
                )
            )
            self.legacy_pending = {str(name): legacy_id}

        if not blocks:
            return []
        return _thinking_blocks(msg.get("thinking_blocks")) + blocks


def _result_text(block: Block) -> list[Block]:
    """A tool_result no tool_use asked for, kept as user text (§6.4 step 4)."""
    header = f"[tool result for {block['tool_use_id']}]"
    content = block.get("content")
    if isinstance(content, str):
        return [_text_block(f"{header}\n{content}")]
    if isinstance(content, list):
        return [_text_block(header), *content]
    return [_text_block(f"{header} (no output)")]


def _synthesized(tool_use_id: str) -> Block:
    return {
        "type": "tool_result",
        "tool_use_id": tool_use_id,
        "content": NO_RESULT_TEXT,
        "is_error": True,
    }


def _repair_user(turn: Turn, expected: list[str]) -> Turn:
    """Results for ``expected`` ids first (synthesized when missing), then everything else
    in the conversation's order, orphan results as text where they were."""
    answered: set[str] = set()
    results: list[Block] = []
    others: list[Block] = []
    for block in turn.blocks:
        if block["type"] != "tool_result":
            others.append(block)
        elif block["tool_use_id"] in expected and block["tool_use_id"] not in answered:
            answered.add(block["tool_use_id"])
            results.append(block)
        else:
            others.extend(_result_text(block))
    results.extend(_synthesized(i) for i in expected if i not in answered)
    return Turn("user", results + others)


def _repair_pairing(turns: list[Turn]) -> list[Turn]:
    out: list[Turn] = []
    expected: list[str] = []
    for turn in turns:
        if turn.role == "user":
            out.append(_repair_user(turn, expected))
            expected = []
            continue
        if expected:
            out.append(_repair_user(Turn("user"), expected))
        out.append(turn)
        expected = list(dict.fromkeys(b["id"] for b in turn.blocks if b["type"] == "tool_use"))
    if expected:
        out.append(_repair_user(Turn("user"), expected))
    return out


def _strip_prefill(turns: list[Turn]) -> None:
    """A final assistant turn must not end in whitespace (§1.2); drop what becomes empty."""
    if not turns or turns[-1].role != "assistant":
        return
    blocks = turns[-1].blocks
    if blocks and blocks[-1]["type"] == "text":
        text = blocks[-1]["text"].rstrip()
        if text:
            blocks[-1] = {**blocks[-1], "text": text}
        else:
            blocks.pop()
    if not any(b["type"] not in ("thinking", "redacted_thinking") for b in blocks):
        turns.pop()


def convert_messages(messages: list[dict[str, Any]], names: ToolNames) -> Conversation:
    """System blocks and valid turns from a Chat Completions ``messages`` array.

    Drops message ``name`` fields, ``audio``, ``reasoning_content`` and unsigned
    ``thinking_blocks``, image ``detail``, empty/whitespace-only text. Invents a
    ``"(no result)"`` error result for each unanswered tool call, ``call_legacy_<i>`` ids
    for legacy ``function_call``s, and a ``"(continue)"`` user turn when the conversation
    would otherwise start with the assistant or be empty.
    """
    builder = _Builder(names)
    for i, msg in enumerate(messages):
        builder.message(i, msg)
    turns = _repair_pairing(builder.turns)
    _strip_prefill(turns)
    if not turns or turns[0].role != "user":
        turns.insert(0, Turn("user", [_text_block(CONTINUE_TEXT)]))
    return Conversation(builder.system, turns)


def to_wire(turns: list[Turn]) -> list[AnthropicMessage]:
    """The Anthropic ``messages`` array; a lone plain text block is sent as a string."""
    out: list[AnthropicMessage] = []
    for turn in turns:
        blocks = turn.blocks
        if len(blocks) == 1 and blocks[0]["type"] == "text" and set(blocks[0]) == {"type", "text"}:
            out.append({"role": turn.role, "content": blocks[0]["text"]})
        else:
            out.append({"role": turn.role, "content": blocks})
    return out
