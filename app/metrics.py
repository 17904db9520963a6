"""Prometheus metrics: requests, tokens, errors, latency and time to first token, key states.

One registry per running gateway (no module globals), fed from every usage record
and read by ``GET /metrics``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from app.db.usage import UsageRecord
from app.upstreams.pool import UpstreamPool

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _KeyStates(Collector):
    """Live upstream key states: 1 for the state each key is in."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "bridgekeeper_upstream_key_state",
            "Upstream keys by state (active, cooling, disabled)",
            labels=["upstream", "key", "state"],
        )
        now = self._pool.now()
        for upstream in self._pool.all():
            for key in upstream.ring.keys:
                if key.secret is None:
                    continue
                family.add_metric([upstream.name, key.display, key.state(now)], 1.0)
        yield family


MAX_MODELS = 500  # distinct model label values; later names are counted as "other"


class _Histogram:
    """One label set's bucket counts and sum (cumulated only when rendered)."""

    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(_LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(_LATENCY_BUCKETS, value)] += 1
        self.total += value


class _Usage(Collector):
    """Requests, tokens, errors, latency and TTFT, counted in plain dicts.

    prometheus_client's own Counter and Histogram take a lock and walk the buckets in
    Python on every observation (~20 µs a request in all); these are summed here on the
    event loop, which is the only writer, and turned into metric families on a scrape.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, ...], int] = {}
        self.tokens: dict[tuple[str, ...], int] = {}
        self.errors: dict[tuple[str, ...], int] = {}
        self.latency: dict[tuple[str, ...], _Histogram] = {}
        self.ttft: dict[tuple[str, ...], _Histogram] = {}
        self._models: set[str] = set()

    def model(self, name: str) -> str:
        """``name`` as a label value: any name routes to a default upstream, so the first
        `MAX_MODELS` are kept and the rest share "other"."""
        if name in self._models:
            return name
        if len(self._models) >= MAX_MODELS:
            return "other"
        self._models.add(name)
        return name

    def collect(self) -> Iterator[Any]:
        yield self._counter(
            "bridgekeeper_requests",
            "API requests",
            ["dialect", "model", "upstream", "status"],
            self.requests,
        )
        yield self._counter(
            "bridgekeeper_tokens",
            "Tokens by direction (input, output, cache_read, cache_write)",
            ["model", "upstream", "direction"],
            self.tokens,
        )
        yield self._counter(
            "bridgekeeper_errors",
            "Failed API requests by error type",
            ["upstream", "error_type"],
            self.errors,
        )
        yield self._histogram(
            "bridgekeeper_request_seconds",
            "Request latency",
            ["model", "upstream", "status"],
            self.latency,
        )
        yield self._histogram(
            "bridgekeeper_time_to_first_token_seconds",
            "Time to the first byte sent to the client",
            ["model", "upstream"],
            self.ttft,
        )

    @staticmethod
    def _counter(
        name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], int]
    ) -> CounterMetricFamily:
        family = CounterMetricFamily(name, doc, labels=labels)
        for key, count in list(values.items()):
            family.add_metric(list(key), count)
        return family

    @staticmethod
    def _histogram(
        name: str, doc: str, labels: list[str], values: dict[tuple[str, ...], _Histogram]
    ) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, doc, labels=labels)
        bounds = [*(repr(float(b)) for b in _LATENCY_BUCKETS), "+Inf"]  # as prometheus_client
        for key, hist in list(values.items()):
            running, buckets = 0, []
            for bound, count in zip(bounds, hist.counts, strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric(list(key), buckets, hist.total)
        return family


class Metrics:
    """The gateway's Prometheus registry."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._usage = _Usage()
        self.registry.register(self._usage)
        self.registry.register(_KeyStates(pool))

    def observe(self, record: UsageRecord) -> None:
        usage = self._usage
        upstream = record.upstream or ""
        # A request refused for its key names no model here (its usage row does): anyone
        # could otherwise fill the model labels with names of their own.
        named = record.requested_model if record.http_status != 401 else None
        model = usage.model(named or "")
        request_key = (record.client_dialect, model, upstream, record.status)
        usage.requests[request_key] = usage.requests.get(request_key, 0) + 1
        tokens = usage.tokens
        for direction, value in (
            ("input", record.input_tokens),
            ("output", record.output_tokens),
            ("cache_read", record.cache_read_tokens),
            ("cache_write", record.cache_write_tokens),
        ):
            if value:
                token_key = (model, upstream, direction)
                tokens[token_key] = tokens.get(token_key, 0) + value
        if record.error_type:
            error_key = (upstream, record.error_type)
            usage.errors[error_key] = usage.errors.get(error_key, 0) + 1
        latency_key = (model, upstream, record.status)
        hist = usage.latency.get(latency_key)
        if hist is None:
            hist = usage.latency[latency_key] = _Histogram()
        hist.observe(record.latency_ms / 1000)
        if record.ttft_ms is not None:
            ttft_key = (model, upstream)
            hist = usage.ttft.get(ttft_key)
            if hist is None:
                hist = usage.ttft[ttft_key] = _Histogram()
            hist.observe(record.ttft_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
