"""Anthropic Messages clients in front of OpenAI Chat Completions backends (direction A→O).

Owns the request translation, the non-streaming response assembly and the rewrite of a
backend's error answer (PROTOCOL.md §6.1-§6.14); the SSE state machine is in
`app.translate.anthropic_to_openai_stream`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Literal, Required, TypedDict

import orjson

from app.dialects.tokens import estimate_anthropic_input, estimate_text
from app.dialects.usage import Usage, from_openai, to_anthropic
from app.errors import (
    GatewayError,
    InvalidRequestError,
    UpstreamError,
    from_upstream_status,
)
from app.translate.ids import ToolNames, new_message_id, new_tool_id, sanitize_tool_id
from app.translate.options import BackendOptions

log = logging.getLogger(__name__)

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
EFFORTS = ("low", "medium", "high", "xhigh", "max")
NO_RESULT = "(no result)"
TOOL_ERROR_PREFIX = "[tool error]"
IMAGE_MARKER = "[image attached in the next user message]"
DOCUMENT_MARKER = "[document attached in the next user message]"

# Claude Code puts a per-request billing line first in `system` (cc_version=…; cch=…). It means
# nothing to a model and, because it changes every request, defeats prefix caching on vLLM,
# llama.cpp and hosted OpenAI-compatible backends (anthropics/claude-code#68900,
# vllm-project/vllm#36829, which strips it the same way).
_BILLING_LINE = re.compile(r"\A\s*x-anthropic-billing-header:[^\n]*(?:\n|\Z)")

# Assistant-side artefacts of Anthropic server tools: an OpenAI backend cannot run or read them.
_SERVER_BLOCKS = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)


class OpenAIFunctionCall(TypedDict):
    name: str
    arguments: str


class OpenAIToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: OpenAIFunctionCall


class OpenAIFunction(TypedDict, total=False):
    name: Required[str]
    description: str
    parameters: dict[str, Any]


class OpenAITool(TypedDict):
    type: Literal["function"]
    function: OpenAIFunction


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


def _bad(path: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{path}: {message}")


def _nonblank(text: str) -> bool:
    return bool(text.strip())


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _block_text(path: str, block: dict[str, Any]) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise _bad(path, "text block requires a string 'text'")
    return text


def _image_part(path: str, block: dict[str, Any]) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(path, "image block requires a 'source' object")
    stype = source.get("type")
    if stype == "base64":
        media_type = source.get("media_type")
        if media_type not in IMAGE_MEDIA_TYPES:
            raise _bad(
                path, "image source.media_type must be one of " + ", ".join(IMAGE_MEDIA_TYPES)
            )
        data = source.get("data")
        if not isinstance(data, str) or not data:
            raise _bad(path, "image source.data must be a non-empty base64 string")
        url = f"data:{media_type};base64,{data}"
    elif stype == "url":
        link = source.get("url")
        if not isinstance(link, str) or not link:
            raise _bad(path, "image source.url must be a non-empty string")
        url = link
    elif stype == "file":
        raise _bad(path, "image source type 'file' (Files API) is not supported by this backend")
    else:
        raise _bad(path, "image source.type must be 'base64' or 'url'")
    return {"type": "image_url", "image_url": {"url": url}}


def _document_parts(path: str, block: dict[str, Any]) -> list[dict[str, Any]]:
    """A document as OpenAI parts: PDF → ``file`` part, plain text and content → text parts."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise _bad(path, "document block requires a 'source' object")
    title = block.get("title") if isinstance(block.get("title"), str) else None
    stype = source.get("type")
    if stype == "base64":
        if source.get("media_type") != "application/pdf":
            raise _bad(path, "document source.media_type must be application/pdf for base64 data")
        data = source.get("data")
        if not isinstance(data, str) or not data:
            raise _bad(path, "document source.data must be a non-empty base64 string")
        return [
            {
                "type": "file",
                "file": {
                    "file_data": f"data:application/pdf;base64,{data}",
                    "filename": title or "document.pdf",
                },
            }
        ]
    if stype == "text":
        data = source.get("data")
        if not isinstance(data, str):
            raise _bad(path, "document source.data must be a string for a text source")
        text = f"{title}\n\n{data}" if title else data
        return [_text_part(text)] if _nonblank(text) else []
    if stype == "content":
        content = source.get("content")
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            if _nonblank(content):
                parts.append(_text_part(content))
        elif isinstance(content, list):
            for k, inner in enumerate(content):
                ipath = f"{path}.source.content.{k}"
                if not isinstance(inner, dict):
                    raise _bad(ipath, "each content block must be an object")
                itype = inner.get("type")
                if itype == "text":
                    text = _block_text(ipath, inner)
                    if _nonblank(text):
                        parts.append(_text_part(text))
                elif itype == "image":
                    parts.append(_image_part(ipath, inner))
                else:
                    raise _bad(
                        ipath, f"document content blocks must be text or image (got {itype!r})"
                    )
        else:
            raise _bad(path, "document source.content must be a string or a list of blocks")
        if parts and title:
            parts.insert(0, _text_part(title))
        return parts
    if stype == "url":
        url = source.get("url")
        if not isinstance(url, str) or not url:
            raise _bad(path, "document source.url must be a non-empty string")
        # Chat Completions has no URL form for files and this module does no I/O: say so in text.
        marker = f"[PDF document at {url} (not attached)]"
        return [_text_part(f"{title}\n{marker}" if title else marker)]
    if stype == "file":
        raise _bad(path, "document source type 'file' (Files API) is not supported by this backend")
    raise _bad(path, "document source.type must be 'base64', 'url', 'text' or 'content'")


def _search_result_text(path: str, block: dict[str, Any]) -> str:
    content = block.get("content")
    texts: list[str] = []
    if isinstance(content, list):
        for k, inner in enumerate(content):
            if not isinstance(inner, dict):
                raise _bad(f"{path}.content.{k}", "each content block must be an object")
            texts.append(_block_text(f"{path}.content.{k}", inner))
    elif isinstance(content, str):
        texts.append(content)
    head = [s for s in (block.get("title"), block.get("source")) if isinstance(s, str) and s]
    return "\n".join([*head, *texts])


def _system_texts(path: str, content: Any) -> list[str]:
    """Text of a ``system`` value or a ``role: "system"`` message (text / mid_conv_system)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise _bad(path, "system content must be a string or a list of text blocks")
    texts: list[str] = []
    for j, block in enumerate(content):
        bpath = f"{path}.{j}"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(bpath, "each system block must be an object with a string 'type'")
        btype = block.get("type")
        if btype == "text":
            texts.append(_block_text(bpath, block))
        elif btype == "mid_conv_system":
            texts.extend(_system_texts(f"{bpath}.content", block.get("content")))
        else:
            raise _bad(bpath, f"system blocks must be text (got {btype!r})")
    return texts


def _pair_label(tool_id: str) -> str:
    return f"Attachments from tool result {tool_id}:"


class _Converter:
    """Walks the Anthropic messages once, emitting OpenAI messages (PROTOCOL.md §6.2)."""

    def __init__(self, opts: BackendOptions, names: ToolNames) -> None:
        self.opts = opts
        self.names = names
        self.system: list[str] = []
        self.out: list[dict[str, Any]] = []
        # Sanitised ids of the last assistant message's tool calls not answered yet.
        self.pending: list[str] = []

    def add_system(self, texts: list[str]) -> None:
        for text in texts:
            text = _BILLING_LINE.sub("", text, count=1)
            if _nonblank(text):
                self.system.append(text)

    def messages(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        self.add_system(_system_texts("system", body.get("system")))
        raw = body.get("messages")
        if not isinstance(raw, list):
            raise InvalidRequestError("messages: Input should be a valid list")
        for i, message in enumerate(raw):
            path = f"messages.{i}"
            if not isinstance(message, dict):
                raise _bad(path, "Input should be an object")
            role = message.get("role")
            content = message.get("content")
            if not isinstance(content, str | list):
                raise _bad(
                    f"{path}.content", "Input should be a string or a list of content blocks"
                )
            if role == "user":
                self.user(path, content)
            elif role == "assistant":
                self.assistant(path, content)
            elif role == "system":
                self.add_system(_system_texts(f"{path}.content", content))
            else:
                raise _bad(f"{path}.role", f"Input should be 'user' or 'assistant' (got {role!r})")
        self.flush_pending()
        head: list[dict[str, Any]] = []
        if self.system:
            head.append({"role": "system", "content": "\n\n".join(self.system)})
        return head + self.out

    def flush_pending(self) -> None:
        for tool_id in self.pending:
            self.out.append({"role": "tool", "tool_call_id": tool_id, "content": NO_RESULT})
        self.pending = []

    def user_block(self, path: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        btype = block.get("type")
        if btype == "text":
            text = _block_text(path, block)
            return [_text_part(text)] if _nonblank(text) else []
        if btype == "image":
            return [_image_part(path, block)]
        if btype == "document":
            return _document_parts(path, block)
        if btype == "search_result":
            text = _search_result_text(path, block)
            return [_text_part(text)] if _nonblank(text) else []
        if btype == "mid_conv_system":
            self.add_system(_system_texts(f"{path}.content", block.get("content")))
            return []
        if btype in ("thinking", "redacted_thinking") or btype in _SERVER_BLOCKS:
            return []
        if btype == "tool_use":
            raise _bad(path, "tool_use blocks are only allowed in assistant messages")
        raise _bad(path, f"unsupported content block type {btype!r}")

    def tool_result(
        self, path: str, block: dict[str, Any]
    ) -> tuple[str, str, list[dict[str, Any]]]:
        """(sanitised id, text for the tool message, media parts to move to the user message)."""
        raw_id = block.get("tool_use_id")
        if not isinstance(raw_id, str) or not raw_id:
            raise _bad(path, "tool_result.tool_use_id must be a non-empty string")
        content = block.get("content")
        texts: list[str] = []
        media: list[dict[str, Any]] = []
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            for k, inner in enumerate(content):
                ipath = f"{path}.content.{k}"
                if not isinstance(inner, dict) or not isinstance(inner.get("type"), str):
                    raise _bad(ipath, "each content block must be an object with a string 'type'")
                itype = inner.get("type")
                if itype == "text":
                    text = _block_text(ipath, inner)
                    if _nonblank(text):
                        texts.append(text)
                elif itype == "image":
                    media.append(_image_part(ipath, inner))
                    texts.append(IMAGE_MARKER)
                elif itype == "document":
                    for part in _document_parts(ipath, inner):
                        if part["type"] == "text":
                            texts.append(part["text"])
                        else:
                            media.append(part)
                            texts.append(DOCUMENT_MARKER)
                elif itype == "search_result":
                    texts.append(_search_result_text(ipath, inner))
                elif itype == "tool_reference":
                    continue
                else:
                    raise _bad(ipath, f"unsupported tool_result content block type {itype!r}")
        elif content is not None:
            raise _bad(path, "tool_result content must be a string or a list of content blocks")
        text = "\n".join(texts)
        if block.get("is_error") is True:
            text = f"{TOOL_ERROR_PREFIX} {text}" if text else TOOL_ERROR_PREFIX
        return sanitize_tool_id(raw_id), text, media

    def user(self, path: str, content: str | list[Any]) -> None:
        blocks: list[Any] = [_text_part(content)] if isinstance(content, str) else content
        tool_messages: list[dict[str, Any]] = []
        moved: list[dict[str, Any]] = []
        parts: list[dict[str, Any]] = []
        answered: set[str] = set()
        for j, block in enumerate(blocks):
            bpath = f"{path}.content.{j}"
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise _bad(bpath, "each content block must be an object with a string 'type'")
            if block.get("type") != "tool_result":
                parts.extend(self.user_block(bpath, block))
                continue
            tool_id, text, media = self.tool_result(bpath, block)
            if tool_id in self.pending and tool_id not in answered:
                answered.add(tool_id)
                tool_messages.append({"role": "tool", "tool_call_id": tool_id, "content": text})
                if media:
                    moved.append(_text_part(_pair_label(tool_id)))
                    moved.extend(media)
            else:
                # No preceding call to answer: OpenAI rejects a `tool` message without one.
                parts.append(_text_part(f"[tool result for {tool_id}]\n{text}".rstrip()))
                parts.extend(media)
        for tool_id in self.pending:
            if tool_id not in answered:
                tool_messages.append(
                    {"role": "tool", "tool_call_id": tool_id, "content": NO_RESULT}
                )
        self.pending = []
        self.out.extend(tool_messages)
        user_parts = moved + parts
        if not user_parts:
            return
        if all(p["type"] == "text" for p in user_parts):
            # Text-only content goes as one string: DeepSeek and several local servers reject
            # content-part arrays, and every backend accepts a string.
            self.out.append({"role": "user", "content": "\n\n".join(p["text"] for p in user_parts)})
        else:
            self.out.append({"role": "user", "content": user_parts})

    def assistant(self, path: str, content: str | list[Any]) -> None:
        self.flush_pending()
        blocks: list[Any] = [_text_part(content)] if isinstance(content, str) else content
        texts: list[str] = []
        reasoning: list[str] = []
        calls: list[OpenAIToolCall] = []
        for j, block in enumerate(blocks):
            bpath = f"{path}.content.{j}"
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise _bad(bpath, "each content block must be an object with a string 'type'")
            btype = block.get("type")
            if btype == "text":
                text = _block_text(bpath, block)
                if _nonblank(text):
                    texts.append(text)
            elif btype == "thinking":
                thinking = block.get("thinking")
                if not isinstance(thinking, str):
                    raise _bad(bpath, "thinking block requires a string 'thinking'")
                if self.opts.reasoning == "replay" and _nonblank(thinking):
                    reasoning.append(thinking)
            elif btype == "tool_use":
                calls.append(self.tool_call(bpath, block))
            elif btype == "redacted_thinking" or btype in _SERVER_BLOCKS:
                continue
            elif btype == "mid_conv_system":
                self.add_system(_system_texts(f"{bpath}.content", block.get("content")))
            elif btype in ("image", "document", "tool_result", "search_result"):
                raise _bad(bpath, f"{btype} blocks are not allowed in assistant messages")
            else:
                raise _bad(bpath, f"unsupported content block type {btype!r}")
        if not texts and not calls:
            return
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) or None}
        if reasoning:
            message["reasoning_content"] = "\n\n".join(reasoning)
        if calls:
            message["tool_calls"] = calls
        self.out.append(message)
        self.pending = [call["id"] for call in calls]

    def tool_call(self, path: str, block: dict[str, Any]) -> OpenAIToolCall:
        raw_id = block.get("id")
        if not isinstance(raw_id, str) or not raw_id:
            raise _bad(path, "tool_use.id must be a non-empty string")
        name = block.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(path, "tool_use.name must be a non-empty string")
        tool_input = block.get("input")
        if not isinstance(tool_input, dict):
            raise _bad(path, "tool_use.input must be a JSON object")
        return {
            "id": sanitize_tool_id(raw_id),
            "type": "function",
            "function": {
                "name": self.names.to_backend(name),
                "arguments": orjson.dumps(tool_input).decode(),
            },
        }


def _history_tool_names(body: dict[str, Any]) -> list[str]:
    names: list[str] = []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, dict) and isinstance(message.get("content"), list):
            for block in message["content"]:
                if (
                    isinstance(block, dict)
                    and block.get("type") == "tool_use"
                    and isinstance(block.get("name"), str)
                    and block["name"]
                ):
                    names.append(block["name"])
    return names


def _tools(body: dict[str, Any], names: ToolNames) -> tuple[list[OpenAITool], set[str]]:
    """Custom tools as functions; server tools are dropped. Returns them and the dropped names."""
    raw = body.get("tools")
    if raw is None:
        return [], set()
    if not isinstance(raw, list):
        raise InvalidRequestError("tools: Input should be a valid list")
    tools: list[OpenAITool] = []
    dropped: set[str] = set()
    for i, tool in enumerate(raw):
        path = f"tools.{i}"
        if not isinstance(tool, dict):
            raise _bad(path, "each tool must be an object")
        name = tool.get("name")
        ttype = tool.get("type")
        if ttype is not None and ttype != "custom":
            # Anthropic server tools (web_search_*, bash_*, text_editor_*, …) have no function
            # form; forwarding them with an empty schema makes the model call tools nobody runs.
            log.info(
                "dropping Anthropic server tool %r (type %r) for an OpenAI backend", name, ttype
            )
            if isinstance(name, str):
                dropped.add(name)
            continue
        if not isinstance(name, str) or not name:
            raise _bad(f"{path}.name", "Field required (a non-empty string)")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"{path}.input_schema", "Field required (a JSON Schema object)")
        # `$schema` is meaningless to a function definition and Gemini's OpenAI endpoint rejects it.
        parameters = {k: v for k, v in schema.items() if k != "$schema"}
        function: OpenAIFunction = {"name": names.add(name)}
        description = tool.get("description")
        if isinstance(description, str) and description:
            function["description"] = description
        function["parameters"] = parameters
        tools.append({"type": "function", "function": function})
    return tools, dropped


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


def translate_request(
    body: dict[str, Any], opts: BackendOptions
) -> tuple[dict[str, Any], RequestContext]:
    """An Anthropic Messages body as an OpenAI chat.completions body, plus its RequestContext.

    Drops: ``cache_control`` everywhere, ``container``, ``context_management``,
    ``service_tier``, ``inference_geo``, unknown top-level fields, server tools and their
    blocks, ``redacted_thinking``, signatures, empty/whitespace text blocks, Claude Code's
    billing line in ``system``, assistant turns left empty, ``top_k`` unless ``opts.top_k``,
    thinking text unless ``opts.reasoning == "replay"``.
    Invents: one leading system message (``system`` and every ``role: "system"`` message,
    joined by blank lines), ``(no result)`` tool messages for unanswered calls,
    ``[tool error]`` prefixes, text markers for media moved out of tool results,
    ``reasoning_effort`` from the thinking budget, ``user`` = sha256 of
    ``metadata.user_id``, ``stream_options.include_usage``.
    """
    names = ToolNames()
    tools, dropped = _tools(body, names)
    for name in _history_tool_names(body):
        names.add(name)
    converter = _Converter(opts, names)
    messages = converter.messages(body)

    out: dict[str, Any] = {"model": opts.target_model, "messages": messages}
    if body.get("max_tokens") is not None:
        out[opts.max_tokens_field] = body["max_tokens"]
    for key in ("temperature", "top_p"):
        if body.get(key) is not None:
            out[key] = body[key]
    if opts.top_k and body.get("top_k") is not None:
        out["top_k"] = body["top_k"]
    raw_stops = body.get("stop_sequences")
    if raw_stops is not None and not isinstance(raw_stops, list):
        raise InvalidRequestError("stop_sequences: Input should be a list of strings")
    stops = [s for s in raw_stops or [] if isinstance(s, str) and s]
    if stops:
        out["stop"] = stops
    stream = body.get("stream") is True
    if stream:
        out["stream"] = True
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
    response_format = _response_format(body)
    if response_format is not None:
        out["response_format"] = response_format
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
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
        input_estimate=estimate_anthropic_input(body),
        stream=stream,
    )
    return out, ctx


def count_tokens_request(body: dict[str, Any], opts: BackendOptions) -> dict[str, Any]:
    """The ``{"model", "messages", "tools"?}`` a backend ``/tokenize`` endpoint counts.

    The same message and tool translation as `translate_request`; generation controls,
    ``tool_choice`` and reasoning settings are left out because they add no input tokens.
    """
    names = ToolNames()
    tools, _ = _tools(body, names)
    for name in _history_tool_names(body):
        names.add(name)
    out: dict[str, Any] = {
        "model": opts.target_model,
        "messages": _Converter(opts, names).messages(body),
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
    text = raw.strip()
    if not text:
        return {}
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
            except ValueError:
                value = None
    if isinstance(value, dict):
        return value
    log.warning("unparsable tool arguments replaced by {}: %.200s", raw)
    return {}


def _estimate_output(pieces: list[str]) -> int:
    return estimate_text("".join(pieces))


def final_usage(upstream: Usage | None, input_estimate: int, output_pieces: list[str]) -> Usage:
    """Upstream usage, or an estimate (``estimated=True``) when it sent none.

    An ``output_tokens`` of 0 after content was produced is replaced by the estimate too:
    Claude Code overwrites its count with whatever the final usage says.
    """
    produced = any(output_pieces)
    if upstream is None:
        output = max(1, _estimate_output(output_pieces)) if produced else 0
        return Usage(input_tokens=input_estimate, output_tokens=output, estimated=True)
    usage = Usage(
        input_tokens=upstream.input_tokens,
        output_tokens=upstream.output_tokens,
        cache_read_tokens=upstream.cache_read_tokens,
        cache_write_tokens=upstream.cache_write_tokens,
        reasoning_tokens=upstream.reasoning_tokens,
        estimated=upstream.estimated,
    )
    if usage.output_tokens == 0 and produced:
        usage.output_tokens = max(1, _estimate_output(output_pieces))
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
    texts = [t for t in (content, message.get("refusal")) if isinstance(t, str) and _nonblank(t)]
    return "\n\n".join(texts)


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
    ``system_fingerprint``, reasoning text unless ``ctx.thinking``, whitespace-only text.
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
    reasoning = reasoning_text(message)
    if reasoning and ctx.thinking:
        content.append({"type": "thinking", "thinking": reasoning, "signature": ""})
    text = _message_text(message)
    if text:
        content.append({"type": "text", "text": text})
    tool_blocks = _tool_use_blocks(message, ctx.names)
    content.extend(tool_blocks)

    finish = choice.get("finish_reason")
    reason, sequence = stop_reason(
        finish if isinstance(finish, str) else None,
        bool(tool_blocks),
        matched_stop(choice, ctx.stop_sequences),
    )
    pieces = [reasoning, text] + [orjson.dumps(b["input"]).decode() for b in tool_blocks]
    usage = final_usage(from_openai(resp.get("usage")), ctx.input_estimate, pieces)
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


# ---------------------------------------------------------------------------------------------
# Errors

# "…maximum context length is 8192 tokens. However, you requested 9000 tokens (5000 in the
# messages, 4000 in the completion)…" (OpenAI, DeepSeek, older vLLM).
_CTX_REQUESTED = re.compile(
    r"maximum context length is (\d+) tokens.*?requested \d+ tokens \(([^)]*)\)", re.I | re.S
)
_CTX_PART = re.compile(r"(\d+) in the (\w+)")
# vLLM ≥ 0.6: "'max_tokens' or 'max_completion_tokens' is too large: 32000. This model's maximum
# context length is 32768 tokens and your request has 1200 input tokens (…)".
_CTX_VLLM = re.compile(
    r"too large: (\d+)\.\s*This model's maximum context length is (\d+) tokens and your "
    r"request has (\d+) input tokens",
    re.I,
)
# SGLang: "…maximum context length of 4096 tokens. You requested a total of 5000 tokens: 1000
# tokens from the input messages and 4000 tokens for the completion…".
_CTX_SGLANG = re.compile(
    r"maximum context length of (\d+) tokens.*?(\d+) tokens from the input messages and (\d+) "
    r"tokens for the completion",
    re.I | re.S,
)
# Text Generation Inference: "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 1000
# `inputs` tokens and 4000 `max_new_tokens`".
_CTX_TGI = re.compile(
    r"must be <= (\d+)\. Given: (\d+) `inputs` tokens and (\d+) `max_new_tokens`", re.I
)


def context_limit(message: str) -> tuple[int, int, int] | None:
    """(input, max_tokens, limit) from a context-length error, when all three can be read."""
    m = _CTX_REQUESTED.search(message)
    if m:
        parts = {kind.lower(): int(n) for n, kind in _CTX_PART.findall(m.group(2))}
        if "completion" in parts:
            completion = parts.pop("completion")
            return sum(parts.values()), completion, int(m.group(1))
    m = _CTX_VLLM.search(message)
    if m:
        return int(m.group(3)), int(m.group(1)), int(m.group(2))
    m = _CTX_SGLANG.search(message)
    if m:
        return int(m.group(2)), int(m.group(3)), int(m.group(1))
    m = _CTX_TGI.search(message)
    if m:
        return int(m.group(2)), int(m.group(3)), int(m.group(1))
    return None


def _context_message(message: str) -> str | None:
    found = context_limit(message)
    if found is None:
        return None
    # Claude Code matches exactly this wording on a 400 to lower max_tokens and retry
    # (PROTOCOL.md §3.2, CCDIVE §3.7).
    return "input length and `max_tokens` exceed context limit: {} + {} > {}".format(*found)


_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_MAX_MESSAGE = 2000


def _detail_text(detail: Any) -> str:
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        # FastAPI validation errors: [{"loc": [...], "msg": "...", "type": "..."}]
        items = []
        for item in detail:
            if isinstance(item, dict) and isinstance(item.get("msg"), str):
                loc = item.get("loc")
                where = ".".join(str(x) for x in loc) if isinstance(loc, list) else ""
                items.append(f"{where}: {item['msg']}" if where else item["msg"])
            else:
                items.append(orjson.dumps(item).decode())
        return "; ".join(items)
    return orjson.dumps(detail).decode()


def _error_fields(data: Any) -> tuple[str, str | None, int | None]:
    """(message, code, status hint) of a decoded error body or in-stream error payload."""
    if isinstance(data, str):
        return data, None, None
    if not isinstance(data, dict):
        return orjson.dumps(data).decode(), None, None
    err = data.get("error")
    if isinstance(err, dict):
        msg = err.get("message")
        message = msg if isinstance(msg, str) and msg else orjson.dumps(err).decode()
        code = err.get("code")
        etype = err.get("type")
        code_str = code if isinstance(code, str) else etype if isinstance(etype, str) else None
        status = code if isinstance(code, int) and not isinstance(code, bool) else None
        return message, code_str, status
    if isinstance(err, str) and err:
        return err, None, None
    if "detail" in data:
        return _detail_text(data["detail"]), None, None
    msg = data.get("message")
    if isinstance(msg, str) and msg:
        code = data.get("code")
        status = code if isinstance(code, int) and not isinstance(code, bool) else None
        etype = data.get("type")
        return msg, etype if isinstance(etype, str) else None, status
    return orjson.dumps(data).decode(), None, None


def _build_error(
    status: int, message: str, code: str | None, retry_after: float | None
) -> GatewayError:
    rewritten = _context_message(message)
    if rewritten is not None:
        return InvalidRequestError(rewritten, code=code)
    err = from_upstream_status(status, message, retry_after=retry_after, code=code)
    if status == 429 and code == "insufficient_quota":
        # Out of credit is not going to clear by retrying (PROTOCOL.md §6.11).
        err.headers["x-should-retry"] = "false"
    return err


def upstream_error(status: int, body: bytes, retry_after: float | None = None) -> GatewayError:
    """An OpenAI backend's non-2xx answer as the error the Anthropic client sees (§6.11).

    The message is kept verbatim from ``{"error":{"message"}}``, ``{"error": "..."}``,
    ``{"detail": ...}``, ``{"message": ...}`` or the plain-text body; an HTML page becomes a
    one-line summary with its title; context-length errors are rewritten into Anthropic's
    wording when the input, ``max_tokens`` and limit can all be read from them.
    """
    text = body.decode("utf-8", "replace").strip()
    code: str | None = None
    if not text:
        message = f"upstream returned HTTP {status} with an empty body"
    else:
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError:
            data = None
            if text.startswith("<") or "<html" in text[:500].lower():
                title = _TITLE.search(text)
                summary = " ".join(title.group(1).split()) if title else ""
                message = f"upstream returned an HTML error page (HTTP {status})"
                if summary:
                    message += f": {summary}"
            else:
                message = text[:_MAX_MESSAGE]
        else:
            message, code, _ = _error_fields(data)
    return _build_error(status, message, code, retry_after)


_STREAM_STATUS_HINTS = (
    ("overload", 503),
    ("service_unavailable", 503),
    ("rate_limit", 429),
    ("insufficient_quota", 429),
    ("timeout", 504),
    ("invalid_request", 400),
    ("context_length", 400),
)


def error_from_payload(payload: Any) -> GatewayError:
    """An error object inside a 200 answer (``data: {"error": …}`` or a JSON body) as a
    GatewayError: the status comes from an integer ``code`` (vLLM) or the type/code words."""
    message, code, status = _error_fields({"error": payload})
    if status is None or not 400 <= status <= 599:
        status = 500
        hint = (code or "").lower()
        for word, mapped in _STREAM_STATUS_HINTS:
            if word in hint:
                status = mapped
                break
    return _build_error(status, message, code, None)
