"""Queries on ``proxy_keys``: create and rotate (each returns the key once), list, edit, revoke,
load for auth, and the fingerprint by which running gateways notice each other's changes.

Every change to what a key is (its secret, limits, allowed models, expiry, revocation)
goes through a function here that moves the row's ``revision`` on; its use (the usage
writer's ``last_used_at``) does not, or every flush would reload the key table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import BigInteger, cast, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import KeyRecord, display_prefix, generate_key, hash_key
from app.db.models import ProxyKey


class KeyExistsError(ValueError):
    """A key with that name already exists."""


class KeyRotateError(ValueError):
    """The key cannot be given a new secret; ``reason`` is "unknown", "revoked", "config" or
    "rotated" (again since the caller looked)."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        if reason == "unknown":
            message = f"no key named {name!r}"
        elif reason == "rotated":
            message = f"key {name!r} was rotated meanwhile; nothing changed"
        elif reason == "revoked":
            message = (
                f"key {name!r} is revoked and cannot be rotated; create a new key under"
                " another name"
            )
        else:
            where = "the config file ([[keys]])"
            if name == "default":
                where += " or CLAUDE_PROXY_API_KEY"
            message = (
                f"key {name!r} is defined in {where}: its secret comes from there, so change it"
                " there and restart the gateway"
            )
        super().__init__(message)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _definition(row: ProxyKey) -> tuple[object, ...]:
    """Everything a key is, as opposed to how it was used."""
    return (
        row.name,
        row.key_hash,
        row.prefix,
        row.note,
        row.expires_at,
        row.revoked_at,
        row.rpm,
        row.tpm,
        list(row.models or ()),
        row.source,
    )


def _revise(row: ProxyKey) -> None:
    """The key changed: running gateways reload their key table (`keys_fingerprint`).

    Added in SQL, not from the value read: two processes editing one key at once would
    both write the same number, and the second edit would go unseen."""
    row.revision = ProxyKey.revision + 1


def end_of_day(day: date) -> datetime:
    """A key that expires on D works through D (UTC) and stops at the next midnight."""
    return datetime.combine(day, time.min) + timedelta(days=1)


def last_day(expires_at: datetime) -> date:
    """The day a key's ``expires_at`` (from `end_of_day`) was given as: its last working day."""
    return (expires_at - timedelta(days=1)).date()


async def create_key(
    session: AsyncSession,
    name: str,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    models: Sequence[str] = (),
    expires: date | None = None,
    note: str = "",
    source: str = "cli",
    key: str | None = None,
) -> tuple[ProxyKey, str]:
    """A new key row and the full key, which is never stored and never shown again."""
    name = name.strip()
    if not name:
        raise ValueError("a key needs a name")
    existing = await session.scalar(select(ProxyKey).where(ProxyKey.name == name))
    if existing is not None and existing.revoked_at is not None:
        # A revoked key keeps its name (its usage and audit rows say who it was).
        raise KeyExistsError(
            f"a key named {name!r} already exists and is revoked; choose another name"
        )
    if existing is not None:
        raise KeyExistsError(f"a key named {name!r} already exists")
    secret = key or generate_key()
    row = ProxyKey(
        name=name,
        key_hash=hash_key(secret),
        prefix=display_prefix(secret),
        note=note,
        created_at=utcnow(),
        expires_at=end_of_day(expires) if expires else None,
        rpm=rpm,
        tpm=tpm,
        models=list(models),
        source=source,
        revision=1,
    )
    session.add(row)
    await session.flush()
    return row, secret


async def list_keys(session: AsyncSession) -> list[ProxyKey]:
    return list(await session.scalars(select(ProxyKey).order_by(ProxyKey.created_at, ProxyKey.id)))


async def get_key(session: AsyncSession, key_id: int) -> ProxyKey | None:
    return await session.get(ProxyKey, key_id)


async def get_key_by_name(session: AsyncSession, name: str) -> ProxyKey | None:
    return await session.scalar(select(ProxyKey).where(ProxyKey.name == name))


async def revoke_key(session: AsyncSession, name: str) -> ProxyKey | None:
    """Marks the key revoked; None when no key has that name."""
    row = await get_key_by_name(session, name)
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        _revise(row)
    return row


def edit_key(
    row: ProxyKey,
    *,
    rpm: int | None,
    tpm: int | None,
    models: Sequence[str],
    expires: date | None,
    note: str,
) -> None:
    """The dashboard's edit of a key's limits, allowed models, expiry and note (written
    when the session commits)."""
    before = _definition(row)
    row.rpm, row.tpm, row.models = rpm, tpm, list(models)
    row.expires_at = end_of_day(expires) if expires else None
    row.note = note
    if _definition(row) != before:
        _revise(row)


async def rotate_key(
    session: AsyncSession, name: str, *, seen: int | None = None
) -> tuple[ProxyKey, str]:
    """A new secret for the key named ``name`` and the full key, never stored and never shown
    again. The row stays (name, limits, allowed models, expiry, usage); the old secret's hash
    is replaced, so the old key is refused once the gateway's key table is reloaded.

    KeyRotateError for an unknown or revoked key, for one the config file defines (its
    secret comes from the file, and the next start would put the file's back), and when
    ``seen``, the key's `rotations` the caller saw, is out of date: a form sent twice (a
    reload) must not take away the key its first answer showed.
    """
    row = await get_key_by_name(session, name)
    if row is None:
        raise KeyRotateError(name, "unknown")
    secret = generate_key()
    # Conditional: a revocation or rotation committed since the row was read is not undone
    # (PostgreSQL re-checks the condition on the latest row).
    conditions = [ProxyKey.id == row.id, ProxyKey.revoked_at.is_(None), ProxyKey.source != "config"]
    if seen is not None:
        conditions.append(ProxyKey.rotations == seen)
    updated = await session.scalar(
        update(ProxyKey)
        .where(*conditions)
        .values(
            key_hash=hash_key(secret),
            prefix=display_prefix(secret),
            rotated_at=utcnow(),
            rotations=ProxyKey.rotations + 1,
            revision=ProxyKey.revision + 1,
        )
        .returning(ProxyKey.id)
        .execution_options(synchronize_session=False)
    )
    await session.refresh(row)
    if updated is None:
        if row.revoked_at is not None:
            raise KeyRotateError(name, "revoked")
        raise KeyRotateError(name, "config" if row.source == "config" else "rotated")
    return row, secret


async def upsert_config_key(
    session: AsyncSession,
    name: str,
    key: str,
    *,
    rpm: int | None,
    tpm: int | None,
    models: Sequence[str],
    expires: date | None,
) -> ProxyKey:
    """A key named in the config file: the file wins for every field it names."""
    row = await get_key_by_name(session, name)
    if row is None:
        row, _ = await create_key(
            session,
            name,
            rpm=rpm,
            tpm=tpm,
            models=models,
            expires=expires,
            source="config",
            key=key,
        )
        return row
    before = _definition(row)
    digest = hash_key(key)
    if digest != row.key_hash:
        row.revoked_at = None  # a new secret for the name: a new key, not a revoked one
        row.rotated_at = utcnow()
        row.rotations += 1
    # The same secret stays revoked: a revocation (a leaked key) outlives restarts.
    row.key_hash = digest
    row.prefix = display_prefix(key)
    row.rpm, row.tpm, row.models = rpm, tpm, list(models)
    row.expires_at = end_of_day(expires) if expires else None
    row.source = "config"
    # Only a change: every gateway upserts the file's keys at each start, and an unchanged
    # file must not make the others reload.
    if _definition(row) != before:
        _revise(row)
    return row


def to_record(row: ProxyKey) -> KeyRecord:
    return KeyRecord(
        id=row.id,
        name=row.name,
        key_hash=row.key_hash,
        prefix=row.prefix,
        rpm=row.rpm,
        tpm=row.tpm,
        models=tuple(row.models or ()),
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


async def load_key_records(session: AsyncSession) -> list[KeyRecord]:
    """Every key, revoked ones included (so a revoked key gets 'revoked', not 'invalid')."""
    return [to_record(row) for row in await list_keys(session)]


async def get_key_by_hash(session: AsyncSession, key_hash: str) -> ProxyKey | None:
    return await session.scalar(select(ProxyKey).where(ProxyKey.key_hash == key_hash))


async def keys_fingerprint(session: AsyncSession) -> tuple[object, ...]:
    """Changes whenever a key is created, deleted or changed by a function here (cheap: one
    aggregate row). The sum of every row's ``revision`` moves with any one row's change,
    where sums and maxima of the columns themselves missed an edit that kept them (allowed
    models, an expiry not the latest, limits moved from one key to another)."""
    row = (
        await session.execute(
            select(
                func.count(ProxyKey.id),
                func.max(ProxyKey.id),
                # In 64 bits, as a sum of PostgreSQL INTEGERs may pass 2**31 - 1.
                func.sum(cast(ProxyKey.revision, BigInteger)),
            )
        )
    ).one()
    return tuple(row)
