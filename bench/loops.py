"""Runs a benchmark process's main coroutine on uvloop when it is installed (as the gateway does)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys
from collections.abc import Coroutine
from typing import Any


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (1,000 streams need ~2,000 descriptors)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return int(hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return int(hard)
    return int(soft)


def run_fast(main: Coroutine[Any, Any, Any]) -> Any:
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:
        print("uvloop is not installed: using the default event loop", file=sys.stderr)
        runner: Any = asyncio.run
    else:
        runner = uvloop.run
    try:
        return runner(main)
    except KeyboardInterrupt:
        return None
