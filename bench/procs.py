"""The benchmark's child processes: start, wait until ready, read CPU time and RSS, stop.

CPU time is ``utime + stime`` of ``/proc/<pid>/stat`` (all threads, so the
usage writer's thread counts too); peak RSS is ``VmHWM`` after resetting it
through ``/proc/<pid>/clear_refs``, cross-checked by sampling ``VmRSS``.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PYTHON = sys.executable


class Proc:
    """One child process, started with its stdout read until a ready line."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_dir: Path,
        *,
        ready: str = r"^READY (\d+)",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_dir / f"{name}.log"
        self.ready = re.compile(ready)
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def start(self, timeout: float = 60.0) -> int:
        """Start and return the port from the ready line; the rest of stdout goes to the log."""
        log = open(self.log_path, "wb")  # closed by the drain thread
        self.popen = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=log, env=self.env, cwd=self.cwd
        )
        assert self.popen.stdout is not None
        stdout = self.popen.stdout
        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        selector.register(stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.popen.poll() is not None:
                self.stop()
                raise RuntimeError(f"{self.name} did not start; see {self.log_path}")
            if not selector.select(timeout=min(left, 0.5)):
                continue
            line = stdout.readline()
            log.write(line)
            log.flush()
            match = self.ready.search(line.decode("utf-8", "replace"))
            if match:
                self.port = int(match.group(1))
                break
        selector.close()
        threading.Thread(target=_drain, args=(stdout, log), daemon=True).start()
        return self.port

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        # Fields 14 and 15 of proc(5), counted after the ")" that ends the command name.
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def status_kb(self, field: str) -> int:
        with open(f"/proc/{self.pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1])
        return 0

    def reset_peak_rss(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def stop(self, grace: float = 10.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from ``/proc/stat``."""
    with open("/proc/stat", "rb") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def _drain(stream: IO[bytes], log: IO[bytes]) -> None:
    with log:
        for line in stream:
            log.write(line)


class RssSampler:
    """Polls VmRSS of some processes every ``interval`` s and keeps each one's maximum (kB)."""

    def __init__(self, procs: Sequence[Proc], interval: float = 0.1) -> None:
        self.procs = list(procs)
        self.interval = interval
        self.peak = {p.name: 0 for p in self.procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for proc in self.procs:
                try:
                    self.peak[proc.name] = max(self.peak[proc.name], proc.status_kb("VmRSS"))
                except OSError:
                    pass
            self._stop.wait(self.interval)


def run_load(job: dict[str, Any], on_mark: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run `bench.load` on ``job``; ``on_mark`` is called at ``MARK start`` and ``MARK end``."""
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench.load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(orjson.dumps(job))
    proc.stdin.close()
    result: dict[str, Any] | None = None
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        if line.startswith("MARK ") and on_mark is not None:
            on_mark(line[5:])
        elif line.startswith("RESULT "):
            result = orjson.loads(line[7:])
    if proc.wait() != 0 or result is None:
        raise RuntimeError(f"load generator failed (exit {proc.returncode}) on {job['mode']} job")
    return result
