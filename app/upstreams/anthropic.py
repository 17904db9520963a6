"""Anthropic (and Anthropic-compatible) backends: URLs and headers.

``anthropic-version`` and ``anthropic-beta`` from an Anthropic-dialect client are
forwarded verbatim (stripping betas such as ``oauth-…`` breaks clients); the
client's own ``x-api-key``/``Authorization`` never are.
"""

from __future__ import annotations

from collections.abc import Mapping

DIALECT = "anthropic"
DEFAULT_VERSION = "2023-06-01"


def _v1(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/v1") else base + "/v1"


def messages_url(base_url: str) -> str:
    return _v1(base_url) + "/messages"


def count_tokens_url(base_url: str) -> str:
    return _v1(base_url) + "/messages/count_tokens"


def urls(base_url: str) -> dict[str, str]:
    """The URL of each endpoint `Upstream.send` calls, by its name there (no embeddings:
    Anthropic's API has none)."""
    return {"messages": messages_url(base_url), "count_tokens": count_tokens_url(base_url)}


def models_url(base_url: str) -> str:
    return _v1(base_url) + "/models"


def headers(secret: str | None, client_headers: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "anthropic-version": DEFAULT_VERSION,
    }
    if client_headers is not None:
        version = client_headers.get("anthropic-version")
        if version:
            out["anthropic-version"] = version
        beta = client_headers.get("anthropic-beta")
        if beta:
            out["anthropic-beta"] = beta
    if secret:
        out["x-api-key"] = secret
    return out
