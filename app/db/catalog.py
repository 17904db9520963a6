"""Queries on ``upstreams``, ``upstream_keys`` and ``model_routes``.

`sync_config` upserts what the config file names (the file wins for what it
names); `load_catalog` reads everything into the plain objects routing and the
upstream pool run on; `save_key_states` persists live key state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, selectinload

from app.db.models import ModelRoute, Upstream, UpstreamKey
from app.routing import RouteSettings, RouteSpec
from app.secretbox import SecretBox
from app.settings import ModelConfig, UpstreamConfig
from app.upstreams.keyring import KeyState, disabled_automatically
from app.upstreams.pool import UpstreamSpec


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _epoch(value: datetime | None) -> float:
    return value.replace(tzinfo=UTC).timestamp() if value is not None else 0.0


def _dt(epoch: float | None) -> datetime | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)


async def upsert_upstream(session: AsyncSession, cfg: UpstreamConfig, box: SecretBox) -> Upstream:
    """Create or update an upstream named in the config, with its keys in file order."""
    row = await session.scalar(
        select(Upstream).options(selectinload(Upstream.keys)).where(Upstream.name == cfg.name)
    )
    now = utcnow()
    if row is None:
        row = Upstream(name=cfg.name, created_at=now, keys=[])
        session.add(row)
    row.kind = cfg.kind
    row.base_url = cfg.base_url
    row.rotation = cfg.rotation
    row.timeout = cfg.timeout
    row.enabled = cfg.enabled
    row.reasoning = cfg.reasoning
    row.top_k = cfg.top_k
    row.chat_template_thinking = cfg.chat_template_thinking
    row.tokenize_url = cfg.tokenize_url
    row.max_tokens_field = cfg.max_tokens_field
    row.source = "config"
    row.updated_at = now

    existing = {box.decrypt(k.secret): k for k in row.keys if k.source == "config"}
    others = [k for k in row.keys if k.source != "config"]
    ordered: list[UpstreamKey] = []
    for secret in cfg.keys:
        key = existing.pop(secret, None)
        if key is None:
            key = UpstreamKey(secret=box.encrypt(secret), last4=secret[-4:], source="config")
        elif not key.enabled and disabled_automatically(key.disabled_reason):
            # Disabled by the gateway (a 401), not by an admin: the file names the key
            # again, so it gets another chance (a 401 disables it again at once).
            key.enabled = True
            key.disabled_reason = None
            key.disabled_at = None
        ordered.append(key)
    for stale in existing.values():
        row.keys.remove(stale)
    for position, key in enumerate(ordered + others):
        key.position = position
    row.keys = ordered + others
    return row


async def upsert_route(
    session: AsyncSession, cfg: ModelConfig, position: int, upstream_ids: dict[str, int]
) -> ModelRoute:
    row = await session.scalar(select(ModelRoute).where(ModelRoute.name == cfg.name))
    if row is None:
        row = ModelRoute(name=cfg.name)
        session.add(row)
    row.position = position
    row.upstream_id = upstream_ids[cfg.upstream]
    row.target = cfg.target
    row.temperature = cfg.temperature
    row.max_tokens = cfg.max_tokens
    row.context_window = cfg.context_window
    row.fallbacks = list(cfg.fallbacks)
    row.params = dict(cfg.params)
    row.prompt_cache = cfg.prompt_cache
    row.enabled = cfg.enabled
    row.source = "config"
    return row


async def has_backends(session: AsyncSession) -> bool:
    """Whether any upstream but the echo backend is in the database (the dashboard's)."""
    found = await session.scalar(select(Upstream.id).where(Upstream.kind != "echo").limit(1))
    return found is not None


async def sync_config(
    session: AsyncSession,
    upstreams: Sequence[UpstreamConfig],
    models: Sequence[ModelConfig],
    box: SecretBox,
) -> None:
    """Upsert the file's upstreams and routes by name. Config routes come first, in file order."""
    ids: dict[str, int] = {}
    for cfg in upstreams:
        row = await upsert_upstream(session, cfg, box)
        await session.flush()
        ids[cfg.name] = row.id
    for name, upstream_id in await session.execute(select(Upstream.name, Upstream.id)):
        ids.setdefault(name, upstream_id)
    config_names = {m.name for m in models}
    others = list(
        await session.scalars(
            select(ModelRoute)
            .where(ModelRoute.name.not_in(config_names))
            .order_by(ModelRoute.position)
        )
    )
    for position, model in enumerate(models):
        await upsert_route(session, model, position, ids)
    for offset, route in enumerate(others):
        route.position = len(models) + offset
    # What the file no longer names stays, as the dashboard's to edit (it kept saying
    # "defined in the config file").
    named = {cfg.name for cfg in upstreams}
    for upstream in await session.scalars(select(Upstream).where(Upstream.source == "config")):
        if upstream.name not in named:
            upstream.source = "dashboard"
    for route in others:
        if route.source == "config":
            route.source = "dashboard"
    await session.flush()


@dataclass(slots=True)
class Catalog:
    """Everything routing and the upstream pool need, read in one go."""

    upstreams: list[UpstreamSpec]
    keys: dict[str, list[KeyState]]
    routes: list[RouteSpec]


def key_state(row: UpstreamKey, box: SecretBox) -> KeyState:
    return KeyState(
        id=row.id,
        secret=box.decrypt(row.secret),
        label=row.label,
        enabled=row.enabled,
        disabled_reason=row.disabled_reason,
        disabled_at=_epoch(row.disabled_at) or None,
        cooldown_until=_epoch(row.cooldown_until),
        last_error=row.last_error,
        last_error_at=_epoch(row.last_error_at) or None,
        requests=row.request_count,
        errors=row.error_count,
    )


async def load_catalog(session: AsyncSession, box: SecretBox) -> Catalog:
    rows = list(
        await session.scalars(
            select(Upstream).options(selectinload(Upstream.keys)).order_by(Upstream.id)
        )
    )
    names = {row.id: row.name for row in rows}
    specs = [
        UpstreamSpec(
            name=row.name,
            kind=row.kind,
            base_url=row.base_url,
            rotation=row.rotation,
            timeout=row.timeout,
            reasoning=row.reasoning,
            top_k=row.top_k,
            chat_template_thinking=row.chat_template_thinking,
            tokenize_url=row.tokenize_url,
            max_tokens_field=row.max_tokens_field,
            enabled=row.enabled,
        )
        for row in rows
        if row.enabled
    ]
    keys = {row.name: [key_state(k, box) for k in row.keys] for row in rows if row.enabled}
    enabled = {spec.name for spec in specs}
    routes = [
        RouteSpec(
            name=r.name,
            upstream=names[r.upstream_id],
            target=r.target,
            settings=RouteSettings(
                temperature=r.temperature,
                max_tokens=r.max_tokens,
                context_window=r.context_window,
                prompt_cache=r.prompt_cache,
                params=dict(r.params or {}),
            ),
            fallbacks=tuple(r.fallbacks or ()),
            enabled=r.enabled,
        )
        for r in await session.scalars(
            select(ModelRoute).order_by(ModelRoute.position, ModelRoute.id)
        )
        if names.get(r.upstream_id) in enabled
    ]
    return Catalog(specs, keys, routes)


def save_key_states(session: Session, keys: Sequence[KeyState]) -> None:
    """Persist live key state (sync: runs in the usage writer thread).

    Of ``enabled`` only an automatic disable is written: switching a key on or off by
    hand is the admin's, and a live copy loaded before that change must not undo it.
    """
    for key in keys:
        row = session.get(UpstreamKey, key.id)
        if row is None:
            continue
        if not key.enabled:
            row.enabled = False
            row.disabled_reason = key.disabled_reason
            row.disabled_at = _dt(key.disabled_at)
        row.cooldown_until = _dt(key.cooldown_until)
        row.last_error = key.last_error
        row.last_error_at = _dt(key.last_error_at)
        row.request_count = key.requests
        row.error_count = key.errors
        row.last_used_at = utcnow()
