"""Optional fields of a translated request that an OpenAI-compatible backend refuses.

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
from collections.abc import Mapping
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


def refused_params(message: str, sent: Mapping[str, Any]) -> tuple[str, ...]:
    """The optional fields of ``sent`` that the backend's error ``message`` refuses."""
    if not _REFUSAL.search(message):
        return ()
    found = tuple(name for name in OPTIONAL if name in sent and name in message)
    if not found and "reasoning_effort" in sent and _NO_THINKING.search(message):
        return ("reasoning_effort",)  # Ollama names the feature, not the field
    return found
