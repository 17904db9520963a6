"""Parsing of dashboard form fields into typed values; failures carry a catalogue key."""

from __future__ import annotations

import math
from collections.abc import Collection
from datetime import date
from typing import Any

from app.settings import LAST_EXPIRY_DAY, MAX_COUNT, expiry_problem, timeout_problem


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


# The largest value every database's integer column holds (32 bits on PostgreSQL, 64 on
# SQLite): a larger number was an OverflowError from the driver, a 500 page.
DB_INT_MAX = 2**31 - 1


def optional_int(
    value: str, field: str, *, minimum: int = 0, maximum: int | None = DB_INT_MAX
) -> int | None:
    """An integer in ``minimum..maximum``, or None when the field is empty."""
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise FormError("form.integer", field=field) from None
    if maximum is not None and number > maximum:
        raise FormError("form.range", field=field, min=minimum, max=maximum)
    if number < minimum:
        raise FormError("form.minimum", field=field, min=minimum)
    return number


def optional_count(value: str, field: str) -> int | None:
    """A limit or token count (RPM, TPM, max tokens, context window): 1..`MAX_COUNT`."""
    return optional_int(value, field, minimum=1, maximum=MAX_COUNT)


def _float(value: str, field: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FormError("form.number", field=field) from None


def optional_float(
    value: str, field: str, *, minimum: float = 0.0, maximum: float = math.inf
) -> float | None:
    """A number in ``minimum..maximum``, or None when the field is empty."""
    if not value:
        return None
    number = _float(value, field)
    if not minimum <= number <= maximum:  # NaN too
        raise FormError("form.range", field=field, min=minimum, max=maximum)
    return number


def optional_timeout(value: str, field: str) -> float | None:
    """Seconds, whatever the config file's ``timeout`` takes (`timeout_problem`: any
    finite number above 0, so an upstream from the file can be saved as it is), or None
    when the field is empty."""
    if not value:
        return None
    number = _float(value, field)
    if timeout_problem(number):
        raise FormError("form.above", field=field, min=0)
    return number


def optional_date(value: str, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise FormError("form.date", field=field) from None


def optional_expiry(value: str, field: str, today: date, kept: date | None = None) -> date | None:
    """A key's last working day: from ``today`` (a key dead on arrival is a mistake; only
    ``kept``, the day it has now, may be past) to `LAST_EXPIRY_DAY` (its next midnight
    must exist)."""
    day = optional_date(value, field)
    if day is not None and day != kept and expiry_problem(day, today):
        raise FormError("form.range", field=field, min=today, max=LAST_EXPIRY_DAY)
    return day


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
