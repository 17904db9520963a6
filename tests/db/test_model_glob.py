"""The usage filters' model glob (app/db/usage.py): ``*`` any run of characters, ``?`` one,
all else literal, case-sensitive on SQLite and PostgreSQL alike (as a key's allowed-model
globs match, with fnmatchcase). The patterns it becomes, then what it matches in a real
database: the rows, the export and the roll-up's totals."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import dashboard
from app.db.engine import Database, make_sync_engine, upgrade
from app.db.models import UsageEvent
from app.db.usage import (
    UsageFilter,
    UsageRecord,
    insert_events,
    is_glob,
    iter_export,
    like_pattern,
    sqlite_glob_pattern,
)
from tests.databases import database_url


@pytest.mark.parametrize(
    ("glob", "like", "sqlite_glob"),
    [
        ("claude-*", "claude-%", "claude-*"),
        ("*sonnet*", "%sonnet%", "*sonnet*"),
        ("gpt-4?", "gpt-4_", "gpt-4?"),
        ("my_model*", "my\\_model%", "my_model*"),
        ("50%*", "50\\%%", "50%*"),
        ("back\\slash?", "back\\\\slash_", "back\\slash?"),
        ("br[ack]et*", "br[ack]et%", "br[[]ack]et*"),
        ("[*]", "[%]", "[[]*]"),
        ("é-*", "é-%", "é-*"),
    ],
)
def test_the_patterns_a_glob_becomes(glob: str, like: str, sqlite_glob: str) -> None:
    assert like_pattern(glob) == like
    assert sqlite_glob_pattern(glob) == sqlite_glob


@pytest.mark.parametrize(
    ("value", "glob"),
    [
        ("gpt-4o", False),
        ("my_model", False),
        ("50%off", False),
        ("back\\slash", False),
        ("br[ack]et", False),
        ("claude-*", True),
        ("gpt-4?", True),
        ("*", True),
    ],
)
def test_only_a_star_or_a_question_mark_makes_a_glob(value: str, glob: bool) -> None:
    assert is_glob(value) is glob


MODELS = [
    "claude-3-5-sonnet",
    "claude-3-haiku",
    "Claude-3-Opus",
    "CLAUDE-X",
    "gpt-4",
    "gpt-4o",
    "gpt-40",
    "gpt-4o-mini",
    "GPT-4o",
    "my_model",
    "myXmodel",
    "50%off",
    "50Xoff",
    "back\\slash",
    "backXslash",
    "br[ack]et",
    "a*b",
    "a?b",
    "aXb",
    "ab",
    "é-model",
    "É-model",
    "",  # a client that sent an empty name
    None,  # a request refused before its model was read
]

# What each filter matches, spelled out: the wildcards, the literal LIKE characters, case.
EXPECTED: dict[str, set[str]] = {
    "claude-*": {"claude-3-5-sonnet", "claude-3-haiku"},
    "*sonnet*": {"claude-3-5-sonnet"},
    "*SONNET*": set(),
    "gpt-4?": {"gpt-4o", "gpt-40"},
    "gpt-4*": {"gpt-4", "gpt-4o", "gpt-40", "gpt-4o-mini"},
    "GPT-*": {"GPT-4o"},
    "my_model": {"my_model"},  # exact, as before
    "my_mode?": {"my_model"},  # "_" is no wildcard: not myXmodel
    "50%off": {"50%off"},
    "50%*": {"50%off"},  # "%" is no wildcard: not 50Xoff
    "back\\*": {"back\\slash"},  # "\\" is no escape
    "br[ack]et": {"br[ack]et"},
    "br[*": {"br[ack]et"},  # "[" opens no set
    "a?b": {"a*b", "a?b", "aXb"},
    "a*b": {"a*b", "a?b", "aXb", "ab"},
    "?-model": {"é-model", "É-model"},  # one character, not one byte
    "é-*": {"é-model"},
    "gpt-4o": {"gpt-4o"},  # exact: not GPT-4o, not gpt-4o-mini
    "GPT-4O": set(),
    "*": {name for name in MODELS if name},  # every request that named a model
    "**": {name for name in MODELS if name},
    "?": set(),
    "%": set(),
    "_": set(),
}


def reference(glob: str, name: str | None) -> bool:
    """The filter's rule in Python: fnmatchcase's ``*`` and ``?`` and nothing else."""
    if not name:
        return False
    if not is_glob(glob):
        return name == glob
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def test_the_expectations_are_the_rule() -> None:
    for glob, names in EXPECTED.items():
        assert {name for name in MODELS if reference(glob, name)} == names, glob


BASE = datetime(2024, 5, 1, 23, 0, 0)


def seed(url: str) -> list[UsageRecord]:
    """Three requests a model over two days (the roll-up's buckets), one of them failed."""
    records = [
        UsageRecord(
            time=BASE + timedelta(minutes=7 * at + 50 * copy),
            request_id=f"r-{at:02d}-{copy}",
            client_dialect="openai",
            key_name=["alice", "bob"][copy % 2],
            requested_model=model,
            upstream="up",
            status="error" if copy == 2 else "ok",
            input_tokens=at + 1,
            output_tokens=copy + 1,
        )
        for at, model in enumerate(MODELS)
        for copy in range(3)
    ]
    engine = make_sync_engine(url)
    try:
        with Session(engine) as session, session.begin():
            insert_events(session, records)
    finally:
        engine.dispose()
    return records


@pytest.mark.gen_test(timeout=120)
async def test_what_each_filter_matches_in_the_database(tmp_path: Path) -> None:
    """Every filter in one database and one session, so the statement compiled for the
    first glob serves the others (the pattern is converted when bound, per dialect)."""
    url = database_url(tmp_path, "glob.db")
    upgrade(url)
    records = seed(url)
    db = Database(url)
    wrong: dict[str, object] = {}
    try:
        async with db.session() as session:
            for glob, names in EXPECTED.items():
                mine = [r for r in records if r.requested_model in names]
                flt = UsageFilter(model=glob)
                matched = await session.scalars(flt.apply(select(UsageEvent.requested_model)))
                exported = [row["request_id"] async for row in iter_export(session, flt)]
                page = await dashboard.events_page(session, flt, limit=1000)
                totals = await dashboard.filter_totals(session, flt)
                ok = await dashboard.filter_totals(session, UsageFilter(model=glob, status="ok"))
                failed = await dashboard.filter_totals(
                    session, UsageFilter(model=glob, status="error")
                )
                found = {
                    "models": set(matched),
                    "export": exported,
                    "page": [row.request_id for row in page.rows],
                    "totals": (totals.requests, totals.errors, totals.input_tokens, totals.keys),
                    "ok": (ok.requests, ok.input_tokens),
                    "failed": (failed.requests, failed.output_tokens),
                }
                expected = {
                    "models": names,
                    "export": [r.request_id for r in sorted(mine, key=lambda r: r.time)],
                    "page": [r.request_id for r in sorted(mine, key=lambda r: r.time)][::-1],
                    "totals": (
                        len(mine),
                        sum(r.status != "ok" for r in mine),
                        sum(r.input_tokens for r in mine),
                        len({r.key_name for r in mine}),
                    ),
                    "ok": (
                        sum(r.status == "ok" for r in mine),
                        sum(r.input_tokens for r in mine if r.status == "ok"),
                    ),
                    "failed": (
                        sum(r.status == "error" for r in mine),
                        sum(r.output_tokens for r in mine if r.status == "error"),
                    ),
                }
                if found != expected:
                    wrong[glob] = {
                        k: (found[k], expected[k]) for k in found if found[k] != expected[k]
                    }
    finally:
        await db.close()
    assert wrong == {}
