"""The CLI contract of DESIGN.md: keys, admin password, db upgrade, usage export."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.auth import hash_key, verify_password
from app.cli import main
from app.db.engine import make_sync_engine
from app.db.models import AdminUser, ProxyKey
from app.db.usage import EXPORT_COLUMNS, UsageRecord, insert_events
from tests.databases import database_url


def run(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(args), out=out)
    return code, out.getvalue()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return database_url(tmp_path, "cli.db")


def rows(url: str, model: type) -> list:  # type: ignore[type-arg]
    engine = make_sync_engine(url)
    with Session(engine) as session:
        found = list(session.scalars(select(model)))
    engine.dispose()
    return found


def test_keys_create_prints_the_key_alone_on_the_last_line_and_stores_only_its_hash(
    db: str,
) -> None:
    code, out = run(
        "keys",
        "create",
        "alice",
        "--rpm",
        "60",
        "--tpm",
        "1000",
        "--models",
        "claude-*,gpt-4o",
        "--expires",
        "2031-02-03",
        "--database-url",
        db,
    )
    assert code == 0
    key = out.strip().splitlines()[-1]
    assert key.startswith("bk-") and len(key) > 40 and " " not in key
    (row,) = rows(db, ProxyKey)
    assert row.key_hash == hash_key(key) and key not in (row.prefix, row.note)
    assert (row.rpm, row.tpm, row.models) == (60, 1000, ["claude-*", "gpt-4o"])
    assert row.expires_at == datetime(2031, 2, 4)  # works through the whole of the 3rd (UTC)


def test_keys_create_twice_fails(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("keys", "create", "bob", "--database-url", db)[0] == 0
    assert run("keys", "create", "bob", "--database-url", db)[0] == 1
    assert "already exists" in capsys.readouterr().err


def test_keys_list_and_revoke(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    run("keys", "create", "carol", "--database-url", db)
    run("keys", "create", "dave", "--rpm", "5", "--database-url", db)
    code, out = run("keys", "revoke", "carol", "--database-url", db)
    assert code == 0 and "Revoked key 'carol'" in out
    code, listing = run("keys", "list", "--database-url", db)
    lines = listing.strip().splitlines()
    assert lines[0].split()[:3] == ["NAME", "PREFIX", "STATUS"]
    assert lines[1].split()[0] == "carol" and lines[1].split()[2] == "revoked"
    assert lines[2].split()[0] == "dave" and lines[2].split()[2:4] == ["active", "5"]
    assert run("keys", "revoke", "nobody", "--database-url", db)[0] == 1
    assert "no key named 'nobody'" in capsys.readouterr().err


def test_admin_set_password_reads_stdin(db: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "admin", "set-password", "--database-url", db],
        input="correct horse battery\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (admin,) = rows(db, AdminUser)
    assert admin.username == "admin"
    assert verify_password("correct horse battery", admin.password_hash)
    assert not verify_password("wrong", admin.password_hash)


def test_db_upgrade(db: str) -> None:
    code, out = run("db", "upgrade", "--database-url", db)
    assert code == 0 and "up to date" in out


def _seed_usage(url: str) -> None:
    run("db", "upgrade", "--database-url", url)
    engine = make_sync_engine(url)
    records = [
        UsageRecord(
            time=datetime(2026, 1, 1, 10, 0, 0),
            request_id="req_1",
            client_dialect="anthropic",
            key_name="alice",
            requested_model="claude-x",
            upstream="local",
            target_model="qwen",
            stream=True,
            input_tokens=10,
            output_tokens=5,
            latency_ms=12.34,
            ttft_ms=3.0,
        ),
        UsageRecord(
            time=datetime(2026, 1, 2, 10, 0, 0),
            request_id="req_2",
            client_dialect="openai",
            key_name="bob",
            requested_model="gpt-x",
            upstream="anth",
            target_model="claude",
            status="error",
            http_status=502,
            error_type="api_error",
            cache_read_tokens=4,
            latency_ms=1.0,
        ),
        UsageRecord(
            time=datetime(2026, 1, 3, 10, 0, 0),
            request_id="req_3",
            client_dialect="openai",
            key_name="alice",
            requested_model="gpt-x",
            upstream="anth",
            target_model="claude",
            input_tokens=1,
            output_tokens=2,
            tokens_estimated=True,
            latency_ms=2.0,
        ),
    ]
    with Session(engine) as session, session.begin():
        insert_events(session, records)
    engine.dispose()


def test_usage_export_csv_with_filters(db: str) -> None:
    _seed_usage(db)
    code, out = run(
        "usage",
        "export",
        "--database-url",
        db,
        "--key",
        "alice",
        "--since",
        "2026-01-01",
        "--until",
        "2026-01-02",
    )
    assert code == 0
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == list(EXPORT_COLUMNS)
    assert table[1:] == [
        [
            "2026-01-01T10:00:00.000Z",
            "req_1",
            "alice",
            "anthropic",
            "claude-x",
            "local",
            "qwen",
            "True",
            "ok",
            "200",
            "",
            "10",
            "5",
            "0",
            "0",
            "False",
            "12.3",
            "3.0",
        ]
    ]


def test_usage_export_json(db: str) -> None:
    _seed_usage(db)
    code, out = run(
        "usage", "export", "--database-url", db, "--format", "json", "--since", "2026-01-02"
    )
    data = orjson.loads(out)
    assert [r["request_id"] for r in data] == ["req_2", "req_3"]
    assert (
        data[0]["status"] == "error"
        and data[0]["error_type"] == "api_error"
        and data[0]["ttft_ms"] is None
    )
    assert data[1]["tokens_estimated"] is True
    code, out = run(
        "usage", "export", "--database-url", db, "--format", "json", "--since", "2030-01-01"
    )
    assert orjson.loads(out) == []


def test_bad_date_is_a_usage_error(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["usage", "export", "--since", "yesterday", "--database-url", db])
    assert info.value.code == 2
    assert "expected YYYY-MM-DD" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["", "   ", "x" * 201])
def test_keys_create_refuses_a_blank_or_overlong_name(
    db: str, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run("keys", "create", name, "--database-url", db)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "a key" in err and "Traceback" not in err


def test_keys_list_shows_the_last_day_given(db: str) -> None:
    """``--expires D`` means the key works through D; the listing says D."""
    run("keys", "create", "erin", "--expires", "2099-12-31", "--database-url", db)
    _, listing = run("keys", "list", "--database-url", db)
    header, erin = listing.strip().splitlines()
    assert erin[header.index("EXPIRES") :].split()[0] == "2099-12-31"
