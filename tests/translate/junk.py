"""Malformed variants of a valid body, for the translators' "only ever a clean 400" tests."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import orjson


def json_paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a nested value of ``value``, parents first."""
    if prefix:
        yield prefix
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, child in items:
        yield from json_paths(child, (*prefix, key))


def mutate(rng: random.Random, value: Any, junk: Sequence[Any]) -> Any:
    """``value`` with one to three nested values replaced by one of ``junk``."""
    value = orjson.loads(orjson.dumps(value))
    for _ in range(rng.randint(1, 3)):
        paths = list(json_paths(value))
        if not paths:
            break
        *parents, last = rng.choice(paths)
        target = value
        for key in parents:
            target = target[key]
        target[last] = orjson.loads(orjson.dumps(rng.choice(junk)))
    return value
