"""Local token estimates, for when no backend tokenizer is available.

The estimate is deliberately a little high rather than low: it feeds Claude
Code's context meter, the ``message_start`` input count, TPM reservations and
the context-window clamp, all of which are safer over than under. English prose
and code run about 3.5 characters a token with common BPE vocabularies; CJK
and other non-ASCII text about one token a character. Images count as the
~1,600 tokens Anthropic charges for a large image; PDFs by their size.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

IMAGE_TOKENS = 1600
MESSAGE_OVERHEAD = 4
TOOL_OVERHEAD = 8


def estimate_text(text: str) -> int:
    """Tokens in ``text``: ASCII at 3.5 characters a token, anything else one a character."""
    if not text:
        return 0
    chars = len(text)
    if text.isascii():
        return math.ceil(chars / 3.5)
    raw = len(text.encode("utf-8", "surrogatepass"))
    # A non-ASCII character takes 2-4 bytes; count each as 2 extra bytes on average.
    non_ascii = min(chars, (raw - chars + 1) // 2)
    return math.ceil((chars - non_ascii) / 3.5 + non_ascii)


def _estimate_base64(data: str) -> int:
    # Decoded size / 4: a rough count for text extracted from a PDF page stream.
    return max(1, (len(data) * 3 // 4) // 40)


def _estimate_block(block: Any) -> int:
    """Tokens in a content block, the blocks in a tool result's content counted with it.

    Tool results inside tool results are walked with a list, not by recursion: the gateway
    estimates a body before a translation or a backend refuses such nesting, and a client
    can nest them as deep as JSON is read (1,024 levels, two a tool result), past Python's
    recursion limit, where a recursive walk ended the request in a 500."""
    total = 0
    pending = [block]
    while pending:
        item = pending.pop()
        if isinstance(item, dict) and item.get("type") == "tool_result":
            content = item.get("content")
            total += MESSAGE_OVERHEAD
            if isinstance(content, list):
                pending += content
            else:
                total += estimate_text(str(content or ""))
        else:
            total += _estimate_leaf(item)
    return total


def _estimate_leaf(block: Any) -> int:
    """Tokens in a content block other than a tool result."""
    if isinstance(block, str):
        return estimate_text(block)
    if not isinstance(block, dict):
        return 0
    btype = block.get("type")
    if btype == "text":
        return estimate_text(str(block.get("text") or ""))
    if btype in ("image", "image_url"):
        return IMAGE_TOKENS
    if btype == "thinking":
        return estimate_text(str(block.get("thinking") or ""))
    if btype == "tool_use":
        return estimate_text(str(block.get("name") or "")) + estimate_text(
            orjson.dumps(block.get("input") or {}).decode()
        )
    if btype in ("document", "file"):
        source = block.get("source") or block.get("file") or {}
        if isinstance(source, dict):
            data = source.get("data") or source.get("file_data") or ""
            if source.get("type") == "text":
                return estimate_text(str(data))
            if isinstance(data, str) and data:
                return _estimate_base64(data)
        return IMAGE_TOKENS
    return estimate_text(orjson.dumps(block).decode())


def _estimate_content(content: Any) -> int:
    if isinstance(content, list):
        return sum(_estimate_block(b) for b in content)
    if isinstance(content, str):
        return estimate_text(content)
    return 0


def estimate_anthropic_input(body: dict[str, Any]) -> int:
    """Input tokens of an Anthropic Messages request: system, messages and tools."""
    total = _estimate_content(body.get("system"))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            total += MESSAGE_OVERHEAD + _estimate_content(message.get("content"))
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        total += TOOL_OVERHEAD * len(tools) + estimate_text(orjson.dumps(tools).decode())
    return max(total, 1)


def estimate_openai_input(body: dict[str, Any]) -> int:
    """Prompt tokens of an OpenAI Chat Completions request: messages and tools."""
    total = 0
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        total += MESSAGE_OVERHEAD + _estimate_content(message.get("content"))
        calls = message.get("tool_calls")
        if isinstance(calls, list) and calls:
            total += estimate_text(orjson.dumps(calls).decode())
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if isinstance(reasoning, str):
            total += estimate_text(reasoning)
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        total += TOOL_OVERHEAD * len(tools) + estimate_text(orjson.dumps(tools).decode())
    return max(total, 1)
