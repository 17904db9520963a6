"""Parsing of dashboard form fields into typed values; failures carry a catalogue key."""

from __future__ import annotations

from collections.abc import Collection
from datetime import date
from typing import Any


class FormError(ValueError):
    """A field the admin filled wrongly: ``key`` is a message in the catalogue."""

    def __init__(self, key: str, **params: Any) -> None:
        super().__init__(key)
        self.key = key
        self.params = params


def required(value: str, field: str, *, max_len: int = 200) -> str:
    if not value:
        raise FormError("form.required", field=field)
    if len(value) > max_len:
        raise FormError("form.too_long", field=field, max=max_len)
    return value


def optional_text(value: str, field: str, *, max_len: int = 500) -> str | None:
    if len(value) > max_len:
        raise FormError("form.too_long", field=field, max=max_len)
    return value or None


def optional_int(value: str, field: str, *, minimum: int = 0) -> int | None:
    """An integer >= ``minimum``, or None when the field is empty."""
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise FormError("form.integer", field=field) from None
    if number < minimum:
        raise FormError("form.minimum", field=field, min=minimum)
    return number


def optional_float(
    value: str, field: str, *, minimum: float = 0.0, maximum: float | None = None
) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise FormError("form.number", field=field) from None
    if number != number or number < minimum or (maximum is not None and number > maximum):
        raise FormError("form.range", field=field, min=minimum, max=maximum)
    return number


def optional_date(value: str, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise FormError("form.date", field=field) from None


def names(value: str) -> tuple[str, ...]:
    """Comma- or newline-separated names or globs, blanks dropped, order kept."""
    parts = (p.strip() for p in value.replace("\n", ",").split(","))
    return tuple(dict.fromkeys(p for p in parts if p))


def choice(value: str, field: str, allowed: Collection[str]) -> str:
    if value not in allowed:
        raise FormError("form.choice", field=field)
    return value


def ids(value: str) -> list[int]:
    """A comma-separated list of row ids (the drag-and-drop order)."""
    try:
        return [int(p) for p in value.split(",") if p.strip()]
    except ValueError:
        raise FormError("form.order") from None
