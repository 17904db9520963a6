"""Dashboard edits of ``upstreams`` and ``upstream_keys``: create, edit, delete, and the
keys' rotation order (move one step, or a whole new order from drag and drop).

Secrets arrive here already encrypted; nothing in this module sees a plain key.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.db.models import ModelRoute, Upstream, UpstreamKey
from app.upstreams.pool import UpstreamSpec


class UpstreamExistsError(ValueError):
    """An upstream with that name already exists."""


class UpstreamInUseError(ValueError):
    """Model routes still send requests to this upstream."""

    def __init__(self, routes: Sequence[str]) -> None:
        super().__init__("routes still use this upstream: " + ", ".join(routes))
        self.routes = list(routes)


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


# What the upstream form edits: exactly an upstream's definition.
UpstreamFields = UpstreamSpec


async def list_upstreams(session: AsyncSession) -> list[Upstream]:
    """Every upstream with its keys in rotation order."""
    stmt = select(Upstream).options(selectinload(Upstream.keys)).order_by(Upstream.name)
    return list(await session.scalars(stmt))


async def get_upstream(session: AsyncSession, upstream_id: int) -> Upstream | None:
    stmt = select(Upstream).options(selectinload(Upstream.keys)).where(Upstream.id == upstream_id)
    return await session.scalar(stmt)


async def upstream_names(session: AsyncSession) -> list[str]:
    return list(await session.scalars(select(Upstream.name).order_by(Upstream.name)))


async def _check_name(session: AsyncSession, name: str, own_id: int | None) -> None:
    other = await session.scalar(select(Upstream.id).where(Upstream.name == name))
    if other is not None and other != own_id:
        raise UpstreamExistsError(f"an upstream named {name!r} already exists")


def _apply(row: Upstream, fields: UpstreamFields) -> None:
    row.name = fields.name
    row.kind = fields.kind
    row.base_url = fields.base_url
    row.rotation = fields.rotation
    row.timeout = fields.timeout
    row.reasoning = fields.reasoning
    row.top_k = fields.top_k
    row.chat_template_thinking = fields.chat_template_thinking
    row.tokenize_url = fields.tokenize_url
    row.max_tokens_field = fields.max_tokens_field
    row.enabled = fields.enabled
    row.updated_at = utcnow()


async def create_upstream(session: AsyncSession, fields: UpstreamFields) -> Upstream:
    await _check_name(session, fields.name, None)
    now = utcnow()
    row = Upstream(created_at=now, source="dashboard", keys=[])
    _apply(row, fields)
    session.add(row)
    await session.flush()
    return row


async def update_upstream(session: AsyncSession, row: Upstream, fields: UpstreamFields) -> None:
    await _check_name(session, fields.name, row.id)
    _apply(row, fields)
    await session.flush()


async def delete_upstream(session: AsyncSession, row: Upstream) -> None:
    """Deletes the upstream and its keys; refused while routes point at it."""
    routes = list(
        await session.scalars(
            select(ModelRoute.name)
            .where(ModelRoute.upstream_id == row.id)
            .order_by(ModelRoute.name)
        )
    )
    if routes:
        raise UpstreamInUseError(routes)
    await session.delete(row)
    await session.flush()


def find_key(row: Upstream, key_id: int) -> UpstreamKey | None:
    return next((k for k in row.keys if k.id == key_id), None)


async def add_key(
    session: AsyncSession, row: Upstream, encrypted: str, last4: str, label: str
) -> UpstreamKey:
    """Appends a key at the end of the rotation."""
    position = await session.scalar(
        select(func.max(UpstreamKey.position)).where(UpstreamKey.upstream_id == row.id)
    )
    key = UpstreamKey(
        secret=encrypted,
        last4=last4,
        label=label,
        position=(position + 1) if position is not None else 0,
        enabled=True,
        source="dashboard",
    )
    row.keys.append(key)
    await session.flush()
    return key


def set_key_enabled(key: UpstreamKey, enabled: bool, reason: str | None = None) -> None:
    key.enabled = enabled
    if enabled:
        key.disabled_reason = None
        key.disabled_at = None
        key.cooldown_until = None
    else:
        key.disabled_reason = reason
        key.disabled_at = utcnow()


async def delete_key(session: AsyncSession, row: Upstream, key: UpstreamKey) -> None:
    row.keys.remove(key)
    await session.delete(key)
    _renumber(row.keys)
    await session.flush()


def _renumber(keys: Sequence[UpstreamKey]) -> None:
    for position, key in enumerate(keys):
        key.position = position


def move_key(row: Upstream, key_id: int, delta: int) -> bool:
    """Moves a key ``delta`` places in the rotation; False when it cannot move."""
    keys = sorted(row.keys, key=lambda k: (k.position, k.id))
    index = next((i for i, k in enumerate(keys) if k.id == key_id), None)
    if index is None or not 0 <= index + delta < len(keys):
        return False
    keys.insert(index + delta, keys.pop(index))
    _renumber(keys)
    return True


def reorder_keys(row: Upstream, ordered_ids: Sequence[int]) -> bool:
    """Puts the keys in exactly the given order; False unless the ids are exactly its keys."""
    by_id = {k.id: k for k in row.keys}
    if sorted(ordered_ids) != sorted(by_id):
        return False
    _renumber([by_id[i] for i in ordered_ids])
    return True
