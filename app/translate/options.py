"""What a translator needs to know about the backend it writes for.

Built by the gateway from the route and the upstream's settings; the
translators read it and never look anything up themselves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

# api.openai.com refuses a request with more than four ``stop`` entries (PROTOCOL.md §6.1).
OPENAI_MAX_STOP = 4
OPENAI_API_HOST = "api.openai.com"
# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5…, codex-mini): they reason, take
# ``max_completion_tokens`` only, and refuse any temperature or top_p but the default.
_OPENAI_REASONING_MODEL = re.compile(r"(?:o\d|gpt-5|codex)(?![a-z])", re.IGNORECASE)
MISTRAL_API_HOST = "api.mistral.ai"
_MISTRAL_MODEL = re.compile(
    r"(?:mistral|mixtral|magistral|codestral|devstral|ministral|pixtral)", re.I
)


# The ``reasoning`` settings that send earlier thinking back, and the field each writes.
REPLAYED = {"replay": "reasoning_content", "replay_reasoning": "reasoning"}

# A Claude model's version in its name, wherever it is served and whatever the family
# ("claude-opus-4-8", "claude-sonnet-4-6-20260217", "claude-fable-5", Bedrock's
# "anthropic.claude-sonnet-4-6-v1:0"; before 4, "claude-3-5-sonnet"); a second number of
# more than two digits is a date ("claude-opus-4-20250514" is 4.0).
_CLAUDE_VERSION = re.compile(r"claude-(?:[a-z]+-)?(\d+)(?:-(\d{1,2})(?!\d))?", re.IGNORECASE)
ADAPTIVE_SINCE = (4, 6)


@lru_cache(maxsize=256)
def adaptive_thinking(model: str) -> bool:
    """True for Claude models from 4.6 on, which think adaptively: asked for thinking with
    ``{"type": "adaptive"}`` and ``output_config.effort`` (what Claude Code 2.1 sends them)
    rather than a ``budget_tokens``, which they deprecate."""
    found = _CLAUDE_VERSION.search(model)
    if found is None:
        return False
    major, minor = int(found.group(1)), int(found.group(2) or 0)
    return (major, minor) >= ADAPTIVE_SINCE


@dataclass(slots=True)
class BackendOptions:
    """Per-request facts about the target: model name and the upstream's quirks.

    Read only, by convention: made for every translated request, and a frozen
    dataclass's ``__init__`` sets each of its fields through
    ``object.__setattr__`` (~1.7 k instructions a request more)."""

    target_model: str
    # OpenAI backends: "max_tokens" or "max_completion_tokens" (o-series, newer APIs).
    max_tokens_field: str = "max_tokens"
    # OpenAI backends: "replay" sends earlier thinking back as reasoning_content,
    # "replay_reasoning" as reasoning (vLLM >= 0.16 reads only that field), "strip" drops
    # it, "off" drops it and never asks the backend to reason.
    reasoning: str = "strip"
    # OpenAI backends: forward Anthropic top_k (vLLM, SGLang, llama.cpp accept it).
    top_k: bool = False
    # OpenAI backends: also switch thinking through ``chat_template_kwargs`` (vLLM, SGLang,
    # llama.cpp), which hybrid models' chat templates read where they ignore
    # ``reasoning_effort``.
    chat_template_thinking: bool = False
    # OpenAI backends: the most ``stop`` entries the backend takes (None: no limit); an
    # Anthropic client's first ones are sent.
    max_stop_sequences: int | None = None
    # OpenAI backends: send a client's temperature and top_p (OpenAI's reasoning models
    # refuse them).
    sampling: bool = True
    # OpenAI backends: tool-call ids in the history as nine letters and digits (Mistral).
    mistral_tool_ids: bool = False
    # OpenAI backends that refuse any field outside their own schema (Mistral's API): no
    # ``stream_options`` (usage comes in the last chunk anyway) and no ``user``.
    strict_schema: bool = False
    # Anthropic backends: max_tokens when an OpenAI client sends none (Anthropic requires it).
    default_max_tokens: int = 4096
    # Anthropic backends: the most output the route allows (its max_tokens cap, lowered to
    # what its context window leaves); a thinking budget is shrunk to fit under it rather
    # than max_tokens being raised past it.
    max_tokens_limit: int | None = None
    # Anthropic backends: add cache_control breakpoints for OpenAI clients.
    prompt_cache: bool = False
    # Anthropic backends: the target model thinks adaptively (`adaptive_thinking`), or has
    # refused a thinking budget (then a client's own ``thinking`` budget is converted too).
    adaptive_thinking: bool = False
    budgets_refused: bool = False
    # The request's input tokens as the gateway already estimated them (None: count here).
    input_estimate: int | None = None


@dataclass(frozen=True, slots=True)
class OpenAIQuirks:
    """What an OpenAI-dialect backend takes, where it differs from the upstream's settings."""

    max_stop_sequences: int | None = None
    reasoning: str | None = None  # replaces the upstream's setting
    max_tokens_field: str | None = None  # likewise
    sampling: bool = True
    mistral_tool_ids: bool = False
    strict_schema: bool = False
    # ``chat_template_kwargs`` is a field of the servers that render chat templates (vLLM,
    # SGLang, llama.cpp); the hosted APIs that refuse unknown fields do not take it.
    chat_template_kwargs: bool = True


NO_QUIRKS = OpenAIQuirks()
_MISTRAL_MODEL_QUIRKS = OpenAIQuirks(mistral_tool_ids=True)
# Mistral's API refuses what its schema does not name (422 "Extra inputs are not
# permitted"): stream_options, user, max_completion_tokens, reasoning_effort, and a
# reasoning_content on an assistant message.
_MISTRAL_API_QUIRKS = OpenAIQuirks(
    reasoning="off",
    max_tokens_field="max_tokens",
    mistral_tool_ids=True,
    strict_schema=True,
    chat_template_kwargs=False,
)


@lru_cache(maxsize=256)  # per request, for a handful of upstreams and models
def openai_quirks(base_url: str, model: str, reasoning: str) -> OpenAIQuirks:
    """OpenAI's own API (``base_url`` on api.openai.com) and ``model`` on it: four ``stop``
    entries at most; a reasoning model gets ``max_completion_tokens``, no temperature or
    top_p, and no earlier thinking replayed (its Chat Completions take none back); any
    other model is never asked to reason (``reasoning_effort`` is refused); none takes
    ``chat_template_kwargs``. Mistral's API, and Mistral-family models wherever they are
    served, take tool-call ids of nine letters and digits only; Mistral's API also nothing
    outside its schema. Other servers that speak the dialect (vLLM, Ollama, llama.cpp,
    DeepSeek…) keep the upstream's settings."""
    try:
        host = urlsplit(base_url).hostname
    except ValueError:
        host = None
    name = model.rpartition("/")[2]
    if host == MISTRAL_API_HOST:
        return _MISTRAL_API_QUIRKS
    if _MISTRAL_MODEL.search(name):
        return _MISTRAL_MODEL_QUIRKS
    if host != OPENAI_API_HOST:
        return NO_QUIRKS
    if _OPENAI_REASONING_MODEL.match(name) and "chat" not in name.lower():  # gpt-5-chat: no
        return OpenAIQuirks(
            max_stop_sequences=OPENAI_MAX_STOP,
            reasoning="strip" if reasoning in REPLAYED else reasoning,
            max_tokens_field="max_completion_tokens",
            sampling=False,
            chat_template_kwargs=False,
        )
    return OpenAIQuirks(
        max_stop_sequences=OPENAI_MAX_STOP, reasoning="off", chat_template_kwargs=False
    )
