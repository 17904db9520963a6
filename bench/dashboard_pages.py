"""Dashboard page timings on a large database.

Fills a SQLite database with N usage events (default 1,000,000) spread over 30
days, then builds the daily roll-up from them. The traffic looks like a team's:
40 keys, each using a few of 12 models, each model routed to one of 3 upstreams
(3% of requests fail over to another one), 3% errors. Then it starts the real
server in-process, signs in and times every dashboard page. Target: every page
under 300 ms. The CSV export is streamed, so its time grows with the rows it
exports; it is reported in rows per second. Not run by the tests.

    .venv/bin/python -m bench.dashboard_pages [--events 1000000] [--repeat 5] [--db PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import tornado.httpclient
import tornado.httpserver
import tornado.netutil

from app.db.engine import upgrade
from app.server import build_app, build_services
from app.settings import load_settings

PASSWORD = "bench-admin-password"
TARGET_MS = 300.0
CHUNK = 50_000
KEYS = [f"key-{i:02d}" for i in range(40)]
MODELS_PER_KEY = 4
MODELS = [
    "claude-3-5-sonnet",
    "claude-3-haiku",
    "claude-3-opus",
    "gpt-4o",
    "gpt-4o-mini",
    "o3-mini",
    "qwen2.5:7b",
    "qwen2.5-coder:32b",
    "llama3.1:8b",
    "deepseek-chat",
    "deepseek-reasoner",
    "mistral-large",
]
UPSTREAMS = ["anthropic", "openai", "local"]
ROUTE = {
    m: "anthropic" if m.startswith("claude") else "openai" if m[:1] in "go" else "local"
    for m in MODELS
}
EVENT_COLUMNS = (
    "time",
    "request_id",
    "key_id",
    "key_name",
    "client_dialect",
    "endpoint",
    "requested_model",
    "upstream",
    "upstream_key",
    "target_model",
    "stream",
    "status",
    "http_status",
    "error_type",
    "error_message",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "tokens_estimated",
    "latency_ms",
    "ttft_ms",
)


def _events(count: int, start: datetime, step: timedelta, seed: int) -> list[tuple[object, ...]]:
    rng = random.Random(seed)
    uses = [random.Random(k).sample(MODELS, MODELS_PER_KEY) for k in range(len(KEYS))]
    rows = []
    for i in range(count):
        key = rng.randrange(len(KEYS))
        model = uses[key][rng.randrange(MODELS_PER_KEY)]
        upstream = ROUTE[model] if rng.random() > 0.03 else UPSTREAMS[rng.randrange(3)]
        error = rng.random() < 0.03
        stream = rng.random() < 0.6
        latency = rng.uniform(200, 9000)
        rows.append(
            (
                (start + step * i).strftime("%Y-%m-%d %H:%M:%S.%f"),
                f"req_{i:024x}",
                key + 1,
                KEYS[key],
                "anthropic" if rng.random() < 0.5 else "openai",
                "messages",
                model,
                upstream,
                f"…{rng.randrange(10000):04d}",
                model,
                stream,
                "error" if error else "ok",
                502 if error else 200,
                "api_error" if error else None,
                "upstream failed" if error else None,
                rng.randrange(20, 120_000),
                0 if error else rng.randrange(1, 4000),
                rng.randrange(0, 50_000),
                0,
                False,
                latency,
                latency * 0.2 if stream else None,
            )
        )
    return rows


def fill(path: Path, count: int) -> None:
    """Bulk-load events (executemany in chunks), the daily roll-up and the proxy keys."""
    started = time.perf_counter()
    url = f"sqlite:///{path}"
    upgrade(url)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=OFF")
    now = datetime.now(UTC).replace(tzinfo=None)
    db.executemany(
        "INSERT INTO proxy_keys (name, key_hash, prefix, note, created_at, models, source)"
        " VALUES (?, ?, ?, '', ?, '[]', 'bench')",
        [(k, hashlib.sha256(k.encode()).hexdigest(), "bk-bench" + k[-2:], now) for k in KEYS],
    )
    start = now - timedelta(days=30)
    step = timedelta(days=30) / count
    insert = (
        f"INSERT INTO usage_events ({', '.join(EVENT_COLUMNS)})"
        f" VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
    )
    for offset in range(0, count, CHUNK):
        rows = _events(min(CHUNK, count - offset), start + step * offset, step, seed=offset)
        db.executemany(insert, rows)
    db.execute(
        "INSERT INTO usage_daily (day, key_name, model, upstream, requests, errors, input_tokens,"
        " output_tokens, cache_read_tokens, cache_write_tokens, latency_ms_total)"
        " SELECT date(time), coalesce(key_name, ''), coalesce(requested_model, ''),"
        " coalesce(upstream, ''), count(*), sum(status != 'ok'), sum(input_tokens),"
        " sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens), sum(latency_ms)"
        " FROM usage_events GROUP BY 1, 2, 3, 4"
    )
    db.commit()
    db.execute("ANALYZE")
    db.close()
    print(f"filled {count:,} events in {time.perf_counter() - started:.1f} s -> {path}")


def pages(today: datetime) -> list[str]:
    week = (today - timedelta(days=6)).date().isoformat()
    return [
        "/admin/",
        "/admin/keys",
        "/admin/keys/8",
        "/admin/upstreams",
        "/admin/models",
        "/admin/models?resolve=claude-3-haiku",
        "/admin/usage",
        "/admin/usage?" + urlencode({"key": "key-07"}),
        "/admin/usage?" + urlencode({"model": "gpt-4o", "since": week}),
        "/admin/usage?" + urlencode({"upstream": "local", "key": "key-42"}),
        "/admin/usage?" + urlencode({"status": "error"}),
        "/admin/usage?" + urlencode({"before": 500_000}),
        "/admin/audit",
        "/admin/admins",
    ]


def export(today: datetime) -> str:
    week = (today - timedelta(days=6)).date().isoformat()
    return "/admin/usage.csv?" + urlencode({"key": "key-07", "since": week})


async def measure(path: Path, repeat: int) -> list[tuple[str, float, float, int]]:
    config = path.with_suffix(".toml")
    config.write_text(
        f'[server]\ndatabase_url = "sqlite:///{path}"\nadmin_password = "{PASSWORD}"\n'
    )
    settings = load_settings(config_path=str(config), environ={}, cwd=path.parent)
    services, _ = await build_services(settings)
    server = tornado.httpserver.HTTPServer(build_app(services))
    sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
    server.add_sockets(sockets)
    base = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    client = tornado.httpclient.AsyncHTTPClient()
    try:
        login = await client.fetch(base + "/admin/login")
        xsrf = next(
            c.split(";")[0] for c in login.headers.get_list("Set-Cookie") if c.startswith("_xsrf=")
        )
        signed = await client.fetch(
            base + "/admin/login",
            method="POST",
            follow_redirects=False,
            raise_error=False,
            headers={"Cookie": xsrf},
            body=urlencode(
                {"_xsrf": xsrf.split("=", 1)[1], "username": "admin", "password": PASSWORD}
            ),
        )
        session = next(
            c.split(";")[0]
            for c in signed.headers.get_list("Set-Cookie")
            if c.startswith("bk_session=")
        )
        cookie = f"{xsrf}; {session}"
        results = []
        for page in [*pages(services.now()), export(services.now())]:
            timings = []
            size = 0
            for _ in range(repeat):
                started = time.perf_counter()
                response = await client.fetch(
                    base + page, headers={"Cookie": cookie}, request_timeout=120
                )
                timings.append((time.perf_counter() - started) * 1000)
                size = len(response.body)
            results.append((page, min(timings), statistics.median(timings), size))
        return results
    finally:
        server.stop()
        await services.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", type=Path, help="reuse (or create) this database file")
    args = parser.parse_args()
    path = args.db or Path(tempfile.mkdtemp(prefix="bk-bench-")) / "dashboard.db"
    if not path.exists():
        fill(path, args.events)
    results = asyncio.run(measure(path, args.repeat))
    *timed, (csv_page, csv_best, _, csv_size) = results
    with sqlite3.connect(path) as db:
        daily = db.execute("SELECT count(*) FROM usage_daily").fetchone()[0]
    print(f"\nusage_daily rows: {daily:,}")
    print(f"\n{'page':<60} {'min ms':>8} {'median':>8} {'bytes':>9}")
    slow = 0
    for page, best, median, size in timed:
        flag = "  SLOW" if median > TARGET_MS else ""
        slow += bool(flag)
        print(f"{page:<60} {best:8.1f} {median:8.1f} {size:9,}{flag}")
    print(f"\n{len(timed) - slow}/{len(timed)} pages under {TARGET_MS:.0f} ms (median)")
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT count(*) FROM usage_events WHERE key_name = 'key-07' AND time >= ?",
            ((datetime.now(UTC) - timedelta(days=6)).strftime("%Y-%m-%d"),),
        ).fetchone()[0]
    print(
        f"export {csv_page}: {rows:,} rows, {csv_size:,} bytes in {csv_best:.0f} ms "
        f"({rows / csv_best * 1000:,.0f} rows/s)"
    )


if __name__ == "__main__":
    main()
