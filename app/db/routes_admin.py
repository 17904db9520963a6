"""Dashboard edits of ``model_routes``: create, edit, delete, enable, and the match order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from app.db.models import ModelRoute


class RouteExistsError(ValueError):
    """A route with that public name already exists."""


@dataclass(frozen=True, slots=True)
class RouteFields:
    """What the route form edits."""

    name: str
    upstream_id: int
    target: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    context_window: int | None = None
    fallbacks: tuple[str, ...] = ()
    prompt_cache: bool = False
    enabled: bool = True
    params: dict[str, object] = field(default_factory=dict)


async def list_routes(session: AsyncSession) -> list[ModelRoute]:
    """Every route in match order, with its upstream loaded."""
    stmt = (
        select(ModelRoute)
        .options(selectinload(ModelRoute.upstream))
        .order_by(ModelRoute.position, ModelRoute.id)
    )
    return list(await session.scalars(stmt))


async def get_route(session: AsyncSession, route_id: int) -> ModelRoute | None:
    stmt = (
        select(ModelRoute)
        .options(selectinload(ModelRoute.upstream))
        .where(ModelRoute.id == route_id)
    )
    return await session.scalar(stmt)


async def _check_name(session: AsyncSession, name: str, own_id: int | None) -> None:
    other = await session.scalar(select(ModelRoute.id).where(ModelRoute.name == name))
    if other is not None and other != own_id:
        raise RouteExistsError(f"a route named {name!r} already exists")


def _apply(row: ModelRoute, fields: RouteFields) -> None:
    row.name = fields.name
    row.upstream_id = fields.upstream_id
    row.target = fields.target
    row.temperature = fields.temperature
    row.max_tokens = fields.max_tokens
    row.context_window = fields.context_window
    row.fallbacks = list(fields.fallbacks)
    row.prompt_cache = fields.prompt_cache
    row.enabled = fields.enabled


async def create_route(session: AsyncSession, fields: RouteFields) -> ModelRoute:
    """A new route, matched after every existing one."""
    await _check_name(session, fields.name, None)
    last = await session.scalar(select(func.max(ModelRoute.position)))
    row = ModelRoute(
        position=(last + 1) if last is not None else 0,
        params=dict(fields.params),
        source="dashboard",
    )
    _apply(row, fields)
    session.add(row)
    await session.flush()
    return row


async def update_route(session: AsyncSession, row: ModelRoute, fields: RouteFields) -> None:
    await _check_name(session, fields.name, row.id)
    _apply(row, fields)
    await session.flush()


async def delete_route(session: AsyncSession, row: ModelRoute) -> None:
    await session.delete(row)
    await session.flush()
    _renumber(await list_routes(session))


def _renumber(rows: Sequence[ModelRoute]) -> None:
    for position, row in enumerate(rows):
        row.position = position


async def move_route(session: AsyncSession, route_id: int, delta: int) -> bool:
    """Moves a route ``delta`` places in the match order; False when it cannot move."""
    rows = await list_routes(session)
    index = next((i for i, r in enumerate(rows) if r.id == route_id), None)
    if index is None or not 0 <= index + delta < len(rows):
        return False
    rows.insert(index + delta, rows.pop(index))
    _renumber(rows)
    return True


async def reorder_routes(session: AsyncSession, ordered_ids: Sequence[int]) -> bool:
    """Puts the routes in exactly the given order; False unless the ids are exactly the routes."""
    rows = await list_routes(session)
    by_id = {r.id: r for r in rows}
    if sorted(ordered_ids) != sorted(by_id):
        return False
    _renumber([by_id[i] for i in ordered_ids])
    return True
