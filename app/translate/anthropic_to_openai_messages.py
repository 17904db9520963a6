"""Anthropic message, block and tool shapes as OpenAI Chat Completions messages (A→O).

One pass over ``system`` and ``messages`` (PROTOCOL.md §6.2): tool results first as ``tool``
messages, media moved out of them, dangling calls answered, orphans turned into text, every
system text hoisted into one leading system message; malformed blocks raise
InvalidRequestError naming their path (``messages.2.content.0: …``).
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal, Required, TypedDict

import orjson

from app.errors import InvalidRequestError
from app.translate.ids import ToolNames, mistral_tool_id, sanitize_tool_id
from app.translate.options import REPLAYED, BackendOptions

log = logging.getLogger(__name__)

IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
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
    strict: bool


class OpenAITool(TypedDict):
    type: Literal["function"]
    function: OpenAIFunction


def _bad(path: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{path}: {message}")


def nonblank(text: str) -> bool:
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
        return [_text_part(text)] if nonblank(text) else []
    if stype == "content":
        content = source.get("content")
        parts: list[dict[str, Any]] = []
        if isinstance(content, str):
            if nonblank(content):
                parts.append(_text_part(content))
        elif isinstance(content, list):
            for k, inner in enumerate(content):
                ipath = f"{path}.source.content.{k}"
                if not isinstance(inner, dict):
                    raise _bad(ipath, "each content block must be an object")
                itype = inner.get("type")
                if itype == "text":
                    text = _block_text(ipath, inner)
                    if nonblank(text):
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
            if nonblank(text):
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
            return [_text_part(text)] if nonblank(text) else []
        if btype == "image":
            return [_image_part(path, block)]
        if btype == "document":
            return _document_parts(path, block)
        if btype == "search_result":
            text = _search_result_text(path, block)
            return [_text_part(text)] if nonblank(text) else []
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
                    if nonblank(text):
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
        return self.tool_id(raw_id), text, media

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
        last = self.out[-1] if self.out else None
        if last is not None and last["role"] == "user":
            # Two user turns in a row (sent so, or an empty assistant turn between them was
            # dropped) go as one: chat templates of Llama, Mistral and others on local
            # servers refuse a conversation whose roles do not alternate (§6.2).
            before = last["content"]
            user_parts = ([_text_part(before)] if isinstance(before, str) else before) + user_parts
            self.out.pop()
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
                if nonblank(text):
                    texts.append(text)
            elif btype == "thinking":
                thinking = block.get("thinking")
                if not isinstance(thinking, str):
                    raise _bad(bpath, "thinking block requires a string 'thinking'")
                if self.opts.reasoning in REPLAYED and nonblank(thinking):
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
            message[REPLAYED[self.opts.reasoning]] = "\n\n".join(reasoning)
        if calls:
            message["tool_calls"] = calls
        self.out.append(message)
        self.pending = [call["id"] for call in calls]

    def tool_id(self, raw_id: str) -> str:
        """A history tool-call id as the backend takes it (§6.10)."""
        if self.opts.mistral_tool_ids:
            return mistral_tool_id(raw_id)
        return sanitize_tool_id(raw_id)

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
            "id": self.tool_id(raw_id),
            "type": "function",
            "function": {
                "name": self.names.to_backend(name),
                "arguments": orjson.dumps(tool_input).decode(),
            },
        }


def history_tool_names(body: dict[str, Any]) -> list[str]:
    """Names of the tool_use blocks in the history, so their shortened forms map back too."""
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


def convert_tools(body: dict[str, Any], names: ToolNames) -> tuple[list[OpenAITool], set[str]]:
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
        strict = tool.get("strict")
        if strict is not None:
            if not isinstance(strict, bool):
                raise _bad(f"{path}.strict", "Input should be a valid boolean")
            function["strict"] = strict  # the same guarantee on both sides: schema-valid input
        tools.append({"type": "function", "function": function})
    return tools, dropped


def convert_messages(
    body: dict[str, Any], opts: BackendOptions, names: ToolNames
) -> list[dict[str, Any]]:
    """``system`` and ``messages`` as OpenAI messages (PROTOCOL.md §6.2); see the module doc."""
    return _Converter(opts, names).messages(body)
