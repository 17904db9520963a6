"""`make bench`: Bridgekeeper against a bare forwarder and the upstream itself, in one run.

Starts two fake upstreams (OpenAI and Anthropic dialects, `bench.fake_upstream`),
the bare forwarder (`bench.forwarder`) and Bridgekeeper itself (``bridgekeeper
serve --config <tmp>.toml`` with a SQLite database, two upstreams, per-scenario
models and two proxy keys), all on 127.0.0.1, each a process of its own; then
drives them with `bench.load` and prints a table and one JSON line.

    make bench                    # the full suite (~7 minutes on 2 cores)
    make bench ARGS="--quick"     # short runs (~2 minutes), same figures
    make bench ARGS="--sections throughput --scenarios stream --profile /tmp/prof"
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench import report
from bench.loops import raise_fd_limit
from bench.payloads import body_for
from bench.procs import PYTHON, Proc, RssSampler, machine_jiffies, run_load

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
LIMITED_KEY = "bk-bench-limited-0000000000000000"
OPEN_KEY = "bk-bench-open-00000000000000000000"
SECTIONS = ("throughput", "accounting", "latency", "ttfb", "pacing", "hold")
_PATHS = {"anthropic": "/v1/messages", "openai": "/v1/chat/completions"}
_SHORT = {"anthropic": "an", "openai": "oa"}
# Read by `bridgekeeper serve` (DESIGN.md, Environment); kept out of the gateway's environment.
LEGACY_ENV = frozenset(
    {
        "CLAUDE_PROXY_API_KEY",
        "ANTHROPIC_MODEL",
        "MODEL_TEMPERATURE",
        "MAX_TOKENS",
        "REQUEST_TIMEOUT",
        "TOKENS_PER_MINUTE",
        "REQUESTS_PER_MINUTE",
    }
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """One client dialect -> upstream dialect combination, streamed (``chunks``) or not."""

    client: str
    upstream: str
    chunks: int = 0  # 0: not streamed

    @property
    def translated(self) -> bool:
        return self.client != self.upstream

    @property
    def model(self) -> str:
        return model_name(self.upstream, f"c{self.chunks}" if self.chunks else "json")

    @property
    def key(self) -> str:
        kind = f"stream{self.chunks}" if self.chunks else "json"
        return f"{_SHORT[self.client]}_to_{_SHORT[self.upstream]}_{kind}"

    @property
    def label(self) -> str:
        path = "messages" if self.client == "anthropic" else "chat"
        kind = f"stream {self.chunks}" if self.chunks else "non-stream"
        how = "translated" if self.translated else "passthrough"
        return f"{path} -> {self.upstream} {kind} ({how})"


def model_name(upstream: str, script: str) -> str:
    return f"{_SHORT[upstream]}-bench-{script}"


SCENARIOS = (
    Scenario("anthropic", "openai", 0),
    Scenario("anthropic", "openai", 20),
    Scenario("anthropic", "openai", 200),
    Scenario("openai", "anthropic", 0),
    Scenario("openai", "anthropic", 20),
    Scenario("openai", "anthropic", 200),
    Scenario("anthropic", "anthropic", 0),
    Scenario("anthropic", "anthropic", 20),
    Scenario("openai", "openai", 0),
    Scenario("openai", "openai", 20),
)


def _expect(dialect: str, stream: bool) -> str:
    """The marker the end of a complete answer in ``dialect`` holds."""
    if stream:
        return "message_stop" if dialect == "anthropic" else "[DONE]"
    return "output_tokens" if dialect == "anthropic" else "completion_tokens"


class Bench:
    """The processes of one run and the targets they offer."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.fakes: dict[str, Proc] = {}
        self.forwarder: Proc | None = None  # issue 7's naive forwarder (default asyncio loop)
        self.forwarder_uvloop: Proc | None = None  # the same on uvloop: the stack's floor
        self.gateway: Proc | None = None
        # The accounting section's pair, both idle until it runs: the same history, so
        # only their usage writes differ (the main gateway, warm from the throughput
        # section with a large database and heap, measured dearer than a fresh process).
        self.accounting_gateway: Proc | None = None
        self.lean: Proc | None = None

    # -- processes ----------------------------------------------------------------------------

    def start(self) -> None:
        for dialect in ("openai", "anthropic"):
            fake = Proc(
                f"fake-{dialect}",
                [
                    PYTHON,
                    "-m",
                    "bench.fake_upstream",
                    "--dialect",
                    dialect,
                    "--events-per-write",
                    str(self.args.events_per_write),
                ],
                self.work,
                cwd=ROOT,
            )
            fake.start()
            self.fakes[dialect] = fake
        self.forwarder = self._start_forwarder("forwarder", "asyncio")
        self.forwarder_uvloop = self._start_forwarder("forwarder-uvloop", "uvloop")
        self.gateway = self._start_gateway("bridgekeeper", deferred_usage=False)
        if "accounting" in self.args.sections:
            self.accounting_gateway = self._start_gateway(
                "bridgekeeper-accounting", deferred_usage=False
            )
            self.lean = self._start_gateway("bridgekeeper-deferred-usage", deferred_usage=True)

    def _start_forwarder(self, name: str, loop: str) -> Proc:
        proc = Proc(
            name,
            [
                PYTHON,
                "-m",
                "bench.forwarder",
                "--openai",
                self._upstream_url("openai"),
                "--anthropic",
                self._upstream_url("anthropic"),
                "--loop",
                loop,
            ],
            self.work,
            cwd=ROOT,
        )
        proc.start()
        return proc

    def stop(self) -> None:
        procs = (
            self.gateway,
            self.accounting_gateway,
            self.lean,
            self.forwarder,
            self.forwarder_uvloop,
        )
        for proc in (*procs, *self.fakes.values()):
            if proc is not None:
                proc.stop()

    def _upstream_url(self, dialect: str) -> str:
        return f"http://{HOST}:{self.fakes[dialect].port}{_PATHS[dialect]}"

    def _start_gateway(self, name: str, *, deferred_usage: bool) -> Proc:
        home = self.work / name
        home.mkdir()
        config = home / "bridgekeeper.toml"
        config.write_text(self._config(home, deferred_usage))
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BRIDGEKEEPER_", "ANTHROPIC_", "OPENAI_")) and k not in LEGACY_ENV
        }
        argv = [str(Path(PYTHON).parent / "bridgekeeper"), "serve", "--config", str(config)]
        if self.args.app_dir:
            # Another checkout's code (an older commit, a branch) against the same harness.
            env["PYTHONPATH"] = str(Path(self.args.app_dir).resolve())
            argv = [PYTHON, "-m", "app", "serve", "--config", str(config)]
        proc = Proc(
            name,
            argv,
            self.work,
            ready=r"listening on http://[^:]+:(\d+)",
            env=env,
            cwd=home,  # no stray .env file is read
        )
        proc.start()
        return proc

    def _config(self, home: Path, deferred_usage: bool) -> str:
        secret = base64.urlsafe_b64encode(os.urandom(32)).decode()
        lines = [
            "[server]",
            f'host = "{HOST}"',
            "port = 0",
            f'database_url = "sqlite:///{home / "bridgekeeper.db"}"',
            'admin_password = "bench-admin-password"',
            f'secret_key = "{secret}"',
            "grace_seconds = 2",
        ]
        if deferred_usage:
            # Usage events stay in memory for the whole run: the cost of writing them is left out.
            lines += ["usage_flush_seconds = 3600", "usage_buffer_size = 100000000"]
        for dialect in ("openai", "anthropic"):
            base = f"http://{HOST}:{self.fakes[dialect].port}" + (
                "/v1" if dialect == "openai" else ""
            )
            lines += [
                "",
                "[[upstreams]]",
                f'name = "{_SHORT[dialect]}"',
                f'kind = "{dialect}"',
                f'base_url = "{base}"',
                f'keys = ["sk-bench-{dialect}-upstream-key"]',
                "timeout = 120",
            ]
        scripts = [
            "json",
            "c20",
            "c200",
            f"slow{self.args.hold_seconds}",
            f"ttfb{self.args.ttfb_pause_ms}",
            f"pace{self.args.pace_ms}",
        ]
        for dialect in ("openai", "anthropic"):
            for script in scripts:
                lines += [
                    "",
                    "[[models]]",
                    f'name = "{model_name(dialect, script)}"',
                    f'upstream = "{_SHORT[dialect]}"',
                ]
        lines += [
            "",
            "[[keys]]",
            'name = "bench-limited"',
            f'key = "{LIMITED_KEY}"',
            "rpm = 100000000",
            "tpm = 2000000000",
            "",
            "[[keys]]",
            'name = "bench-open"',
            f'key = "{OPEN_KEY}"',
        ]
        return "\n".join(lines) + "\n"

    # -- targets ------------------------------------------------------------------------------

    def gateway_target(
        self,
        sc: Scenario,
        *,
        model: str | None = None,
        key: str = LIMITED_KEY,
        proc: Proc | None = None,
    ) -> dict[str, Any]:
        proc = proc or self.gateway
        assert proc is not None
        if sc.client == "anthropic":
            headers = {"x-api-key": key, "anthropic-version": "2023-06-01"}
        else:
            headers = {"Authorization": f"Bearer {key}"}
        return self._target(
            "bridgekeeper", proc.port, _PATHS[sc.client], headers, sc, model, sc.client
        )

    def forwarder_target(
        self, sc: Scenario, *, model: str | None = None, uvloop: bool = False
    ) -> dict[str, Any]:
        proc = self.forwarder_uvloop if uvloop else self.forwarder
        assert proc is not None
        path = f"/{sc.upstream}{_PATHS[sc.client]}"
        return self._target(proc.name, proc.port, path, {}, sc, model, sc.upstream)

    def direct_target(self, sc: Scenario, *, model: str | None = None) -> dict[str, Any]:
        port = self.fakes[sc.upstream].port
        return self._target("direct", port, _PATHS[sc.upstream], {}, sc, model, sc.upstream)

    def _target(
        self,
        name: str,
        port: int,
        path: str,
        headers: dict[str, str],
        sc: Scenario,
        model: str | None,
        answers_in: str,
    ) -> dict[str, Any]:
        stream = sc.chunks > 0
        return {
            "name": name,
            "host": HOST,
            "port": port,
            "path": path,
            "headers": headers,
            "body": body_for(sc.client, model or sc.model, stream=stream).decode(),
            "expect": _expect(answers_in, stream),
            "fake": [HOST, self.fakes[sc.upstream].port],
        }

    # -- measurements -------------------------------------------------------------------------

    def closed(
        self,
        target: dict[str, Any],
        proc: Proc | None,
        upstream: str,
        *,
        duration: float,
        warmup: float,
    ) -> dict[str, Any]:
        """A closed-loop run, with the CPU time ``proc`` and the fake used inside its window."""
        fake = self.fakes[upstream]
        watched = [p for p in (proc, fake) if p is not None]
        marks: dict[str, dict[str, float]] = {}
        machine: dict[str, tuple[int, int]] = {}

        def on_mark(name: str) -> None:
            marks[name] = {p.name: p.cpu_seconds() for p in watched}
            machine[name] = machine_jiffies()

        job = {
            "mode": "closed",
            "target": target,
            "connections": self.args.connections,
            "duration": duration,
            "warmup": warmup,
        }
        result = run_load(job, on_mark)
        seconds = result["seconds"] or 1.0
        cpu = {p.name: marks["end"][p.name] - marks["start"][p.name] for p in watched}
        result["upstream_cpu_util"] = cpu[fake.name] / seconds
        busy = machine["end"][0] - machine["start"][0]
        total = machine["end"][1] - machine["start"][1]
        busy_cpus = (os.cpu_count() or 1) * busy / total if total else 0.0
        ours = sum(cpu.values()) / seconds + result["loadgen_cpu_util"]
        # CPU taken by processes outside the benchmark (other jobs on a shared machine).
        result["other_cpu_util"] = max(busy_cpus - ours, 0.0)
        if proc is not None:
            result["cpu_util"] = cpu[proc.name] / seconds
            result["cpu_ms_per_request"] = 1000 * cpu[proc.name] / max(result["requests"], 1)
        return result


# -- sections ---------------------------------------------------------------------------------


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run (its latencies), with the median req/s and CPU per request of all runs."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rps_runs"] = [round(r["rps"], 1) for r in runs]
    chosen["rps"] = statistics.median(r["rps"] for r in runs)
    chosen["cpu_ms_per_request"] = statistics.median(r["cpu_ms_per_request"] for r in runs)
    return chosen


def _paired(tops: list[dict[str, Any]], bottoms: list[dict[str, Any]], field: str) -> float:
    """The median over rounds of ``top[field] / bottom[field]``, each pair from one round."""
    ratios = [t[field] / b[field] for t, b in zip(tops, bottoms, strict=True) if b[field]]
    return statistics.median(ratios) if ratios else 0.0


def throughput(bench: Bench, log: Callable[[str], None]) -> dict[str, Any]:
    args = bench.args
    out: dict[str, Any] = {}
    for sc in SCENARIOS:
        if args.scenarios and not any(s in sc.key or s in sc.label for s in args.scenarios):
            continue
        log(f"throughput: {sc.label}")
        direct = bench.closed(
            bench.direct_target(sc),
            None,
            sc.upstream,
            duration=min(args.duration, 2.0),
            warmup=0.3,
        )
        fwd_runs: list[dict[str, Any]] = []
        uv_runs: list[dict[str, Any]] = []
        gw_runs: list[dict[str, Any]] = []
        # Short runs in many rounds, A B C C B A ...: the machine's pace drifts (other VMs,
        # other jobs) by 20% over seconds, and a drift during a scenario would otherwise
        # favour whichever ran first. The ratios are taken within each round, where the
        # targets ran seconds apart, and their median reported.
        for i in range(args.repeat):
            order = [
                (bench.forwarder_target(sc), bench.forwarder, fwd_runs),
                (bench.gateway_target(sc), bench.gateway, gw_runs),
                (bench.forwarder_target(sc, uvloop=True), bench.forwarder_uvloop, uv_runs),
            ]
            for target, proc, runs in order if i % 2 == 0 else order[::-1]:
                runs.append(
                    bench.closed(
                        target, proc, sc.upstream, duration=args.duration, warmup=args.warmup
                    )
                )
        fwd, gw, uv = _median_run(fwd_runs), _median_run(gw_runs), _median_run(uv_runs)
        entry = {
            "label": sc.label,
            "translated": sc.translated,
            "stream_chunks": sc.chunks,
            "direct": direct,
            "forwarder": fwd,
            "forwarder_uvloop": uv,
            "bridgekeeper": gw,
            "ratio": _paired(gw_runs, fwd_runs, "rps"),
            "ratio_uvloop": _paired(gw_runs, uv_runs, "rps"),
            # Forwarder CPU per request over Bridgekeeper's: the throughput ratio both would reach
            # when CPU-bound.
            "cpu_ratio": _paired(fwd_runs, gw_runs, "cpu_ms_per_request"),
            "round_ratios": [
                round(g["rps"] / f["rps"], 3) if f["rps"] else 0.0
                for g, f in zip(gw_runs, fwd_runs, strict=True)
            ],
        }
        if args.profile:
            from bench import profile

            assert bench.gateway is not None
            entry["profile"] = profile.record(
                bench, sc, Path(args.profile), duration=max(args.duration, 5.0)
            )
        out[sc.key] = entry
    return out


def accounting(bench: Bench, log: Callable[[str], None]) -> dict[str, Any]:
    """Limits and usage writes on vs off: rounds of the three back to back, each round's
    costs computed within it, their medians reported."""
    args = bench.args
    sc = Scenario("anthropic", "openai", 0)
    assert bench.lean is not None and bench.accounting_gateway is not None
    variants = {
        "on": (bench.accounting_gateway, LIMITED_KEY),
        "limits_off": (bench.accounting_gateway, OPEN_KEY),
        "all_off": (bench.lean, OPEN_KEY),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    names = list(variants)
    for i in range(args.accounting_repeats):
        # Each round starts with a different variant, so drift does not favour one.
        for name in names[i % len(names) :] + names[: i % len(names)]:
            proc, key = variants[name]
            log(f"accounting: {name} ({i + 1}/{args.accounting_repeats})")
            target = bench.gateway_target(sc, key=key, proc=proc)
            runs[name].append(
                bench.closed(target, proc, sc.upstream, duration=args.duration, warmup=args.warmup)
            )
    med = {name: _median_run(r) for name, r in runs.items()}
    rps = {name: m["rps"] for name, m in med.items()}
    cpu = {name: m["cpu_ms_per_request"] for name, m in med.items()}

    def cost(slower: str, faster: str, field: str = "rps") -> float:
        """The median over rounds of one round's cost: the variants of a round ran back to
        back, so a drift of the machine's speed between rounds cancels out."""
        ratios = []
        for a, b in zip(runs[slower], runs[faster], strict=True):
            if field == "rps" and b["rps"]:
                ratios.append(1 - a["rps"] / b["rps"])
            elif field == "cpu" and a["cpu_ms_per_request"]:
                ratios.append(b["cpu_ms_per_request"] / a["cpu_ms_per_request"] - 1)
        return statistics.median(ratios) if ratios else 0.0

    return {
        "scenario": sc.label,
        "variants": {
            "on": "key with RPM/TPM limits, usage written to SQLite every second",
            "limits_off": "key without limits, usage written to SQLite every second",
            "all_off": "key without limits, usage kept in memory (flush interval 1 h)",
        },
        "runs": med,
        "rps": rps,
        "cpu_ms_per_request": cpu,
        "throughput_cost": cost("on", "all_off"),
        "limits_throughput_cost": cost("on", "limits_off"),
        "usage_write_throughput_cost": cost("limits_off", "all_off"),
        "cpu_cost": cost("all_off", "on", "cpu"),
    }


def latency(bench: Bench, log: Callable[[str], None]) -> dict[str, Any]:
    """Sequential, one connection each: direct, forwarder, Bridgekeeper interleaved."""
    out: dict[str, Any] = {}
    for sc in (
        Scenario("anthropic", "openai", 0),
        Scenario("openai", "anthropic", 0),
        Scenario("openai", "openai", 0),
        Scenario("anthropic", "openai", 20),
    ):
        log(f"sequential latency: {sc.label}")
        job = {
            "mode": "seq",
            "targets": [
                bench.direct_target(sc),
                bench.forwarder_target(sc),
                bench.forwarder_target(sc, uvloop=True),
                bench.gateway_target(sc),
            ],
            "requests": bench.args.seq_requests,
            "warmup": 100,
        }
        result = run_load(job)
        lat = result["latency_us"]
        entry: dict[str, Any] = {"label": sc.label, "latency_us": lat, "errors": result["errors"]}
        for name in ("forwarder", "forwarder-uvloop", "bridgekeeper"):
            entry[f"{name.replace('-', '_')}_added_us"] = {
                q: lat[name][q] - lat["direct"][q] for q in ("p50", "p90", "p99", "mean")
            }
        out[sc.key] = entry
    return out


def _stream_targets(bench: Bench, sc: Scenario, model: str) -> list[dict[str, Any]]:
    """The upstream itself, the naive forwarder and Bridgekeeper, streaming ``model``."""
    return [
        bench.direct_target(sc, model=model),
        bench.forwarder_target(sc, model=model),
        bench.gateway_target(sc, model=model),
    ]


def ttfb(bench: Bench, log: Callable[[str], None]) -> dict[str, Any]:
    """Translated streams: first client byte after the upstream's first byte (µs)."""
    out: dict[str, Any] = {}
    for sc in (Scenario("anthropic", "openai", 20), Scenario("openai", "anthropic", 20)):
        log(f"time to first byte: {sc.label}")
        model = model_name(sc.upstream, f"ttfb{bench.args.ttfb_pause_ms}")
        job = {
            "mode": "ttfb",
            "targets": _stream_targets(bench, sc, model),
            "requests": bench.args.ttfb_requests,
            "warmup": 5,
        }
        out[sc.key] = {"label": sc.label, "pause_ms": bench.args.ttfb_pause_ms, **run_load(job)}
    return out


def pacing(bench: Bench, log: Callable[[str], None]) -> dict[str, Any]:
    """Translated streams from an upstream writing a chunk every ``--pace-ms``: how long each
    write takes to reach the client (a gateway that buffers or coalesces shows it here)."""
    out: dict[str, Any] = {}
    for sc in (Scenario("anthropic", "openai", 20), Scenario("openai", "anthropic", 20)):
        log(f"paced stream: {sc.label}")
        model = model_name(sc.upstream, f"pace{bench.args.pace_ms}")
        job = {
            "mode": "ttfb",
            "per_write": True,
            "targets": _stream_targets(bench, sc, model),
            "requests": max(bench.args.ttfb_requests // 4, 5),
            "warmup": 2,
        }
        out[sc.key] = {"label": sc.label, "pace_ms": bench.args.pace_ms, **run_load(job)}
    return out


def hold(bench: Bench, log: Callable[[str], None]) -> dict[str, Any]:
    """``--hold-streams`` slow translated streams at once: errors and peak RSS."""
    args = bench.args
    sc = Scenario("anthropic", "openai", args.hold_seconds)
    model = model_name("openai", f"slow{args.hold_seconds}")
    out: dict[str, Any] = {
        "label": f"{args.hold_streams} x messages -> openai stream, "
        f"1 chunk/s for {args.hold_seconds} s (translated)",
    }
    targets = [("bridgekeeper", bench.gateway), ("forwarder", bench.forwarder)]
    for name, proc in targets:
        assert proc is not None
        log(f"hold: {args.hold_streams} streams through {name}")
        target = (
            bench.gateway_target(sc, model=model)
            if name == "bridgekeeper"
            else bench.forwarder_target(sc, model=model)
        )
        answers_in = sc.client if name == "bridgekeeper" else sc.upstream
        job = {
            "mode": "hold",
            "target": target,
            "streams": args.hold_streams,
            "ramp": 100,
            "marker": "text_delta" if answers_in == "anthropic" else '"content":"',
            "min_count": args.hold_seconds,
            "timeout": args.hold_seconds + 60,
        }
        rss_before = proc.status_kb("VmRSS")
        reset = proc.reset_peak_rss()
        with RssSampler([proc]) as sampler:
            result = run_load(job)
        hwm = proc.status_kb("VmHWM") if reset else 0
        result["rss_before_mb"] = rss_before / 1024
        result["peak_rss_mb"] = max(sampler.peak[proc.name], hwm) / 1024
        result["peak_rss_source"] = "VmHWM" if reset else "VmRSS sampled every 0.1 s"
        out[name] = result
    return out


# -- the run ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for package in ("tornado", "aiohttp", "uvloop", "orjson"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:
            versions[package] = "?"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
        **versions,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="short runs (about 2 minutes)")
    parser.add_argument("--duration", type=float, help="seconds per throughput run (2; quick 1)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per run (0.3)")
    parser.add_argument("--connections", type=int, default=32, help="closed-loop connections")
    parser.add_argument("--repeat", type=int, help="throughput rounds, ABC CBA (6; quick 2)")
    parser.add_argument("--seq-requests", type=int, help="sequential requests (2000; quick 300)")
    parser.add_argument("--ttfb-requests", type=int, help="streams per TTFB target (100; quick 20)")
    parser.add_argument("--ttfb-pause-ms", type=int, default=50, help="pause after first chunk")
    parser.add_argument("--pace-ms", type=int, default=10, help="paced stream: ms between chunks")
    parser.add_argument("--hold-streams", type=int, default=1000, help="concurrent slow streams")
    parser.add_argument("--hold-seconds", type=int, help="slow stream length (30; quick 10)")
    parser.add_argument("--accounting-repeats", type=int, help="on/off rounds (15; quick 2)")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--scenarios", default="", help="comma list of substrings of throughput scenario keys"
    )
    parser.add_argument(
        "--events-per-write", type=int, default=1, help="fake upstream SSE batching"
    )
    parser.add_argument("--profile", help="directory: py-spy record Bridgekeeper per scenario")
    parser.add_argument(
        "--app-dir", help="run Bridgekeeper from this checkout (e.g. `git archive` of a commit)"
    )
    parser.add_argument("--json", help="also write the JSON result to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args(argv)
    quick = args.quick

    def default(name: str, full: Any, short: Any) -> None:
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)

    default("duration", 2.0, 1.0)
    default("repeat", 6, 2)
    default("warmup", 0.3, 0.3)
    default("seq_requests", 2000, 300)
    default("ttfb_requests", 100, 20)
    default("hold_seconds", 30, 10)
    default("accounting_repeats", 15, 2)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fds = raise_fd_limit()
    if "hold" in args.sections and fds < 3 * args.hold_streams:
        print(f"warning: only {fds} file descriptors allowed", file=sys.stderr)
    started = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="bridgekeeper-bench-"))
    bench = Bench(args, work)
    result: dict[str, Any] = {"machine": machine(), "settings": _settings(args)}
    try:
        log(f"starting fakes, forwarder and Bridgekeeper (work dir {work})")
        bench.start()
        sections = {
            "throughput": throughput,
            "accounting": accounting,
            "latency": latency,
            "ttfb": ttfb,
            "pacing": pacing,
            "hold": hold,
        }
        for name in SECTIONS:
            if name in args.sections:
                result[name] = sections[name](bench, log)
    finally:
        bench.stop()
        if args.keep:
            log(f"logs and databases kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["seconds"] = round(time.monotonic() - started, 1)
    result["targets"] = report.targets(result)
    print(report.tables(result))
    line = orjson.dumps(result).decode()
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    return 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "quick",
        "duration",
        "warmup",
        "connections",
        "repeat",
        "seq_requests",
        "ttfb_requests",
        "ttfb_pause_ms",
        "pace_ms",
        "hold_streams",
        "hold_seconds",
        "accounting_repeats",
        "events_per_write",
        "app_dir",
    )
    return {k: getattr(args, k) for k in keys}


if __name__ == "__main__":
    sys.exit(main())
