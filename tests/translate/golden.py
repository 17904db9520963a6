"""Golden files: read, compare, and (``BRIDGEKEEPER_REGEN=1``) rewrite expected outputs.

Regenerated files are reviewed by hand before they are committed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

REGEN = os.environ.get("BRIDGEKEEPER_REGEN") == "1"


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def dump(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n"


def check_json(path: Path, actual: Any) -> None:
    if REGEN:
        path.write_bytes(dump(actual))
    assert path.exists(), f"{path} is missing (BRIDGEKEEPER_REGEN=1 writes it)"
    assert actual == load(path)


def check_bytes(path: Path, actual: bytes) -> None:
    if REGEN:
        path.write_bytes(actual)
    assert path.exists(), f"{path} is missing (BRIDGEKEEPER_REGEN=1 writes it)"
    assert actual.decode() == path.read_text()
