"""Model routes in match order: add, edit, enable, reorder, delete, and the
"what does this name resolve to?" box (the live router's answer).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from app.db import routes_admin as ra
from app.db import upstreams_admin as ua
from app.db.models import ModelRoute
from app.errors import NotFoundError
from app.handlers.admin.base import AdminHandler, not_found
from app.handlers.admin.forms import (
    FormError,
    ids,
    names,
    optional_count,
    optional_float,
    optional_int,
    optional_text,
    required,
)
from app.routing import Route

ROUTE_FIELDS = (
    "name",
    "upstream",
    "target",
    "temperature",
    "max_tokens",
    "context_window",
    "fallbacks",
)
ACTIONS = ("up", "down", "enable", "disable", "delete")


def form_defaults() -> dict[str, str]:
    return {name: "" for name in ROUTE_FIELDS} | {"prompt_cache": "", "enabled": "on"}


def form_of(row: ModelRoute) -> dict[str, str]:
    def text(value: object) -> str:
        return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    return {
        "name": row.name,
        "upstream": str(row.upstream_id),
        "target": row.target or "",
        "temperature": text(row.temperature),
        "max_tokens": text(row.max_tokens),
        "context_window": text(row.context_window),
        "fallbacks": ", ".join(row.fallbacks or ()),
        "prompt_cache": "on" if row.prompt_cache else "",
        "enabled": "on" if row.enabled else "",
    }


def describe(fields: ra.RouteFields, upstreams: dict[int, str]) -> str:
    """The audit detail of a route's settings."""
    parts = [f"upstream={upstreams.get(fields.upstream_id, '?')}"]
    for name in ("target", "temperature", "max_tokens", "context_window"):
        value = getattr(fields, name)
        if value is not None:
            parts.append(f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}")
    if fields.fallbacks:
        parts.append("fallbacks=" + ",".join(fields.fallbacks))
    parts.append(f"prompt_cache={'on' if fields.prompt_cache else 'off'}")
    parts.append(f"enabled={'on' if fields.enabled else 'off'}")
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Resolution:
    name: str
    route: Route | None
    error: str | None


class RouteFormMixin(AdminHandler):
    nav = "models"

    def read_form(self) -> dict[str, str]:
        form = {name: self.arg(name) for name in ROUTE_FIELDS}
        form["prompt_cache"] = "on" if self.arg("prompt_cache") else ""
        form["enabled"] = "on" if self.arg("enabled") else ""
        return form

    def parse(self, form: dict[str, str], upstreams: dict[int, str]) -> ra.RouteFields:
        t = self.t
        upstream = optional_int(form["upstream"], t("models.upstream"))
        if upstream is None or upstream not in upstreams:
            raise FormError("form.choice", field=t("models.upstream"))
        return ra.RouteFields(
            name=required(form["name"], t("models.name")),
            upstream_id=upstream,
            target=optional_text(form["target"], t("models.target"), max_len=200),
            temperature=optional_float(
                form["temperature"], t("models.temperature"), minimum=0, maximum=2
            ),
            max_tokens=optional_count(form["max_tokens"], t("models.max_tokens")),
            context_window=optional_count(form["context_window"], t("models.context_window")),
            fallbacks=names(form["fallbacks"]),
            prompt_cache=bool(form["prompt_cache"]),
            enabled=bool(form["enabled"]),
        )

    async def upstream_choices(self) -> dict[int, str]:
        async with self.services.db.session() as session:
            return {u.id: u.name for u in await ua.list_upstreams(session)}


@dataclass(frozen=True, slots=True)
class ModelsPage:
    routes: list[ModelRoute]
    upstreams: dict[int, str]
    form: dict[str, str]
    resolution: Resolution | None
    error: str | None = None


class ModelsHandler(RouteFormMixin):
    flashes = frozenset(
        {
            "route_added",
            "route_deleted",
            "route_moved",
            "route_enabled",
            "route_disabled",
            "order_saved",
        }
    )

    async def get(self) -> None:
        await self._show(form_defaults())

    async def _show(self, form: dict[str, str], error: str | None = None) -> None:
        async with self.services.db.session() as session:
            routes = await ra.list_routes(session)
        resolution = None
        asked = self.qarg("resolve")
        if asked:
            try:
                resolution = Resolution(asked, self.services.router.resolve(asked), None)
            except NotFoundError as exc:
                resolution = Resolution(asked, None, exc.message)
        page = ModelsPage(routes, await self.upstream_choices(), form, resolution, error)
        self.render_page(
            "models.html", page, title=self.t("models.title"), status=400 if error else 200
        )

    async def post(self) -> None:
        form = self.read_form()
        upstreams = await self.upstream_choices()
        try:
            fields = self.parse(form, upstreams)
        except FormError as exc:
            await self._show(form, self.t(exc.key, **exc.params))
            return
        async with self.services.db.session() as session:
            try:
                row = await ra.create_route(session, fields)
            except ra.RouteExistsError:
                exists = True
            else:
                exists = False
                await self.audit(session, "route_added", row.name, describe(fields, upstreams))
                await session.commit()
        if exists:
            await self._show(form, self.t("models.exists", name=fields.name))
            return
        await self.services.reload()
        self.redirect_with("/admin/models", "route_added")


@dataclass(frozen=True, slots=True)
class RoutePage:
    route: ModelRoute
    upstreams: dict[int, str]
    form: dict[str, str]
    error: str | None = None


class RouteHandler(RouteFormMixin):
    flashes = frozenset({"route_updated"})

    async def get(self, route_id: str) -> None:
        await self._show(int(route_id))

    async def _show(
        self, route_id: int, form: dict[str, str] | None = None, error: str | None = None
    ) -> None:
        async with self.services.db.session() as session:
            row = await ra.get_route(session, route_id)
            if row is None:
                not_found()
        page = RoutePage(row, await self.upstream_choices(), form or form_of(row), error)
        self.render_page("route.html", page, title=row.name, status=400 if error else 200)

    async def post(self, route_id: str) -> None:
        form = self.read_form()
        upstreams = await self.upstream_choices()
        try:
            fields = self.parse(form, upstreams)
        except FormError as exc:
            await self._show(int(route_id), form, self.t(exc.key, **exc.params))
            return
        async with self.services.db.session() as session:
            row = await ra.get_route(session, int(route_id))
            if row is None:
                not_found()
            try:
                await ra.update_route(session, row, fields)
            except ra.RouteExistsError:
                exists = True
            else:
                exists = False
                await self.audit(session, "route_edited", row.name, describe(fields, upstreams))
                await session.commit()
        if exists:
            await self._show(int(route_id), form, self.t("models.exists", name=fields.name))
            return
        await self.services.reload()
        self.redirect_with(f"/admin/models/{route_id}", "route_updated")


class RouteActionHandler(AdminHandler):
    nav = "models"

    async def post(self, route_id: str, action: str) -> None:
        async with self.services.db.session() as session:
            row = await ra.get_route(session, int(route_id))
            if row is None or action not in ACTIONS:
                not_found()
            name = row.name
            msg: str | None
            if action in ("up", "down"):
                if await ra.move_route(session, row.id, -1 if action == "up" else 1):
                    await self.audit(session, "routes_reordered", name, await route_order(session))
                    msg = "route_moved"
                else:
                    msg = None
            elif action in ("enable", "disable"):
                row.enabled = action == "enable"
                await self.audit(session, f"route_{action}d", name)
                msg = f"route_{action}d"
            else:
                await ra.delete_route(session, row)
                await self.audit(session, "route_deleted", name)
                msg = "route_deleted"
            await session.commit()
        if msg is not None:
            await self.services.reload()
        self.redirect_with("/admin/models", msg)


async def route_order(session: AsyncSession) -> str:
    """The audit detail of the match order."""
    return "order=" + ",".join(r.name for r in await ra.list_routes(session))


class RouteOrderHandler(AdminHandler):
    nav = "models"

    async def post(self) -> None:
        try:
            wanted = ids(self.get_body_argument("order", ""))
        except FormError:
            self.send_error(400)
            return
        async with self.services.db.session() as session:
            valid = await ra.reorder_routes(session, wanted)
            if valid:
                await self.audit(session, "routes_reordered", "", await route_order(session))
                await session.commit()
        if not valid:
            self.send_error(400)
            return
        await self.services.reload()
        self.redirect_with("/admin/models", "order_saved")
