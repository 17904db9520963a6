"""Public model name -> route: upstream, target model, per-model settings and fallbacks.

Resolution order: an exact name, then globs in the admin's order, then an
inline ``upstream:model?temperature=0.7&max_tokens=...``, then the default
upstream. Everything here is in memory; the server rebuilds the Router when
routes or upstreams change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any
from urllib.parse import parse_qsl

from app.errors import InvalidRequestError, NotFoundError

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """Per-model settings applied on every path, translated or passed through."""

    temperature: float | None = None
    max_tokens: int | None = None
    context_window: int | None = None
    prompt_cache: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One configured route (a row of ``model_routes`` or a ``[[models]]`` entry)."""

    name: str
    upstream: str
    target: str | None = None
    settings: RouteSettings = RouteSettings()
    fallbacks: tuple[str, ...] = ()
    enabled: bool = True

    @property
    def is_glob(self) -> bool:
        return any(c in _GLOB_CHARS for c in self.name)


@dataclass(frozen=True, slots=True)
class Route:
    """Where one requested model goes."""

    requested: str
    upstream: str
    target: str
    settings: RouteSettings
    fallbacks: tuple[str, ...] = ()
    matched: str = ""  # the route name or glob that matched, "inline" or "default"


_INLINE_NUMBERS: dict[str, type] = {
    "temperature": float,
    "max_tokens": int,
    "context_window": int,
}


# What an inline parameter may not set: the request's own shape, which the client's body
# says (a forced ``stream`` made a whole-answer request read a stream as JSON).
_INLINE_REFUSED = frozenset(
    {
        "model",
        "messages",
        "system",
        "input",
        "instructions",
        "stream",
        "stream_options",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "n",
    }
)
_INLINE_MAX = 2**31 - 1  # backends read token limits as 32-bit integers


def _inline_error(name: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"model {name!r}: {message}", param="model")


def _parse_inline(name: str, upstreams: Iterable[str]) -> tuple[str, str, RouteSettings] | None:
    upstream, sep, rest = name.partition(":")
    if not sep or upstream not in set(upstreams) or not rest:
        return None
    model, _, query = rest.partition("?")
    if not model:
        return None
    values: dict[str, Any] = {}
    params: dict[str, Any] = {}
    for key, raw in parse_qsl(query, keep_blank_values=False):
        if key in _INLINE_REFUSED:
            raise _inline_error(name, f"parameter {key!r} cannot be set in a model name")
        cast = _INLINE_NUMBERS.get(key)
        try:
            if cast is not None:
                values[key] = cast(raw)
            else:
                params[key] = float(raw) if raw.replace(".", "", 1).isdigit() else raw
        except ValueError:
            raise _inline_error(name, f"parameter {key}={raw!r} is not a number") from None
        number = values.get(key, params.get(key))
        if isinstance(number, float) and not math.isfinite(number):
            raise _inline_error(name, f"parameter {key}={raw!r} is not a finite number")
        if cast is int and not 1 <= values[key] <= _INLINE_MAX:
            raise _inline_error(name, f"parameter {key}={raw!r} is out of range")
    return upstream, model, RouteSettings(params=params, **values)


_REMEMBERED = 1024  # resolved model names a router keeps


class Router:
    """Resolves requested model names; built from route specs and the upstream names."""

    def __init__(
        self,
        routes: Iterable[RouteSpec],
        upstreams: Iterable[str],
        *,
        default_upstream: str | None = None,
        default_model: str | None = None,
        defaults: RouteSettings = RouteSettings(),
    ) -> None:
        enabled = [r for r in routes if r.enabled]
        self._exact = {r.name: r for r in enabled if not r.is_glob}
        self._globs = [r for r in enabled if r.is_glob]
        self._routes = enabled
        self._upstreams = tuple(upstreams)
        self._default_upstream = default_upstream
        self._default_model = default_model
        self._defaults = defaults
        # Resolved names: a Route and its settings are frozen dataclasses, ~24 k instructions
        # to make for every request; this router never changes (a change builds a new one).
        self._resolved: dict[str, Route] = {}

    def _with_defaults(self, s: RouteSettings) -> RouteSettings:
        d = self._defaults
        return RouteSettings(
            temperature=s.temperature if s.temperature is not None else d.temperature,
            max_tokens=s.max_tokens if s.max_tokens is not None else d.max_tokens,
            context_window=s.context_window,
            prompt_cache=s.prompt_cache,
            params=s.params,
        )

    def _route(self, requested: str, spec: RouteSpec, matched: str) -> Route:
        return Route(
            requested=requested,
            upstream=spec.upstream,
            target=spec.target or requested,
            settings=self._with_defaults(spec.settings),
            fallbacks=spec.fallbacks,
            matched=matched,
        )

    def resolve(self, model: str) -> Route:
        """The route for ``model``; NotFoundError naming the models that exist."""
        route = self._resolved.get(model)
        if route is None:
            route = self._resolve(model)
            if len(self._resolved) < _REMEMBERED:  # names a glob or inline route may take
                self._resolved[model] = route
        return route

    def _resolve(self, model: str) -> Route:
        spec = self._exact.get(model)
        if spec is not None:
            return self._route(model, spec, spec.name)
        for spec in self._globs:
            if fnmatchcase(model, spec.name):
                return self._route(model, spec, spec.name)
        inline = _parse_inline(model, self._upstreams)
        if inline is not None:
            upstream, target, settings = inline
            return Route(model, upstream, target, self._with_defaults(settings), (), "inline")
        if self._default_upstream is not None:
            return Route(
                requested=model,
                upstream=self._default_upstream,
                target=self._default_model or model,
                settings=self._with_defaults(RouteSettings()),
                matched="default",
            )
        known = ", ".join(self.public_names())
        patterns = ", ".join(spec.name for spec in self._globs)
        if patterns:
            known += f"{', or ' if known else ''}names matching {patterns}"
        raise NotFoundError(
            f"model {model!r} not found; available models: {known or 'none are configured'}"
        )

    def public_names(self) -> list[str]:
        """Routable names without glob characters, in route order: what /v1/models lists;
        then the default model (``ANTHROPIC_MODEL``), which every other name is served by."""
        names = [r.name for r in self._routes if not r.is_glob]
        default = self._default_model
        if self._default_upstream is not None and default and default not in names:
            names.append(default)
        return names

    def listed_by_backends(self) -> list[tuple[str, str]]:
        """``(pattern, upstream)`` for the routes whose names only their backend can list:
        globs that send the requested name on as it is (``claude-*``, ``*``), and the default
        upstream unless a default model stands in for every name sent there."""
        out = [(r.name, r.upstream) for r in self._globs if not r.target]
        if self._default_upstream is not None and not self._default_model:
            out.append(("*", self._default_upstream))
        return out

    def routes(self) -> list[RouteSpec]:
        return list(self._routes)
