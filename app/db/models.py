"""SQLAlchemy 2 models for every table (DESIGN.md "Data model").

Times are naive UTC datetimes on every backend, so SQLite and PostgreSQL
compare and sort them the same way. Schema changes go through alembic.
"""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class ProxyKey(Base):
    """A key issued to one person; only its SHA-256 hash and a display prefix are kept."""

    __tablename__ = "proxy_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="cli")
    # When the secret was last replaced (`keys.rotate_key`), and how many times (the
    # dashboard's Rotate form sends the count it showed, so a form sent twice rotates once).
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    rotations: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Moved on by every change to what the key is (`keys.py`), never by its use (the usage
    # writer's ``last_used_at``): running gateways sum it to notice another process's edit.
    revision: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Upstream(Base):
    """A backend server: its dialect, address and quirks."""

    __tablename__ = "upstreams"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    base_url: Mapped[str] = mapped_column(String(500), default="")
    rotation: Mapped[str] = mapped_column(String(16), default="ordered")
    timeout: Mapped[float] = mapped_column(Float, default=60.0)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    reasoning: Mapped[str] = mapped_column(String(16), default="strip")
    top_k: Mapped[bool] = mapped_column(Boolean, default=False)
    chat_template_thinking: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    tokenize_url: Mapped[str | None] = mapped_column(String(500), nullable=True)
    max_tokens_field: Mapped[str] = mapped_column(String(32), default="max_tokens")
    source: Mapped[str] = mapped_column(String(16), default="dashboard")
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)

    keys: Mapped[list[UpstreamKey]] = relationship(
        back_populates="upstream",
        order_by="UpstreamKey.position",
        cascade="all, delete-orphan",
    )


class UpstreamKey(Base):
    """One API key of an upstream, in rotation order; the secret is encrypted at rest."""

    __tablename__ = "upstream_keys"
    __table_args__ = (Index("ix_upstream_keys_upstream_position", "upstream_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    upstream_id: Mapped[int] = mapped_column(ForeignKey("upstreams.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer, default=0)
    secret: Mapped[str] = mapped_column(Text)
    last4: Mapped[str] = mapped_column(String(8), default="")
    label: Mapped[str] = mapped_column(String(200), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    cooldown_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    request_count: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="dashboard")

    upstream: Mapped[Upstream] = relationship(back_populates="keys")


class ModelRoute(Base):
    """A public model name or glob and where it goes, with its per-model settings."""

    __tablename__ = "model_routes"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    position: Mapped[int] = mapped_column(Integer, default=0)
    upstream_id: Mapped[int] = mapped_column(ForeignKey("upstreams.id", ondelete="CASCADE"))
    target: Mapped[str | None] = mapped_column(String(200), nullable=True)
    temperature: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    context_window: Mapped[int | None] = mapped_column(Integer, nullable=True)
    fallbacks: Mapped[list[str]] = mapped_column(JSON, default=list)
    params: Mapped[dict[str, object]] = mapped_column(JSON, default=dict)
    prompt_cache: Mapped[bool] = mapped_column(Boolean, default=False)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    source: Mapped[str] = mapped_column(String(16), default="dashboard")

    upstream: Mapped[Upstream] = relationship()


class UsageEvent(Base):
    """One API request, success or failure: the audit trail."""

    __tablename__ = "usage_events"
    __table_args__ = (
        Index("ix_usage_events_time", "time"),
        Index("ix_usage_events_key_time", "key_name", "time"),
        Index("ix_usage_events_model_time", "requested_model", "time"),
        Index("ix_usage_events_upstream_time", "upstream", "time"),
        # Failures only: "ok" is counted from the roll-up, and a request that went well
        # costs no entry here (migration 0002).
        Index(
            "ix_usage_events_failure_time",
            "status",
            "time",
            sqlite_where=text("status <> 'ok'"),
            postgresql_where=text("status <> 'ok'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)
    request_id: Mapped[str] = mapped_column(String(64))
    # In UsageRecord's order from here (its tuples go to the driver as they are).
    client_dialect: Mapped[str] = mapped_column(String(16))
    endpoint: Mapped[str] = mapped_column(String(32), default="messages")
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    key_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    requested_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    upstream: Mapped[str | None] = mapped_column(String(200), nullable=True)
    upstream_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    target_model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(32))
    http_status: Mapped[int] = mapped_column(Integer, default=200)
    error_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    input_tokens: Mapped[int] = mapped_column(Integer, default=0)
    output_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(Integer, default=0)
    tokens_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    ttft_ms: Mapped[float | None] = mapped_column(Float, nullable=True)


class UsageDaily(Base):
    """Daily roll-up per day x key x model x upstream, kept as events are written."""

    __tablename__ = "usage_daily"
    __table_args__ = (
        UniqueConstraint("day", "key_name", "model", "upstream", name="uq_usage_daily_bucket"),
        Index("ix_usage_daily_day", "day"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    day: Mapped[date] = mapped_column(Date)
    key_name: Mapped[str] = mapped_column(String(200), default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    upstream: Mapped[str] = mapped_column(String(200), default="")
    # A day's sums for one bucket: 64 bits, as PostgreSQL's INTEGER stops at 2**31 - 1 tokens.
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms_total: Mapped[float] = mapped_column(Float, default=0.0)


class AdminUser(Base):
    """A dashboard user; the password is an scrypt hash."""

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # In every session cookie; signing out moves it on, ending the admin's sessions.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The configured admin_password last applied (scrypt): applied again only when it changes.
    config_password_hash: Mapped[str | None] = mapped_column(String(300), nullable=True)


class AdminAudit(Base):
    """Who changed what in the dashboard, and when; never a secret."""

    __tablename__ = "admin_audit"
    __table_args__ = (Index("ix_admin_audit_time", "time"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[datetime] = mapped_column(DateTime)
    username: Mapped[str] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(300), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    remote_ip: Mapped[str] = mapped_column(String(64), default="")
