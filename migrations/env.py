"""Alembic environment: runs migrations with a sync engine on the database URL.

From the app (`app.db.engine.upgrade`), the URL and usually a connection holding the
start-up lock come in ``config.attributes``. Run directly (``alembic -c alembic.ini
downgrade -1``), the URL is ``-x url=...``, else ``BRIDGEKEEPER_DATABASE_URL`` (or
``.env``), else alembic.ini's ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from alembic.util import CommandError
from sqlalchemy import Connection

from app.db.engine import DatabaseUnavailableError, connect, make_sync_engine, sync_url
from app.db.models import Base
from app.settings import ConfigError, environment_database_url

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.attributes.get("database_url")
    if url:
        return str(url)
    url = context.get_x_argument(as_dictionary=True).get("url")
    if not url:
        try:
            url = environment_database_url()
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
    return sync_url(url) if url else config.get_main_option("sqlalchemy.url") or ""


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    direct = "database_url" not in config.attributes
    engine = make_sync_engine(database_url())
    try:
        with connect(engine) as connection:
            run_on(connection)
    except DatabaseUnavailableError as exc:
        if direct:  # alembic's own command line: one FAILED line, not a traceback
            raise CommandError(str(exc)) from None
        raise
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
