"""Settings: the config file, the environment (and ``.env``) and command-line flags, merged once.

Precedence, highest first: flags, environment, ``.env``, config file, defaults.
Nothing else in the program reads ``os.environ``. A malformed file stops start-up
with a one-line `ConfigError` naming the file, the entry and the problem.
"""

from __future__ import annotations

import logging
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.secretbox import key_problem

KINDS = ("openai", "anthropic", "echo")
ROTATIONS = ("ordered", "round_robin")
REASONING = ("replay", "replay_reasoning", "strip", "off")
MAX_TOKENS_FIELDS = ("max_tokens", "max_completion_tokens")
DEFAULT_ANTHROPIC_URL = "https://api.anthropic.com"
DEFAULT_OPENAI_URL = "https://api.openai.com/v1"
DEFAULT_REQUEST_TIMEOUT = 600.0

# The largest limit or token count anyone may set (a key's RPM and TPM, a route's max-token
# cap and context window), from the command line, the dashboard or this file: far above any
# real limit and inside the 32-bit INTEGER column PostgreSQL stores it in (SQLite's are 64
# bits; a larger number was an OverflowError from the database driver, a 500).
MAX_COUNT = 2**31 - 1
# The shortest password an admin may set, from the dashboard, `bridgekeeper admin
# set-password` or this file alike (8: what the command line always took; scripts set such
# passwords).
MIN_PASSWORD = 8
# A key works through its expiry day and stops at the next midnight, which has to exist.
LAST_EXPIRY_DAY = date.max - timedelta(days=1)
MAX_PORT = 65535  # 0 asks the system for any free port
# The dashboard's bounds on a route's temperature (app/handlers/admin/models.py).
MAX_TEMPERATURE = 2.0
# The longest retention_days: the purge's cutoff, that many days ago, has to be a date
# Python can hold; a hundred years is past any real need.
MAX_RETENTION_DAYS = 36500
LOG_LEVELS = tuple(logging.getLevelNamesMapping())


def count_problem(value: int, minimum: int = 1) -> str | None:
    """What is wrong with a limit or token count, or None when it may be used."""
    if value < minimum:
        return f"must be at least {minimum}, got {value}"
    if value > MAX_COUNT:
        return f"must be at most {MAX_COUNT}, got {value}"
    return None


def expiry_problem(day: date, today: date | None = None) -> str | None:
    """What is wrong with a key's expiry day (given ``today``, a past day too), or None."""
    if day > LAST_EXPIRY_DAY:
        return f"the expiry date is too far away (the last one possible is {LAST_EXPIRY_DAY})"
    if today is not None and day < today:
        return f"the expiry date is in the past ({day}; today is {today}, UTC)"
    return None


def number_problem(
    value: float,
    *,
    above: float | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
) -> str | None:
    """What is wrong with a number of seconds, megabytes or a temperature, or None."""
    if not math.isfinite(value):
        return f"must be a finite number, got {value}"
    if above is not None and not value > above:
        return f"must be more than {above:g}, got {value:g}"
    if minimum is not None and value < minimum:
        return f"must be at least {minimum:g}, got {value:g}"
    if maximum is not None and value > maximum:
        return f"must be at most {maximum:g}, got {value:g}"
    return None


def temperature_problem(value: float) -> str | None:
    return number_problem(value, minimum=0, maximum=MAX_TEMPERATURE)


def timeout_problem(value: float) -> str | None:
    return number_problem(value, above=0)


def password_problem(value: str) -> str | None:
    """What refuses a configured (file, environment) or scripted (``admin set-password``)
    password: only an empty one. A short one is the operator's choice, with a warning
    (`password_warning`); the dashboard's forms require `MIN_PASSWORD` characters."""
    if not value:
        return "the password must not be empty"
    return None


def password_warning(value: str) -> str | None:
    if len(value) < MIN_PASSWORD:
        return f"the admin password has fewer than {MIN_PASSWORD} characters"
    return None


def log_level_problem(value: str) -> str | None:
    if value.upper() not in LOG_LEVELS:
        return f"unknown log level {value!r} (expected {', '.join(LOG_LEVELS)})"
    return None


def port_problem(value: int) -> str | None:
    if not 0 <= value <= MAX_PORT:
        return f"a port must be between 0 and {MAX_PORT}, got {value}"
    return None


# A user name and password in a URL (``http://user:pass@host``, or one without its scheme):
# up to the last "@" before the path, as URL parsers read it.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/?#\s]*@")


def upstream_url_problem(url: str) -> str | None:
    """What is wrong with an upstream's ``base_url`` or ``tokenize_url``, or None. A password
    in it showed wherever the URL does (a client's error message, the usage trail, the
    dashboard, the log), and aiohttp refuses one next to a Bearer key: every request a 500."""
    if _USERINFO.match(url):
        return "a user name or password in the URL is refused (it would show in error messages)"
    return None


# An upstream's name: in inline model names (``upstream:model``), URLs of the dashboard and
# the metrics' labels, so no ":", "/" or spaces, and short enough for a table's column.
_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def upstream_name_problem(name: str) -> str | None:
    if not _UPSTREAM_NAME.fullmatch(name):
        return (
            f"invalid upstream name {name[:80]!r}: up to 64 letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return None


def database_url_problem(url: str) -> str | None:
    """Why Bridgekeeper cannot use ``url``, or None: SQLite and PostgreSQL only (SQLAlchemy
    knows MySQL and others, whose drivers are not installed: a traceback at the first
    connection). No driver is imported."""
    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except ImportError:
        parsed = None
    except ArgumentError:
        scheme = url.partition(":")[0] if "://" in url else ""
        if scheme:
            return f"unknown database kind {scheme!r} (expected sqlite:// or postgresql://)"
        return "not a database URL (expected sqlite:///FILE or postgresql://...)"
    if parsed is None or parsed.get_backend_name() not in ("sqlite", "postgresql"):
        scheme = url.partition(":")[0]
        return f"unsupported database kind {scheme!r} (expected sqlite:// or postgresql://)"
    return None


class ConfigError(Exception):
    """A configuration problem, printed as one line and exit status 2."""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    name: str
    kind: str
    base_url: str = ""
    keys: tuple[str, ...] = ()
    rotation: str = "ordered"
    timeout: float = 60.0
    reasoning: str = "strip"
    top_k: bool = False
    chat_template_thinking: bool = False
    tokenize_url: str | None = None
    max_tokens_field: str = "max_tokens"
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    upstream: str
    target: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    context_window: int | None = None
    fallbacks: tuple[str, ...] = ()
    prompt_cache: bool = False
    params: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class KeyConfig:
    name: str
    key: str
    rpm: int | None = None
    tpm: int | None = None
    models: tuple[str, ...] = ()
    expires: date | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the gateway is configured with; built once by `load_settings`."""

    host: str = field(default="127.0.0.1", metadata=_help("address the main listener binds"))
    port: int = field(default=8000, metadata=_help("port of the main listener"))
    anthropic_port: int | None = field(
        default=None, metadata=_help("optional second port with the Anthropic dialect at the root")
    )
    database_url: str = field(
        default="sqlite:///bridgekeeper.db", metadata=_help("any SQLAlchemy URL")
    )
    admin_password: str | None = field(
        default=None, metadata=_help("password of the first admin; generated when unset")
    )
    default_upstream: str | None = field(
        default=None, metadata=_help("upstream for model names no route matches")
    )
    default_model: str | None = field(
        default=None,
        metadata=_help("ANTHROPIC_MODEL: target model for names sent to the default upstream"),
    )
    max_body_mb: float = field(default=32, metadata=_help("request bodies above this get 413"))
    grace_seconds: float = field(
        default=30, metadata=_help("on SIGTERM, how long in-flight requests may finish")
    )
    body_timeout_seconds: float = field(
        default=60,
        metadata=_help("a request body that stops arriving for this long gets 408 (as nginx's)"),
    )
    secret_key: str | None = field(
        default=None,
        metadata=_help("Fernet key for upstream secrets at rest; else a 0600 file beside the db"),
    )
    request_timeout: float = field(
        default=DEFAULT_REQUEST_TIMEOUT,
        metadata=_help("default upstream timeout in seconds (REQUEST_TIMEOUT)"),
    )
    default_rpm: int | None = field(
        default=None, metadata=_help("requests per minute for keys without their own limit")
    )
    default_tpm: int | None = field(
        default=None, metadata=_help("tokens per minute for keys without their own limit")
    )
    default_temperature: float | None = field(
        default=None,
        metadata=_help("MODEL_TEMPERATURE: temperature when neither client nor route sets one"),
    )
    default_max_tokens: int | None = field(
        default=None, metadata=_help("MAX_TOKENS: max-token cap when the route sets none")
    )
    usage_flush_seconds: float = field(
        default=1.0, metadata=_help("how often buffered usage events are written")
    )
    usage_buffer_size: int = field(
        default=10000, metadata=_help("usage events held in memory before back-pressure")
    )
    key_refresh_seconds: float = field(
        default=0.5,
        metadata=_help("how often keys created or revoked from the command line are looked for"),
    )
    retention_days: int | None = field(
        default=None, metadata=_help("delete raw usage events older than this (roll-ups stay)")
    )
    metrics_token: str | None = field(
        default=None, metadata=_help("bearer token for /metrics; without it only loopback may read")
    )
    log_level: str = field(default="INFO", metadata=_help("logging level"))
    behind_proxy: bool = field(
        default=False,
        metadata=_help(
            "trust X-Forwarded-For/-Proto from a reverse proxy (client IP, Secure cookies)"
        ),
    )
    proxy_key: str | None = field(
        default=None, metadata=_help("CLAUDE_PROXY_API_KEY: one proxy key, upserted as 'default'")
    )
    config_path: str | None = field(default=None, metadata=_help("the TOML file read, if any"))
    echo_default: bool = field(
        default=False, metadata=_help("true when nothing was configured and echo serves all")
    )
    upstreams: tuple[UpstreamConfig, ...] = ()
    models: tuple[ModelConfig, ...] = ()
    keys: tuple[KeyConfig, ...] = ()

    def without_echo_default(self) -> Settings:
        """These settings once upstreams were added in the dashboard: echo no longer the
        default (it answered every unknown or misspelt model with a 200)."""
        return replace(self, echo_default=False, upstreams=(), default_upstream=None)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


# -- parsing helpers ---------------------------------------------------------------------------


class _Where:
    """Formats ``file: entry: problem`` for ConfigError."""

    def __init__(self, path: str, *, upstream_secrets: bool = True) -> None:
        self.path = path
        # False: an upstream key naming an unset variable is left out, not an error (the
        # commands that never call an upstream, run where its secrets are not set).
        self.upstream_secrets = upstream_secrets

    def error(self, entry: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.path}: {entry}: {problem}")


def _expect(where: _Where, entry: str, value: Any, types: Any, what: str) -> Any:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise where.error(entry, f"expected {what}, got {value!r}")
    if not isinstance(value, types):
        raise where.error(entry, f"expected {what}, got {value!r}")
    return value


def _opt_int(where: _Where, entry: str, value: Any) -> int | None:
    if value is None:
        return None
    return int(_expect(where, entry, value, int, "an integer"))


def _opt_count(where: _Where, entry: str, value: Any, minimum: int = 1) -> int | None:
    """A limit or token count within `count_problem`'s bounds, or None."""
    number = _opt_int(where, entry, value)
    problem = None if number is None else count_problem(number, minimum)
    if problem:
        raise where.error(entry, problem)
    return number


def _opt_float(where: _Where, entry: str, value: Any) -> float | None:
    if value is None:
        return None
    return float(_expect(where, entry, value, (int, float), "a number"))


def _choice(where: _Where, entry: str, value: Any, options: tuple[str, ...]) -> str:
    if value not in options:
        raise where.error(entry, f"unknown value {value!r} (expected {', '.join(options)})")
    return str(value)


def _strings(where: _Where, entry: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise where.error(entry, f"expected a list of strings, got {value!r}")
    return tuple(value)


def _foreign_url(url: str | None, own: tuple[str, int]) -> str | None:
    """``url`` unless it is empty or points at ``own`` (this gateway's host and port)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return url  # malformed: the upstream's own checks say so
    host = (parts.hostname or "").lower()
    local = ("127.0.0.1", "localhost", "::1", "0.0.0.0")
    own_host = own[0].lower()
    same_host = host == own_host or (host in local and own_host in local)
    return None if same_host and port == own[1] else url


def _check_env_url(name: str, url: str | None, keys: str) -> None:
    """Refuses a user name or password in ``url``, the base URL the environment variable
    ``name`` bootstraps an upstream with: its keys come from ``keys``, never from the URL."""
    problem = None if url is None else upstream_url_problem(url)
    if problem:
        raise ConfigError(f"environment: {name}: {problem}: put the secret in {keys} instead")


def _resolve_secret(where: _Where, entry: str, value: str, env: Mapping[str, str]) -> str:
    if value.startswith("env:"):
        name = value[4:]
        if name not in env:
            raise where.error(entry, f"environment variable {name} is not set")
        return env[name]
    return value


def _check_keys(where: _Where, entry: str, table: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise where.error(entry, f"unknown setting {unknown[0]!r}")


_UPSTREAM_FIELDS = {f.name for f in fields(UpstreamConfig)}
_MODEL_FIELDS = {f.name for f in fields(ModelConfig)}
_KEY_FIELDS = {"name", "key", "rpm", "tpm", "models", "expires"}
_SERVER_FIELDS = {
    "host",
    "port",
    "anthropic_port",
    "database_url",
    "admin_password",
    "default_upstream",
    "default_model",
    "max_body_mb",
    "grace_seconds",
    "body_timeout_seconds",
    "secret_key",
    "request_timeout",
    "default_rpm",
    "default_tpm",
    "default_temperature",
    "default_max_tokens",
    "usage_flush_seconds",
    "usage_buffer_size",
    "key_refresh_seconds",
    "retention_days",
    "metrics_token",
    "log_level",
    "behind_proxy",
}


def _check_url(where: _Where, entry: str, url: str) -> None:
    problem = upstream_url_problem(url)
    if problem:
        raise where.error(entry, problem + ": put the secret in keys instead")


def _parse_upstream(
    where: _Where, i: int, table: Any, env: Mapping[str, str], default_timeout: float
) -> UpstreamConfig:
    entry = f"upstreams[{i}]"
    if not isinstance(table, dict):
        raise where.error(entry, "expected a table")
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise where.error(entry, "'name' is required")
    problem = upstream_name_problem(name)
    if problem:
        raise where.error(entry, problem)
    entry = f"upstreams[{i}] ({name})"
    _check_keys(where, entry, table, _UPSTREAM_FIELDS)
    kind = table.get("kind")
    if kind not in KINDS:
        raise where.error(entry, f"unknown kind {kind!r} (expected openai, anthropic or echo)")
    base_url = table.get("base_url")
    if base_url is None:
        base_url = {"openai": DEFAULT_OPENAI_URL, "anthropic": DEFAULT_ANTHROPIC_URL}.get(kind, "")
    _expect(where, f"{entry}.base_url", base_url, str, "a URL string")
    _check_url(where, f"{entry}.base_url", base_url)
    keys = tuple(
        _resolve_secret(where, f"{entry}.keys", k, env)
        for k in _strings(where, f"{entry}.keys", table.get("keys"))
        if where.upstream_secrets or not k.startswith("env:") or k[4:] in env
    )
    timeout = _opt_float(where, f"{entry}.timeout", table.get("timeout"))
    problem = None if timeout is None else timeout_problem(timeout)
    if problem:
        raise where.error(f"{entry}.timeout", problem)
    tokenize_url = table.get("tokenize_url")
    if tokenize_url is not None:
        _expect(where, f"{entry}.tokenize_url", tokenize_url, str, "a URL string")
        _check_url(where, f"{entry}.tokenize_url", tokenize_url)
    return UpstreamConfig(
        name=name,
        kind=kind,
        base_url=base_url.rstrip("/"),
        keys=keys,
        rotation=_choice(where, f"{entry}.rotation", table.get("rotation", "ordered"), ROTATIONS),
        timeout=timeout if timeout is not None else default_timeout,
        reasoning=_choice(where, f"{entry}.reasoning", table.get("reasoning", "strip"), REASONING),
        top_k=bool(_expect(where, f"{entry}.top_k", table.get("top_k", False), bool, "true/false")),
        chat_template_thinking=bool(
            _expect(
                where,
                f"{entry}.chat_template_thinking",
                table.get("chat_template_thinking", False),
                bool,
                "true/false",
            )
        ),
        tokenize_url=tokenize_url,
        max_tokens_field=_choice(
            where,
            f"{entry}.max_tokens_field",
            table.get("max_tokens_field", "max_tokens"),
            MAX_TOKENS_FIELDS,
        ),
        enabled=bool(
            _expect(where, f"{entry}.enabled", table.get("enabled", True), bool, "true/false")
        ),
    )


def _parse_model(where: _Where, i: int, table: Any) -> ModelConfig:
    entry = f"models[{i}]"
    if not isinstance(table, dict):
        raise where.error(entry, "expected a table")
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise where.error(entry, "'name' is required")
    entry = f"models[{i}] ({name})"
    _check_keys(where, entry, table, _MODEL_FIELDS)
    upstream = table.get("upstream")
    if not isinstance(upstream, str) or not upstream:
        raise where.error(entry, "'upstream' is required")
    target = table.get("target")
    if target is not None:
        _expect(where, f"{entry}.target", target, str, "a string")
    params = table.get("params", {})
    _expect(where, f"{entry}.params", params, dict, "a table")
    temperature = _opt_float(where, f"{entry}.temperature", table.get("temperature"))
    problem = None if temperature is None else temperature_problem(temperature)
    if problem:
        raise where.error(f"{entry}.temperature", problem)
    return ModelConfig(
        name=name,
        upstream=upstream,
        target=target,
        max_tokens=_opt_count(where, f"{entry}.max_tokens", table.get("max_tokens")),
        temperature=temperature,
        context_window=_opt_count(where, f"{entry}.context_window", table.get("context_window")),
        fallbacks=_strings(where, f"{entry}.fallbacks", table.get("fallbacks")),
        prompt_cache=bool(
            _expect(
                where, f"{entry}.prompt_cache", table.get("prompt_cache", False), bool, "true/false"
            )
        ),
        params=dict(params),
        enabled=bool(
            _expect(where, f"{entry}.enabled", table.get("enabled", True), bool, "true/false")
        ),
    )


def parse_date(where: _Where, entry: str, value: Any) -> date | None:
    if value is None:
        return value
    if isinstance(value, str):
        try:
            value = date.fromisoformat(value)
        except ValueError:
            pass
    if isinstance(value, date):
        problem = expiry_problem(value)  # a past day is allowed: a key that has expired
        if problem:
            raise where.error(entry, problem)
        return value
    raise where.error(entry, f"expected a date YYYY-MM-DD, got {value!r}")


def _parse_key(where: _Where, i: int, table: Any, env: Mapping[str, str]) -> KeyConfig:
    entry = f"keys[{i}]"
    if not isinstance(table, dict):
        raise where.error(entry, "expected a table")
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise where.error(entry, "'name' is required")
    entry = f"keys[{i}] ({name})"
    _check_keys(where, entry, table, _KEY_FIELDS)
    key = table.get("key")
    if not isinstance(key, str) or not key:
        raise where.error(entry, "'key' is required")
    secret = _resolve_secret(where, f"{entry}.key", key, env)
    if not secret:
        raise where.error(f"{entry}.key", "the key is empty")
    return KeyConfig(
        name=name,
        key=secret,
        # 0 is "no limit" here, as in REQUESTS_PER_MINUTE (a file that said so still starts).
        rpm=_opt_count(where, f"{entry}.rpm", table.get("rpm"), minimum=0),
        tpm=_opt_count(where, f"{entry}.tpm", table.get("tpm"), minimum=0),
        models=_strings(where, f"{entry}.models", table.get("models")),
        expires=parse_date(where, f"{entry}.expires", table.get("expires")),
    )


def read_dotenv(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a ``.env`` file; quotes stripped, comments and blanks skipped."""
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        if line.startswith("export "):
            line = line[7:].lstrip()
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def _numbered(env: Mapping[str, str], base: str) -> list[str]:
    """``BASE`` then ``BASE_1..N`` in numeric order: the rotation order of env keys.

    A value that is one of this gateway's own keys (``bk-…``) is left out: the shell that
    points Claude Code or the SDKs at the gateway exports ANTHROPIC_API_KEY or
    OPENAI_API_KEY holding a proxy key, and a gateway started from it made that key an
    upstream's (the echo backend vanished behind a 502 from api.anthropic.com)."""
    found: list[tuple[int, str]] = []
    pattern = re.compile(re.escape(base) + r"_(\d+)$")
    for name, value in env.items():
        match = pattern.match(name)
        if match and value:
            found.append((int(match.group(1)), value))
    keys = [env[base]] if env.get(base) else []
    return [v for v in keys + [v for _, v in sorted(found)] if not v.startswith("bk-")]


def _env_number(env: Mapping[str, str], name: str, cast: Any) -> Any:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return cast(value)
    except ValueError:
        raise ConfigError(f"environment: {name}: expected a number, got {value!r}") from None


def _retention_problem(days: int) -> str | None:
    # A negative number put the purge's cutoff in the future: it deleted every event. 0, as
    # leaving it out, keeps every event.
    if days < 0:
        return f"must be 0 (keep every event) or more, got {days}"
    if days > MAX_RETENTION_DAYS:
        return f"must be at most {MAX_RETENTION_DAYS}, got {days}"
    return None


def environment_database_url(
    environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str | None:
    """``BRIDGEKEEPER_DATABASE_URL`` from the environment or ``.env``, or None: the URL
    alembic uses when it is run directly (migrations/env.py)."""
    env = {
        **read_dotenv((cwd or Path.cwd()) / ".env"),
        **(os.environ if environ is None else environ),
    }
    url = env.get("BRIDGEKEEPER_DATABASE_URL") or None
    problem = None if url is None else database_url_problem(url)
    if problem:
        raise ConfigError(f"environment: BRIDGEKEEPER_DATABASE_URL: {problem}")
    return url


def _check_server_values(values: Mapping[str, Any], origin: Mapping[str, str]) -> None:
    """Ports, limits, durations, the password and the database URL, wherever each came from."""
    checks: dict[str, Any] = {
        "port": port_problem,
        "anthropic_port": port_problem,
        # 0 is "no limit" in the older proxies' variables (REQUESTS_PER_MINUTE=0).
        "default_rpm": lambda n: count_problem(n, 0),
        "default_tpm": lambda n: count_problem(n, 0),
        "default_max_tokens": lambda n: count_problem(n, 0),
        "database_url": database_url_problem,
        "retention_days": _retention_problem,
        # Below 1, every request's usage waited for room that never came: none was recorded.
        "usage_buffer_size": count_problem,
        # 0 or less turned every request into a 413.
        "max_body_mb": lambda n: number_problem(n, above=0),
        "grace_seconds": lambda n: number_problem(n, minimum=0),
        # 0 or less cut every request body at once, with a 408.
        "body_timeout_seconds": lambda n: number_problem(n, above=0),
        "request_timeout": timeout_problem,
        "default_temperature": temperature_problem,
        "admin_password": password_problem,
        "log_level": log_level_problem,
        "secret_key": key_problem,
    }
    for name, check in checks.items():
        value = values.get(name)
        problem = None if value is None else check(value)
        if problem:
            raise ConfigError(f"{origin[name]}: {problem}")


def _refuse_repeats(
    where: _Where, table: str, values: list[str], *, what: str = "name", show: bool = True
) -> None:
    """A ConfigError naming the second entry of ``table`` whose ``what`` repeats one before."""
    seen: dict[str, int] = {}
    for i, value in enumerate(values):
        if value in seen:
            named = f" ({value})" if show else ""
            raise where.error(f"{table}[{i}]{named}", f"the same {what} as {table}[{seen[value]}]")
        seen[value] = i


def load_settings(
    *,
    config_path: str | None = None,
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    upstream_secrets: bool = True,
) -> Settings:
    """Merge file, ``.env``, environment and flags into one frozen Settings. Without
    ``upstream_secrets``, upstream keys whose variables are unset are left out instead of
    refused (for commands that call no upstream)."""
    base_env = dict(os.environ if environ is None else environ)
    env = {**read_dotenv((cwd or Path.cwd()) / ".env"), **base_env}
    flags = {k: v for k, v in (flags or {}).items() if v is not None}

    path = flags.get("config") or config_path or env.get("BRIDGEKEEPER_CONFIG")
    data: dict[str, Any] = {}
    if path:
        where = _Where(str(path), upstream_secrets=upstream_secrets)
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    where = _Where(str(path or "config"), upstream_secrets=upstream_secrets)

    _check_keys(where, "top level", data, {"server", "upstreams", "models", "keys"})
    server = data.get("server", {})
    if not isinstance(server, dict):
        raise where.error("server", "expected a table")
    _check_keys(where, "server", server, _SERVER_FIELDS)

    values: dict[str, Any] = {}
    for name in _SERVER_FIELDS:
        if name in server:
            values[name] = server[name]
    for name in (
        "host",
        "database_url",
        "admin_password",
        "default_upstream",
        "default_model",
        "secret_key",
        "metrics_token",
        "log_level",
    ):
        if name in values and values[name] is not None and not isinstance(values[name], str):
            raise where.error(f"server.{name}", f"expected a string, got {values[name]!r}")
    for name in (
        "port",
        "anthropic_port",
        "default_rpm",
        "default_tpm",
        "default_max_tokens",
        "usage_buffer_size",
        "retention_days",
    ):
        if name in values:
            _opt_int(where, f"server.{name}", values[name])
    for name in (
        "max_body_mb",
        "grace_seconds",
        "body_timeout_seconds",
        "request_timeout",
        "default_temperature",
        "usage_flush_seconds",
        "key_refresh_seconds",
    ):
        if name in values:
            _opt_float(where, f"server.{name}", values[name])
    for name in ("usage_flush_seconds", "key_refresh_seconds"):
        if name in values and not values[name] > 0:
            raise where.error(f"server.{name}", "must be more than 0")
    if "behind_proxy" in values:
        _expect(where, "server.behind_proxy", values["behind_proxy"], bool, "true/false")

    env_map = {
        "BRIDGEKEEPER_HOST": ("host", str),
        "BRIDGEKEEPER_PORT": ("port", int),
        "ANTHROPIC_PORT": ("anthropic_port", int),
        "BRIDGEKEEPER_DATABASE_URL": ("database_url", str),
        "BRIDGEKEEPER_ADMIN_PASSWORD": ("admin_password", str),
        "BRIDGEKEEPER_SECRET_KEY": ("secret_key", str),
        "BRIDGEKEEPER_METRICS_TOKEN": ("metrics_token", str),
        "BRIDGEKEEPER_LOG_LEVEL": ("log_level", str),
        "ANTHROPIC_MODEL": ("default_model", str),
        "MODEL_TEMPERATURE": ("default_temperature", float),
        "MAX_TOKENS": ("default_max_tokens", int),
        "REQUEST_TIMEOUT": ("request_timeout", float),
        "TOKENS_PER_MINUTE": ("default_tpm", int),
        "REQUESTS_PER_MINUTE": ("default_rpm", int),
        "CLAUDE_PROXY_API_KEY": ("proxy_key", str),
    }
    # Where each value came from, for the error that names it.
    origin = {name: f"{where.path}: server.{name}" for name in values}
    for var, (name, cast) in env_map.items():
        value = _env_number(env, var, cast) if cast is not str else env.get(var) or None
        if value is not None:
            values[name] = value
            origin[name] = f"environment: {var}"
    flag_names = ("host", "port", "anthropic_port", "database_url")
    for name in flag_names:
        if name in flags:
            values[name] = flags[name]
            origin[name] = "--" + name.replace("_", "-")
    _check_server_values(values, origin)

    timeout = float(values.get("request_timeout", DEFAULT_REQUEST_TIMEOUT))
    upstream_tables = data.get("upstreams", [])
    if not isinstance(upstream_tables, list):
        raise where.error("upstreams", "expected an array of tables ([[upstreams]])")
    upstreams = [_parse_upstream(where, i, t, env, timeout) for i, t in enumerate(upstream_tables)]
    names = [u.name for u in upstreams]
    for name in names:
        if names.count(name) > 1:
            raise where.error(f"upstreams ({name})", "the name is used twice")

    # Upstream bootstrap from the environment (the older single-purpose proxies' variables).
    # A base URL alone (a keyless server) is enough, unless it is this gateway's own
    # address: the shell that runs Claude Code through the gateway exports
    # ANTHROPIC_BASE_URL pointing at it.
    bootstrap: list[ModelConfig] = []
    own = (str(values.get("host", "127.0.0.1")), int(values.get("port", 8000)))
    anthropic_keys = _numbered(env, "ANTHROPIC_API_KEY")
    anthropic_url = _foreign_url(env.get("ANTHROPIC_BASE_URL"), own)
    anthropic = bool(anthropic_keys or anthropic_url) and "anthropic" not in names
    if anthropic:
        _check_env_url("ANTHROPIC_BASE_URL", anthropic_url, "ANTHROPIC_API_KEY")
        upstreams.append(
            UpstreamConfig(
                name="anthropic",
                kind="anthropic",
                base_url=(anthropic_url or DEFAULT_ANTHROPIC_URL).rstrip("/"),
                keys=tuple(anthropic_keys),
                timeout=timeout,
            )
        )
        bootstrap.append(ModelConfig(name="claude-*", upstream="anthropic"))
    openai_keys = _numbered(env, "OPENAI_API_KEY")
    openai_url = _foreign_url(env.get("OPENAI_BASE_URL"), own)
    openai = bool(openai_keys or openai_url) and "openai" not in names
    if openai:
        _check_env_url("OPENAI_BASE_URL", openai_url, "OPENAI_API_KEY")
        upstreams.append(
            UpstreamConfig(
                name="openai",
                kind="openai",
                base_url=(openai_url or DEFAULT_OPENAI_URL).rstrip("/"),
                keys=tuple(openai_keys),
                timeout=timeout,
            )
        )
        if "default_upstream" not in values and not anthropic:
            values["default_upstream"] = "openai"
        for pattern in ("gpt-*", "o1*", "o3*", "o4*", "chatgpt-*"):
            bootstrap.append(ModelConfig(name=pattern, upstream="openai"))
    if (
        anthropic
        and "default_upstream" not in values
        and not upstream_tables
        and (not openai or values.get("default_model"))
    ):
        # Anthropic alone (the OpenAI-to-Claude proxies' setup): every model name no route
        # takes goes there, as ANTHROPIC_MODEL when that is set. Beside an OpenAI upstream
        # such names are not guessed at (a 404 naming the patterns), unless ANTHROPIC_MODEL
        # says what they are for (it used to do nothing there).
        values["default_upstream"] = "anthropic"

    model_tables = data.get("models", [])
    if not isinstance(model_tables, list):
        raise where.error("models", "expected an array of tables ([[models]])")
    models = [_parse_model(where, i, t) for i, t in enumerate(model_tables)]
    _refuse_repeats(where, "models", [m.name for m in models])
    all_names = {u.name for u in upstreams}
    for i, model in enumerate(models):
        if model.upstream not in all_names:
            raise where.error(
                f"models[{i}] ({model.name})", f"upstream {model.upstream!r} is not defined"
            )
    configured = {m.name for m in models}
    models += [m for m in bootstrap if m.name not in configured]

    key_tables = data.get("keys", [])
    if not isinstance(key_tables, list):
        raise where.error("keys", "expected an array of tables ([[keys]])")
    keys = [_parse_key(where, i, t, env) for i, t in enumerate(key_tables)]
    # One name twice: the second would silently replace the first's key at every start;
    # one secret twice: two names for one key, which the database refuses.
    _refuse_repeats(where, "keys", [k.name for k in keys])
    _refuse_repeats(where, "keys", [k.key for k in keys], what="key", show=False)

    echo_default = False
    if not upstreams:
        upstreams.append(UpstreamConfig(name="echo", kind="echo"))
        values.setdefault("default_upstream", "echo")
        echo_default = True
    default_upstream = values.get("default_upstream")
    if default_upstream is not None and default_upstream not in {u.name for u in upstreams}:
        raise where.error(
            "server.default_upstream", f"upstream {default_upstream!r} is not defined"
        )

    return Settings(
        **values,
        config_path=str(path) if path else None,
        echo_default=echo_default,
        upstreams=tuple(upstreams),
        models=tuple(models),
        keys=tuple(keys),
    )
