"""Per-model settings applied to a client's request before it is sent anywhere.

Works on the client's own dialect, so translated and passed-through traffic get
the same treatment: a default temperature when the client sent none, forced
parameters, a max-token cap, and the context-window clamp (max_tokens lowered
to what fits; input that cannot fit at all is a 400 stating the counts, in the
wording Claude Code parses to shrink its request).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.dialects.openai import CONTEXT_LENGTH_EXCEEDED
from app.errors import InvalidRequestError

MIN_OUTPUT = 1
MIN_THINKING_BUDGET = 1024


def _context_error(input_tokens: int, max_tokens: int, window: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"input length and `max_tokens` exceed context limit: "
        f"{input_tokens} + {max_tokens} > {window}, "
        "decrease input length or `max_tokens` and try again",
        code=CONTEXT_LENGTH_EXCEEDED,
    )


def _clamp(
    requested: int | None, cap: int | None, window: int | None, input_tokens: int
) -> int | None:
    """The max_tokens to send: requested (or the cap as a default) within cap and window."""
    value = requested if requested is not None else cap
    if value is not None and cap is not None:
        value = min(value, cap)
    if window is not None:
        room = window - input_tokens
        if room < MIN_OUTPUT:
            raise _context_error(input_tokens, value if value is not None else 0, window)
        if value is not None:
            value = min(value, room)
    return value


def output_limit(
    max_tokens: int | None, context_window: int | None, input_tokens: int
) -> int | None:
    """The most output a request may ask for on a route: its max_tokens cap, lowered to the
    room its context window leaves; None when the route sets neither."""
    limit = max_tokens
    if context_window is not None:
        room = max(context_window - input_tokens, MIN_OUTPUT)
        limit = room if limit is None else min(limit, room)
    return limit


def _fit_thinking(body: dict[str, Any]) -> None:
    """Keep an Anthropic thinking budget below a lowered max_tokens (the API requires it)."""
    thinking = body.get("thinking")
    max_tokens = body.get("max_tokens")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or not isinstance(max_tokens, int) or budget < max_tokens:
        return
    if max_tokens <= MIN_THINKING_BUDGET:
        body.pop("thinking")
    else:
        body["thinking"] = dict(thinking, budget_tokens=max_tokens - 1)


def apply_anthropic(
    body: dict[str, Any],
    *,
    temperature: float | None,
    max_tokens: int | None,
    context_window: int | None,
    params: Mapping[str, Any],
    input_tokens: int,
    translated: bool = False,
) -> dict[str, Any]:
    """A copy of an Anthropic Messages body with the route's settings applied.

    A thinking budget is fitted under a lowered max_tokens (or thinking dropped when
    max_tokens leaves no room for the smallest budget), as the Anthropic API requires,
    unless the body is ``translated`` for an OpenAI backend: there the client's own budget
    picks the ``reasoning_effort`` (PROTOCOL.md §6.7), and a cap on the output must not
    lower or cancel the reasoning asked for.
    """
    out = dict(body)
    if temperature is not None and "temperature" not in out:
        thinking = out.get("thinking")
        if not (isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")):
            out["temperature"] = min(max(temperature, 0.0), 1.0)
    out.update(params)
    requested = out.get("max_tokens")
    clamped = _clamp(
        requested if isinstance(requested, int) else None, max_tokens, context_window, input_tokens
    )
    if clamped is not None and clamped != requested:
        out["max_tokens"] = clamped
        if not translated:
            _fit_thinking(out)
    return out


def apply_openai(
    body: dict[str, Any],
    *,
    temperature: float | None,
    max_tokens: int | None,
    context_window: int | None,
    params: Mapping[str, Any],
    input_tokens: int,
) -> dict[str, Any]:
    """A copy of a Chat Completions body with the route's settings applied.

    The cap lands in whichever of ``max_completion_tokens``/``max_tokens`` the client
    used; when it sent neither, the cap is set as ``max_tokens``.
    """
    out = dict(body)
    if temperature is not None and out.get("temperature") is None:
        out["temperature"] = temperature
    out.update(params)
    field = (
        "max_completion_tokens" if out.get("max_completion_tokens") is not None else "max_tokens"
    )
    requested = out.get(field)
    clamped = _clamp(
        requested if isinstance(requested, int) else None, max_tokens, context_window, input_tokens
    )
    if clamped is not None and clamped != requested:
        out[field] = clamped
    return out


# Fields a translator invents for the backend rather than maps from the client: a route's
# own value replaces the gateway's (its chat_template_kwargs beats the upstream's
# chat_template_thinking switch).
_INVENTED = frozenset({"chat_template_kwargs"})


def force_params(translated: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """A translated body with the route's forced parameters set again where it lacks them.

    A route's ``params`` are meant for its upstream (``repetition_penalty``, ``min_p``,
    ``chat_template_kwargs``...), but a translation keeps only the fields it maps, and
    drops some on purpose (``top_p`` beside ``temperature`` for Anthropic): forced means
    sent. Fields the translation produced from them (``max_tokens``) keep their mapped value;
    ``chat_template_kwargs``, which the translation invents, takes the route's.
    """
    for name, value in params.items():
        if name in _INVENTED:
            translated[name] = value
        else:
            translated.setdefault(name, value)
    return translated
