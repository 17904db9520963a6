"""The configs `make bench` and `bench.instructions` write are ones the gateway starts
with (a tighter config check once left `make bench` unable to start Bridgekeeper)."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

from app.settings import load_settings
from bench import instructions
from bench.run import Bench


def test_the_benchmark_gateways_configs_load(tmp_path: Path) -> None:
    args = argparse.Namespace(hold_seconds=30, ttfb_pause_ms=50, pace_ms=10)
    bench = Bench(args, tmp_path)
    bench.fakes = {"openai": SimpleNamespace(port=9001), "anthropic": SimpleNamespace(port=9002)}  # type: ignore[dict-item]
    for deferred in (False, True):
        path = tmp_path / f"bench-{deferred}.toml"
        path.write_text(bench._config(tmp_path, deferred))
        settings = load_settings(config_path=str(path), environ={}, cwd=tmp_path)
        assert {u.name for u in settings.upstreams} == {"oa", "an"}
        assert len(settings.keys) == 2


def test_the_instruction_count_gateway_config_loads(tmp_path: Path) -> None:
    fakes = {"openai": 9001, "anthropic": 9002}
    path = instructions._config(tmp_path, fakes, "m", "openai")
    settings = load_settings(config_path=str(path), environ={}, cwd=tmp_path)
    assert [k.name for k in settings.keys] == ["instructions", "instructions-open"]
