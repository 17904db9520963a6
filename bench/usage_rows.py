"""The usage writer alone: batches of usage rows written as the recorder's thread writes them.

Run by ``python -m bench.instructions usage-writer`` under callgrind: it migrates a fresh
SQLite database, writes warm-up batches, prints ``READY``, and on each line read from
stdin writes ``--batches`` batches of ``--rows`` rows through the product's own writer
(`app.services.make_writer`: multi-row INSERTs, the daily roll-up, the key's
``last_used_at``) and prints ``DONE``. The parent counts instructions only between the
two, so neither the setup nor its own control calls are in the count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.db.engine import upgrade
from app.db.usage import UsageRecord
from app.services import make_writer


def batch(rows: int, start: datetime, serial: int, keys: int = 1) -> list[UsageRecord]:
    """A second's rows of a translated non-stream answer under load, from one key or from
    ``keys`` keys taking turns (the writer binds a key's name once for a chunk of its
    rows, row by row where keys mix)."""
    step = timedelta(seconds=1) / rows
    return [
        UsageRecord(
            time=start + i * step,
            request_id=f"msg_bench{serial:08d}{i:08d}",
            client_dialect="anthropic",
            endpoint="messages",
            key_id=None,
            key_name="bench-limited" if keys == 1 else f"bench-{i % keys}",
            requested_model="oa-bench-json",
            upstream="oa",
            upstream_key="…ench",
            target_model="oa-bench-json",
            stream=False,
            status="ok",
            http_status=200,
            input_tokens=23,
            output_tokens=12,
            tokens_estimated=False,
            latency_ms=1.25,
            ttft_ms=None,
        )
        for i in range(rows)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.usage_rows")
    parser.add_argument("--rows", type=int, default=1500, help="rows a batch (a second's worth)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--keys", type=int, default=1, help="keys taking turns row by row")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bridgekeeper-usage-rows-") as work:
        url = f"sqlite:///{Path(work) / 'bridgekeeper.db'}"
        upgrade(url)
        write, _purge, close = make_writer(url)
        start = datetime.now(UTC).replace(tzinfo=None)
        serial = 0
        for _ in range(3):  # statements prepared, pages cached, the roll-up rows made
            write(batch(args.rows, start + timedelta(seconds=serial), serial, args.keys), [])
            serial += 1
        print("READY", flush=True)
        for _line in sys.stdin:
            batches = [
                batch(args.rows, start + timedelta(seconds=serial + n), serial + n, args.keys)
                for n in range(args.batches)
            ]
            serial += args.batches
            print("GO", flush=True)
            sys.stdin.readline()
            for rows in batches:
                write(rows, [])
            print("DONE", flush=True)
        close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
