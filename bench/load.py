"""The load generator: raw asyncio HTTP/1.1 clients on uvloop, run as a process of its own.

Reads one JSON job on stdin, prints ``MARK start`` / ``MARK end`` around the
measured window (so the harness can read the gateway's CPU time exactly
there) and one ``RESULT {...}`` line. Modes:

- ``closed``: N keep-alive connections, each sending the next request as soon
  as the last answer ended, for a fixed time after a warm-up;
- ``seq``: one connection per target, one request at a time, targets
  interleaved so drift hits them alike, their order rotated every round so
  that none always follows the same one (on two cores, a target's request
  competes with what the one before it still does after its answer: with
  a fixed order, two copies of the same gateway measured ~50 µs apart);
- ``ttfb``: sequential streams; the gap between the first body byte the
  client got and the first body byte the fake upstream wrote (cross-process
  CLOCK_MONOTONIC, read from the fake's ``/_bench/last``);
- ``hold``: N streams open at once, each read to its end.

A response counts as an error unless its status is 200 and its body ends with
the job's ``expect`` marker (and, for ``hold``, holds ``min_count`` markers).
"""

from __future__ import annotations

import asyncio
import resource
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from bench.loops import run_fast

TAIL = 512


@dataclass(slots=True)
class Response:
    status: int = 0
    first_body_ns: int = 0
    size: int = 0
    tail: bytes = b""
    body: list[bytes] | None = None
    reads_ns: list[int] | None = None  # when each read with body bytes arrived

    def ok(self, expect: bytes) -> bool:
        return self.status == 200 and expect in self.tail


class HttpClient(asyncio.Protocol):
    """One keep-alive connection with one request in flight; a small incremental parser."""

    def __init__(self, keep_body: bool = False, keep_reads: bool = False) -> None:
        self.keep_body = keep_body
        self.keep_reads = keep_reads
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[Response] | None = None
        self.resp = Response()
        self.state = "idle"
        self.left = 0
        self.closed = False

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost in state {self.state}"))

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            return
        self.buf += data
        try:
            self._parse()
        except ValueError as exc:
            self.waiter.set_exception(ConnectionError(f"bad response: {exc}"))
            self.waiter = None
            if self.transport is not None:
                self.transport.close()

    # -- requests -----------------------------------------------------------------------------

    def send(self, raw: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        if self.closed:
            raise ConnectionError("connection is closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.resp = Response(
            body=[] if self.keep_body else None, reads_ns=[] if self.keep_reads else None
        )
        self.state = "head"
        self.buf.clear()
        self.transport.write(raw)
        return self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- parsing ------------------------------------------------------------------------------

    def _piece(self, piece: bytes) -> None:
        resp = self.resp
        resp.size += len(piece)
        resp.tail = (resp.tail + piece)[-TAIL:]
        if resp.body is not None:
            resp.body.append(piece)

    def _done(self) -> None:
        self.state = "idle"
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(self.resp)

    def _parse(self) -> None:
        buf = self.buf
        if self.state == "head":
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            del buf[: end + 4]
            self.resp.status = int(head[9:12])
            if b"\r\ntransfer-encoding: chunked" in head:
                self.state = "size"
            else:
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    raise ValueError("neither chunked nor Content-Length")
                stop = head.find(b"\r\n", at + 2)
                self.left = int(head[at + 17 : stop if stop >= 0 else len(head)])
                self.state = "length"
        if buf:
            if not self.resp.first_body_ns:
                self.resp.first_body_ns = time.monotonic_ns()
            if self.resp.reads_ns is not None:
                self.resp.reads_ns.append(time.monotonic_ns())
        if self.state == "length":
            if buf:
                take = min(self.left, len(buf))
                self._piece(bytes(buf[:take]))
                del buf[:take]
                self.left -= take
            if self.left == 0:
                self._done()
            return
        while True:
            if self.state == "size":
                nl = buf.find(b"\r\n")
                if nl < 0:
                    return
                size = int(bytes(buf[:nl]).split(b";")[0], 16)
                del buf[: nl + 2]
                self.left = size
                self.state = "data" if size else "final"
            if self.state == "data":
                if not buf:
                    return
                take = min(self.left, len(buf))
                self._piece(bytes(buf[:take]))
                del buf[:take]
                self.left -= take
                if self.left:
                    return
                self.state = "crlf"
            if self.state in ("crlf", "final"):
                if len(buf) < 2:
                    return
                del buf[:2]
                if self.state == "final":
                    self._done()
                    return
                self.state = "size"


async def connect(
    host: str, port: int, keep_body: bool = False, keep_reads: bool = False
) -> HttpClient:
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: HttpClient(keep_body, keep_reads), host, port)
    return client


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean of ``values`` (already in the unit wanted)."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0, "n": 0}
    ordered = sorted(values)
    n = len(ordered)

    def at(q: float) -> float:
        return ordered[min(int(q * n), n - 1)]

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": ordered[-1],
        "mean": sum(ordered) / n,
        "n": n,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def mark(name: str) -> None:
    print(f"MARK {name}", flush=True)


@dataclass(slots=True)
class Target:
    name: str
    host: str
    port: int
    raw: bytes
    expect: bytes
    fake: tuple[str, int] | None = None

    @classmethod
    def from_job(cls, spec: dict[str, Any]) -> Target:
        from bench.payloads import request_bytes

        body = spec["body"].encode()
        raw = request_bytes(spec["host"], spec["port"], spec["path"], body, spec.get("headers"))
        fake = tuple(spec["fake"]) if spec.get("fake") else None
        return cls(spec["name"], spec["host"], spec["port"], raw, spec["expect"].encode(), fake)  # type: ignore[arg-type]


# -- modes ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Tally:
    ok: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)


async def _loop(target: Target, conns: int, seconds: float, tally: _Tally | None) -> float:
    """Closed loop on ``conns`` connections for ``seconds``; returns the wall time taken."""
    clients = [await connect(target.host, target.port) for _ in range(conns)]
    start = time.perf_counter()
    end = start + seconds

    async def worker(client: HttpClient) -> None:
        while True:
            t0 = time.perf_counter()
            if t0 >= end:
                break
            try:
                resp = await client.send(target.raw)
            except ConnectionError as exc:
                if tally is not None:
                    tally.errors += 1
                    tally.kinds[str(exc)[:80]] += 1
                client = await connect(target.host, target.port)
                continue
            if tally is None:
                continue
            if resp.ok(target.expect):
                tally.ok += 1
                tally.latencies.append(time.perf_counter() - t0)
            else:
                tally.errors += 1
                tally.kinds[f"status {resp.status}" if resp.status != 200 else "bad body"] += 1
        client.close()

    await asyncio.gather(*(worker(c) for c in clients))
    return time.perf_counter() - start


async def closed(job: dict[str, Any]) -> dict[str, Any]:
    target = Target.from_job(job["target"])
    if job.get("warmup", 0) > 0:
        await _loop(target, job["connections"], job["warmup"], None)
    tally = _Tally()
    mark("start")
    cpu0 = _cpu_seconds()
    elapsed = await _loop(target, job["connections"], job["duration"], tally)
    cpu = _cpu_seconds() - cpu0
    mark("end")
    lat = percentiles([x * 1000 for x in tally.latencies])
    return {
        "requests": tally.ok,
        "errors": tally.errors,
        "error_kinds": dict(tally.kinds.most_common(5)),
        "seconds": elapsed,
        "rps": tally.ok / elapsed if elapsed else 0.0,
        "latency_ms": lat,
        "loadgen_cpu_util": cpu / elapsed if elapsed else 0.0,
    }


async def seq(job: dict[str, Any]) -> dict[str, Any]:
    targets = [Target.from_job(t) for t in job["targets"]]
    clients = [await connect(t.host, t.port) for t in targets]
    lat: dict[str, list[float]] = {t.name: [] for t in targets}
    errors: Counter[str] = Counter()
    warmup, count = job.get("warmup", 100), job["requests"]
    pairs = list(zip(targets, clients, strict=True))
    for i in range(warmup + count):
        if i == warmup:
            mark("start")
        turn = i % len(pairs)
        for t, client in pairs[turn:] + pairs[:turn]:
            t0 = time.perf_counter()
            resp = await client.send(t.raw)
            took = time.perf_counter() - t0
            if not resp.ok(t.expect):
                errors[t.name] += 1
            elif i >= warmup:
                lat[t.name].append(took * 1e6)
    mark("end")
    for client in clients:
        client.close()
    return {
        "latency_us": {name: percentiles(values) for name, values in lat.items()},
        "errors": dict(errors),
    }


def _write_delays(writes_ns: list[int], reads_ns: list[int]) -> list[float]:
    """For each upstream write after the first: µs until the client's next read (paced streams)."""
    delays = []
    for written in writes_ns[1:]:
        arrived = next((r for r in reads_ns if r >= written), None)
        if arrived is not None:
            delays.append((arrived - written) / 1000.0)
    return delays


async def ttfb(job: dict[str, Any]) -> dict[str, Any]:
    """First-byte gap per stream; with ``per_write``, the gap of every later upstream write too."""
    targets = [Target.from_job(t) for t in job["targets"]]
    per_write = bool(job.get("per_write"))
    out: dict[str, Any] = {}
    mark("start")
    for t in targets:
        assert t.fake is not None
        client = await connect(t.host, t.port, keep_reads=per_write)
        probe = await connect(*t.fake, keep_body=True)
        get_last = f"GET /_bench/last HTTP/1.1\r\nHost: {t.fake[0]}\r\n\r\n".encode()
        gaps: list[float] = []
        delays: list[float] = []
        errors = 0
        for i in range(job.get("warmup", 5) + job["requests"]):
            resp = await client.send(t.raw)
            last = orjson.loads(b"".join((await probe.send(get_last)).body or []))
            if not resp.ok(t.expect) or not resp.first_body_ns:
                errors += 1
            elif i >= job.get("warmup", 5):
                gaps.append((resp.first_body_ns - last["first_byte_ns"]) / 1000.0)
                if per_write:
                    delays += _write_delays(last["writes_ns"], resp.reads_ns or [])
        client.close()
        probe.close()
        out[t.name] = {"gap_us": percentiles(gaps), "errors": errors}
        if per_write:
            out[t.name]["write_delay_us"] = percentiles(delays)
    mark("end")
    return out


async def hold(job: dict[str, Any]) -> dict[str, Any]:
    """``streams`` concurrent streams, opened ``ramp`` per 50 ms, each read to its end."""
    target = Target.from_job(job["target"])
    streams, ramp = job["streams"], job.get("ramp", 100)
    marker, min_count = job["marker"].encode(), job["min_count"]
    deadline = job["timeout"]
    kinds: Counter[str] = Counter()
    durations: list[float] = []
    open_now = 0
    peak = 0

    async def one() -> None:
        nonlocal open_now, peak
        t0 = time.perf_counter()
        try:
            client = await connect(target.host, target.port, keep_body=True)
        except OSError as exc:
            kinds[f"connect: {exc.__class__.__name__}"] += 1
            return
        open_now += 1
        peak = max(peak, open_now)
        try:
            async with asyncio.timeout(deadline):
                resp = await client.send(target.raw)
        except (ConnectionError, TimeoutError) as exc:
            kinds[f"{exc.__class__.__name__}: {str(exc)[:60]}"] += 1
            return
        finally:
            open_now -= 1
            client.close()
        count = b"".join(resp.body or []).count(marker)
        if resp.status != 200:
            kinds[f"status {resp.status}"] += 1
        elif target.expect not in resp.tail:
            kinds["stream did not end properly"] += 1
        elif count < min_count:
            kinds[f"only {count} of {min_count} chunks"] += 1
        else:
            kinds["ok"] += 1
            durations.append(time.perf_counter() - t0)

    mark("start")
    started = time.perf_counter()
    tasks = []
    for i in range(streams):
        tasks.append(asyncio.create_task(one()))
        if (i + 1) % ramp == 0:
            await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    mark("end")
    ok = kinds.pop("ok", 0)
    return {
        "streams": streams,
        "ok": ok,
        "errors": streams - ok,
        "error_kinds": dict(kinds.most_common(5)),
        "peak_open": peak,
        "seconds": time.perf_counter() - started,
        "stream_seconds": percentiles(durations),
    }


MODES = {"closed": closed, "seq": seq, "ttfb": ttfb, "hold": hold}


def main() -> int:
    job = orjson.loads(sys.stdin.buffer.read())
    result = run_fast(MODES[job["mode"]](job))
    print("RESULT " + orjson.dumps(result).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
