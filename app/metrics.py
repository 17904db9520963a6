"""Prometheus metrics: requests, tokens, errors, latency and time to first token, key states.

One registry per running gateway (no module globals), fed from every usage record
and read by ``GET /metrics``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
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


class Metrics:
    """The gateway's Prometheus registry."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["dialect", "model", "upstream", "status"]
        self.requests = Counter(
            "bridgekeeper_requests", "API requests", labels, registry=self.registry
        )
        self.tokens = Counter(
            "bridgekeeper_tokens",
            "Tokens by direction (input, output, cache_read, cache_write)",
            ["model", "upstream", "direction"],
            registry=self.registry,
        )
        self.errors = Counter(
            "bridgekeeper_errors",
            "Failed API requests by error type",
            ["upstream", "error_type"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "bridgekeeper_request_seconds",
            "Request latency",
            ["model", "upstream", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.ttft = Histogram(
            "bridgekeeper_time_to_first_token_seconds",
            "Time to the first byte sent to the client",
            ["model", "upstream"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_KeyStates(pool))
        # (metric, label values) -> child: `labels()` costs ~2.6 µs a call and every request
        # made five of them. Children are created on first use, as `labels()` would.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, record: UsageRecord) -> None:
        upstream = record.upstream or ""
        model = record.requested_model or ""
        child = self._child
        child(self.requests, record.client_dialect, model, upstream, record.status).inc()
        for direction, value in (
            ("input", record.input_tokens),
            ("output", record.output_tokens),
            ("cache_read", record.cache_read_tokens),
            ("cache_write", record.cache_write_tokens),
        ):
            if value:
                child(self.tokens, model, upstream, direction).inc(value)
        if record.error_type:
            child(self.errors, upstream, record.error_type).inc()
        child(self.latency, model, upstream, record.status).observe(record.latency_ms / 1000)
        if record.ttft_ms is not None:
            child(self.ttft, model, upstream).observe(record.ttft_ms / 1000)

    def render(self) -> bytes:
        return generate_latest(self.registry)
