"""What a translator needs to know about the backend it writes for.

Built by the gateway from the route and the upstream's settings; the
translators read it and never look anything up themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

# api.openai.com refuses a request with more than four ``stop`` entries (PROTOCOL.md §6.1).
OPENAI_MAX_STOP = 4


@dataclass(frozen=True, slots=True)
class BackendOptions:
    """Per-request facts about the target: model name and the upstream's quirks."""

    target_model: str
    # OpenAI backends: "max_tokens" or "max_completion_tokens" (o-series, newer APIs).
    max_tokens_field: str = "max_tokens"
    # OpenAI backends: "replay" sends earlier thinking back as reasoning_content,
    # "strip" drops it, "off" drops it and never asks the backend to reason.
    reasoning: str = "strip"
    # OpenAI backends: forward Anthropic top_k (vLLM, SGLang, llama.cpp accept it).
    top_k: bool = False
    # OpenAI backends: the most ``stop`` entries the backend takes (None: no limit); an
    # Anthropic client's first ones are sent.
    max_stop_sequences: int | None = None
    # Anthropic backends: max_tokens when an OpenAI client sends none (Anthropic requires it).
    default_max_tokens: int = 4096
    # Anthropic backends: the most output the route allows (its max_tokens cap, lowered to
    # what its context window leaves); a thinking budget is shrunk to fit under it rather
    # than max_tokens being raised past it.
    max_tokens_limit: int | None = None
    # Anthropic backends: add cache_control breakpoints for OpenAI clients.
    prompt_cache: bool = False
    # The request's input tokens as the gateway already estimated them (None: count here).
    input_estimate: int | None = None


@lru_cache(maxsize=64)  # per request, for a handful of upstreams
def max_stop_sequences(base_url: str) -> int | None:
    """The ``stop`` limit of an OpenAI backend at ``base_url``: OpenAI's own API takes four;
    servers that speak its dialect (vLLM, Ollama, llama.cpp, DeepSeek…) take more."""
    try:
        host = urlsplit(base_url).hostname
    except ValueError:
        return None
    return OPENAI_MAX_STOP if host == "api.openai.com" else None
