"""Processes that start together on one fresh database: migrations and the config sync run
one process at a time (`app.db.engine.startup_lock`), under an advisory lock on PostgreSQL and
an flock on a file beside the database on SQLite."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from app.db.engine import (
    STARTUP_LOCK_KEY,
    alembic_config,
    make_sync_engine,
    sqlite_lock_path,
    startup_lock,
)
from tests.databases import POSTGRES, database_url

# Imports everything (the driver, alembic, the migration scripts), says so, then waits for
# the word: the upgrades start within a millisecond or two of each other.
UPGRADE = """
import sys
from alembic.script import ScriptDirectory
from app.db.engine import alembic_config, make_sync_engine, upgrade
make_sync_engine(sys.argv[1]).dispose()
for script in ScriptDirectory.from_config(alembic_config(sys.argv[1])).walk_revisions():
    script.module
print("ready", flush=True)
sys.stdin.readline()
upgrade(sys.argv[1])
"""


def child_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIDGEKEEPER_", "ANTHROPIC_", "OPENAI_", "CLAUDE_"))
    }


def head_revision(url: str) -> str:
    engine = make_sync_engine(url)
    with engine.connect() as conn:
        revision = str(conn.scalar(text("SELECT version_num FROM alembic_version")))
    engine.dispose()
    return revision


def test_upgrades_started_together_on_an_empty_database_all_succeed(tmp_path: Path) -> None:
    url = database_url(tmp_path, "unused")
    children = [
        subprocess.Popen(
            [sys.executable, "-c", UPGRADE, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(6)
    ]
    try:
        for child in children:
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
        for child in children:
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [(child.wait(timeout=120), child.communicate()[1]) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.communicate()
    for code, stderr in results:
        assert code == 0, stderr
    # Now on SQLite too, in every run: the scripts' head, not a number to bump per revision.
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head_revision(url) == head


@pytest.mark.skipif(not POSTGRES, reason="needs BRIDGEKEEPER_TEST_POSTGRES")
def test_a_second_holder_waits_for_the_first(tmp_path: Path) -> None:
    url = database_url(tmp_path, "unused")
    probe = make_sync_engine(url)

    def taken() -> bool:
        with probe.connect() as conn:
            got = conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": STARTUP_LOCK_KEY})
            if got:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": STARTUP_LOCK_KEY})
            return not got

    try:
        assert not taken()
        with startup_lock(url):
            assert taken()
        assert not taken()
    finally:
        probe.dispose()


def flock_taken(path: Path) -> bool:
    """Whether some holder has ``path`` flocked (a lock of this process's own counts: each
    open of the file is a holder of its own)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # and the probe's own lock with it
    return False


def test_a_sqlite_file_is_locked_through_a_file_beside_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'bk.db'}"
    lock = sqlite_lock_path(url)
    assert lock == tmp_path / "fresh" / "bk.db.lock"
    with startup_lock(url):
        assert flock_taken(lock)
    assert not flock_taken(lock)
    assert lock.exists()  # kept: a deleted lock file would let two holders lock two files


class _Said(logging.Handler):
    """Sets ``event`` when a record with ``text`` in its message is logged."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.event = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.event.set()


def test_a_second_holder_of_a_sqlite_file_waits_for_the_first(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bk.db'}"
    waiting = _Said("waiting for another process")
    logger = logging.getLogger("bridgekeeper.db")
    logger.addHandler(waiting)
    level = logger.level
    logger.setLevel(logging.INFO)
    inside = threading.Event()

    def second() -> None:
        with startup_lock(url):
            inside.set()

    thread = threading.Thread(target=second)
    try:
        with startup_lock(url):
            thread.start()
            assert waiting.event.wait(30), "the second holder did not find the lock taken"
            assert not inside.is_set()
        assert inside.wait(30), "the second holder never got the lock"
    finally:
        thread.join(30)
        logger.removeHandler(waiting)
        logger.setLevel(level)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_sqlite_database_takes_no_file_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_lock_path(url) is None
    with startup_lock(url) as connection:
        assert connection.dialect.name == "sqlite"
    assert list(tmp_path.iterdir()) == []


CONFIG = """
[server]
database_url = "{url}"
admin_password = "long-enough-pw"
secret_key = "Gk1hY0c7oQ7m0oGJbJ0xv0Hn7K3z4cQx0m9o0x2q3yE="

[[upstreams]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
keys = ["sk-local-0001", "sk-local-0002"]

[[upstreams]]
name = "echo"
kind = "echo"

[[models]]
name = "m"
upstream = "local"

[[keys]]
name = "alice"
key = "bk-alice-000000000000"
"""


def started(child: subprocess.Popen[str]) -> int:
    """The port a ``serve`` child announces it listens on."""
    assert child.stdout is not None
    while True:
        line = child.stdout.readline()
        if not line:  # it ended
            pytest.fail(f"serve exited with {child.wait()}:\n{child.communicate()[1]}")
        if line.startswith("Bridgekeeper listening on http://"):
            return int(line.split()[3].rsplit(":", 1)[1])


@pytest.mark.parametrize("migrated", [False, True], ids=["empty", "migrated"])
def test_serve_processes_started_together_all_start(tmp_path: Path, migrated: bool) -> None:
    """On an empty database both ran the migrations (one died on pg_type's unique index, or
    on SQLite on "table ... already exists"); on a migrated one both inserted the file's
    upstreams (one died on upstreams_name_key)."""
    url = database_url(tmp_path, "unused")
    config = tmp_path / "bk.toml"
    config.write_text(CONFIG.format(url=url))
    if migrated:
        from app.db.engine import upgrade

        upgrade(url)
    script = Path(sys.executable).with_name("bridgekeeper")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "app"]
    children = [
        subprocess.Popen(
            [*command, "serve", "--config", str(config), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=child_env(),
        )
        for _ in range(3)
    ]
    try:
        for child in children:
            port = started(child)
            # Answering: past `announce`, the signal handlers are in place.
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
                assert r.status == 200
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            assert child.wait(timeout=60) == 0, child.communicate()[1]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.communicate()
    engine = make_sync_engine(url)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM upstreams")) == 2
        assert conn.scalar(text("SELECT count(*) FROM upstream_keys")) == 2
        assert conn.scalar(text("SELECT count(*) FROM proxy_keys")) == 1
    engine.dispose()
