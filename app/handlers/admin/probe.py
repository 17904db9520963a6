"""The upstream Test button: one tiny real request through an upstream, timed.

It bypasses the key ring's bookkeeping (no cooldown, no counts), so testing a
key never changes how the gateway rotates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import orjson

from app.errors import GatewayError
from app.secretbox import redact
from app.upstreams.keyring import KeyState
from app.upstreams.pool import Upstream

PROMPT = "Reply with the single word OK."
PREVIEW_CHARS = 300


@dataclass(frozen=True, slots=True)
class ProbeResult:
    model: str
    key: str  # the key's display name: label or …last4
    status: int | None
    latency_ms: float
    preview: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 400


def probe_body(upstream: Upstream, model: str) -> tuple[str, dict[str, object]]:
    """The endpoint and body of the test request in the upstream's own dialect."""
    messages = [{"role": "user", "content": PROMPT}]
    if upstream.kind == "anthropic":
        return "messages", {"model": model, "max_tokens": 16, "messages": messages}
    field = upstream.max_tokens_field(model) or "max_tokens"
    return "chat", {"model": model, "messages": messages, field: 16, "stream": False}


def _redact(text: str, key: KeyState) -> str:
    # An upstream that echoes the key it was sent must not put it on the page.
    return redact(text.encode("utf-8"), key.secret).decode("utf-8")


async def probe(upstream: Upstream, model: str, key: KeyState) -> ProbeResult:
    endpoint, body = probe_body(upstream, model)
    started = time.perf_counter()
    try:
        resp = await upstream.send(
            endpoint,
            orjson.dumps(body),
            key,
            stream=False,
            parsed=body,
            client_dialect="openai",
        )
        raw = await resp.read()
    except GatewayError as exc:
        elapsed = (time.perf_counter() - started) * 1000
        return ProbeResult(model, key.display, None, elapsed, "", _redact(exc.message, key))
    elapsed = (time.perf_counter() - started) * 1000
    text = redact(raw, key.secret).decode("utf-8", "replace")[:PREVIEW_CHARS]
    return ProbeResult(model, key.display, resp.status, elapsed, text)
