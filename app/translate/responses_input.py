"""The Responses API ``input`` items as Chat Completions messages.

Messages, function and custom tool calls and their outputs, and reasoning items (as
``reasoning_content`` and LiteLLM-style ``thinking_blocks`` on the assistant message they
precede); the items of hosted tools are dropped, those that cannot be replayed refused.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

import orjson

from app.translate.anthropic_to_openai_messages import DOCUMENT_MARKER, IMAGE_MARKER
from app.translate.responses_context import REDACTED_PREFIX
from app.translate.responses_tools import ToolSet, flat_name
from app.translate.responses_values import (
    array_at,
    bad,
    effort_at,
    name_at,
    object_at,
    string_at,
)

Message = dict[str, Any]
Part = dict[str, Any]

# OpenAI's own encrypted reasoning is a Fernet token (version byte 0x80): never an Anthropic
# signature, which the backend would refuse with the whole request (a conversation begun on
# api.openai.com and continued here).
_OPENAI_ENCRYPTED = "gAAAAA"
_IMAGE_DETAILS = {"auto": "auto", "low": "low", "high": "high", "original": "high"}

# Input items of hosted tools that are dropped: the messages after them already say what
# came of them, so the conversation still reads right without them.
_DROPPED_ITEMS = frozenset(
    {
        "web_search_call",
        "file_search_call",
        "image_generation_call",
        "code_interpreter_call",
        "mcp_list_tools",
        "mcp_call",
        "mcp_approval_request",
        "tool_search_call",
        "program",
        "program_output",
    }
)
# Input items that cannot be replayed without what the gateway lacks, and why (400).
_REFUSED_ITEMS = {
    "computer_call": "computer use needs the hosted computer tool, which this gateway lacks",
    "computer_call_output": "computer use needs the hosted computer tool, which this gateway lacks",
    "local_shell_call": "the hosted local_shell tool is not available here; "
    "define a function tool instead",
    "local_shell_call_output": "the hosted local_shell tool is not available here; "
    "define a function tool instead",
    "shell_call": "the hosted shell tool is not available here; define a function tool instead",
    "shell_call_output": "the hosted shell tool is not available here; "
    "define a function tool instead",
    "apply_patch_call": "the hosted apply_patch tool is not available here; "
    "define a function tool instead",
    "apply_patch_call_output": "the hosted apply_patch tool is not available here; "
    "define a function tool instead",
    "mcp_approval_response": "this gateway does not call MCP servers",
    "compaction": "they hold context encrypted by OpenAI, which this gateway cannot read; "
    "send the conversation uncompacted",
    "compaction_trigger": "this gateway does not compact conversations",
    "item_reference": "this gateway stores no items; send the items themselves in 'input'",
}


class ChatToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: dict[str, str]


def _text_part(part: dict[str, Any], key: str, param: str) -> Part:
    return {"type": "text", "text": string_at(part.get(key), f"{param}.{key}")}


def _image_part(part: dict[str, Any], param: str) -> Part:
    url = part.get("image_url")
    if url is None:
        if part.get("file_id") is not None:
            raise bad(
                f"Invalid '{param}.file_id': this gateway has no file store; send the image "
                "as 'image_url' (an https URL or a base64 data URL).",
                f"{param}.file_id",
            )
        raise bad(f"Missing required parameter: '{param}.image_url'.", f"{param}.image_url")
    image: dict[str, str] = {"url": name_at(url, f"{param}.image_url")}
    detail = part.get("detail")
    if isinstance(detail, str) and detail in _IMAGE_DETAILS:
        image["detail"] = _IMAGE_DETAILS[detail]
    return {"type": "image_url", "image_url": image}


def _file_part(part: dict[str, Any], param: str) -> Part:
    if part.get("file_id") is not None:
        raise bad(
            f"Invalid '{param}.file_id': this gateway has no file store; send the file inline "
            "as 'file_data'.",
            f"{param}.file_id",
        )
    if part.get("file_url") is not None:
        raise bad(
            f"Invalid '{param}.file_url': this gateway does not fetch files; send the file "
            "inline as 'file_data'.",
            f"{param}.file_url",
        )
    data = part.get("file_data")
    if data is None:
        raise bad(f"Missing required parameter: '{param}.file_data'.", f"{param}.file_data")
    file = {"file_data": name_at(data, f"{param}.file_data")}
    filename = part.get("filename")
    if filename is not None:
        file["filename"] = string_at(filename, f"{param}.filename")
    return {"type": "file", "file": file}


def _parts(content: Any, param: str, allowed: tuple[str, ...], owner: str) -> list[Part]:
    """Chat content parts for a list of Responses content parts of the types ``owner`` (what
    holds them, for the error message) may hold."""
    out: list[Part] = []
    for j, part in enumerate(array_at(content, param)):
        p = f"{param}[{j}]"
        part = object_at(part, p)
        kind = part.get("type")
        if kind not in allowed:
            raise bad(
                f"Invalid value for '{p}.type': {kind!r}; {owner} take " + ", ".join(allowed) + ".",
                f"{p}.type",
            )
        if kind in ("input_text", "output_text"):
            out.append(_text_part(part, "text", p))
        elif kind == "refusal":
            out.append(_text_part(part, "refusal", p))
        elif kind == "input_image":
            out.append(_image_part(part, p))
        else:
            out.append(_file_part(part, p))
    return out


def _simplified(parts: list[Part]) -> str | list[Part]:
    """A lone text part as a plain string: what every chat backend's template reads."""
    if len(parts) == 1 and parts[0]["type"] == "text":
        text: str = parts[0]["text"]
        return text
    return parts


_USER_PARTS = ("input_text", "output_text", "input_image", "input_file")
_SYSTEM_PARTS = ("input_text", "output_text")
_ASSISTANT_PARTS = ("output_text", "input_text", "refusal")
_OUTPUT_PARTS = ("input_text", "input_image", "input_file")


def _reasoning_text(item: dict[str, Any], param: str) -> str:
    """The reasoning's text: its ``content`` (the full reasoning) when given, else its summary."""
    texts: list[str] = []
    for key, kind in (("content", "reasoning_text"), ("summary", "summary_text")):
        raw = item.get(key)
        if raw is None:
            continue
        for j, part in enumerate(array_at(raw, f"{param}.{key}")):
            p = f"{param}.{key}[{j}]"
            part = object_at(part, p)
            if part.get("type") != kind:
                raise bad(f"Invalid value for '{p}.type': expected {kind!r}.", f"{p}.type")
            texts.append(string_at(part.get("text"), f"{p}.text"))
        if texts:
            break
    return "\n\n".join(texts)


def _thinking_block(text: str, encrypted: Any, param: str) -> Part | None:
    if encrypted is None:
        return None
    encrypted = string_at(encrypted, f"{param}.encrypted_content")
    if encrypted.startswith(REDACTED_PREFIX):
        data = encrypted[len(REDACTED_PREFIX) :]
        return {"type": "redacted_thinking", "data": data} if data else None
    if not encrypted or encrypted.startswith(_OPENAI_ENCRYPTED):
        return None
    return {"type": "thinking", "thinking": text, "signature": encrypted}


class Conversation:
    """Walks ``input`` once, building chat messages and collecting the tools items add."""

    def __init__(self, tools: ToolSet) -> None:
        self.tools = tools
        self.messages: list[Message] = []
        # The assistant message function_call items still join (the one just made).
        self.open: Message | None = None
        # Reasoning items waiting for the assistant message they belong to.
        self.reasoning: list[tuple[str, Part | None]] = []
        # The last configuration_update's settings, when one set them, and where.
        self.effort: str | None = None
        self.effort_updated = False
        self.text_format: dict[str, Any] | None = None
        self.text_format_param = "text.format"

    def close(self) -> None:
        """A turn that is not the assistant's: reasoning with no output after it is dropped."""
        self.open = None
        self.reasoning = []

    def assistant(self, content: Any) -> Message:
        message: Message = {"role": "assistant", "content": content}
        self.messages.append(message)
        self.open = message
        self.attach(message)
        return message

    def attach(self, message: Message) -> None:
        texts = [text for text, _ in self.reasoning if text]
        if texts:
            before = message.get("reasoning_content")
            message["reasoning_content"] = "\n\n".join([before, *texts] if before else texts)
        blocks = [block for _, block in self.reasoning if block is not None]
        if blocks:
            message.setdefault("thinking_blocks", []).extend(blocks)
        self.reasoning = []

    def tool_call(self, item: dict[str, Any], param: str, arguments: str) -> None:
        name = name_at(item.get("name"), f"{param}.name")
        namespace = item.get("namespace")
        if namespace is not None:
            namespace = name_at(namespace, f"{param}.namespace")
        call: ChatToolCall = {
            "id": name_at(item.get("call_id"), f"{param}.call_id"),
            "type": "function",
            "function": {"name": flat_name(namespace, name), "arguments": arguments},
        }
        message = self.open if self.open is not None else self.assistant(None)
        self.attach(message)
        message.setdefault("tool_calls", []).append(call)

    def tool_output(self, item: dict[str, Any], param: str) -> None:
        call_id = name_at(item.get("call_id"), f"{param}.call_id")
        output = item.get("output")
        if output is None:
            raise bad(f"Missing required parameter: '{param}.output'.", f"{param}.output")
        content: str | list[Part]
        if isinstance(output, str):
            content = output
        elif isinstance(output, list):
            content = _simplified(_parts(output, f"{param}.output", _OUTPUT_PARTS, "tool outputs"))
        else:
            raise bad(
                f"Invalid type for '{param}.output': expected a string or an array.",
                f"{param}.output",
            )
        self.close()
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": content})

    def message(self, item: dict[str, Any], param: str) -> None:
        role = item.get("role")
        content = item.get("content")
        if role not in ("user", "assistant", "system", "developer"):
            raise bad(
                f"Invalid value for '{param}.role': {role!r}; expected 'user', 'assistant', "
                "'system' or 'developer'.",
                f"{param}.role",
            )
        if content is None:
            raise bad(f"Missing required parameter: '{param}.content'.", f"{param}.content")
        if not isinstance(content, str | list):
            raise bad(
                f"Invalid type for '{param}.content': expected a string or an array.",
                f"{param}.content",
            )
        if role == "assistant":
            self.assistant_message(content, f"{param}.content")
            return
        self.close()
        if not isinstance(content, str):
            if role == "user":
                parts = _parts(content, f"{param}.content", _USER_PARTS, "user messages")
            else:
                parts = _parts(content, f"{param}.content", _SYSTEM_PARTS, f"{role} messages")
            content = _simplified(parts)
        # Chat Completions' developer role is OpenAI's alone; every backend reads system.
        self.messages.append({"role": "user" if role == "user" else "system", "content": content})

    def assistant_message(self, content: str | list[Any], param: str) -> None:
        if isinstance(content, str):
            self.assistant(content)
            return
        texts: list[str] = []
        refusals: list[str] = []
        for j, part in enumerate(_parts(content, param, _ASSISTANT_PARTS, "assistant messages")):
            kind = content[j]["type"]
            (refusals if kind == "refusal" else texts).append(part["text"])
        message = self.assistant("".join(texts) if texts or not refusals else None)
        if refusals:
            message["refusal"] = "".join(refusals)

    def item(self, i: int, item: Any) -> None:
        param = f"input[{i}]"
        item = object_at(item, param)
        kind = item.get("type")
        if kind is None:
            # Both may leave out their type: an easy input message and an item reference.
            kind = "message" if "role" in item else "item_reference" if "id" in item else None
        if kind == "message":
            self.message(item, param)
        elif kind == "function_call":
            arguments = item.get("arguments")
            if isinstance(arguments, dict):
                arguments = orjson.dumps(arguments).decode()
            self.tool_call(item, param, string_at(arguments, f"{param}.arguments"))
        elif kind == "custom_tool_call":
            text = string_at(item.get("input"), f"{param}.input")
            self.tool_call(item, param, orjson.dumps({"input": text}).decode())
        elif kind in ("function_call_output", "custom_tool_call_output"):
            self.tool_output(item, param)
        elif kind == "reasoning":
            text = _reasoning_text(item, param)
            self.reasoning.append(
                (text, _thinking_block(text, item.get("encrypted_content"), param))
            )
        elif kind in ("additional_tools", "tool_search_output"):
            self.tools.add_all(item.get("tools"), f"{param}.tools")
        elif kind == "configuration_update":
            self.configuration(item, param)
        elif isinstance(kind, str) and kind in _DROPPED_ITEMS:
            return
        elif isinstance(kind, str) and kind in _REFUSED_ITEMS:
            raise bad(
                f"Invalid '{param}': '{kind}' items cannot be sent through this gateway: "
                f"{_REFUSED_ITEMS[kind]}.",
                param,
            )
        else:
            raise bad(f"Invalid '{param}': unknown input item type {kind!r}.", param)

    def configuration(self, item: dict[str, Any], param: str) -> None:
        """Settings in force from this item on (Codex's "responses-lite" bodies): the last wins."""
        reasoning = item.get("reasoning")
        if reasoning is not None and "effort" in object_at(reasoning, f"{param}.reasoning"):
            self.effort = effort_at(reasoning["effort"], f"{param}.reasoning.effort")
            self.effort_updated = True
        text = item.get("text")
        if text is not None and "format" in object_at(text, f"{param}.text"):
            self.text_format_param = f"{param}.text.format"
            self.text_format = object_at(text["format"], self.text_format_param)


def tool_media_moved(messages: list[Any]) -> list[Any]:
    """``messages`` with the images and files of tool messages moved into a user message
    after them, each left as a marker in the tool's text, for a chat backend taken as is.

    A ``function_call_output`` may hold images (Codex's view_image); Chat Completions takes
    only text in a tool message (the Anthropic translator keeps them in the tool result
    instead). Returns ``messages`` itself when no tool message holds any.
    """
    out: list[Any] = []
    moved: list[Part] = []
    changed = False
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if moved and role != "tool":
            out.append({"role": "user", "content": moved})
            moved = []
        content = message.get("content") if role == "tool" else None
        if not isinstance(content, list) or all(
            isinstance(p, dict) and p.get("type") == "text" for p in content
        ):
            out.append(message)
            continue
        changed = True
        texts: list[str] = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind in ("image_url", "file"):
                moved.append(part)
                texts.append(IMAGE_MARKER if kind == "image_url" else DOCUMENT_MARKER)
        out.append(dict(message, content="\n".join(texts)))
    if moved:
        out.append({"role": "user", "content": moved})
    return out if changed else messages
