"""Migrations: an empty database upgrades to head and matches the models exactly."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from app.db.engine import async_url, make_sync_engine, sync_url, upgrade
from app.db.models import Base


def test_upgrade_empty_database_matches_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    engine = make_sync_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(connection).get_table_names())
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
