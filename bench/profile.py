"""``--profile DIR``: py-spy samples of Bridgekeeper under one scenario's load, summarised.

The recording is an extra closed-loop run after the measured ones (py-spy's
sampling costs the gateway some CPU, so it never overlaps a figure). Raw stacks
go to ``DIR/<scenario>.txt`` (folded format: load them into speedscope or
``flamegraph.pl``); the summary lists the top frames by own time and the
``app/`` frames by inclusive time.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import PYTHON

if TYPE_CHECKING:
    from bench.run import Bench, Scenario

_LINE = re.compile(r":\d+\)$")


def _py_spy() -> str:
    local = Path(PYTHON).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def _frame(raw: str) -> str:
    """``func (/x/app/gateway.py:123)`` -> ``func (app/gateway.py)``: one entry per function."""
    name, _, where = _LINE.sub(")", raw).partition(" (")
    where = where.rstrip(")")
    at = where.rfind("/app/")
    short = where[at + 1 :] if at >= 0 else "/".join(where.split("/")[-2:])
    return f"{name} ({short})"


def summarise(path: Path, top: int = 15) -> dict[str, Any]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_frame(f) for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            if " (app/" in frame:
                inclusive[frame] += count
    share = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {
        "samples": total,
        "own_pct": {frame: share(n) for frame, n in own.most_common(top)},
        "app_inclusive_pct": {frame: share(n) for frame, n in inclusive.most_common(top)},
    }


def record(bench: Bench, sc: Scenario, directory: Path, *, duration: float) -> dict[str, Any]:
    assert bench.gateway is not None
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{sc.key}.txt"
    spy = subprocess.Popen(
        [
            _py_spy(),
            "record",
            "--pid",
            str(bench.gateway.pid),
            "--rate",
            "250",
            "--duration",
            str(max(int(duration), 1)),
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bench.closed(
        bench.gateway_target(sc), bench.gateway, sc.upstream, duration=duration + 1, warmup=0
    )
    spy.wait(timeout=duration + 30)
    summary = summarise(out) if out.exists() else {"error": "py-spy wrote nothing"}
    summary["file"] = str(out)
    return summary
