"""CPU instructions per request, counted by valgrind's callgrind: the same count every run.

Timings on a shared VM move ±15 % between runs; an instruction count does not. This
runs the target (Bridgekeeper, the naive forwarder or the uvloop forwarder) under
``valgrind --tool=callgrind`` with counting off, sends warm-up requests, switches
counting on with ``callgrind_control``, sends ``--requests`` sequential requests of
one scenario (its usage flush included), and prints one JSON line.

    python -m bench.instructions bridgekeeper anthropic openai [--chunks 20]
    python -m bench.instructions forwarder openai openai
    python -m bench.instructions forwarder-uvloop openai openai [--app-dir DIR]

Needs Debian's ``valgrind``; about a minute a run.

Usage rows are written every ``--flush-seconds`` (1 s, the product's default). Under
valgrind a second is only a few requests, so each write's fixed cost (a transaction, the
daily roll-up, key state) is shared by few rows: ~0.4 M instructions a request, where
under load a write carries thousands of rows. ``--flush-seconds 3600`` keeps the rows in
memory and counts the request path alone.

Two more targets count issue 7's accounting goal ("usage recording + auth + limits cost
≤ 5%, on and off") without the wall clock's noise:

    python -m bench.instructions usage-writer [--rows 1500]
    python -m bench.instructions accounting [anthropic openai] [--rows 1500]

``usage-writer`` runs the product's batch writer alone (`bench.usage_rows`) and prints
its instructions a row, for writes of ``--rows`` rows (a second's worth under load).
``accounting`` counts the request path with a key without limits and the rows kept in
memory (off), with a limited key (the limiter's share), and the writer's row (the
writes' share), and prints both shares of the off figure.
"""

from __future__ import annotations

import argparse
import glob
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

from bench.payloads import body_for
from bench.procs import PYTHON

ROOT = Path(__file__).resolve().parents[1]
KEY = "bk-instructionsinstructionsinstructionsinstr"  # with RPM/TPM limits
OPEN_KEY = "bk-instructionsopenopenopenopenopenopenopenop"  # without
SHORT = {"openai": "oa", "anthropic": "an"}
PATHS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


def _start(argv: list[str], ready: str, **kwargs: Any) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline().decode("utf-8", "replace")
        if not line:
            raise SystemExit(f"{argv[0]} exited before it was ready")
        match = re.search(ready, line)
        if match:
            return proc, int(match.group(1))


def _config(
    home: Path, fakes: dict[str, int], model: str, upstream: str, flush_seconds: float = 1.0
) -> Path:
    lines = [
        "[server]",
        'host = "127.0.0.1"',
        "port = 0",
        f"usage_flush_seconds = {flush_seconds}",
        # The key refresh's query (every 2 s by default) would fall a varying number of
        # times into a count of a few seconds: ~0.1 M instructions a request at random.
        "key_refresh_seconds = 3600",
        f'database_url = "sqlite:///{home}/bridgekeeper.db"',
        'admin_password = "instructions-admin-password"',
    ]
    for dialect, port in fakes.items():
        base = f"http://127.0.0.1:{port}" + ("/v1" if dialect == "openai" else "")
        lines += ["", "[[upstreams]]", f'name = "{SHORT[dialect]}"', f'kind = "{dialect}"']
        lines += [f'base_url = "{base}"', f'keys = ["sk-instructions-{dialect}"]', "timeout = 120"]
    lines += ["", "[[models]]", f'name = "{model}"', f'upstream = "{SHORT[upstream]}"']
    lines += ["", "[[keys]]", 'name = "instructions"', f'key = "{KEY}"']
    lines += ["rpm = 100000000", "tpm = 2000000000"]
    lines += ["", "[[keys]]", 'name = "instructions-open"', f'key = "{OPEN_KEY}"']
    path = home / "bridgekeeper.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def measure(args: argparse.Namespace) -> dict[str, Any]:
    _need_valgrind()
    work = Path(tempfile.mkdtemp(prefix="bridgekeeper-instructions-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        fakes: dict[str, int] = {}
        for dialect in ("openai", "anthropic"):
            fake, port = _start(
                [PYTHON, "-m", "bench.fake_upstream", "--dialect", dialect],
                r"READY (\d+)",
                cwd=ROOT,
            )
            procs.append(fake)
            fakes[dialect] = port
        model = f"{SHORT[args.upstream]}-bench-" + (f"c{args.chunks}" if args.chunks else "json")
        out = work / "callgrind.out"
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        valgrind.append(f"--callgrind-out-file={out}")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("BRIDGEKEEPER_", "ANTHROPIC_", "OPENAI_"))
        }
        env["PYTHONPATH"] = str(Path(args.app_dir).resolve()) if args.app_dir else str(ROOT)
        env["PYTHONHASHSEED"] = str(args.hash_seed)
        client = args.client
        if args.target == "bridgekeeper":
            config = _config(work, fakes, model, args.upstream, args.flush_seconds)
            argv = [PYTHON, "-m", "app", "serve", "--config", str(config)]
            target, port = _start(
                valgrind + argv, r"listening on http://[^:]+:(\d+)", env=env, cwd=work
            )
            path = PATHS[client]
            key = OPEN_KEY if args.open_key else KEY
            headers = (
                {"x-api-key": key, "anthropic-version": "2023-06-01"}
                if client == "anthropic"
                else {"Authorization": f"Bearer {key}"}
            )
        else:
            urls = {d: f"http://127.0.0.1:{p}{PATHS[d]}" for d, p in fakes.items()}
            loop = "uvloop" if args.target == "forwarder-uvloop" else "asyncio"
            argv = [PYTHON, "-m", "bench.forwarder", "--loop", loop]
            argv += ["--openai", urls["openai"], "--anthropic", urls["anthropic"]]
            target, port = _start(valgrind + argv, r"READY (\d+)", env=env, cwd=ROOT)
            path = f"/{args.upstream}{PATHS[args.upstream]}"
            headers = {}
            client = args.upstream  # a forwarder relays the upstream's own dialect
        procs.append(target)
        body = body_for(client, model, stream=args.chunks > 0)
        headers["Content-Type"] = "application/json"
        conns = [
            http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            for _ in range(args.connections)
        ]

        def one(conn: http.client.HTTPConnection) -> None:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise SystemExit(f"HTTP {resp.status}: {data[:300]!r}")

        def run(count: int) -> None:
            with ThreadPoolExecutor(len(conns)) as pool:
                for done in [
                    pool.submit(lambda c: [one(c) for _ in range(count // len(conns))], c)
                    for c in conns
                ]:
                    done.result()

        run(args.warmup * len(conns))
        _callgrind("-i", "on", target.pid)
        began = time.monotonic()
        run(args.requests)
        seconds = time.monotonic() - began
        # The usage writer's last flush falls inside the count (none when held off).
        time.sleep(args.flush_seconds + 0.5 if args.flush_seconds <= 60 else 1.5)
        _callgrind("-d", target.pid)
        total = _count(out)
        _keep(args, out)
        return {
            "target": args.target,
            "scenario": f"{args.client} -> {args.upstream}"
            + (f", {args.chunks}-chunk stream" if args.chunks else ", non-stream"),
            "requests": args.requests,
            "connections": args.connections,
            "limits": not args.open_key,
            "flush_seconds": args.flush_seconds,
            "instructions_per_request": total // args.requests,
            "requests_per_second": round(args.requests / seconds, 1),
            "app_dir": args.app_dir,
            "hash_seed": args.hash_seed,
        }
    finally:
        for proc in procs:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def _need_valgrind() -> None:
    if not shutil.which("valgrind") or not shutil.which("callgrind_control"):
        raise SystemExit("needs valgrind: apt-get install valgrind")


def _callgrind(*command: str | int) -> None:
    """``callgrind_control`` on a running target (``-i on``: count; ``-d``: dump), then a
    second for callgrind to take it at its next poll."""
    subprocess.run(["callgrind_control", *map(str, command)], check=True, capture_output=True)
    time.sleep(1.0)


def _count(out: Path) -> int:
    """The instructions callgrind counted: the largest total of its dump files."""
    total = 0
    for name in glob.glob(f"{out}*"):
        for line in Path(name).read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total


def _keep(args: argparse.Namespace, out: Path) -> None:
    """Callgrind's output files copied to ``--keep`` (callgrind_annotate reads them)."""
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
        for name in glob.glob(f"{out}*"):
            shutil.copy(name, Path(args.keep) / Path(name).name)


def measure_writer(args: argparse.Namespace) -> dict[str, Any]:
    """The usage writer's instructions a row (`bench.usage_rows`), batches of ``--rows``."""
    _need_valgrind()
    work = Path(tempfile.mkdtemp(prefix="bridgekeeper-instructions-"))
    out = work / "callgrind.out"
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    argv += [PYTHON, "-m", "bench.usage_rows", "--rows", str(args.rows), "--batches", "4"]
    argv += ["--keys", str(args.keys)]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(args.app_dir).resolve()) if args.app_dir else str(ROOT)
    env["PYTHONHASHSEED"] = str(args.hash_seed)
    # Run from the work directory: from this checkout's, ``-m`` would put it ahead of
    # PYTHONPATH, and ``--app-dir`` would count this checkout's writer.
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=work,
    )
    assert proc.stdin is not None and proc.stdout is not None

    def expect(word: bytes) -> None:
        assert proc.stdout is not None
        while (line := proc.stdout.readline()) and not line.startswith(word):
            pass
        if not line:
            raise SystemExit("bench.usage_rows exited early")

    def send() -> None:
        assert proc.stdin is not None
        proc.stdin.write(b"\n")
        proc.stdin.flush()

    try:
        expect(b"READY")
        send()
        expect(b"GO")  # the batches are built; only their writing is counted
        _callgrind("-i", "on", proc.pid)
        send()
        expect(b"DONE")
        _callgrind("-d", proc.pid)
        _keep(args, out)
        return {
            "target": "usage-writer",
            "rows_per_batch": args.rows,
            "batches": 4,
            "keys": args.keys,
            "instructions_per_row": _count(out) // (4 * args.rows),
            "app_dir": args.app_dir,
            "hash_seed": args.hash_seed,
        }
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def measure_accounting(args: argparse.Namespace) -> dict[str, Any]:
    """Auth-only against auth + limits + usage writes, counted (issue 7's "on and off").

    Off: a key without limits, the usage rows kept in memory. On: a key with RPM/TPM
    limits, plus the writer's instructions for the request's row (in batches of
    ``--rows``, as under load). Auth, routing and the usage record itself are in both.
    """
    args.target = "bridgekeeper"
    args.flush_seconds = 3600.0
    args.open_key = True
    off = measure(args)
    args.open_key = False
    limited = measure(args)
    writer = measure_writer(args)
    base = off["instructions_per_request"]
    limits = limited["instructions_per_request"] - base
    row = writer["instructions_per_row"]
    return {
        "target": "accounting",
        "scenario": off["scenario"],
        "off_instructions_per_request": base,
        "limits_instructions_per_request": limits,
        "usage_write_instructions_per_row": row,
        "rows_per_batch": args.rows,
        "keys": args.keys,
        "cost": (limits + row) / base,
        "limits_cost": limits / base,
        "usage_write_cost": row / base,
        "app_dir": args.app_dir,
        "hash_seed": args.hash_seed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.instructions", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "target",
        choices=("bridgekeeper", "forwarder", "forwarder-uvloop", "usage-writer", "accounting"),
    )
    for side, default in (("client", "anthropic"), ("upstream", "openai")):
        parser.add_argument(
            side,
            nargs="?",
            default=default,
            choices=("anthropic", "openai"),
            help=f"the {side}'s dialect ({default})",
        )
    parser.add_argument("--chunks", type=int, default=0, help="stream with 20 or 200 chunks")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument(
        "--open-key",
        action="store_true",
        help="send with a key that has no RPM/TPM limits (the limiter's cost: compare)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=1,
        help="clients at once (each sequential); under valgrind the upstream's whole answer "
        "is in before the gateway reads it, as under load",
    )
    parser.add_argument("--app-dir", help="run Bridgekeeper from this checkout instead")
    parser.add_argument(
        "--flush-seconds",
        type=float,
        default=1.0,
        help="Bridgekeeper's usage write interval (1, the default; 3600 leaves the usage rows "
        "in memory: the request path alone, see the module's docstring)",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="copy callgrind's output files here (callgrind_annotate shows where it went)",
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=1500,
        help="usage-writer, accounting: rows a write (1500: a second's at this machine's rate)",
    )
    parser.add_argument(
        "--keys",
        type=int,
        default=1,
        help="usage-writer, accounting: keys whose rows take turns in a batch (1: one key's "
        "traffic, whose name the writer binds once a chunk)",
    )
    parser.add_argument(
        "--hash-seed",
        type=int,
        default=0,
        help="the counted process's PYTHONHASHSEED (0). With random seeds, counts of the same "
        "code differ by up to ~2 k instructions a request: string hashes place the type "
        "attribute cache's entries, and its misses follow them. Fixed, a run repeats; try "
        "several to see the spread",
    )
    args = parser.parse_args(argv)
    run = {"usage-writer": measure_writer, "accounting": measure_accounting}.get(
        args.target, measure
    )
    print(orjson.dumps(run(args)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
