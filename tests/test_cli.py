"""The CLI contract of DESIGN.md: keys, admin password, db upgrade, usage export."""

from __future__ import annotations

import asyncio
import csv
import getpass
import importlib.metadata
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from subprocess import CompletedProcess

import orjson
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

import app
from app.auth import hash_key, verify_password
from app.cli import main, serve_warnings, version
from app.db.admins import MIN_PASSWORD
from app.db.engine import make_sync_engine
from app.db.models import AdminUser, ProxyKey, UsageEvent
from app.db.usage import EXPORT_COLUMNS, UsageRecord, insert_events
from app.settings import MAX_COUNT, load_settings
from tests.conftest import ECHO_CONFIG, Live, StartGateway, flushed, http
from tests.databases import POSTGRES, database_url


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
            "",
            "10",
            "5",
            "0",
            "0",
            "12.3",
            "3.0",
            "200",
            "False",
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


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-x", ["req_2", "req_3"]),  # an exact name, as the dashboard's filter takes it
        ("gpt-*", ["req_2", "req_3"]),
        ("*-?", ["req_1", "req_2", "req_3"]),
        ("claude-?", ["req_1"]),
        ("GPT-*", []),  # case counts, on SQLite as on PostgreSQL
        ("gpt_x", []),  # "_" is no wildcard
        ("%-x", []),  # nor is "%"
        ("gpt", []),
    ],
)
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_usage_export_takes_a_model_glob(
    db: str, model: str, expected: list[str], fmt: str
) -> None:
    _seed_usage(db)
    code, out = run("usage", "export", "--database-url", db, "--model", model, "--format", fmt)
    assert code == 0
    if fmt == "csv":
        exported = [row["request_id"] for row in csv.DictReader(io.StringIO(out))]
    else:
        exported = [row["request_id"] for row in orjson.loads(out)]
    assert exported == expected


def test_usage_export_model_glob_with_the_other_filters(db: str) -> None:
    _seed_usage(db)
    code, out = run(
        "usage",
        "export",
        "--database-url",
        db,
        "--format",
        "json",
        "--model",
        "*x",
        "--key",
        "alice",
        "--since",
        "2026-01-02",
    )
    assert code == 0
    assert [(r["request_id"], r["requested_model"]) for r in orjson.loads(out)] == [
        ("req_3", "gpt-x")
    ]


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


def cli(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, cwd: Path | None = None
) -> CompletedProcess[str]:
    """The real command in a child process: exit status, stdout and stderr as a user sees them."""
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def assert_one_line_error(result: CompletedProcess[str], code: int, message: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


HUGE = "99999999999999999999999"  # past a signed 64-bit column: was an OverflowError


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--rpm", HUGE, "--rpm: must be at most 2147483647"),
        ("--tpm", HUGE, "--tpm: must be at most 2147483647"),
        # 0 was accepted and made the key unlimited; the dashboard refuses it.
        ("--rpm", "0", "--rpm: must be at least 1"),
        ("--tpm", "0", "--tpm: must be at least 1"),
        ("--rpm", "-3", "--rpm: must be at least 1"),
        # Its end of day, the next midnight, cannot be represented (was an OverflowError).
        ("--expires", "9999-12-31", "the last one possible is 9999-12-30"),
    ],
)
def test_keys_create_refuses_out_of_range_limits_and_dates(
    db: str, option: str, value: str, message: str
) -> None:
    run("db", "upgrade", "--database-url", db)
    assert_one_line_error(
        cli("keys", "create", "k", option, value, "--database-url", db), 2, message
    )
    assert rows(db, ProxyKey) == []


def test_keys_create_takes_the_largest_limits_and_last_day(db: str) -> None:
    code, _ = run(
        "keys", "create", "big", "--rpm", str(MAX_COUNT), "--tpm", str(MAX_COUNT),
        "--expires", "9999-12-30", "--database-url", db,
    )  # fmt: skip
    assert code == 0
    (row,) = rows(db, ProxyKey)
    assert (row.rpm, row.tpm, row.expires_at) == (MAX_COUNT, MAX_COUNT, datetime(9999, 12, 31))
    today = datetime.now(UTC).date().isoformat()
    assert run("keys", "create", "today", "--expires", today, "--database-url", db)[0] == 0


def test_keys_create_with_a_past_expiry_warns_and_creates_an_expired_key(db: str) -> None:
    result = cli("keys", "create", "old", "--expires", "2020-01-01", "--database-url", db)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("bk-")  # still the last line
    assert result.stderr.startswith("bridgekeeper: warning: the expiry date is in the past")
    (row,) = rows(db, ProxyKey)
    assert row.expires_at == datetime(2020, 1, 2)


def test_usage_export_until_the_last_day_there_is(db: str) -> None:
    _seed_usage(db)
    result = cli("usage", "export", "--until", "9999-12-31", "--database-url", db)
    assert result.returncode == 0, result.stderr
    assert [r[1] for r in csv.reader(io.StringIO(result.stdout))][1:] == [
        "req_1",
        "req_2",
        "req_3",
    ]


@pytest.mark.parametrize("url", ["foo://bar", "not a url"])
def test_an_unusable_database_url_is_one_line(url: str) -> None:
    result = cli("keys", "list", "--database-url", url)
    assert_one_line_error(result, 2, "bridgekeeper: --database-url: ")
    result = cli("keys", "list", env={"BRIDGEKEEPER_DATABASE_URL": url})
    assert_one_line_error(result, 2, "environment: BRIDGEKEEPER_DATABASE_URL: ")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--port", "99999"], {}, "--port: a port must be between 0 and 65535, got 99999"),
        (["--port", "-1"], {}, "--port: a port must be between 0 and 65535, got -1"),
        (["--anthropic-port", "65536"], {}, "--anthropic-port: a port must be between 0 and"),
        ([], {"BRIDGEKEEPER_PORT": "99999"}, "environment: BRIDGEKEEPER_PORT: a port must be"),
        ([], {"ANTHROPIC_PORT": "70000"}, "environment: ANTHROPIC_PORT: a port must be"),
    ],
)
def test_serve_refuses_a_port_out_of_range(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    # It listened on the port modulo 65536 (99999 -> 34463) without a word.
    db = database_url(tmp_path, "serve.db")
    result = cli("serve", *args, "--database-url", db, env=env)
    assert_one_line_error(result, 2, message)


SHORT_PASSWORD_WARNING = "bridgekeeper: warning: the admin password has fewer than 8 characters\n"


def test_admin_set_password_refuses_only_an_empty_password_and_warns_about_a_short_one(
    db: str,
) -> None:
    for empty in ("\n", ""):  # an empty line, or nothing at all
        result = cli("admin", "set-password", "--database-url", db, stdin=empty)
        assert_one_line(result, 1, "bridgekeeper: the password must not be empty")
    for blank in ("", "   "):
        result = cli("admin", "set-password", "--username", blank, "--database-url", db,
                     stdin="long enough password\n")  # fmt: skip
        assert_one_line_error(result, 2, "an admin needs a username")
    assert rows(db, AdminUser) == []
    # Short: the operator's choice (the configured password's rule), said on stderr.
    short = "x" * (MIN_PASSWORD - 1)
    result = cli("admin", "set-password", "--database-url", db, stdin=short + "\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == SHORT_PASSWORD_WARNING
    (admin,) = rows(db, AdminUser)
    assert verify_password(short, admin.password_hash)
    result = cli("admin", "set-password", "--database-url", db, stdin="x" * MIN_PASSWORD + "\n")
    assert result.returncode == 0 and result.stderr == ""
    assert MIN_PASSWORD == 8


def run_with_stdin(*args: str, stdin: str = "long enough password\n") -> tuple[int, str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdin", io.StringIO(stdin))
        return run(*args)


def test_admin_set_password_says_whether_it_created_an_admin_or_changed_one(db: str) -> None:
    # It said "Password set for admin ..." either way: a mistyped --username went unnoticed.
    code, out = run_with_stdin("admin", "set-password", "--database-url", db)
    assert (code, out) == (0, "Created admin 'admin' with the given password\n")
    code, out = run_with_stdin("admin", "set-password", "--database-url", db)
    assert (code, out) == (0, "Password changed for admin 'admin'\n")
    code, out = run_with_stdin("admin", "set-password", "--username", "bob", "--database-url", db)
    assert (code, out) == (0, "Created admin 'bob' with the given password\n")
    assert sorted(a.username for a in rows(db, AdminUser)) == ["admin", "bob"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("typed", "code", "message"),
    [
        (["long enough password", "long enough password"], 0, ""),
        (["long enough password", "long enough pasword"], 1, "the two passwords differ"),
    ],
)
def test_admin_set_password_on_a_terminal_asks_twice(
    db: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    typed: list[str],
    code: int,
    message: str,
) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "Password: ", stream: object = None) -> str:
        prompts.append(prompt)
        return typed[len(prompts) - 1]

    monkeypatch.setattr(sys, "stdin", Terminal())
    monkeypatch.setattr(getpass, "getpass", fake_getpass)
    assert run("admin", "set-password", "--database-url", db)[0] == code
    assert prompts == ["New password: ", "Repeat it: "]
    err = capsys.readouterr().err
    assert message in err
    if code:
        assert err.count("\n") == 1 and rows(db, AdminUser) == []
    else:
        (admin,) = rows(db, AdminUser)
        assert verify_password("long enough password", admin.password_hash)


def test_admin_set_password_help_shows_the_default_username(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["admin", "set-password", "--help"])
    assert info.value.code == 0
    assert "(default: admin)" in " ".join(capsys.readouterr().out.split())


def test_revoking_a_revoked_key_says_so(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    run("keys", "create", "carol", "--database-url", db)
    code, out = run("keys", "revoke", "carol", "--database-url", db)
    assert code == 0 and "Revoked key 'carol'" in out
    (first,) = rows(db, ProxyKey)
    code, out = run("keys", "revoke", "carol", "--database-url", db)
    assert code == 0 and "was already revoked" in out and "Revoked key" not in out
    (again,) = rows(db, ProxyKey)
    assert again.revoked_at == first.revoked_at  # the first revocation's time stays


def test_a_revoked_keys_name_is_taken_and_the_error_says_why(
    db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run("keys", "create", "dave", "--database-url", db)
    run("keys", "revoke", "dave", "--database-url", db)
    capsys.readouterr()
    assert run("keys", "create", "dave", "--database-url", db)[0] == 1
    err = capsys.readouterr().err
    assert "a key named 'dave' already exists and is revoked; choose another name" in err


def test_usage_export_refuses_reversed_dates(db: str) -> None:
    _seed_usage(db)
    result = cli(
        "usage", "export", "--since", "2026-01-03", "--until", "2026-01-02", "--database-url", db
    )
    assert_one_line_error(result, 2, "--since 2026-01-03 is after --until 2026-01-02")
    assert result.stdout == ""


def test_usage_export_warns_about_a_key_name_no_key_has(db: str) -> None:
    _seed_usage(db)  # alice's and bob's events; no key row for either
    run("keys", "create", "alice", "--database-url", db)
    result = cli("usage", "export", "--key", "alice", "--database-url", db)
    assert result.returncode == 0 and result.stderr == ""
    result = cli("usage", "export", "--key", "nosuch", "--database-url", db)
    assert result.returncode == 0
    assert result.stderr == "bridgekeeper: warning: no key is named 'nosuch'\n"
    assert result.stdout == ",".join(EXPORT_COLUMNS) + "\n"
    # A key that is gone: its events keep its name and are still exported.
    result = cli("usage", "export", "--key", "bob", "--database-url", db)
    assert result.returncode == 0 and "no key is named 'bob'" in result.stderr
    assert [r[1] for r in csv.reader(io.StringIO(result.stdout))][1:] == ["req_2"]


def test_usage_export_into_a_closed_pipe_ends_quietly(db: str) -> None:
    run("db", "upgrade", "--database-url", db)
    engine = make_sync_engine(db)
    with Session(engine) as session, session.begin():
        insert_events(
            session,
            [
                UsageRecord(time=datetime(2026, 1, 1), request_id=f"r{i}", client_dialect="openai")
                for i in range(3000)  # ~250 KB of CSV: more than a pipe holds
            ],
        )
    engine.dispose()
    for fmt in ("csv", "json"):
        with subprocess.Popen(
            [sys.executable, "-m", "app", "usage", "export", "--format", fmt, "--database-url", db],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as child:
            assert child.stdout is not None and child.stderr is not None
            child.stdout.readline()  # `| head -1`
            child.stdout.close()
            err = child.stderr.read().decode()
            assert child.wait(timeout=60) == 0
        assert err == ""  # was "bridgekeeper: Broken pipe", exit 1


FORMULAS = {
    "key_name": "@SUM(1+1)*cmd|' /C calc'!A0",
    "requested_model": "=cmd|'/C calc'!A0",
    "upstream": "+up",
    "error_type": "\tx",
    "request_id": "\rr",
}


def test_usage_export_csv_defuses_formulas_in_text_cells(db: str) -> None:
    run("db", "upgrade", "--database-url", db)
    engine = make_sync_engine(db)
    with Session(engine) as session, session.begin():
        insert_events(
            session,
            [
                UsageRecord(
                    time=datetime(2026, 1, 1),
                    client_dialect="openai",
                    status="error",
                    http_status=502,
                    ttft_ms=-1.5,  # a number: stays one, minus and all
                    target_model="-2+3\r=1+2",  # the \r quoted: no new row, no bare formula
                    **FORMULAS,
                )
            ],
        )
    engine.dispose()
    code, out = run("usage", "export", "--database-url", db)
    assert code == 0
    header, row = list(csv.reader(io.StringIO(out, newline="")))
    cells = dict(zip(header, row, strict=True))
    for column, value in FORMULAS.items():
        assert cells[column] == "'" + value
    assert cells["target_model"] == "'-2+3\r=1+2"
    assert (cells["ttft_ms"], cells["http_status"], cells["status"]) == ("-1.5", "502", "error")
    # JSON is data, not a spreadsheet: unchanged.
    code, out = run("usage", "export", "--format", "json", "--database-url", db)
    (item,) = orjson.loads(out)
    assert {column: item[column] for column in FORMULAS} == FORMULAS


def assert_one_line(result: CompletedProcess[str], code: int, message: str) -> None:
    """`assert_one_line_error`, and nothing else on stderr."""
    assert_one_line_error(result, code, message)
    assert result.stderr.count("\n") == 1, result.stderr


# Every command, as it reaches the database (serve on any free port).
EVERY_COMMAND = [
    ["serve", "--port", "0"],
    ["db", "upgrade"],
    ["keys", "create", "k"],
    ["keys", "list"],
    ["keys", "revoke", "k"],
    ["keys", "rotate", "k"],
    ["admin", "set-password"],
    ["usage", "export"],
]


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
def test_an_unreachable_database_is_one_line_for_every_command(command: list[str]) -> None:
    pytest.importorskip("psycopg")
    url = "postgresql://bk:pw-not-shown@127.0.0.1:1/nothing"  # nothing listens on port 1
    result = cli(*command, "--database-url", url, stdin="long enough password\n")
    assert_one_line(
        result, 1, "bridgekeeper: cannot connect to the database postgresql://bk:***@127.0.0.1:1/"
    )
    assert "pw-not-shown" not in result.stderr and "Connection refused" in result.stderr


@pytest.mark.parametrize("command", EVERY_COMMAND, ids=" ".join)
def test_a_sqlite_file_that_cannot_be_opened_is_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    (tmp_path / "folder.db").mkdir()  # a folder where the file should be
    url = f"sqlite:///{tmp_path / 'folder.db'}"
    result = cli(*command, "--database-url", url, stdin="long enough password\n")
    assert_one_line(result, 1, f"bridgekeeper: cannot open the database {url}: ")


@pytest.mark.skipif(not POSTGRES, reason="needs BRIDGEKEEPER_TEST_POSTGRES")
@pytest.mark.parametrize("command", [["keys", "list"], ["serve", "--port", "0"]], ids=" ".join)
def test_a_wrong_database_password_is_one_line(command: list[str]) -> None:
    url = make_url(POSTGRES).set(password="not-the-password").render_as_string(False)
    result = cli(*command, "--database-url", url)
    assert_one_line(result, 1, "bridgekeeper: cannot connect to the database postgresql://")
    assert "not-the-password" not in result.stderr


def test_without_the_postgresql_driver_one_line_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['psycopg'] = None; from app.cli import main;"
        " sys.exit(main(['keys', 'list', '--database-url', 'postgresql://u@127.0.0.1:1/x']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert_one_line(result, 1, "needs the psycopg driver: pip install 'bridgekeeper[postgres]'")


READ_ONLY = [
    ["keys", "list"],
    ["keys", "revoke", "k"],
    ["keys", "rotate", "k"],
    ["usage", "export"],
]


@pytest.mark.parametrize("command", READ_ONLY, ids=" ".join)
def test_commands_that_only_look_do_not_create_a_database(
    tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "typo" / "bk.db"
    result = cli(*command, "--database-url", f"sqlite:///{missing}")
    assert_one_line(result, 1, f"bridgekeeper: no database at {missing} (create one with")
    assert "`bridgekeeper db upgrade` or `bridgekeeper serve`" in result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "typo").exists()
    # Relative to the working directory, as the URL is.
    result = subprocess.run(
        [sys.executable, "-m", "app", *command, "--database-url", "sqlite:///bk.db"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert_one_line(result, 1, f"no database at {tmp_path / 'bk.db'}")
    assert not (tmp_path / "bk.db").exists()


@pytest.mark.parametrize(
    "command", [["keys", "create", "k"], ["admin", "set-password"], ["db", "upgrade"]], ids=" ".join
)
def test_commands_that_write_still_create_the_database(tmp_path: Path, command: list[str]) -> None:
    db = tmp_path / "new" / "bk.db"
    result = cli(*command, "--database-url", f"sqlite:///{db}", stdin="long enough password\n")
    assert result.returncode == 0, result.stderr
    assert db.exists()
    assert cli("keys", "list", "--database-url", f"sqlite:///{db}").returncode == 0


def seed_upstream_key(url: str, fernet: bytes) -> None:
    """One upstream with one key, stored encrypted with ``fernet``."""
    from app.secretbox import SecretBox

    run("db", "upgrade", "--database-url", url)
    engine = make_sync_engine(url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO upstreams (name, kind, base_url, rotation, timeout, enabled,"
                " reasoning, top_k, chat_template_thinking, max_tokens_field, source,"
                " created_at, updated_at) VALUES ('local', 'openai', 'http://127.0.0.1:9/v1',"
                " 'ordered', 60, true, 'strip', false, false, 'max_tokens', 'dashboard',"
                " '2026-12-07 00:00:00', '2026-12-07 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO upstream_keys (upstream_id, position, secret, last4, label,"
                " enabled, source, request_count, error_count) SELECT id, 0, :secret, '0001',"
                " '', true, 'dashboard', 0, 0 FROM upstreams"
            ),
            {"secret": SecretBox(fernet).encrypt("sk-upstream-0001")},
        )
    engine.dispose()


def test_serve_with_another_secret_key_than_the_stored_keys_need_is_one_line(
    tmp_path: Path,
) -> None:
    db = database_url(tmp_path, "serve.db")
    seed_upstream_key(db, Fernet.generate_key())
    env = {"BRIDGEKEEPER_SECRET_KEY": Fernet.generate_key().decode()}
    result = cli("serve", "--port", "0", "--database-url", db, env=env)
    assert_one_line(result, 1, "bridgekeeper: an upstream key cannot be decrypted")
    assert "BRIDGEKEEPER_SECRET_KEY or the secret file changed" in result.stderr


def test_an_invalid_secret_key_or_secret_file_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "serve.db"
    run("db", "upgrade", "--database-url", f"sqlite:///{db}")
    env = {"BRIDGEKEEPER_SECRET_KEY": "not-a-fernet-key"}
    result = cli("serve", "--port", "0", "--database-url", f"sqlite:///{db}", env=env)
    assert_one_line(result, 2, "bridgekeeper: environment: BRIDGEKEEPER_SECRET_KEY: not a Fernet")
    assert "not-a-fernet-key" not in result.stderr
    (tmp_path / "serve.db.secret").write_text("damaged\n")
    result = cli("serve", "--port", "0", "--database-url", f"sqlite:///{db}")
    assert_one_line(result, 1, f"bridgekeeper: {tmp_path / 'serve.db.secret'}: not a Fernet key")


@pytest.mark.parametrize(
    ("config", "environ"),
    [
        ('[server]\nadmin_password = "short"\n', {}),
        ("", {"BRIDGEKEEPER_ADMIN_PASSWORD": "1234567"}),
    ],
    ids=["config file", "environment"],
)
def test_serve_warns_about_a_short_configured_admin_password(
    tmp_path: Path, config: str, environ: dict[str, str]
) -> None:
    path = tmp_path / "bk.toml"
    path.write_text(config)
    settings = load_settings(config_path=str(path), environ=environ, cwd=tmp_path)
    err = io.StringIO()
    serve_warnings(settings, err)
    assert err.getvalue() == SHORT_PASSWORD_WARNING
    for fine in ({}, {"BRIDGEKEEPER_ADMIN_PASSWORD": "x" * MIN_PASSWORD}):
        err = io.StringIO()
        serve_warnings(load_settings(environ=fine, cwd=tmp_path), err)
        assert err.getvalue() == ""


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port someone else listens on."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        yield int(busy.getsockname()[1])


@pytest.mark.parametrize("which", ["--port", "--anthropic-port"])
def test_serve_on_a_port_in_use_names_the_address(
    tmp_path: Path, busy_port: int, which: str
) -> None:
    # It said only "bridgekeeper: Address already in use", not which of the two ports.
    db = database_url(tmp_path, "serve.db")
    ports = (
        ["--port", str(busy_port)] if which == "--port" else ["--port", "0", which, str(busy_port)]
    )
    result = cli("serve", *ports, "--database-url", db)
    assert_one_line(
        result, 1, f"bridgekeeper: cannot listen on 127.0.0.1:{busy_port}: address already in use"
    )


def test_serve_warns_before_it_starts(tmp_path: Path, busy_port: int) -> None:
    db = database_url(tmp_path, "serve.db")
    env = {"BRIDGEKEEPER_ADMIN_PASSWORD": "short"}
    result = cli("serve", "--port", str(busy_port), "--database-url", db, env=env)
    assert result.returncode == 1
    assert result.stderr.startswith(SHORT_PASSWORD_WARNING)
    assert result.stderr.count("\n") == 2 and "cannot listen on" in result.stderr


@pytest.fixture
def no_bridgekeeper_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The config file alone decides (a BRIDGEKEEPER_DATABASE_URL would override its URL)."""
    for name in list(os.environ):
        if name.startswith("BRIDGEKEEPER_"):
            monkeypatch.delenv(name)


UNSET = "BK_TEST_UNSET_UPSTREAM_SECRET"


@pytest.mark.usefixtures("no_bridgekeeper_environment")
def test_commands_that_call_no_upstream_take_upstream_secrets_that_are_not_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every `keys create`, `keys list`, `usage export` failed with "environment variable
    # ... is not set" where the gateway's upstream secrets are not exported.
    monkeypatch.delenv(UNSET, raising=False)
    (tmp_path / "bk.toml").write_text(
        '[server]\ndatabase_url = "sqlite:///bk.db"\n\n'
        '[[upstreams]]\nname = "up"\nkind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\n'
        f'keys = ["sk-literal", "env:{UNSET}"]\n'
    )
    config = ("--config", "bk.toml")
    result = cli("keys", "create", "k", *config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("bk-")
    result = cli("keys", "list", *config, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[0] == "k"
    for command in (["usage", "export"], ["db", "upgrade"], ["keys", "revoke", "k"]):
        result = cli(*command, *config, cwd=tmp_path)
        assert result.returncode == 0 and result.stderr == "", result.stderr
    result = cli("admin", "set-password", *config, stdin="long enough password\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # `serve` calls the upstream: there the missing secret is still an error.
    result = cli("serve", "--port", "0", *config, cwd=tmp_path)
    assert_one_line(result, 2, f"environment variable {UNSET} is not set")


@pytest.mark.usefixtures("no_bridgekeeper_environment")
@pytest.mark.parametrize("url", ["mysql://x", "mysql+pymysql://u@h/db"])
@pytest.mark.parametrize("command", [["keys", "list"], ["serve", "--port", "0"]], ids=" ".join)
def test_an_unsupported_database_kind_is_one_line(
    tmp_path: Path, command: list[str], url: str
) -> None:
    # SQLAlchemy knows MySQL: it was a traceback ending "No module named 'MySQLdb'".
    kind = url.partition(":")[0]
    result = cli(*command, "--database-url", url)
    assert_one_line(result, 2, f"bridgekeeper: --database-url: unsupported database kind {kind!r}")
    result = cli(*command, env={"BRIDGEKEEPER_DATABASE_URL": url})
    assert_one_line(result, 2, "environment: BRIDGEKEEPER_DATABASE_URL: unsupported database kind")
    (tmp_path / "bk.toml").write_text(f'[server]\ndatabase_url = "{url}"\n')
    result = cli(*command, "--config", "bk.toml", cwd=tmp_path)
    assert_one_line(result, 2, "bk.toml: server.database_url: unsupported database kind")


def test_version(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"bridgekeeper {importlib.metadata.version('bridgekeeper')}\n"

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    # Run from a source tree (not installed): the package's own version.
    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert version() == app.__version__
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"bridgekeeper {app.__version__}\n"


# keys rotate: a new secret for the same key (a leaked or lost one), the old one refused.


def key_row(url: str, name: str) -> ProxyKey:
    (row,) = (r for r in rows(url, ProxyKey) if r.name == name)
    return row


def test_keys_rotate_prints_the_new_key_alone_on_the_last_line_and_keeps_the_key(
    db: str,
) -> None:
    code, out = run(
        "keys", "create", "alice", "--rpm", "60", "--tpm", "1000", "--models", "claude-*,gpt-4o",
        "--expires", "2031-02-03", "--database-url", db,
    )  # fmt: skip
    old_key = out.strip().splitlines()[-1]
    before = key_row(db, "alice")
    code, out = run("keys", "rotate", "alice", "--database-url", db)
    assert code == 0
    *said, new_key = out.strip().splitlines()
    assert new_key.startswith("bk-") and len(new_key) == len(old_key) and new_key != old_key
    after = key_row(db, "alice")
    assert (after.id, after.created_at, after.source) == (before.id, before.created_at, "cli")
    assert (after.rpm, after.tpm, after.models) == (60, 1000, ["claude-*", "gpt-4o"])
    assert after.expires_at == datetime(2031, 2, 4)
    assert after.key_hash == hash_key(new_key) and after.prefix == new_key[:10]
    assert after.rotated_at is not None and after.rotations == 1
    message = " ".join(said)
    assert "Rotated key 'alice'" in message and new_key not in message
    assert f"({before.prefix}...)" in message and f"({after.prefix}...)" in message
    listing = run("keys", "list", "--database-url", db)[1]
    assert f"{new_key[:10]}..." in listing and f"{old_key[:10]}..." not in listing
    code, out = run("keys", "rotate", "alice", "--database-url", db)
    third = out.strip().splitlines()[-1]
    assert code == 0 and third not in (old_key, new_key)
    again = key_row(db, "alice")
    assert again.key_hash == hash_key(third) and again.rotations == 2


def test_keys_rotate_refuses_unknown_revoked_and_config_file_keys(db: str) -> None:
    for name in ("dave", "filed", "default"):
        run("keys", "create", name, "--database-url", db)
    run("keys", "revoke", "dave", "--database-url", db)
    engine = make_sync_engine(db)
    with engine.begin() as conn:  # what `serve` makes of a [[keys]] entry or CLAUDE_PROXY_API_KEY
        conn.execute(text("UPDATE proxy_keys SET source = 'config' WHERE name <> 'dave'"))
    engine.dispose()
    hashes = {r.name: r.key_hash for r in rows(db, ProxyKey)}
    for name, message in (
        ("nobody", "bridgekeeper: no key named 'nobody'"),
        (
            "dave",
            "bridgekeeper: key 'dave' is revoked and cannot be rotated; create a new key under"
            " another name",
        ),
        (
            "filed",
            "bridgekeeper: key 'filed' is defined in the config file ([[keys]]): its secret"
            " comes from there, so change it there and restart the gateway",
        ),
        (
            "default",
            "key 'default' is defined in the config file ([[keys]]) or CLAUDE_PROXY_API_KEY:",
        ),
    ):
        result = cli("keys", "rotate", name, "--database-url", db)
        assert_one_line(result, 1, message)
        assert result.stdout == ""
    assert {r.name: r.key_hash for r in rows(db, ProxyKey)} == hashes
    assert all(r.rotations == 0 and r.rotated_at is None for r in rows(db, ProxyKey))


async def run_in_thread(*args: str) -> tuple[int, str]:
    """`run` from a test coroutine: the command runs an event loop of its own."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: run(*args))


async def chat_status(live: Live, key: str) -> int:
    response = await http(
        "POST",
        live.url + "/v1/chat/completions",
        json={"model": "echo-model", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    return response.status


@pytest.mark.gen_test(timeout=60)
async def test_keys_rotate_reaches_a_running_gateway(gateway: StartGateway) -> None:
    live = await gateway(ECHO_CONFIG)
    url = live.services_db_url
    code, out = await run_in_thread(
        "keys", "create", "alice", "--rpm", "600", "--models", "echo-*", "--expires", "2999-12-31",
        "--database-url", url,
    )  # fmt: skip
    old_key = out.strip().splitlines()[-1]
    assert await chat_status(live, old_key) == 200
    await live.services.reload()  # the creation seen: only the rotation is left to notice
    code, out = await run_in_thread("keys", "rotate", "alice", "--database-url", url)
    assert code == 0, out
    new_key = out.strip().splitlines()[-1]
    # The old key alone until it is refused: the key refresh must see the rotation (the new
    # key's first use would take the old one out by itself).
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while (status := await chat_status(live, old_key)) == 200:
        assert loop.time() < deadline, "the rotation never reached the gateway"
        await asyncio.sleep(0.1)
    assert status == 401
    assert await chat_status(live, new_key) == 200
    assert await chat_status(live, old_key) == 401
    record = await live.services.authenticate(new_key)
    assert (record.name, record.rpm, record.models) == ("alice", 600, ("echo-*",))
    assert record.expires_at == datetime(3000, 1, 1)
    # One key's usage: the requests of both secrets under its name and row.
    await flushed(live)
    async with live.services.db.session() as session:
        events = list(await session.scalars(select(UsageEvent).where(UsageEvent.status == "ok")))
    alice = [(e.key_name, e.key_id) for e in events if e.key_name == "alice"]
    assert len(alice) >= 2 and set(alice) == {("alice", record.id)}


@pytest.mark.gen_test(timeout=60)
async def test_a_rotated_keys_old_secret_stops_when_the_new_one_is_first_used(
    gateway: StartGateway,
) -> None:
    """Before any refresh (an hour apart here): the new key's lookup drops the old secret."""
    live = await gateway(ECHO_CONFIG, server="key_refresh_seconds = 3600")
    url = live.services_db_url
    old_key = (await run_in_thread("keys", "create", "bob", "--database-url", url))[1].split()[-1]
    assert await chat_status(live, old_key) == 200
    code, out = await run_in_thread("keys", "rotate", "bob", "--database-url", url)
    new_key = out.split()[-1]
    assert code == 0 and await chat_status(live, new_key) == 200
    assert await chat_status(live, old_key) == 401
    assert await chat_status(live, new_key) == 200
