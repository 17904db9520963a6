"""The overview: totals for today, 7 and 30 days, charts from the daily roll-up, and the
state of every upstream key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from markupsafe import Markup

from app.charts import hbar_chart, line_chart
from app.db import dashboard
from app.db import upstreams_admin as ua
from app.db.dashboard import DayPoint, Totals
from app.handlers.admin.base import AdminHandler
from app.handlers.admin.daily_charts import daily_usage_charts
from app.handlers.admin.rendering import shown_ms
from app.handlers.admin.upstreams import UpstreamRow, key_views

CHART_DAYS = 30
WINDOWS = (1, 7, 30)
TOP = 8


@dataclass(frozen=True, slots=True)
class OverviewPage:
    windows: list[tuple[str, Totals]]
    requests_chart: Markup
    tokens_chart: Markup
    errors_chart: Markup
    latency_chart: Markup
    keys_chart: Markup
    models_chart: Markup
    upstreams: list[UpstreamRow]


def latency_chart(t: Callable[..., str], labels: list[str], series: list[DayPoint]) -> Markup:
    """Mean latency per day. The request count, not the values, says whether there is
    anything to show: means all under 0.05 ms (refused requests, an echo upstream) round
    to 0, which the chart cannot draw, and it says so rather than "No requests yet"."""
    values = [shown_ms(p.mean_latency_ms) for p in series]
    requests = any(p.requests for p in series)
    empty = t("chart.latency_tiny") if requests else t("chart.empty")
    return line_chart(
        "chart-latency", t("chart.latency"), labels, values, suffix=" ms", empty=empty
    )


class OverviewHandler(AdminHandler):
    nav = "overview"

    async def get(self) -> None:
        await self.services.recorder.flush()  # the charts include a request made just now
        t = self.t
        today = self.services.now().date()
        since = today - timedelta(days=CHART_DAYS - 1)
        series, pairs, upstreams = await dashboard.in_parallel(
            self.services.db,
            lambda session: dashboard.daily_series(session, since, today),
            lambda session: dashboard.key_model_usage(session, since),
            ua.list_upstreams,
        )
        activity = dashboard.key_activity(pairs)
        top_models = dashboard.model_ranking(pairs, TOP)
        totals = dashboard.window_totals(series, activity, today, WINDOWS)
        labels = [p.day.strftime("%m-%d") for p in series]
        requests_chart, tokens_chart = daily_usage_charts("chart", t, series)
        pool = self.services.pool
        page = OverviewPage(
            windows=[
                (t("overview.today"), totals[1]),
                (t("overview.days", days=7), totals[7]),
                (t("overview.days", days=30), totals[30]),
            ],
            requests_chart=requests_chart,
            tokens_chart=tokens_chart,
            errors_chart=line_chart(
                "chart-errors",
                t("chart.error_rate"),
                labels,
                [round(p.error_rate, 1) for p in series],
                suffix="%",
                empty=t("chart.no_errors"),
            ),
            latency_chart=latency_chart(t, labels, series),
            keys_chart=hbar_chart(
                "chart-keys",
                t("chart.top_keys"),
                [(k.name, k.requests) for k in activity[:TOP]],
                empty=t("chart.empty"),
            ),
            models_chart=hbar_chart(
                "chart-models",
                t("chart.top_models"),
                [(m.name, m.requests) for m in top_models],
                empty=t("chart.empty"),
            ),
            upstreams=[
                UpstreamRow(u, key_views(u, pool.key_states(u.name), pool.now())) for u in upstreams
            ],
        )
        self.render_page("overview.html", page, title=t("overview.title"))
