"""Queries on ``admin_users`` and ``admin_audit``."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import AdminAudit, AdminUser
from app.settings import MIN_PASSWORD as MIN_PASSWORD  # the dashboard's and the CLI's

MAX_USERNAME = 100


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


async def get_admin(session: AsyncSession, username: str) -> AdminUser | None:
    return await session.scalar(select(AdminUser).where(AdminUser.username == username))


async def list_admins(session: AsyncSession) -> list[AdminUser]:
    return list(await session.scalars(select(AdminUser).order_by(AdminUser.username)))


async def count_admins(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count(AdminUser.id))) or 0)


async def set_admin_password(session: AsyncSession, username: str, password_hash: str) -> AdminUser:
    """Creates the admin when missing; the hash comes from `app.auth.hash_password`."""
    row = await get_admin(session, username)
    if row is None:
        row = AdminUser(username=username, password_hash=password_hash, created_at=utcnow())
        session.add(row)
    else:
        row.password_hash = password_hash
    await session.flush()
    return row


async def delete_admin(session: AsyncSession, username: str) -> bool:
    row = await get_admin(session, username)
    if row is None:
        return False
    await session.delete(row)
    return True


async def audit(
    session: AsyncSession,
    username: str,
    action: str,
    target: str = "",
    detail: str = "",
    remote_ip: str = "",
) -> None:
    """Append one line to the admin audit trail. Callers never pass secrets."""
    session.add(
        AdminAudit(
            time=utcnow(),
            username=username,
            action=action,
            target=target,
            detail=detail,
            remote_ip=remote_ip,
        )
    )


async def list_audit(
    session: AsyncSession, *, before_id: int | None = None, limit: int = 50
) -> list[AdminAudit]:
    """Newest first, keyset-paginated by id."""
    stmt = select(AdminAudit)
    if before_id is not None:
        stmt = stmt.where(AdminAudit.id < before_id)
    return list(await session.scalars(stmt.order_by(AdminAudit.id.desc()).limit(limit)))
