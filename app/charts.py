"""Server-rendered SVG charts for the dashboard: pure functions from numbers to markup.

Every chart is an accessible ``<svg role="img">`` with a ``<title>``, labelled
axes and one ``<title>`` per mark (the browser shows it as a tooltip). Colours
come from CSS classes (``static/app.css``), never from inline styles, so the
dashboard's Content-Security-Policy needs no ``'unsafe-inline'``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

from markupsafe import Markup

WIDTH = 600
HEIGHT = 200
MARGIN_LEFT = 48
MARGIN_RIGHT = 12
MARGIN_TOP = 16
MARGIN_BOTTOM = 28
MAX_X_LABELS = 8
HBAR_ROW = 24
HBAR_LABEL = 150
LABEL_CHARS = 22


def _f(value: float) -> str:
    """A coordinate: at most one decimal, no trailing ``.0``."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def compact(value: float) -> str:
    """``1234`` -> ``1.2k``, ``2500000`` -> ``2.5M``; small numbers as they are."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return _f(value / limit) + suffix
    if value == int(value):
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def nice_max(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n that is >= value (1 for an empty chart)."""
    if value <= 0:
        return 1.0
    exponent = math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        candidate = step * 10.0**exponent
        if candidate >= value:
            return candidate
    return 10.0 ** (exponent + 1)


def _text_width(text: str) -> float:
    """Rough width of 11px legend text: CJK characters are about twice as wide."""
    return sum(11.0 if ord(c) > 0x2E80 else 6.5 for c in text)


def _short(label: str) -> str:
    return label if len(label) <= LABEL_CHARS else label[: LABEL_CHARS - 1] + "…"


def _open(chart_id: str, title: str, width: int, height: int, css: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {css}" id="{escape(chart_id)}"'
        f' viewBox="0 0 {width} {height}" role="img" aria-labelledby="{escape(chart_id)}-title">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
    ]


def _y_axis(top: float, plot_h: float, vmax: float, width: int, fmt: str) -> list[str]:
    parts = []
    for fraction in (0.0, 0.5, 1.0):
        y = top + plot_h - fraction * plot_h
        label = compact(vmax * fraction) + fmt
        parts.append(
            f'<line class="grid" x1="{MARGIN_LEFT}" y1="{_f(y)}"'
            f' x2="{width - MARGIN_RIGHT}" y2="{_f(y)}"/>'
        )
        parts.append(
            f'<text class="axis" x="{MARGIN_LEFT - 6}" y="{_f(y + 4)}"'
            f' text-anchor="end">{escape(label)}</text>'
        )
    return parts


def _x_labels(labels: Sequence[str], slot: float, baseline: float) -> list[str]:
    # Counted back from the last label, so the newest day is always named.
    step = max(1, math.ceil(len(labels) / MAX_X_LABELS))
    parts = []
    for i, label in enumerate(labels):
        if (len(labels) - 1 - i) % step:
            continue
        x = MARGIN_LEFT + (i + 0.5) * slot
        parts.append(
            f'<text class="axis" x="{_f(x)}" y="{_f(baseline + 18)}"'
            f' text-anchor="middle">{escape(label)}</text>'
        )
    return parts


def _empty(parts: list[str], text: str, width: int, height: int) -> Markup:
    parts.append(
        f'<text class="empty" x="{width // 2}" y="{height // 2}" text-anchor="middle">'
        f"{escape(text)}</text>"
    )
    parts.append("</svg>")
    return Markup("".join(parts))


def stacked_bar_chart(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    tips: Sequence[str] | None = None,
    empty: str = "No data",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Markup:
    """Vertical bars, one per label, each a stack of the series (a single series is a bar chart).

    ``tips`` gives each bar's tooltip; by default ``label: name value, ...``.
    """
    parts = _open(chart_id, title, width, height, "bars")
    totals = [sum(values[i] for _, values in series) for i in range(len(labels))]
    if not labels or max(totals, default=0) <= 0:
        return _empty(parts, empty, width, height)
    vmax = nice_max(max(totals))
    plot_w = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = height - MARGIN_TOP - MARGIN_BOTTOM
    baseline = MARGIN_TOP + plot_h
    slot = plot_w / len(labels)
    bar_w = slot * 0.7
    parts += _y_axis(MARGIN_TOP, plot_h, vmax, width, "")
    if len(series) > 1:
        x = float(width - MARGIN_RIGHT)
        for index in range(len(series) - 1, -1, -1):
            name = series[index][0]
            parts.append(
                f'<text class="legend" x="{_f(x)}" y="10" text-anchor="end">{escape(name)}</text>'
            )
            x -= _text_width(name) + 12
            parts.append(f'<rect class="s{index}" x="{_f(x)}" y="2" width="8" height="8"/>')
            x -= 14
    for i, label in enumerate(labels):
        if tips is not None:
            tip = tips[i]
        elif len(series) == 1:
            tip = f"{label}: {compact(series[0][1][i])}"
        else:
            tip = f"{label}: " + ", ".join(f"{name} {compact(v[i])}" for name, v in series)
        x = MARGIN_LEFT + i * slot + (slot - bar_w) / 2
        y = float(baseline)
        parts.append(f"<g><title>{escape(tip)}</title>")
        for index, (_, values) in enumerate(series):
            h = values[i] / vmax * plot_h
            if h <= 0:
                continue
            y -= h
            parts.append(
                f'<rect class="s{index}" x="{_f(x)}" y="{_f(y)}"'
                f' width="{_f(bar_w)}" height="{_f(h)}"/>'
            )
        parts.append("</g>")
    parts += _x_labels(labels, slot, baseline)
    parts.append("</svg>")
    return Markup("".join(parts))


def bar_chart(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    name: str = "",
    empty: str = "No data",
) -> Markup:
    """One value per label as vertical bars."""
    return stacked_bar_chart(chart_id, title, labels, [(name, values)], empty=empty)


def line_chart(
    chart_id: str,
    title: str,
    labels: Sequence[str],
    values: Sequence[float],
    *,
    suffix: str = "",
    empty: str = "No data",
    width: int = WIDTH,
    height: int = HEIGHT,
) -> Markup:
    """A line through one point per label (error rate per day); ``suffix`` follows each value."""
    parts = _open(chart_id, title, width, height, "line")
    if not labels or max(values, default=0) <= 0:
        return _empty(parts, empty, width, height)
    vmax = nice_max(max(values))
    plot_w = width - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = height - MARGIN_TOP - MARGIN_BOTTOM
    baseline = MARGIN_TOP + plot_h
    slot = plot_w / len(labels)
    parts += _y_axis(MARGIN_TOP, plot_h, vmax, width, suffix)
    points = [
        (MARGIN_LEFT + (i + 0.5) * slot, baseline - v / vmax * plot_h) for i, v in enumerate(values)
    ]
    path = " ".join(f"{_f(x)},{_f(y)}" for x, y in points)
    parts.append(f'<polyline class="s0" points="{path}"/>')
    for (x, y), label, value in zip(points, labels, values, strict=True):
        tip = f"{label}: {compact(value)}{suffix}"
        parts.append(
            f'<circle class="s0" cx="{_f(x)}" cy="{_f(y)}" r="3">'
            f"<title>{escape(tip)}</title></circle>"
        )
    parts += _x_labels(labels, slot, baseline)
    parts.append("</svg>")
    return Markup("".join(parts))


def hbar_chart(
    chart_id: str,
    title: str,
    items: Sequence[tuple[str, float]],
    *,
    unit: str = "",
    empty: str = "No data",
    width: int = WIDTH,
) -> Markup:
    """Horizontal bars for a ranking (top keys, top models): label, bar, value."""
    height = max(len(items), 1) * HBAR_ROW + 8
    parts = _open(chart_id, title, width, height, "hbars")
    if not items or max(v for _, v in items) <= 0:
        return _empty(parts, empty, width, height)
    vmax = max(v for _, v in items)
    plot_w = width - HBAR_LABEL - 70
    for i, (label, value) in enumerate(items):
        y = 4 + i * HBAR_ROW
        w = max(value / vmax * plot_w, 1.0)
        shown = compact(value) + (f" {unit}" if unit else "")
        parts.append(f"<g><title>{escape(f'{label}: {shown}')}</title>")
        parts.append(
            f'<text class="label" x="{HBAR_LABEL - 8}" y="{y + 15}"'
            f' text-anchor="end">{escape(_short(label))}</text>'
        )
        parts.append(
            f'<rect class="s0" x="{HBAR_LABEL}" y="{y + 3}"'
            f' width="{_f(w)}" height="{HBAR_ROW - 8}"/>'
        )
        parts.append(
            f'<text class="value" x="{_f(HBAR_LABEL + w + 6)}" y="{y + 15}">{escape(shown)}</text>'
        )
        parts.append("</g>")
    parts.append("</svg>")
    return Markup("".join(parts))
