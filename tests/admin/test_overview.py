"""The overview: window totals and charts from the daily roll-up (never usage_events)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import event

from app.db.models import UsageDaily
from app.services import Services
from tests.admin.conftest import Client, body, record, seed_usage


def windows(page: str) -> dict[str, dict[str, str]]:
    out = {}
    for title, tiles in re.findall(
        r"<h2>([^<]+)</h2>\s*<dl class=\"tiles\">(.*?)</dl>", page, re.S
    ):
        out[title] = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+?)\s*(?:<small>|</dd>)", tiles))
    return out


async def add_daily(services: Services, rows: list[dict[str, Any]]) -> None:
    async with services.db.session() as session:
        for row in rows:
            session.add(UsageDaily(**row))
        await session.commit()


@pytest.fixture
def statements(services: Services) -> Iterator[list[str]]:
    seen: list[str] = []

    def spy(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    engine = services.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", spy)
    yield seen
    event.remove(engine, "before_cursor_execute", spy)


@pytest.mark.gen_test(timeout=30)
async def test_totals_and_charts_from_the_rollup(
    client: Client, services: Services, statements: list[str]
) -> None:
    await client.login()
    today = services.now().date()

    def day(n: int) -> date:
        return today - timedelta(days=n)

    await add_daily(
        services,
        [
            dict(
                day=day(0),
                key_name="alice",
                model="gpt-4o",
                upstream="u",
                requests=10,
                errors=2,
                input_tokens=1000,
                output_tokens=100,
                latency_ms_total=5000.0,
            ),
            dict(
                day=day(0),
                key_name="<b>bob</b>",
                model="claude",
                upstream="u",
                requests=5,
                input_tokens=50,
                output_tokens=5,
                latency_ms_total=500.0,
            ),
            dict(
                day=day(3),
                key_name="carol",
                model="gpt-4o",
                upstream="u",
                requests=20,
                errors=1,
                input_tokens=2000,
                output_tokens=200,
            ),
            dict(day=day(20), key_name="", model="gpt-4o", upstream="u", requests=4, errors=4),
            dict(day=day(40), key_name="dave", model="old", upstream="u", requests=1000),
        ],
    )
    statements.clear()
    page = body(await client.get("/admin/"))
    assert not [s for s in statements if "usage_events" in s]
    totals = windows(page)
    assert totals["Today"] == {
        "Requests": "15",
        "Tokens in": "1\u202f050",
        "Tokens out": "105",
        "Errors": "2",
        "Keys used": "2",
    }
    assert totals["Last 7 days"]["Requests"] == "35"
    assert totals["Last 7 days"]["Keys used"] == "3"
    assert totals["Last 30 days"]["Requests"] == "39"
    assert totals["Last 30 days"]["Errors"] == "7"
    assert totals["Last 30 days"]["Keys used"] == "3"  # the keyless requests count no key
    assert f"<title>{day(0):%m-%d}: ok 13, errors 2</title>" in page
    assert f"<title>{day(3):%m-%d}: ok 19, errors 1</title>" in page
    assert f"<title>{day(0):%m-%d}: in 1.1k, out 105</title>" in page
    assert f"<title>{day(20):%m-%d}: 100%</title>" in page
    assert f"<title>{day(0):%m-%d}: 13.3%</title>" in page
    assert f"<title>{day(0):%m-%d}: 367 ms</title>" in page  # 5500 ms / 15 requests
    assert "<title>gpt-4o: 34</title>" in page and "<title>claude: 5</title>" in page
    assert "<title>old" not in page  # older than 30 days
    top_keys = re.findall(r"<title>([^<]+): \d+</title><text class=\"label\"", page)
    assert top_keys[:3] == ["carol", "alice", "&lt;b&gt;bob&lt;/b&gt;"]
    assert "<b>bob</b>" not in page
    for caption in (
        "Requests per day (30 days)",
        "Tokens per day (30 days)",
        "Top keys by requests (30 days)",
        "Top models by requests (30 days)",
        "Error rate per day (30 days)",
        "Mean latency per day (30 days)",
    ):
        assert f"<figcaption>{caption}</figcaption><svg" in page


@pytest.mark.gen_test(timeout=30)
async def test_raw_events_alone_do_not_move_the_charts(client: Client, services: Services) -> None:
    # The recorder always writes the roll-up with the events; the overview trusts it.
    await client.login()
    from sqlalchemy import delete

    seed_usage(services, [record(services.now(), key="alice")])
    page = body(await client.get("/admin/"))
    assert windows(page)["Today"]["Requests"] == "1"
    async with services.db.session() as session:
        await session.execute(delete(UsageDaily))
        await session.commit()
    page = body(await client.get("/admin/"))
    assert windows(page)["Today"]["Requests"] == "0"
    assert "No requests yet" in page


@pytest.mark.gen_test(timeout=30)
async def test_upstream_key_states_on_the_overview(client: Client, services: Services) -> None:
    await client.login()
    page = body(await client.get("/admin/"))
    section = page[page.index("<h2>Upstream keys</h2>") :]
    assert '<a href="/admin/upstreams/1">echo</a>' in section
    assert "No keys (requests go without one)." in section


def latency_chart(page: str) -> str:
    start = page.index('id="chart-latency"')
    return html.unescape(page[start : page.index("</svg>", start)])


@pytest.mark.gen_test(timeout=30)
async def test_latency_under_a_millisecond_is_charted(client: Client, services: Services) -> None:
    """Rounded to whole milliseconds, a mean of 0.4 ms was 0, and the chart said "No
    requests yet" above requests it had counted."""
    await client.login()
    today = services.now().date()
    assert "No requests yet" in latency_chart(body(await client.get("/admin/")))
    row = dict(day=today, key_name="alice", model="m", upstream="echo", errors=0)
    await add_daily(services, [row | dict(requests=5, latency_ms_total=2.0)])
    chart = latency_chart(body(await client.get("/admin/")))
    assert f"<title>{today:%m-%d}: 0.4 ms</title>" in chart
    assert "No requests yet" not in chart


@pytest.mark.gen_test(timeout=30)
async def test_requests_without_measurable_latency_are_not_no_requests(
    client: Client, services: Services
) -> None:
    # Refused at once (a rate limit, a wrong key): a mean under 0.05 ms shows as 0.0.
    await client.login()
    yesterday = services.now().date() - timedelta(days=1)
    row = dict(day=yesterday, key_name="", model="", upstream="", errors=4)
    await add_daily(services, [row | dict(requests=4, latency_ms_total=0.1)])
    chart = latency_chart(body(await client.get("/admin/")))
    assert "Every day's mean is under 0.1 ms" in chart
    assert "No requests yet" not in chart
