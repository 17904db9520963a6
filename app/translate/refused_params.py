"""What a backend refuses in a translated request that it means the same without: to an
OpenAI-compatible one, optional fields and the null content of a turn that only calls
tools; to an Anthropic one, a thinking budget where the model only thinks adaptively.

The gateway adds a few fields a backend may not know: ``reasoning_effort`` (Claude Code
always asks for thinking), ``stream_options``, ``parallel_tool_calls``, ``user``, ``top_k``,
``chat_template_kwargs``.
A backend that refuses one answers 400 naming it (OpenAI: "Unrecognized request argument
supplied: …", "Unsupported parameter: …"; pydantic-strict servers: "Extra inputs are not
permitted"; Ollama: "… does not support thinking"). Such a request is worth sending again
without the field (the client asked for nothing that the field alone gives), where any
other 400 is the client's to see.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

# What the translator may add that a request means the same without.
OPTIONAL = (
    "reasoning_effort",
    "stream_options",
    "parallel_tool_calls",
    "user",
    "top_k",
    "chat_template_kwargs",
)
_REFUSAL = re.compile(
    r"not supported|unsupported|unrecognized|not permitted|not allowed|does not support|"
    r"unknown (?:field|parameter|argument)|extra (?:inputs|fields)|unexpected (?:field|keyword)",
    re.IGNORECASE,
)
_NO_THINKING = re.compile(r"(?:does not|doesn't|not) support (?:thinking|reasoning)", re.I)

# Not a field but a shape: an assistant message that only calls tools goes with
# ``"content": null``, OpenAI's own form (``""`` makes Ollama's qwen3-coder template switch
# from tool calls to text markup, ollama/ollama#14181). Some servers refuse the null:
# Ollama "invalid message content type: <nil>", older LM Studio "'content' field must be a
# string or an array of objects", mistral-common "Input should be a valid string". They
# get ``""``.
NULL_CONTENT = "content: null"
_NULL_REFUSED = re.compile(
    r"content[\s\S]{0,80}?(?:<nil>|\bnull\b|\bnone\b|must be a string|expected a string|"
    r"valid string)",
    re.IGNORECASE,
)


def refused_params(message: str, sent: Mapping[str, Any]) -> tuple[str, ...]:
    """The optional fields of ``sent`` that the backend's error ``message`` refuses, or
    `NULL_CONTENT` when it refuses an assistant message's null content."""
    if _NULL_REFUSED.search(message) and any(_null_content(m) for m in _messages(sent)):
        return (NULL_CONTENT,)
    if not _REFUSAL.search(message):
        return ()
    found = tuple(name for name in OPTIONAL if name in sent and name in message)
    if not found and "reasoning_effort" in sent and _NO_THINKING.search(message):
        return ("reasoning_effort",)  # Ollama names the feature, not the field
    return found


# Anthropic's 400 for a thinking budget on a model that only thinks adaptively (Opus 4.7 on):
# '"thinking.type.enabled" is not supported for this model. Use "thinking.type.adaptive"
# and "output_config.effort" to control thinking behavior.'
_ADAPTIVE_ONLY = re.compile(r"thinking\.type\.adaptive", re.IGNORECASE)


def budget_refused(message: str, sent: Mapping[str, Any]) -> bool:
    """True when an Anthropic backend's 400 ``message`` refuses the budgeted thinking the
    translated request ``sent``: the model is to be asked adaptively."""
    thinking = sent.get("thinking")
    return (
        isinstance(thinking, dict)
        and thinking.get("type") == "enabled"
        and bool(_ADAPTIVE_ONLY.search(message))
    )


def without_refused(body: dict[str, Any], refused: Iterable[str]) -> None:
    """Change the translated ``body`` in place so it has none of what was ``refused``."""
    for name in refused:
        if name != NULL_CONTENT:
            body.pop(name, None)
            continue
        body["messages"] = [dict(m, content="") if _null_content(m) else m for m in _messages(body)]


def _messages(body: Mapping[str, Any]) -> list[Any]:
    messages = body.get("messages")
    return messages if isinstance(messages, list) else []


def _null_content(message: Any) -> bool:
    return (
        isinstance(message, dict)
        and message.get("role") == "assistant"
        and "content" in message
        and message["content"] is None
    )
