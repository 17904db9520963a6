"""Upstreams: the list with each key's live state, add, edit, delete, and the Test button."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from app.db import upstreams_admin as ua
from app.db.models import ModelRoute, Upstream, UpstreamKey
from app.handlers.admin.base import AdminHandler, not_found
from app.handlers.admin.forms import (
    FormError,
    choice,
    optional_text,
    optional_timeout,
)
from app.handlers.admin.probe import ProbeResult, probe
from app.settings import (
    KINDS,
    MAX_TOKENS_FIELDS,
    REASONING,
    ROTATIONS,
    upstream_name_problem,
    upstream_url_problem,
)
from app.upstreams.base import shown_url
from app.upstreams.keyring import KeyState

UPSTREAM_FIELDS = (
    "name",
    "kind",
    "base_url",
    "rotation",
    "timeout",
    "reasoning",
    "tokenize_url",
    "max_tokens_field",
)
CHOICES = {
    "kind": KINDS,
    "rotation": ROTATIONS,
    "reasoning": REASONING,
    "max_tokens_field": MAX_TOKENS_FIELDS,
}


@dataclass(frozen=True, slots=True)
class KeyView:
    """One upstream key as the page shows it: the stored row plus its live state."""

    row: UpstreamKey
    state: str
    cooldown_until: float
    disabled_reason: str | None
    last_error: str | None
    last_error_at: float | None
    requests: int
    errors: int

    @property
    def masked(self) -> str:
        return "…" + self.row.last4


def epoch(value: datetime | None) -> float:
    """A naive UTC datetime from the database as epoch seconds (0 for None)."""
    return value.replace(tzinfo=UTC).timestamp() if value is not None else 0.0


def key_views(row: Upstream, live: list[KeyState], now: float) -> list[KeyView]:
    """Stored keys in rotation order, with the pool's live state where it has one."""
    by_id = {k.id: k for k in live}
    views = []
    for key in sorted(row.keys, key=lambda k: (k.position, k.id)):
        state = by_id.get(key.id)
        if state is not None:
            views.append(
                KeyView(
                    key,
                    state.state(now),
                    state.cooldown_until,
                    # The pool keeps an admin's "disabled" but not the stored reason.
                    state.disabled_reason or (key.disabled_reason if not key.enabled else None),
                    state.last_error,
                    state.last_error_at,
                    state.requests,
                    state.errors,
                )
            )
            continue
        until = epoch(key.cooldown_until)
        views.append(
            KeyView(
                key,
                "disabled" if not key.enabled else "cooling" if until > now else "active",
                until,
                key.disabled_reason,
                key.last_error,
                epoch(key.last_error_at) or None,
                key.request_count,
                key.error_count,
            )
        )
    return views


def form_defaults(timeout: float) -> dict[str, str]:
    """A new upstream's form; ``timeout``: the server's default, as the config file's."""
    return {
        "name": "",
        "kind": "openai",
        "base_url": "",
        "rotation": "ordered",
        "timeout": f"{timeout:g}",
        "reasoning": "strip",
        "tokenize_url": "",
        "max_tokens_field": "max_tokens",
        "top_k": "",
        "chat_template_thinking": "",
        "enabled": "on",
    }


def form_of(row: Upstream) -> dict[str, str]:
    return {
        "name": row.name,
        "kind": row.kind,
        "base_url": row.base_url,
        "rotation": row.rotation,
        "timeout": f"{row.timeout:g}",
        "reasoning": row.reasoning,
        "tokenize_url": row.tokenize_url or "",
        "max_tokens_field": row.max_tokens_field,
        "top_k": "on" if row.top_k else "",
        "chat_template_thinking": "on" if row.chat_template_thinking else "",
        "enabled": "on" if row.enabled else "",
    }


class UpstreamFormMixin(AdminHandler):
    def read_form(self) -> dict[str, str]:
        form = {name: self.arg(name) for name in UPSTREAM_FIELDS}
        form["top_k"] = "on" if self.arg("top_k") else ""
        form["chat_template_thinking"] = "on" if self.arg("chat_template_thinking") else ""
        form["enabled"] = "on" if self.arg("enabled") else ""
        return form

    def parse(self, form: dict[str, str], kept_name: str | None = None) -> ua.UpstreamFields:
        """The form's fields; ``kept_name`` is the upstream's name now, which may stay what
        it is (a row from before names were checked must still be editable)."""
        t = self.t
        name = form["name"]
        if not name:
            raise FormError("form.required", field=t("upstreams.name"))
        # The config file's rule, its length included; a name kept as it is may be older.
        if name != kept_name and upstream_name_problem(name):
            raise FormError("upstreams.name_invalid")
        kind = choice(form["kind"], t("upstreams.kind"), KINDS)
        base_url = optional_text(form["base_url"], t("upstreams.base_url")) or ""
        if kind != "echo" and not base_url.startswith(("http://", "https://")):
            raise FormError("upstreams.base_url_required")
        self._refuse_credentials(form, "base_url", base_url, t("upstreams.base_url"))
        tokenize_url = optional_text(form["tokenize_url"], t("upstreams.tokenize_url"))
        if tokenize_url and not tokenize_url.startswith(("http://", "https://")):
            raise FormError("form.url", field=t("upstreams.tokenize_url"))
        if tokenize_url:
            self._refuse_credentials(
                form, "tokenize_url", tokenize_url, t("upstreams.tokenize_url")
            )
        timeout = optional_timeout(form["timeout"], t("upstreams.timeout"))
        return ua.UpstreamFields(
            name=name,
            kind=kind,
            base_url=base_url.rstrip("/"),
            rotation=choice(form["rotation"], t("upstreams.rotation"), ROTATIONS),
            timeout=timeout if timeout is not None else self.services.settings.request_timeout,
            reasoning=choice(form["reasoning"], t("upstreams.reasoning"), REASONING),
            top_k=bool(form["top_k"]),
            chat_template_thinking=bool(form["chat_template_thinking"]),
            tokenize_url=tokenize_url,
            max_tokens_field=choice(
                form["max_tokens_field"], t("upstreams.max_tokens_field"), MAX_TOKENS_FIELDS
            ),
            enabled=bool(form["enabled"]),
        )

    @staticmethod
    def _refuse_credentials(form: dict[str, str], name: str, url: str, label: str) -> None:
        """A user name or password in ``url`` would show wherever the URL does (a client's
        error message, the usage trail, these pages): refused, and left out of the form
        the page shows again."""
        if upstream_url_problem(url):
            form[name] = shown_url(url)
            raise FormError("upstreams.url_credentials", field=label)


@dataclass(frozen=True, slots=True)
class UpstreamRow:
    upstream: Upstream
    keys: list[KeyView]


@dataclass(slots=True)
class UpstreamsPage:
    rows: list[UpstreamRow]
    form: dict[str, str]
    choices: dict[str, tuple[str, ...]]
    error: str | None = None


class UpstreamsHandler(UpstreamFormMixin):
    nav = "upstreams"
    flashes = frozenset({"upstream_deleted"})

    async def get(self) -> None:
        await self._show(form_defaults(self.services.settings.request_timeout))

    async def _show(self, form: dict[str, str], error: str | None = None) -> None:
        async with self.services.db.session() as session:
            rows = await ua.list_upstreams(session)
        pool = self.services.pool
        page = UpstreamsPage(
            rows=[UpstreamRow(r, key_views(r, pool.key_states(r.name), pool.now())) for r in rows],
            form=form,
            choices=CHOICES,
            error=error,
        )
        self.render_page(
            "upstreams.html", page, title=self.t("upstreams.title"), status=400 if error else 200
        )

    async def post(self) -> None:
        form = self.read_form()
        try:
            fields = self.parse(form)
        except FormError as exc:
            await self._show(form, self.t(exc.key, **exc.params))
            return
        async with self.services.db.session() as session:
            try:
                row = await ua.create_upstream(session, fields)
            except ua.UpstreamExistsError:
                exists = True
            else:
                exists = False
                await self.audit(session, "upstream_added", row.name, f"kind={row.kind}")
                await session.commit()
        if exists:
            await self._show(form, self.t("upstreams.exists", name=fields.name))
            return
        await self.services.reload()
        self.redirect_with(f"/admin/upstreams/{row.id}", "upstream_added")


@dataclass(slots=True)
class UpstreamPage:
    upstream: Upstream
    keys: list[KeyView]
    routes: list[str]
    form: dict[str, str]
    choices: dict[str, tuple[str, ...]]
    test_model: str
    test: ProbeResult | None = None
    error: str | None = None


class UpstreamHandler(UpstreamFormMixin):
    """One upstream: its settings form, its keys in rotation order, and the Test button."""

    nav = "upstreams"
    flashes = frozenset(
        {
            "upstream_added",
            "upstream_updated",
            "key_added",
            "key_moved",
            "key_enabled",
            "key_disabled",
            "key_deleted",
            "order_saved",
            "upstream_in_use",
        }
    )

    async def get(self, upstream_id: str) -> None:
        await self.show(int(upstream_id))

    async def show(
        self,
        upstream_id: int,
        *,
        form: dict[str, str] | None = None,
        error: str | None = None,
        test: ProbeResult | None = None,
        status: int = 200,
    ) -> None:
        async with self.services.db.session() as session:
            row = await ua.get_upstream(session, upstream_id)
            if row is None:
                not_found()
            routes = list(
                await session.scalars(
                    select(ModelRoute)
                    .where(ModelRoute.upstream_id == row.id)
                    .order_by(ModelRoute.position)
                )
            )
        pool = self.services.pool
        page = UpstreamPage(
            upstream=row,
            keys=key_views(row, pool.key_states(row.name), pool.now()),
            routes=[r.name for r in routes],
            form=form or form_of(row),
            choices=CHOICES,
            test_model=test.model
            if test
            else next((r.target or r.name for r in routes if "*" not in (r.target or r.name)), ""),
            test=test,
            error=error,
        )
        self.render_page("upstream.html", page, title=row.name, status=400 if error else status)

    async def post(self, upstream_id: str) -> None:
        form = self.read_form()
        error = None
        async with self.services.db.session() as session:
            row = await ua.get_upstream(session, int(upstream_id))
            if row is None:
                not_found()
            before = form_of(row)
            try:
                await ua.update_upstream(session, row, self.parse(form, kept_name=row.name))
            except FormError as exc:
                error = self.t(exc.key, **exc.params)
            except ua.UpstreamExistsError:
                error = self.t("upstreams.exists", name=form["name"])
            else:
                after = form_of(row)
                changed = [f"{k}={after[k]}" for k in before if before[k] != after[k]]
                await self.audit(session, "upstream_edited", row.name, " ".join(changed))
                await session.commit()
        if error is not None:
            await self.show(int(upstream_id), form=form, error=error)
            return
        await self.services.reload()
        self.redirect_with(f"/admin/upstreams/{upstream_id}", "upstream_updated")


class UpstreamDeleteHandler(AdminHandler):
    nav = "upstreams"

    async def post(self, upstream_id: str) -> None:
        async with self.services.db.session() as session:
            row = await ua.get_upstream(session, int(upstream_id))
            if row is None:
                not_found()
            try:
                await ua.delete_upstream(session, row)
            except ua.UpstreamInUseError:
                in_use = True
            else:
                in_use = False
                await self.audit(session, "upstream_deleted", row.name)
                await session.commit()
        if in_use:
            self.redirect_with(f"/admin/upstreams/{upstream_id}", "upstream_in_use")
            return
        await self.services.reload()
        self.redirect_with("/admin/upstreams", "upstream_deleted")


class UpstreamTestHandler(UpstreamHandler):
    """Sends one tiny real request through the upstream and shows what came back."""

    SUPPORTED_METHODS = ("POST",)

    async def post(self, upstream_id: str) -> None:
        model = self.arg("model")
        async with self.services.db.session() as session:
            row = await ua.get_upstream(session, int(upstream_id))
            if row is None:
                not_found()
            name = row.name
        if not model and row.kind != "echo":
            await self.show(row.id, error=self.t("upstreams.test_model_required"))
            return
        if name not in self.services.pool.names():
            await self.show(row.id, error=self.t("upstreams.test_not_loaded"))
            return
        upstream = self.services.pool.get(name)
        chosen = self.arg("key")
        ring_keys = upstream.ring.keys
        if chosen:
            key = next((k for k in ring_keys if str(k.id) == chosen), None)
        else:
            candidates = upstream.ring.candidates()
            key = candidates[0] if candidates else None
        if key is None:
            await self.show(row.id, error=self.t("upstreams.test_no_key"))
            return
        result = await probe(upstream, model or "echo", key)
        async with self.services.db.session() as session:
            detail = f"model={result.model} key={result.key} status={result.status or result.error}"
            await self.audit(session, "upstream_tested", name, detail[:500])
            await session.commit()
        await self.show(row.id, test=result)
