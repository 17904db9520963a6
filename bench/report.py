"""Turns a run's figures into the printed tables and the pass/miss verdict on each target."""

from __future__ import annotations

from typing import Any

# Issue 7's targets, all ratios or differences measured in the same run.
MIN_THROUGHPUT_RATIO = 0.80
MAX_ADDED_MEDIAN_US = 1000.0
MAX_ADDED_P99_US = 3000.0
MAX_HOLD_RSS_MB = 150.0
MAX_ACCOUNTING_COST = 0.05
MAX_TTFB_GAP_US = 1000.0


def _verdict(value: float, target: str, met: bool, **extra: Any) -> dict[str, Any]:
    return {"value": round(value, 3), "target": target, "met": met, **extra}


def targets(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    throughput = result.get("throughput", {})
    for kind, streamed in (("nonstream", False), ("stream", True)):
        entries = {
            k: e
            for k, e in throughput.items()
            if e["translated"] and (e["stream_chunks"] > 0) == streamed
        }
        if entries:
            worst = min(entries, key=lambda k: entries[k]["ratio"])
            ratio = entries[worst]["ratio"]
            out[f"translated_throughput_{kind}_ratio"] = _verdict(
                ratio,
                f">= {MIN_THROUGHPUT_RATIO}",
                ratio >= MIN_THROUGHPUT_RATIO,
                worst=worst,
                worst_vs_uvloop_forwarder=round(
                    min(e.get("ratio_uvloop", 0.0) for e in entries.values()), 3
                ),
            )
    latency = {k: e for k, e in result.get("latency", {}).items() if k.endswith("_json")}
    if latency:
        worst = max(latency, key=lambda k: latency[k]["bridgekeeper_added_us"]["p50"])
        added = latency[worst]["bridgekeeper_added_us"]["p50"]
        forwarder = latency[worst]["forwarder_added_us"]["p50"]
        out["added_latency_median_us"] = _verdict(
            added,
            f"<= forwarder's ({forwarder:.0f}) and <= {MAX_ADDED_MEDIAN_US:.0f}",
            added <= forwarder and added <= MAX_ADDED_MEDIAN_US,
            worst=worst,
            uvloop_forwarder=latency[worst].get("forwarder_uvloop_added_us", {}).get("p50"),
        )
        worst = max(latency, key=lambda k: latency[k]["bridgekeeper_added_us"]["p99"])
        p99 = latency[worst]["bridgekeeper_added_us"]["p99"]
        out["added_latency_p99_us"] = _verdict(
            p99, f"<= {MAX_ADDED_P99_US:.0f}", p99 <= MAX_ADDED_P99_US, worst=worst
        )
    hold = result.get("hold", {}).get("bridgekeeper")
    if hold:
        out["hold_errors"] = _verdict(hold["errors"], "0", hold["errors"] == 0)
        out["hold_peak_rss_mb"] = _verdict(
            hold["peak_rss_mb"], f"<= {MAX_HOLD_RSS_MB:.0f}", hold["peak_rss_mb"] <= MAX_HOLD_RSS_MB
        )
    accounting = result.get("accounting")
    if accounting:
        cost = accounting["throughput_cost"]
        out["accounting_throughput_cost"] = _verdict(
            cost,
            f"<= {MAX_ACCOUNTING_COST}",
            cost <= MAX_ACCOUNTING_COST,
            cpu_cost=round(accounting["cpu_cost"], 3),
        )
    ttfb = result.get("ttfb", {})
    if ttfb:
        worst = max(ttfb, key=lambda k: ttfb[k]["bridgekeeper"]["gap_us"]["p50"])
        gap = ttfb[worst]["bridgekeeper"]["gap_us"]["p50"]
        out["ttfb_gap_median_us"] = _verdict(
            gap,
            f"<= {MAX_TTFB_GAP_US:.0f}",
            gap <= MAX_TTFB_GAP_US,
            worst=worst,
            p99=round(ttfb[worst]["bridgekeeper"]["gap_us"]["p99"], 1),
        )
    pacing = result.get("pacing", {})
    if pacing:
        worst = max(pacing, key=lambda k: pacing[k]["bridgekeeper"]["write_delay_us"]["p50"])
        delay = pacing[worst]["bridgekeeper"]["write_delay_us"]
        out["stream_write_delay_median_us"] = _verdict(
            delay["p50"],
            f"<= {MAX_TTFB_GAP_US:.0f}",
            delay["p50"] <= MAX_TTFB_GAP_US,
            worst=worst,
            p99=round(delay["p99"], 1),
        )
    return out


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def tables(result: dict[str, Any]) -> str:
    m = result["machine"]
    parts = [
        f"Machine: {m['nproc']} CPUs, {m['cpu']}, Python {m['python']}, tornado {m['tornado']}, "
        f"aiohttp {m['aiohttp']}, uvloop {m['uvloop']}; commit {m['commit']}; "
        f"{result['settings']['connections']} connections; {result['seconds']} s in all"
        + (
            f"; Bridgekeeper from {result['settings']['app_dir']}"
            if result["settings"].get("app_dir")
            else ""
        ),
    ]
    throughput = result.get("throughput")
    if throughput:
        rows = []
        for e in throughput.values():
            f, g = e["forwarder"], e["bridgekeeper"]
            uv = e.get("forwarder_uvloop", {"rps": 0.0, "cpu_ms_per_request": 0.0})
            rows.append(
                [
                    e["label"],
                    f"{e['direct']['rps']:.0f}",
                    f"{f['rps']:.0f}",
                    f"{uv['rps']:.0f}",
                    f"{g['rps']:.0f}",
                    f"{e['ratio']:.2f}",
                    f"{e.get('ratio_uvloop', 0.0):.2f}",
                    f"{e['cpu_ratio']:.2f}",
                    f"{f['cpu_ms_per_request']:.3f}",
                    f"{uv['cpu_ms_per_request']:.3f}",
                    f"{g['cpu_ms_per_request']:.3f}",
                    f"{g['latency_ms']['p50']:.1f}/{g['latency_ms']['p99']:.1f}",
                    f"{g['upstream_cpu_util']:.0%}",
                    f"{max(f['other_cpu_util'], g['other_cpu_util']):.1f}",
                    str(f["errors"] + g["errors"]),
                ]
            )
        parts.append(
            "Throughput (closed loop; fwd = the naive forwarder, uv = the same on uvloop)\n"
            + _table(
                [
                    "scenario",
                    "direct/s",
                    "fwd/s",
                    "uv/s",
                    "bk/s",
                    "bk/fwd",
                    "bk/uv",
                    "cpu ratio",
                    "fwd cpu ms",
                    "uv cpu ms",
                    "bk cpu ms",
                    "bk p50/p99 ms",
                    "fake cpu",
                    "other cpus",
                    "errors",
                ],
                rows,
            )
        )
    accounting = result.get("accounting")
    if accounting:
        rows = [
            [
                name,
                f"{accounting['rps'][name]:.0f}",
                f"{accounting['cpu_ms_per_request'][name]:.3f}",
                accounting["variants"][name],
            ]
            for name in ("on", "limits_off", "all_off")
        ]
        parts.append(
            f"Auth + limits + usage recording ({accounting['scenario']}): throughput cost "
            f"{accounting['throughput_cost']:.1%} (limits {accounting['limits_throughput_cost']:.1%}, "
            f"usage writes {accounting['usage_write_throughput_cost']:.1%}); CPU per request "
            f"+{accounting['cpu_cost']:.1%}\n"
            + _table(["variant", "req/s", "cpu ms/req", "what"], rows)
        )
    latency = result.get("latency")
    if latency:
        rows = []
        for e in latency.values():
            lat = e["latency_us"]
            added = {
                name: e.get(f"{name}_added_us", {"p50": 0.0, "p99": 0.0})
                for name in ("forwarder", "forwarder_uvloop", "bridgekeeper")
            }
            rows.append(
                [
                    e["label"],
                    f"{lat['direct']['p50']:.0f}/{lat['direct']['p99']:.0f}",
                    *(f"{a['p50']:.0f}/{a['p99']:.0f}" for a in added.values()),
                ]
            )
        parts.append(
            "Sequential latency, one connection: added to direct (µs, p50/p99)\n"
            + _table(["scenario", "direct", "fwd added", "uv fwd added", "bk added"], rows)
        )
    ttfb = result.get("ttfb")
    if ttfb:
        rows = []
        for e in ttfb.values():
            cells = [e["label"]]
            for name in ("direct", "forwarder", "bridgekeeper"):
                gap = e[name]["gap_us"]
                cells.append(f"{gap['p50']:.0f}/{gap['p99']:.0f}")
            rows.append(cells)
        parts.append(
            "First client byte after the upstream's first byte (µs, p50/p99)\n"
            + _table(["scenario", "direct", "forwarder", "bridgekeeper"], rows)
        )
    pacing = result.get("pacing")
    if pacing:
        rows = []
        for e in pacing.values():
            cells = [e["label"]]
            for name in ("direct", "forwarder", "bridgekeeper"):
                d = e[name]["write_delay_us"]
                cells.append(f"{d['p50']:.0f}/{d['p99']:.0f}/{d['max']:.0f}")
            rows.append(cells)
        pace = next(iter(pacing.values()))["pace_ms"]
        parts.append(
            f"Upstream write -> client read, chunks {pace} ms apart (µs, p50/p99/max)\n"
            + _table(["scenario", "direct", "forwarder", "bridgekeeper"], rows)
        )
    hold = result.get("hold")
    if hold:
        rows = []
        for name in ("bridgekeeper", "forwarder"):
            h = hold.get(name)
            if h:
                rows.append(
                    [
                        name,
                        f"{h['ok']}/{h['streams']}",
                        str(h["errors"]),
                        f"{h['peak_rss_mb']:.0f}",
                        f"{h['rss_before_mb']:.0f}",
                        f"{h['stream_seconds']['p50']:.1f}/{h['stream_seconds']['max']:.1f}",
                        ", ".join(f"{k}: {v}" for k, v in h["error_kinds"].items()) or "-",
                    ]
                )
        parts.append(
            f"Concurrent slow streams: {hold['label']}\n"
            + _table(
                [
                    "through",
                    "ok",
                    "errors",
                    "peak RSS MB",
                    "RSS before",
                    "stream s p50/max",
                    "errors seen",
                ],
                rows,
            )
        )
    verdicts = result.get("targets")
    if verdicts:
        rows = [
            [name, str(v["value"]), v["target"], "met" if v["met"] else "MISSED"]
            for name, v in verdicts.items()
        ]
        parts.append("Targets\n" + _table(["target", "value", "goal", "verdict"], rows))
    return "\n\n".join(parts)
