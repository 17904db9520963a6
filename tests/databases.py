"""Which database a test runs on: a fresh SQLite file, or with ``BRIDGEKEEPER_TEST_POSTGRES``
set a fresh PostgreSQL database (the contract: "PostgreSQL works through the same URL").

``BRIDGEKEEPER_TEST_POSTGRES`` is the URL of a server and a role that may create databases
(``postgresql://bk:bk@127.0.0.1:5432/postgres``); every database made for a test is
dropped when the session ends. ``make test`` runs the suite on SQLite; ``.ci/run`` runs
the database-facing tests a second time on PostgreSQL when it could start one.
"""

from __future__ import annotations

import atexit
import os
import secrets
from pathlib import Path

POSTGRES = os.environ.get("BRIDGEKEEPER_TEST_POSTGRES", "")
_made: list[str] = []


def database_url(tmp_path: Path, name: str) -> str:
    """A database of the test's own: ``name`` in ``tmp_path`` on SQLite."""
    if not POSTGRES:
        return f"sqlite:///{tmp_path / name}"
    import psycopg
    from sqlalchemy.engine import make_url

    database = f"bk_test_{secrets.token_hex(6)}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    _made.append(database)
    return make_url(POSTGRES).set(database=database).render_as_string(hide_password=False)


@atexit.register
def _drop_made() -> None:
    if not _made:
        return
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        for database in _made:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
