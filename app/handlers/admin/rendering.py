"""The dashboard's Jinja2 environment: templates from the repo's ``templates/``, autoescaped,
with the few display filters every page shares.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from app.secretbox import mask

TEMPLATES = Path(__file__).resolve().parents[3] / "templates"


def fmt_time(value: datetime | None) -> str:
    """Naive UTC datetime -> ``2024-05-01 12:34:56``; empty for None."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def fmt_epoch(value: float | None) -> str:
    """Epoch seconds -> the same format as `fmt_time`; empty for None or 0."""
    if not value:
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_num(value: float | int | None) -> str:
    """Thousands separated with a thin space, readable in every catalogue language."""
    if value is None:
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.1f}".replace(",", "\u202f")
    return f"{int(value):,}".replace(",", "\u202f")


def fmt_limit(value: int | None) -> str:
    return fmt_num(value) if value else "∞"


def shown_ms(value: float) -> float:
    """A latency as the dashboard shows it: whole milliseconds, one decimal under 1 ms (an
    echo or a refused request takes a fraction of one; rounded to 0, it looked like none)."""
    tenths = round(value, 1)
    return tenths if tenths < 1 else float(round(value))


def fmt_ms(value: float | None) -> str:
    """A latency in milliseconds (`shown_ms`); empty for None."""
    return "" if value is None else fmt_num(shown_ms(value))


def make_environment(path: Path = TEMPLATES) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(path)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["time"] = fmt_time
    env.filters["epoch"] = fmt_epoch
    env.filters["num"] = fmt_num
    env.filters["limit"] = fmt_limit
    env.filters["ms"] = fmt_ms
    env.filters["mask"] = mask
    return env
