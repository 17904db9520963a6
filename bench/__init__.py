"""Reproducible benchmarks: `make bench` (``python -m bench.run``); not part of `make test`."""
