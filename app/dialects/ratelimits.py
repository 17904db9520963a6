"""A backend's rate-limit headers in the client's dialect (PROTOCOL.md §6.11).

Anthropic sends ``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`` (resets
as RFC 3339 times, and more families: input and output tokens, a subscription's
"unified" ones), OpenAI ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (resets
as durations: ``"1s"``, ``"6m0s"``, ``"20ms"``). A same-dialect answer keeps every one
as it came; a translated one gets the six that have a counterpart. The gateway's own
headers for a key with RPM/TPM limits go over these (`app.accounting`): they are the
client's own limits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime

_KINDS = ("requests", "tokens")
_ANTHROPIC = "anthropic-ratelimit-"
_OPENAI = "x-ratelimit-"
# A header whose presence says the backend sent rate-limit headers at all: most local
# servers (vLLM, Ollama, llama.cpp) send none, and then nothing else is looked up.
_MARKERS = {
    "anthropic": (
        "anthropic-ratelimit-requests-limit",
        "anthropic-ratelimit-tokens-limit",
        "anthropic-ratelimit-input-tokens-limit",
        "anthropic-ratelimit-unified-status",
    ),
    "openai": ("x-ratelimit-limit-requests", "x-ratelimit-limit-tokens"),
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def _anthropic_name(kind: str, field: str) -> str:
    return f"{_ANTHROPIC}{kind}-{field}"


def _openai_name(kind: str, field: str) -> str:
    return f"{_OPENAI}{field}-{kind}"


def duration_seconds(text: str) -> float | None:
    """OpenAI's reset duration (``"6m0s"``, ``"1h2m3.5s"``, ``"20ms"``) in seconds; None
    when it is not one."""
    text = text.strip()
    total = 0.0
    at = 0
    for match in _DURATION.finditer(text):
        if match.start() != at:
            return None
        value, unit = float(match.group(1)), match.group(2)
        total += value * {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}[unit]
        at = match.end()
    return total if at and at == len(text) else None


def _as_duration(seconds: float) -> str:
    """Seconds in OpenAI's reset format."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    whole = int(seconds + 0.999)
    minutes, secs = divmod(whole, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def _reset_for_openai(value: str, now: float) -> str | None:
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return _as_duration(max(when.timestamp() - now, 0.0))


def _reset_for_anthropic(value: str, now: float) -> str | None:
    seconds = duration_seconds(value)
    if seconds is None:
        return None
    return datetime.fromtimestamp(int(now + seconds + 0.999), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def backend_limit_headers(
    headers: Mapping[str, str], backend: str, client: str, now: float
) -> dict[str, str]:
    """The rate-limit headers of a ``backend``-dialect answer, as a ``client``-dialect
    answer carries them; ``now``: the Unix time resets are counted from. Empty when the
    backend sent none."""
    if not any(name in headers for name in _MARKERS.get(backend, ())):
        return {}
    out: dict[str, str] = {}
    if backend == client:
        prefix = _ANTHROPIC if backend == "anthropic" else _OPENAI
        for name, given in headers.items():
            if name.lower().startswith(prefix):
                out[name.lower()] = given
        return out
    to_openai = client == "openai"
    for kind in _KINDS:
        for field in ("limit", "remaining", "reset"):
            source = _anthropic_name(kind, field) if to_openai else _openai_name(kind, field)
            value = headers.get(source)
            if value is None:
                continue
            if field == "reset":
                converted = (
                    _reset_for_openai(value, now) if to_openai else _reset_for_anthropic(value, now)
                )
                if converted is None:
                    continue
                value = converted
            target = _openai_name(kind, field) if to_openai else _anthropic_name(kind, field)
            out[target] = value
    return out
