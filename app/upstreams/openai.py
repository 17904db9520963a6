"""OpenAI-compatible backends (OpenAI, vLLM, Ollama, llama.cpp, DeepSeek): URLs and headers."""

from __future__ import annotations

DIALECT = "openai"


def chat_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/chat/completions"


def embeddings_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/embeddings"


def urls(base_url: str) -> dict[str, str]:
    """The URL of each endpoint `Upstream.send` calls, by its name there."""
    return {"chat": chat_url(base_url), "embeddings": embeddings_url(base_url)}


def models_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/models"


def headers(secret: str | None) -> dict[str, str]:
    """Bearer auth when the upstream has a key; local servers often have none."""
    out = {"Content-Type": "application/json", "Accept": "application/json"}
    if secret:
        out["Authorization"] = "Bearer " + secret
    return out
