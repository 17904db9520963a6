"""The two per-day usage charts the overview and the per-key page share."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup

from app.charts import stacked_bar_chart
from app.db.dashboard import DayPoint


def daily_usage_charts(
    id_prefix: str, t: Callable[..., str], series: Sequence[DayPoint]
) -> tuple[Markup, Markup]:
    """Requests (ok / errors) and tokens (input / output) per day, as SVG."""
    labels = [p.day.strftime("%m-%d") for p in series]
    requests = stacked_bar_chart(
        f"{id_prefix}-requests",
        t("chart.requests_per_day"),
        labels,
        [
            (t("chart.ok"), [p.requests - p.errors for p in series]),
            (t("chart.errors"), [p.errors for p in series]),
        ],
        empty=t("chart.empty"),
    )
    tokens = stacked_bar_chart(
        f"{id_prefix}-tokens",
        t("chart.tokens_per_day"),
        labels,
        [
            (t("chart.input"), [p.input_tokens for p in series]),
            (t("chart.output"), [p.output_tokens for p in series]),
        ],
        empty=t("chart.empty"),
    )
    return requests, tokens
