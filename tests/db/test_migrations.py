"""Migrations: an empty database upgrades to head and matches the models exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.db.engine import ROOT, async_url, make_sync_engine, sync_url, upgrade
from app.db.models import Base
from tests.databases import database_url


def test_upgrade_empty_database_matches_models(tmp_path: Path) -> None:
    url = database_url(tmp_path, "fresh.db")
    upgrade(url)
    engine = make_sync_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(connection).get_table_names())
        if engine.dialect.name == "sqlite":
            assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    engine.dispose()
    assert {
        "proxy_keys",
        "upstreams",
        "upstream_keys",
        "model_routes",
        "usage_events",
        "usage_daily",
        "admin_users",
        "admin_audit",
        "alembic_version",
    } <= tables


def test_upgrade_is_idempotent_and_creates_parent_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'dir' / 'bk.db'}"
    upgrade(url)
    upgrade(url)
    assert (tmp_path / "nested" / "dir" / "bk.db").exists()


def test_driver_urls() -> None:
    assert async_url("sqlite:///x.db") == "sqlite+aiosqlite:///x.db"
    assert async_url("postgresql://u:p@h/db") == "postgresql+asyncpg://u:p@h/db"
    assert sync_url("sqlite+aiosqlite:///x.db") == "sqlite:///x.db"
    assert sync_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert sync_url("postgresql+asyncpg://u:p@h/db") == "postgresql+psycopg://u:p@h/db"


def test_0002_keeps_the_events_and_indexes_only_failures(tmp_path: Path) -> None:
    """A database with events at 0001 upgrades: its rows stay, the status index becomes
    the failures' partial one (an "ok" row has no entry), and a downgrade restores it."""
    from alembic import command

    from app.db.engine import alembic_config
    from tests.databases import database_url

    url = database_url(tmp_path, "old.db")
    cfg = alembic_config(url)
    command.upgrade(cfg, "0001")
    engine = make_sync_engine(url)
    row = (
        "INSERT INTO usage_events (time, request_id, client_dialect, endpoint, stream, status,"
        " http_status, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,"
        " tokens_estimated, latency_ms) VALUES ('2026-12-07 01:02:03.000004', :id, 'openai',"
        " 'chat', false, :status, 200, 1, 2, 0, 0, false, 1.5)"
    )
    with engine.begin() as conn:
        for i, status in enumerate(["ok", "error", "ok", "rate_limited"]):
            conn.execute(text(row), {"id": f"req_{i}", "status": status})

    def indexes() -> set[str]:
        with engine.connect() as conn:
            return {ix["name"] or "" for ix in inspect(conn).get_indexes("usage_events")}

    def failure_index_definition() -> str:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                sql = "SELECT sql FROM sqlite_master WHERE name = 'ix_usage_events_failure_time'"
            else:
                sql = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_usage_events_failure_time'"
            return str(conn.execute(text(sql)).scalar())

    assert "ix_usage_events_status_time" in indexes()
    command.upgrade(cfg, "head")
    assert "ix_usage_events_failure_time" in indexes()
    assert "ix_usage_events_status_time" not in indexes()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_events")).scalar() == 4
    assert (
        "<> 'ok'" in failure_index_definition()
    )  # PostgreSQL: WHERE ((status)::text <> 'ok'::text)
    command.downgrade(cfg, "0001")
    assert "ix_usage_events_status_time" in indexes()
    assert "ix_usage_events_failure_time" not in indexes()
    engine.dispose()


def test_0003_adds_chat_template_thinking_off_and_keeps_every_key(tmp_path: Path) -> None:
    """An upstream at 0002 gets chat_template_thinking false (it keeps sending what it
    sent); its keys survive the upgrade and the downgrade (a copied-and-dropped table
    would have taken them with it, ON DELETE CASCADE)."""
    from alembic import command

    from app.db.engine import alembic_config
    from tests.databases import database_url

    url = database_url(tmp_path, "old.db")
    cfg = alembic_config(url)
    command.upgrade(cfg, "0002")
    engine = make_sync_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO upstreams (name, kind, base_url, rotation, timeout, enabled,"
                " reasoning, top_k, max_tokens_field, source, created_at, updated_at) VALUES"
                " ('local', 'openai', 'http://127.0.0.1:9/v1', 'ordered', 60, true, 'strip',"
                " true, 'max_tokens', 'config', '2026-12-07 00:00:00', '2026-12-07 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO upstream_keys (upstream_id, position, secret, last4, label,"
                " enabled, source, request_count, error_count) SELECT id, 0, 'encrypted',"
                " '0001', '', true, 'config', 0, 0 FROM upstreams"
            )
        )

    def columns() -> list[str]:
        with engine.connect() as conn:
            return [c["name"] for c in inspect(conn).get_columns("upstreams")]

    def keys() -> int:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM upstream_keys")).scalar() or 0)

    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        row = conn.execute(text("SELECT top_k, chat_template_thinking FROM upstreams")).one()
    assert (bool(row[0]), bool(row[1])) == (True, False)
    assert keys() == 1
    command.downgrade(cfg, "0002")
    assert "chat_template_thinking" not in columns() and "top_k" in columns()
    assert keys() == 1
    engine.dispose()


def test_0006_makes_the_daily_counts_64_bit_and_keeps_the_rows(tmp_path: Path) -> None:
    """A day's roll-up passes 2**31 tokens on a busy key: PostgreSQL's INTEGER refused it."""
    from alembic import command

    from app.db.engine import alembic_config

    url = database_url(tmp_path, "old.db")
    cfg = alembic_config(url)
    command.upgrade(cfg, "0005")
    engine = make_sync_engine(url)
    insert = (
        "INSERT INTO usage_daily (day, key_name, model, upstream, requests, errors, input_tokens,"
        " output_tokens, cache_read_tokens, cache_write_tokens, latency_ms_total) VALUES"
        " (:day, 'alice', 'm', 'u', 3, 1, 2000000000, 7, 8, 9, 12.5)"
    )
    with engine.begin() as conn:
        conn.execute(text(insert), {"day": "2026-12-06"})
    command.upgrade(cfg, "head")
    big = 2**40
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE usage_daily SET input_tokens = input_tokens + :n, requests = :n"),
            {"n": big},
        )
        row = conn.execute(
            text("SELECT requests, errors, input_tokens, output_tokens, cache_read_tokens,"
                 " cache_write_tokens, latency_ms_total FROM usage_daily")
        ).one()  # fmt: skip
    assert tuple(row) == (big, 1, 2_000_000_000 + big, 7, 8, 9, 12.5)
    with engine.connect() as conn:
        found = inspect(conn)
        assert [c["name"] for c in found.get_unique_constraints("usage_daily")] == [
            "uq_usage_daily_bucket"
        ]
        assert "ix_usage_daily_day" in {ix["name"] for ix in found.get_indexes("usage_daily")}
    with engine.begin() as conn:  # the bucket is still unique after the table copy
        conn.execute(text(insert), {"day": "2026-12-07"})
    with engine.begin() as conn:
        conn.execute(text("UPDATE usage_daily SET input_tokens = 5, requests = 3"))
    command.downgrade(cfg, "0005")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_daily")).scalar() == 2
    engine.dispose()


def alembic(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """alembic's own command line on the project's alembic.ini, from another folder."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGEKEEPER_")}
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**clean, **env},
    )


def revision_of(url: str) -> str:
    engine = make_sync_engine(url)
    with engine.connect() as conn:
        found = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    engine.dispose()
    return str(found)


def test_alembic_run_directly_takes_the_apps_database_url_from_any_folder(tmp_path: Path) -> None:
    """Rolling back is ``alembic downgrade``: it found no migrations outside the project
    folder, and migrated ./bridgekeeper.db whatever BRIDGEKEEPER_DATABASE_URL said."""
    url = database_url(tmp_path, "bk.db")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"BRIDGEKEEPER_DATABASE_URL": url}
    result = alembic("upgrade", "head", cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stderr
    assert revision_of(url) == "0008"
    result = alembic("downgrade", "-1", cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stderr
    assert revision_of(url) == "0007"
    result = alembic("current", cwd=elsewhere, env=env)
    assert result.returncode == 0 and result.stdout.startswith("0007"), result.stderr
    # -x url=... wins over the environment.
    other = database_url(tmp_path, "other.db")
    result = alembic("-x", f"url={other}", "upgrade", "head", cwd=elsewhere, env=env)
    assert result.returncode == 0, result.stderr
    assert (revision_of(other), revision_of(url)) == ("0008", "0007")
    assert list(elsewhere.iterdir()) == []  # no ./bridgekeeper.db made on the side
    # The app's own URL is never replaced by the environment's.
    upgrade(url)
    assert revision_of(url) == "0008"


def test_alembic_run_directly_says_what_is_wrong_in_one_line(tmp_path: Path) -> None:
    result = alembic("current", cwd=tmp_path, env={"BRIDGEKEEPER_DATABASE_URL": "foo://x"})
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "FAILED: environment: BRIDGEKEEPER_DATABASE_URL: unknown database kind" in result.stdout
    missing = f"sqlite:///{tmp_path / 'folder.db'}"
    (tmp_path / "folder.db").mkdir()
    result = alembic("current", cwd=tmp_path, env={"BRIDGEKEEPER_DATABASE_URL": missing})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"FAILED: cannot open the database {missing}" in result.stdout


_KEY_AT_0006 = (
    "INSERT INTO proxy_keys (name, key_hash, prefix, note, created_at, rpm, models, source)"
    " VALUES ('alice', 'h', 'bk-abcdefg', '', '2026-12-07 00:00:00', 5, '[]', 'cli')"
)
_KEY_AT_0007 = (
    "INSERT INTO proxy_keys (name, key_hash, prefix, note, created_at, rpm, models, source,"
    " rotations) VALUES ('alice', 'h', 'bk-abcdefg', '', '2026-12-07 00:00:00', 5, '[]',"
    " 'cli', 2)"
)


@pytest.mark.parametrize(
    ("before", "insert", "columns", "upgraded", "added", "kept"),
    [
        # 0007: a key starts never rotated.
        (
            "0006",
            _KEY_AT_0006,
            "rotated_at, rotations",
            (None, 0),
            {"rotated_at", "rotations"},
            set(),
        ),
        # 0008: a key starts at revision 0.
        ("0007", _KEY_AT_0007, "rotations, revision", (2, 0), {"revision"}, {"rotations"}),
    ],
)
def test_a_key_column_migration_keeps_every_key(
    tmp_path: Path,
    before: str,
    insert: str,
    columns: str,
    upgraded: tuple[object, ...],
    added: set[str],
    kept: set[str],
) -> None:
    """A key stored before the migration survives the upgrade, with the new columns' starting
    values, and the downgrade, without them."""
    from alembic import command

    from app.db.engine import alembic_config

    url = database_url(tmp_path, "old.db")
    cfg = alembic_config(url)
    command.upgrade(cfg, before)
    engine = make_sync_engine(url)
    with engine.begin() as conn:
        conn.execute(text(insert))
    command.upgrade(cfg, "head")
    with engine.connect() as conn:
        row = conn.execute(text(f"SELECT name, rpm, {columns} FROM proxy_keys")).one()
    assert tuple(row) == ("alice", 5, *upgraded)
    command.downgrade(cfg, before)
    with engine.connect() as conn:
        names = {c["name"] for c in inspect(conn).get_columns("proxy_keys")}
        assert conn.execute(text("SELECT count(*) FROM proxy_keys")).scalar() == 1
    assert not names & added and kept <= names
    engine.dispose()
