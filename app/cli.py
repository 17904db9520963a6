"""The ``bridgekeeper`` command: argument parsing and sub-commands only."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import date, datetime
from typing import Any, TextIO

import orjson
from sqlalchemy.exc import DBAPIError

from app import __version__ as package_version
from app.auth import hash_password
from app.db import admins as admin_queries
from app.db import keys as key_queries
from app.db.engine import (
    Database,
    DatabaseUnavailableError,
    error_line,
    sqlite_path,
    startup_lock,
    upgrade,
)
from app.db.usage import CSV_HEADER, UsageFilter, csv_rows, iter_export, iter_export_pages
from app.secretbox import SecretKeyError
from app.settings import (
    ConfigError,
    Settings,
    count_problem,
    expiry_problem,
    load_settings,
    password_problem,
    password_warning,
)

# Commands that only look at what is there: pointed at a SQLite file that does not exist
# (a mistyped path), they say so instead of creating an empty database to look at.
NEEDS_DATABASE = {("keys", "list"), ("keys", "revoke"), ("keys", "rotate"), ("usage", "export")}


def version() -> str:
    """The installed distribution's version; the package's own when run from a source tree."""
    try:
        return importlib.metadata.version("bridgekeeper")
    except importlib.metadata.PackageNotFoundError:
        return package_version


def _date(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected YYYY-MM-DD, got {value!r}") from None


def _name(value: str) -> str:
    name = value.strip()
    if not name:
        raise argparse.ArgumentTypeError("a key needs a name")
    if len(name) > 200:
        raise argparse.ArgumentTypeError("a key name is at most 200 characters")
    return name


def _expiry(value: str) -> date:
    day = _date(value)
    problem = expiry_problem(day)  # a past day is allowed, with a warning (cmd_keys_create)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return day


def _count(value: str) -> int:
    """A limit (RPM, TPM): the dashboard's and the config file's bounds; leave it out for none."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    problem = count_problem(number)
    if problem:
        raise argparse.ArgumentTypeError(problem + " (leave the option out for no limit)")
    return number


def _username(value: str) -> str:
    name = value.strip()
    if not name:
        raise argparse.ArgumentTypeError("an admin needs a username")
    if len(name) > admin_queries.MAX_USERNAME:
        raise argparse.ArgumentTypeError(
            f"a username is at most {admin_queries.MAX_USERNAME} characters"
        )
    return name


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="TOML config file (or BRIDGEKEEPER_CONFIG)")
    common.add_argument("--database-url", help="SQLAlchemy URL (or BRIDGEKEEPER_DATABASE_URL)")

    parser = argparse.ArgumentParser(
        prog="bridgekeeper",
        description="A self-hosted LLM API gateway speaking the Anthropic and OpenAI dialects.",
    )
    parser.add_argument("--version", action="version", version=f"bridgekeeper {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the gateway")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--anthropic-port", type=int, help="extra port with Anthropic paths at the root"
    )

    keys = commands.add_parser("keys", help="proxy keys").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION"
    )
    create = keys.add_parser("create", parents=[common], help="issue a key (shown once)")
    create.add_argument("name", type=_name)
    create.add_argument("--rpm", type=_count, help="requests per minute")
    create.add_argument("--tpm", type=_count, help="tokens per minute")
    create.add_argument("--models", help="allowed model globs, comma separated")
    create.add_argument("--expires", type=_expiry, help="last day the key works (YYYY-MM-DD, UTC)")
    keys.add_parser("list", parents=[common], help="list keys (never the keys themselves)")
    revoke = keys.add_parser("revoke", parents=[common], help="revoke a key")
    revoke.add_argument("name")
    rotate = keys.add_parser(
        "rotate",
        parents=[common],
        help="give a key a new secret (shown once), keeping its name, limits and usage;"
        " the old secret stops working",
    )
    rotate.add_argument("name")

    admin = commands.add_parser("admin", help="dashboard admins").add_subparsers(
        dest="admin_command", required=True, metavar="ACTION"
    )
    setpw = admin.add_parser(
        "set-password",
        parents=[common],
        help="set an admin's password (creating the admin if missing), read from stdin",
    )
    setpw.add_argument(
        "--username",
        type=_username,
        default="admin",
        help="the admin whose password is set; created when missing (default: %(default)s)",
    )

    db = commands.add_parser("db", help="database").add_subparsers(
        dest="db_command", required=True, metavar="ACTION"
    )
    db.add_parser("upgrade", parents=[common], help="apply migrations (alembic upgrade head)")

    usage = commands.add_parser("usage", help="usage records").add_subparsers(
        dest="usage_command", required=True, metavar="ACTION"
    )
    export = usage.add_parser("export", parents=[common], help="one row per request to stdout")
    export.add_argument("--since", type=_date, help="first day (UTC), inclusive")
    export.add_argument("--until", type=_date, help="last day (UTC), inclusive")
    export.add_argument("--key", help="only this key's requests")
    export.add_argument(
        "--model",
        metavar="GLOB",
        help="only requests for this model: an exact name, or a glob where * matches any run"
        " of characters and ? one (case-sensitive), as the dashboard's model filter",
    )
    export.add_argument("--format", choices=("csv", "json"), default="csv")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    flags = {
        "config": getattr(args, "config", None),
        "database_url": getattr(args, "database_url", None),
        "host": getattr(args, "host", None),
        "port": getattr(args, "port", None),
        "anthropic_port": getattr(args, "anthropic_port", None),
    }
    # Only `serve` calls upstreams: the other commands run where their secrets may be unset.
    return load_settings(flags=flags, upstream_secrets=args.command == "serve")


async def _with_db(url: str, work: Any) -> Any:
    db = Database(url)
    try:
        async with db.session() as session, session.begin():
            return await work(session)
    finally:
        await db.close()


def cmd_keys_create(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    models = [m.strip() for m in (args.models or "").split(",") if m.strip()]

    async def work(session: Any) -> tuple[Any, str]:
        return await key_queries.create_key(
            session,
            args.name,
            rpm=args.rpm,
            tpm=args.tpm,
            models=models,
            expires=args.expires,
            source="cli",
        )

    try:
        row, key = asyncio.run(_with_db(settings.database_url, work))
    except key_queries.KeyExistsError as exc:
        print(f"bridgekeeper: {exc}", file=sys.stderr)
        return 1
    today = key_queries.utcnow().date()
    if args.expires is not None and args.expires < today:
        # Created all the same (a key that has expired is what an expiry test needs), but
        # nobody should mistake it for a working one.
        print(
            f"bridgekeeper: warning: the expiry date is in the past ({args.expires}; today is "
            f"{today}, UTC): the key will be refused as expired",
            file=sys.stderr,
        )
    print(f"Created key {row.name!r} ({row.prefix}...). It is shown only this once:", file=out)
    print(key, file=out)
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def cmd_keys_list(settings: Settings, out: TextIO) -> int:
    rows = asyncio.run(_with_db(settings.database_url, key_queries.list_keys))
    header = ("NAME", "PREFIX", "STATUS", "RPM", "TPM", "MODELS", "CREATED", "EXPIRES", "LAST USED")
    table = [header]
    now = key_queries.utcnow()
    for row in rows:
        if row.revoked_at is not None:
            status = "revoked"
        elif row.expires_at is not None and row.expires_at <= now:
            status = "expired"
        else:
            status = "active"
        table.append(
            (
                row.name,
                row.prefix + "...",
                status,
                _fmt(row.rpm),
                _fmt(row.tpm),
                ",".join(row.models or []) or "*",
                _fmt(row.created_at),
                _fmt(key_queries.last_day(row.expires_at) if row.expires_at else None),
                _fmt(row.last_used_at),
            )
        )
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    return 0


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    async def work(session: Any) -> tuple[Any, bool]:
        row = await key_queries.get_key_by_name(session, args.name)
        already = row is not None and row.revoked_at is not None
        if row is not None and not already:
            await key_queries.revoke_key(session, args.name)
        return row, already

    row, already = asyncio.run(_with_db(settings.database_url, work))
    if row is None:
        print(f"bridgekeeper: no key named {args.name!r}", file=sys.stderr)
        return 1
    if already:
        when = _fmt(row.revoked_at)
        print(f"Key {row.name!r} ({row.prefix}...) was already revoked ({when} UTC)", file=out)
        return 0
    print(f"Revoked key {row.name!r} ({row.prefix}...)", file=out)
    return 0


def cmd_keys_rotate(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    async def work(session: Any) -> tuple[Any, str, str]:
        row = await key_queries.get_key_by_name(session, args.name)
        old_prefix = row.prefix if row is not None else ""
        row, key = await key_queries.rotate_key(session, args.name)
        return row, key, old_prefix

    try:
        row, key, old_prefix = asyncio.run(_with_db(settings.database_url, work))
    except key_queries.KeyRotateError as exc:
        print(f"bridgekeeper: {exc}", file=sys.stderr)
        return 1
    if row.expires_at is not None and row.expires_at <= key_queries.utcnow():
        last = key_queries.last_day(row.expires_at)
        print(
            f"bridgekeeper: warning: the key expired (its last day was {last}, UTC): the new"
            " key is refused as expired until its expiry is moved in the dashboard",
            file=sys.stderr,
        )
    print(
        f"Rotated key {row.name!r}: the old key ({old_prefix}...) no longer works; its name,"
        f" limits and usage stay. The new key ({row.prefix}...) is shown only this once:",
        file=out,
    )
    print(key, file=out)
    return 0


def _read_password() -> str | None:
    """The new password: typed twice on a terminal (None when the two differ), else the
    first line of stdin."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("New password: ")
    if getpass.getpass("Repeat it: ") != password:
        return None
    return password


def cmd_set_password(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    password = _read_password()
    if password is None:
        print("bridgekeeper: the two passwords differ; nothing changed", file=sys.stderr)
        return 1
    problem = password_problem(password)
    if problem:
        print(f"bridgekeeper: {problem}", file=sys.stderr)
        return 1
    warning = password_warning(password)
    if warning:
        print(f"bridgekeeper: warning: {warning}", file=sys.stderr)
    hashed = hash_password(password)

    async def work(session: Any) -> bool:
        existed = await admin_queries.get_admin(session, args.username) is not None
        await admin_queries.set_admin_password(session, args.username, hashed)
        return existed

    # Said either way: a mistyped --username creates a new admin instead of failing.
    if asyncio.run(_with_db(settings.database_url, work)):
        print(f"Password changed for admin {args.username!r}", file=out)
    else:
        print(f"Created admin {args.username!r} with the given password", file=out)
    return 0


def cmd_usage_export(settings: Settings, args: argparse.Namespace, out: TextIO) -> int:
    if args.since and args.until and args.since > args.until:
        print(
            f"bridgekeeper: --since {args.since} is after --until {args.until}: no day is in"
            " between",
            file=sys.stderr,
        )
        return 2
    flt = UsageFilter(
        key_name=args.key, model=args.model or None, since=args.since, until=args.until
    )

    async def work(session: Any) -> None:
        if args.key and await key_queries.get_key_by_name(session, args.key) is None:
            # Not an error: the events of a key that is gone keep its name.
            print(f"bridgekeeper: warning: no key is named {args.key!r}", file=sys.stderr)
        if args.format == "csv":
            out.write(CSV_HEADER)
            async for rows in iter_export_pages(session, flt):
                out.write(csv_rows(rows))
        else:
            out.write("[")
            first = True
            async for row in iter_export(session, flt):
                out.write(("" if first else ",") + "\n" + orjson.dumps(row).decode())
                first = False
            out.write("\n]\n" if not first else "]\n")

    asyncio.run(_with_db(settings.database_url, work))
    out.flush()  # here, where a closed pipe is caught, not at exit
    return 0


def serve_warnings(settings: Settings, err: TextIO) -> None:
    """What `serve` starts with but the operator should know (the config loader accepts it)."""
    warning = password_warning(settings.admin_password) if settings.admin_password else None
    if warning:
        print(f"bridgekeeper: warning: {warning}", file=err, flush=True)


def cmd_serve(settings: Settings) -> int:
    from app.server import BindError, install_uvloop, serve_forever

    serve_warnings(settings, sys.stderr)
    logging.basicConfig(
        level=getattr(logging, settings.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Held from the migrations until the config file is in the database and the ports
    # listen: a second `serve` started with this one waits its turn (`startup_lock`).
    lock = ExitStack()

    def announce(server: Any, first: Any) -> None:
        lock.close()
        host = settings.host
        base = f"http://{host}:{server.ports[0]}"
        lines = [f"Bridgekeeper listening on {base}" + (" (uvloop)" if fast else "")]
        if len(server.ports) > 1:
            lines.append(f"Anthropic dialect at the root on http://{host}:{server.ports[1]}")
        if server.services.settings.echo_default:  # not once the dashboard added upstreams
            lines.append("No upstream configured: the built-in echo backend answers every model.")
        lines.append(f"Dashboard: {base}/admin/")
        if first.admin_password:
            lines.append(f"Admin user: admin  password: {first.admin_password}  (shown once)")
        if first.proxy_key:
            lines.append("Proxy key (shown once):")
            lines.append(first.proxy_key)
        print("\n".join(lines), flush=True)

    with lock:
        upgrade(settings.database_url, lock.enter_context(startup_lock(settings.database_url)))
        fast = install_uvloop()
        try:
            asyncio.run(serve_forever(settings, announce))
        except BindError as exc:
            print(f"bridgekeeper: {exc}", file=sys.stderr)
            return 1
    return 0


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (a test's StringIO): nothing to flush
        pass


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        if args.command == "serve":
            return cmd_serve(settings)
        if args.command == "db":
            upgrade(settings.database_url)
            print("Database is up to date", file=out)
            return 0
        action = getattr(args, f"{args.command}_command", None)
        path = sqlite_path(settings.database_url)
        if (args.command, action) in NEEDS_DATABASE and path is not None and not path.exists():
            print(
                f"bridgekeeper: no database at {path.absolute()} (create one with"
                " `bridgekeeper db upgrade` or `bridgekeeper serve`)",
                file=sys.stderr,
            )
            return 1
        upgrade(settings.database_url)
        if args.command == "keys":
            if args.keys_command == "create":
                return cmd_keys_create(settings, args, out)
            if args.keys_command == "list":
                return cmd_keys_list(settings, out)
            if args.keys_command == "rotate":
                return cmd_keys_rotate(settings, args, out)
            return cmd_keys_revoke(settings, args, out)
        if args.command == "admin":
            return cmd_set_password(settings, args, out)
        return cmd_usage_export(settings, args, out)
    except ConfigError as exc:
        print(f"bridgekeeper: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (``usage export | head``): nothing more to say to anyone.
        # Python's own flush of stdout at exit would fail again, so it goes to /dev/null.
        _silence_stdout()
        return 0
    except ModuleNotFoundError as exc:
        if exc.name not in ("psycopg", "asyncpg"):
            raise
        print(
            f"bridgekeeper: a PostgreSQL database needs the {exc.name} driver:"
            " pip install 'bridgekeeper[postgres]'",
            file=sys.stderr,
        )
        return 1
    except (DatabaseUnavailableError, SecretKeyError) as exc:
        print(f"bridgekeeper: {exc}", file=sys.stderr)
        return 1
    except DBAPIError as exc:
        print(f"bridgekeeper: database error: {error_line(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"bridgekeeper: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
