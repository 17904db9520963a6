"""The usage audit trail: filters, keyset paging, totals, and the streamed CSV export."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from collections import Counter
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from app.db import usage as usage_db
from app.db.usage import EXPORT_COLUMNS
from app.handlers.admin.usage import CSV_SLICE_ROWS
from app.services import Services
from tests.admin.conftest import Client, body, record, seed_usage
from tests.conftest import TEST_KEY, http

BASE = datetime(2024, 5, 1, 12, 0, 0)


def rows_of(page: str) -> list[tuple[str, str, str]]:
    """(time, key, model) of each usage table row, top to bottom."""
    table = page[page.index('<table class="data dense" id="usage">') :]
    table = table[: table.index("</table>")]
    return re.findall(
        r'<tr class="[^"]*">\s*<td class="nowrap">([^<]+)</td>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>',
        table,
    )


def link(page: str, text: str) -> str | None:
    match = re.search(r'<a [^>]*href="([^"]+)"[^>]*>' + re.escape(text) + "</a>", page)
    return match.group(1).replace("&amp;", "&") if match else None


def tiles(page: str) -> dict[str, str]:
    return dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+?)\s*(?:<small>|</dd>)", page))


@pytest.fixture
def seeded(services: Services) -> Services:
    records = [
        record(
            BASE + timedelta(minutes=i),
            key=["alice", "bob", "<script>"][i % 3],
            model=["gpt-4o", "claude-3-haiku"][i % 2],
            upstream=["up1", "up2"][i % 2],
            status="error" if i % 10 == 9 else "ok",
            input_tokens=i,
            output_tokens=1,
            request_id=f"req-{i:03d}",
        )
        for i in range(120)
    ]
    records.append(
        record(
            BASE + timedelta(days=3),
            key="alice",
            model="gpt-4o",
            upstream="up1",
            request_id="req-late",
        )
    )
    seed_usage(services, records)
    return services


@pytest.mark.gen_test(timeout=30)
async def test_newest_first_with_keyset_paging(client: Client, seeded: Services) -> None:
    await client.login()
    page = body(await client.get("/admin/usage"))
    assert link(page, "Export CSV") == "/admin/usage.csv"
    first = rows_of(page)
    assert len(first) == 50
    assert first[0] == ("2024-05-04 12:00:00", "alice", "gpt-4o")
    assert first[1] == ("2024-05-01 13:59:00", "&lt;script&gt;", "claude-3-haiku")
    assert "<script>" not in page
    assert link(page, "‹ Newer") is None and link(page, "« Newest") is None
    older = link(page, "Older ›")
    assert older is not None
    second_page = body(await client.get(older))
    second = rows_of(second_page)
    assert len(second) == 50 and second[0][0] == "2024-05-01 13:10:00"
    third_page = body(await client.get(link(second_page, "Older ›") or ""))
    third = rows_of(third_page)
    assert len(third) == 21 and third[-1][0] == "2024-05-01 12:00:00"
    assert link(third_page, "Older ›") is None
    back = body(await client.get(link(third_page, "‹ Newer") or ""))
    assert rows_of(back) == second
    top = body(await client.get(link(back, "‹ Newer") or ""))
    assert rows_of(top) == first
    assert link(top, "‹ Newer") is None
    assert link(third_page, "« Newest") == "/admin/usage"


@pytest.mark.gen_test(timeout=30)
async def test_filters_and_their_totals(client: Client, seeded: Services) -> None:
    await client.login()
    page = body(
        await client.get("/admin/usage?key=alice&model=gpt-4o&since=2024-05-01&until=2024-05-01")
    )
    rows = rows_of(page)
    # alice is i % 3 == 0, gpt-4o is i % 2 == 0: i % 6 == 0, 20 of them on May 1st.
    assert len(rows) == 20 and {(r[1], r[2]) for r in rows} == {("alice", "gpt-4o")}
    assert tiles(page)["Requests"] == "20"
    assert tiles(page)["Tokens in"] == f"{sum(range(0, 120, 6)):,}".replace(",", "\u202f")
    assert tiles(page)["Errors"] == "0"
    assert link(page, "Export CSV") == (
        "/admin/usage.csv?key=alice&model=gpt-4o&since=2024-05-01&until=2024-05-01"
    )
    assert '<option value="alice" selected>alice</option>' in page
    errors = body(await client.get("/admin/usage?status=error&upstream=up2"))
    # status error is i % 10 == 9 (odd: up2): 12 events, read from usage_events.
    assert len(rows_of(errors)) == 12
    assert tiles(errors)["Requests"] == "12" and tiles(errors)["Errors"] == "12"
    assert tiles(errors)["Keys used"] == "3"
    nothing = body(await client.get("/admin/usage?key=nobody"))
    assert rows_of(nothing) == [] and "No requests match." in nothing
    late = body(await client.get("/admin/usage?since=2024-05-02"))
    assert [r[0] for r in rows_of(late)] == ["2024-05-04 12:00:00"]
    bad = body(await client.get("/admin/usage?since=yesterday"))
    assert "From (UTC day) must be a date (YYYY-MM-DD)." in bad
    assert len(rows_of(bad)) == 50  # the bad date is ignored, not fatal


@pytest.mark.gen_test(timeout=30)
async def test_paging_keeps_the_filter(client: Client, seeded: Services) -> None:
    await client.login()
    page = body(await client.get("/admin/usage?upstream=up1"))
    older = link(page, "Older ›")
    assert older is not None
    query = parse_qs(urlsplit(older).query)
    assert query["upstream"] == ["up1"] and "before" in query
    rows = rows_of(body(await client.get(older)))
    assert len(rows) == 11  # 61 up1 events: 50 + 11
    assert {r[2] for r in rows} == {"gpt-4o"}


@pytest.mark.gen_test(timeout=30)
async def test_csv_export_is_exact(client: Client, services: Services) -> None:
    await client.login()
    seed_usage(
        services,
        [
            record(
                BASE,
                key="alice",
                model="gpt-4o",
                upstream="up1",
                request_id="r1",
                input_tokens=12,
                output_tokens=3,
                latency_ms=250.25,
                ttft_ms=80.04,
                stream=True,
                client_dialect="anthropic",
                target_model="qwen",
                cache_read_tokens=4,
                tokens_estimated=True,
            ),
            record(
                BASE + timedelta(seconds=1.5),
                key=None,
                model="claude",
                upstream="up2",
                status="error",
                request_id="r2",
                input_tokens=0,
                output_tokens=0,
            ),
            record(BASE + timedelta(days=1), key="bob", model="gpt-4o", request_id="r3"),
        ],
    )
    response = await client.get("/admin/usage.csv?until=2024-05-01")
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="usage-')
    assert body(response) == (
        ",".join(EXPORT_COLUMNS) + "\n"
        "2024-05-01T12:00:00.000Z,r1,alice,anthropic,gpt-4o,up1,qwen,True,ok,,12,3,4,0,"
        "250.2,80.0,200,True\n"
        "2024-05-01T12:00:01.500Z,r2,,openai,claude,up2,claude,False,error,api_error,"
        "0,0,0,0,120.0,,502,False\n"
    )
    only_bob = body(await client.get("/admin/usage.csv?key=bob"))
    assert only_bob.splitlines()[1:] == [
        "2024-05-02T12:00:00.000Z,r3,bob,openai,gpt-4o,echo,gpt-4o,False,ok,,10,5,0,0,"
        "120.0,,200,False"
    ]
    assert (await client.get("/admin/usage.csv?since=nope")).code == 400


@pytest.mark.gen_test(timeout=60)
async def test_csv_export_streams_page_by_page(client: Client, services: Services) -> None:
    await client.login()
    seed_usage(
        services,
        [record(BASE + timedelta(seconds=i), request_id=f"r{i:05d}") for i in range(2500)],
    )
    chunks: list[bytes] = []
    response = await client.fetch_streaming("/admin/usage.csv", chunks.append)
    assert response.code == 200
    assert response.headers.get("Transfer-Encoding") == "chunked"
    assert "Content-Length" not in response.headers
    assert len(chunks) > 1
    parsed = list(csv.reader(io.StringIO(b"".join(chunks).decode())))
    assert parsed[0] == list(EXPORT_COLUMNS)
    assert [row[1] for row in parsed[1:]] == [f"r{i:05d}" for i in range(2500)]


@pytest.mark.gen_test(timeout=60)
async def test_csv_export_formats_a_slice_of_rows_per_turn_of_the_loop(
    client: Client, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export lets the event loop serve API requests between slices of a few rows: it
    used to format 500 to 1,000 rows at a time, holding up every request for ~15 ms a page
    on PostgreSQL (audit finding 5). Counted in turns of the loop, not in time."""
    await client.login()
    seed_usage(
        services,
        [record(BASE + timedelta(seconds=i), request_id=f"r{i:05d}") for i in range(1200)],
    )
    turns = 0
    per_turn: Counter[int] = Counter()
    formatted = usage_db.export_row

    def counted(event: Any) -> dict[str, Any]:
        per_turn[turns] += 1
        return formatted(event)

    monkeypatch.setattr(usage_db, "export_row", counted)
    stopped = False

    async def ticker() -> None:  # one tick a turn of the loop
        nonlocal turns
        while not stopped:
            await asyncio.sleep(0)
            turns += 1

    ticking = asyncio.create_task(ticker())
    try:
        response = await client.get("/admin/usage.csv")
    finally:
        stopped = True
        await ticking
    assert response.code == 200
    assert len(body(response).splitlines()) == 1 + 1200
    assert sum(per_turn.values()) == 1200
    assert max(per_turn.values()) <= CSV_SLICE_ROWS


@pytest.mark.gen_test
async def test_a_request_just_made_is_on_the_page_and_in_the_export(gateway) -> None:  # type: ignore[no-untyped-def]
    """The pages write what the recorder still holds before they read: with usage flushed
    once an hour, the request made a moment ago is there all the same."""
    live = await gateway(server="usage_flush_seconds = 3600")
    sent = await http(
        "POST",
        live.url + "/v1/chat/completions",
        json={"model": "just-now", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {TEST_KEY}"},
    )
    assert sent.status == 200
    assert live.services.recorder.pending == 1
    admin = Client(live.url)
    await admin.login(password="test-admin-pw")
    page = body(await admin.get("/admin/usage"))
    assert ("tester", "just-now") in [(key, model) for _, key, model in rows_of(page)]
    export = body(await admin.get("/admin/usage.csv"))
    assert [r["requested_model"] for r in csv.DictReader(io.StringIO(export))] == ["just-now"]


@pytest.mark.gen_test
async def test_the_endpoint_shows_beside_the_dialect_when_it_is_not_the_usual(
    client: Client, services: Services
) -> None:
    """A Responses API call (Codex) and a token count stand out from chat and messages."""
    await client.login()
    seed_usage(
        services,
        [
            record(BASE, model="codex-model", endpoint="responses", stream=True),
            record(BASE + timedelta(seconds=1), model="counted", endpoint="count_tokens"),
            record(BASE + timedelta(seconds=2), model="plain", endpoint="chat"),
        ],
    )
    page = body(await client.get("/admin/usage"))
    shown = re.findall(
        r'<td>openai(?: <small class="muted" data-testid="endpoint">(\w+)</small>)?', page
    )
    assert shown == ["", "count_tokens", "responses"]


@pytest.mark.gen_test(timeout=30)
async def test_out_of_range_paging_and_days_are_no_500(client: Client, seeded: Services) -> None:
    await client.login()
    # Past a signed 64-bit column: was a 500 (OverflowError). Read as no cursor, like "abc".
    for query in ("before=99999999999999999999999", "after=99999999999999999999999"):
        response = await client.get("/admin/usage?" + query)
        assert response.code == 200
        assert rows_of(body(response))[0][0] == "2024-05-04 12:00:00"
    # Through the last day there is: no upper bound (its next midnight does not exist).
    response = await client.get("/admin/usage?until=9999-12-31")
    assert response.code == 200 and len(rows_of(body(response))) == 50
    response = await client.get("/admin/usage.csv?until=9999-12-31")
    assert response.code == 200 and len(body(response).splitlines()) == 1 + 121


@pytest.mark.gen_test(timeout=30)
async def test_csv_export_defuses_formulas_in_text_cells(
    client: Client, services: Services
) -> None:
    await client.login()
    seed_usage(
        services,
        [
            record(
                BASE,
                key="@evil",
                model="=cmd|'/C calc'!A0",  # a key holder chooses the requested model
                upstream="+up",
                request_id="-r1",
                target_model="t\r=1+2",
                ttft_ms=-1.5,
            )
        ],
    )
    text = body(await client.get("/admin/usage.csv"))
    header, row = list(csv.reader(io.StringIO(text, newline="")))
    cells = dict(zip(header, row, strict=True))
    assert (cells["key_name"], cells["requested_model"]) == ("'@evil", "'=cmd|'/C calc'!A0")
    assert (cells["upstream"], cells["request_id"]) == ("'+up", "'-r1")
    assert cells["target_model"] == "t\r=1+2"  # quoted: one row, not a row starting "=1+2"
    assert (cells["ttft_ms"], cells["input_tokens"]) == ("-1.5", "10")  # numbers stay numbers


def timings(page: str) -> dict[str, tuple[str, str]]:
    """Request id -> (latency, time to first token) as the usage table shows them."""
    cells = re.findall(
        r'<td class="num">([^<]*)</td>\s*<td class="num">([^<]*)</td>\s*'
        r'<td><code class="small">([^<]+)</code>',
        page,
    )
    return {request_id: (latency, ttft) for latency, ttft, request_id in cells}


@pytest.mark.gen_test(timeout=30)
async def test_latencies_under_a_millisecond_keep_a_decimal(
    client: Client, services: Services
) -> None:
    """Rounded to whole milliseconds, they showed as 0, as if no time had passed."""
    await client.login()
    seed_usage(
        services,
        [
            record(BASE, request_id="fast", latency_ms=0.42, ttft_ms=0.7),
            record(BASE, request_id="slow", latency_ms=1234.4, ttft_ms=80.6),
            record(BASE, request_id="edge", latency_ms=0.97, ttft_ms=0.04),
            record(BASE, request_id="refused", latency_ms=0.0, status="rate_limited"),
        ],
    )
    shown = timings(body(await client.get("/admin/usage")))
    assert shown == {
        "fast": ("0.4", "0.7"),
        "slow": ("1\u202f234", "81"),
        "edge": ("1", "0"),
        "refused": ("0", ""),
    }
    # The export keeps its own one decimal for every value.
    export = body(await client.get("/admin/usage.csv"))
    latencies = {r["request_id"]: r["latency_ms"] for r in csv.DictReader(io.StringIO(export))}
    assert latencies == {"fast": "0.4", "slow": "1234.4", "edge": "1.0", "refused": "0.0"}


@pytest.mark.gen_test(timeout=30)
async def test_days_out_of_order_are_a_form_error(client: Client, seeded: Services) -> None:
    """A start after the end matched nothing, without a word: it looked like no traffic."""
    await client.login()
    page = body(await client.get("/admin/usage?since=2024-05-03&until=2024-05-01"))
    assert "The start day is after the end day; choose the days in order." in page
    assert len(rows_of(page)) == 50  # the days are left out, as a bad date is
    assert 'id="f-since" name="since" type="date" value="2024-05-03"' in page
    reversed_export = await client.get("/admin/usage.csv?since=2024-05-03&until=2024-05-01")
    assert reversed_export.code == 400
    one_day = body(await client.get("/admin/usage?since=2024-05-01&until=2024-05-01"))
    assert "The start day" not in one_day and len(rows_of(one_day)) == 50


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("lang", "hint"),
    [
        (
            "en",
            "The exact name the client asked for, or a glob: * matches any run of characters,"
            " ? one character (claude-*, *sonnet*, gpt-4?). Case-sensitive.",
        ),
        (
            "zh",
            "客户端请求的确切名称，或通配模式：* 匹配任意长度的字符，? 匹配一个字符"
            "（claude-*、*sonnet*、gpt-4?）。区分大小写。",
        ),
        (
            "fr",
            "Le nom exact demandé par le client, ou un motif : * remplace toute suite de"
            " caractères, ? un seul caractère (claude-*, *sonnet*, gpt-4?). Sensible à la casse.",
        ),
    ],
)
async def test_the_model_filter_says_it_takes_a_name_or_a_glob(
    client: Client, seeded: Services, lang: str, hint: str
) -> None:
    await client.login()
    client.cookies["bk_lang"] = lang
    page = body(await client.get("/admin/usage"))
    assert 'aria-describedby="f-model-help"' in page
    assert f'<small id="f-model-help">{hint}</small>' in page
    # Without a wildcard the name is matched whole, as before.
    assert rows_of(body(await client.get("/admin/usage?model=gpt"))) == []


# Requests for names a glob should take or leave: case, "_" and "%" among them.
MODEL_COUNTS = {
    "claude-3-5-sonnet": 3,
    "claude-3-haiku": 2,
    "Claude-3-Opus": 1,
    "gpt-4o": 2,
    "gpt-40": 1,
    "gpt-4o-mini": 1,
    "my_model": 1,
    "myXmodel": 1,
    "50%off": 1,
    "50Xoff": 1,
}


@pytest.fixture
def models_seeded(services: Services) -> Services:
    records = []
    for model, count in MODEL_COUNTS.items():
        for _ in range(count):
            at = len(records)
            records.append(
                record(
                    BASE + timedelta(minutes=at),
                    key=["alice", "bob"][at % 2],
                    model=model,
                    status="error" if at % 5 == 4 else "ok",
                    input_tokens=at,
                    request_id=f"m-{at:02d}",
                )
            )
    seed_usage(services, records)
    return services


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-*", {"claude-3-5-sonnet": 3, "claude-3-haiku": 2}),
        ("*sonnet*", {"claude-3-5-sonnet": 3}),
        ("gpt-4?", {"gpt-4o": 2, "gpt-40": 1}),
        ("gpt-4o", {"gpt-4o": 2}),  # an exact name: not gpt-4o-mini
        ("Claude-*", {"Claude-3-Opus": 1}),  # case counts, on SQLite as on PostgreSQL
        ("CLAUDE-*", {}),
        ("*SONNET*", {}),
        ("my_model", {"my_model": 1}),
        ("my_mode?", {"my_model": 1}),  # "_" is no wildcard: not myXmodel
        ("50%*", {"50%off": 1}),  # "%" is no wildcard: not 50Xoff
        ("%", {}),
        ("_y_model", {}),
        ("*", MODEL_COUNTS),  # every request that named a model
    ],
)
async def test_a_model_glob_filters_the_table_its_totals_and_the_export(
    client: Client, models_seeded: Services, model: str, expected: dict[str, int]
) -> None:
    await client.login()
    page = body(await client.get("/admin/usage?" + urlencode({"model": model})))
    rows = rows_of(page)
    assert Counter(r[2] for r in rows) == Counter(expected)
    assert f'name="model" list="f-models" value="{model}"' in page
    assert tiles(page)["Requests"] == str(len(rows))
    export_url = link(page, "Export CSV")
    assert export_url == "/admin/usage.csv?" + urlencode({"model": model})
    exported = list(csv.DictReader(io.StringIO(body(await client.get(export_url)))))
    assert Counter(r["requested_model"] for r in exported) == Counter(expected)
    # The totals agree with the rows, from the roll-up and, for a status, the events.
    ids = {r["request_id"]: r for r in exported}
    shown = sum(int(r["input_tokens"]) for r in ids.values())
    assert tiles(page)["Tokens in"] == f"{shown:,}".replace(",", "\u202f")
    failed = [r for r in ids.values() if r["status"] != "ok"]
    assert tiles(page)["Errors"] == str(len(failed))
    for status, count in (("ok", len(ids) - len(failed)), ("error", len(failed))):
        filtered = body(
            await client.get("/admin/usage?" + urlencode({"model": model, "status": status}))
        )
        assert len(rows_of(filtered)) == count and tiles(filtered)["Requests"] == str(count)


@pytest.mark.gen_test(timeout=30)
async def test_paging_keeps_a_model_glob(client: Client, seeded: Services) -> None:
    await client.login()
    page = body(await client.get("/admin/usage?model=%2A4o"))  # "*4o"
    assert {r[2] for r in rows_of(page)} == {"gpt-4o"} and len(rows_of(page)) == 50
    assert tiles(page)["Requests"] == "61"  # 60 on May 1st and the late one
    older = link(page, "Older ›")
    assert older is not None and parse_qs(urlsplit(older).query)["model"] == ["*4o"]
    rest = body(await client.get(older))
    assert {r[2] for r in rows_of(rest)} == {"gpt-4o"} and len(rows_of(rest)) == 11
    assert link(rest, "Older ›") is None
    back = body(await client.get(link(rest, "‹ Newer") or ""))
    assert rows_of(back) == rows_of(page)
    one_key = body(await client.get("/admin/usage?key=alice&model=claude-3-%3F%3F%3F%3F%3F"))
    # alice is i % 3 == 0, claude-3-haiku i odd: i % 6 == 3, 20 of them.
    assert len(rows_of(one_key)) == 20 and tiles(one_key)["Requests"] == "20"
