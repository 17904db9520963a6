"""Proxy keys: list with usage totals, create (the key shown once), edit limits, rotate (the
new key shown once), revoke, and one key's usage over time and by model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from markupsafe import Markup

from app.charts import hbar_chart
from app.db import dashboard, keys
from app.db.dashboard import Ranked, Totals
from app.db.models import ProxyKey
from app.handlers.admin.base import AdminHandler, not_found
from app.handlers.admin.daily_charts import daily_usage_charts
from app.handlers.admin.forms import (
    FormError,
    names,
    optional_count,
    optional_expiry,
    optional_int,
    optional_text,
    required,
)

CHART_DAYS = 30


def key_state(row: ProxyKey, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def expiry_day(row: ProxyKey) -> date | None:
    """The last day a key works (keys expire at the midnight after their date)."""
    return keys.last_day(row.expires_at) if row.expires_at else None


@dataclass(frozen=True, slots=True)
class KeyRow:
    key: ProxyKey
    state: str
    totals: Totals
    expires: date | None


@dataclass(slots=True)
class KeysPage:
    rows: list[KeyRow]
    new_key: str | None = None
    new_key_name: str | None = None
    error: str | None = None
    form: dict[str, str] = field(default_factory=dict)
    # The server's limits for keys that set none (shown as such, not as "no limit").
    default_rpm: int | None = None
    default_tpm: int | None = None


@dataclass(frozen=True, slots=True)
class KeyLimits:
    rpm: int | None
    tpm: int | None
    models: tuple[str, ...]
    expires: date | None
    note: str


def describe(limits: KeyLimits) -> str:
    """The audit detail of a key's limits (never the key itself)."""
    return (
        f"rpm={limits.rpm or '-'} tpm={limits.tpm or '-'} "
        f"models={','.join(limits.models) or '*'} expires={limits.expires or '-'}"
    )


class KeyFormMixin(AdminHandler):
    def read_limits(self, kept: date | None = None) -> KeyLimits:
        """The form's limits; ``kept`` is the key's expiry day now, the one past day allowed."""
        today = self.services.now().date()
        return KeyLimits(
            rpm=optional_count(self.arg("rpm"), self.t("keys.rpm")),
            tpm=optional_count(self.arg("tpm"), self.t("keys.tpm")),
            models=names(self.arg("models")),
            expires=optional_expiry(self.arg("expires"), self.t("keys.expires"), today, kept),
            note=optional_text(self.arg("note"), self.t("keys.note"), max_len=1000) or "",
        )


class KeysHandler(KeyFormMixin):
    nav = "keys"
    flashes = frozenset({"key_revoked"})

    async def get(self) -> None:
        await self._show(KeysPage(rows=[]))

    async def _show(self, page: KeysPage, status: int = 200) -> None:
        now = self.services.now()
        rows, totals = await dashboard.in_parallel(
            self.services.db, keys.list_keys, dashboard.key_totals
        )
        page.rows = [
            KeyRow(r, key_state(r, now), totals.get(r.name, Totals()), expiry_day(r)) for r in rows
        ]
        settings = self.services.settings
        page.default_rpm, page.default_tpm = settings.default_rpm, settings.default_tpm
        self.render_page("keys.html", page, title=self.t("keys.title"), status=status)

    async def post(self) -> None:
        form = {k: self.arg(k) for k in ("name", "rpm", "tpm", "models", "expires", "note")}
        try:
            name = required(form["name"], self.t("keys.name"))
            limits = self.read_limits()
        except FormError as exc:
            await self._show(KeysPage([], error=self.t(exc.key, **exc.params), form=form), 400)
            return
        created: tuple[ProxyKey, str] | None = None
        async with self.services.db.session() as session:
            try:
                created = await keys.create_key(
                    session,
                    name,
                    rpm=limits.rpm,
                    tpm=limits.tpm,
                    models=limits.models,
                    expires=limits.expires,
                    note=limits.note,
                    source="dashboard",
                )
            except keys.KeyExistsError:
                pass
            else:
                await self.audit(session, "key_created", created[0].name, describe(limits))
                await session.commit()
        if created is None:
            page = KeysPage([], error=self.t("keys.exists", name=name), form=form)
            await self._show(page, 400)
            return
        row, secret = created
        await self.services.reload()
        await self._show(KeysPage([], new_key=secret, new_key_name=row.name), 201)


class KeyRevokeHandler(AdminHandler):
    nav = "keys"

    async def post(self, key_id: str) -> None:
        async with self.services.db.session() as session:
            row = await keys.get_key(session, int(key_id))
            if row is None:
                not_found()
            await keys.revoke_key(session, row.name)
            await self.audit(session, "key_revoked", row.name)
            await session.commit()
        await self.services.reload()
        self.redirect_with("/admin/keys", "key_revoked")


@dataclass(slots=True)
class KeyPage:
    key: ProxyKey
    state: str
    expires: date | None
    totals: Totals
    requests_chart: Markup
    tokens_chart: Markup
    models_chart: Markup
    models: list[Ranked]
    error: str | None = None
    new_key: str | None = None  # just rotated: shown this once
    # The file's keys get their secret from it; a revoked key stays revoked.
    rotatable: bool = False


class KeyHandler(KeyFormMixin):
    """One key: its limits (editable), a new secret on request, and its usage over time and
    by model."""

    nav = "keys"
    flashes = frozenset({"key_updated"})

    async def get(self, key_id: str) -> None:
        await self._show(int(key_id))

    async def _show(
        self, key_id: int, error: str | None = None, new_key: str | None = None
    ) -> None:
        today = self.services.now().date()
        since = today - timedelta(days=CHART_DAYS - 1)
        async with self.services.db.session() as session:
            row = await keys.get_key(session, key_id)
        if row is None:
            not_found()
        name = row.name
        series, models, totals = await dashboard.in_parallel(
            self.services.db,
            lambda session: dashboard.daily_series(session, since, today, key_name=name),
            lambda session: dashboard.top_models(session, since, 10, key_name=name),
            lambda session: dashboard.key_summary(session, name),
        )
        t = self.t
        requests_chart, tokens_chart = daily_usage_charts("key", t, series)
        page = KeyPage(
            key=row,
            state=key_state(row, self.services.now()),
            expires=expiry_day(row),
            totals=totals,
            requests_chart=requests_chart,
            tokens_chart=tokens_chart,
            models_chart=hbar_chart(
                "key-models-chart",
                t("chart.by_model"),
                [(m.name, m.requests) for m in models],
                empty=t("chart.empty"),
            ),
            models=models,
            error=error,
            new_key=new_key,
            rotatable=row.revoked_at is None and row.source != "config",
        )
        self.render_page("key.html", page, title=row.name, status=400 if error else 200)

    async def post(self, key_id: str) -> None:
        if self.arg("action") == "rotate":
            await self._rotate(int(key_id))
            return
        error = None
        async with self.services.db.session() as session:
            row = await keys.get_key(session, int(key_id))
            if row is None:
                not_found()
            try:
                limits = self.read_limits(kept=expiry_day(row))
            except FormError as exc:
                error = self.t(exc.key, **exc.params)
            else:
                keys.edit_key(
                    row,
                    rpm=limits.rpm,
                    tpm=limits.tpm,
                    models=limits.models,
                    expires=limits.expires,
                    note=limits.note,
                )
                await self.audit(session, "key_limits_edited", row.name, describe(limits))
                await session.commit()
        if error is not None:
            await self._show(int(key_id), error)
            return
        await self.services.reload()
        self.redirect_with(f"/admin/keys/{key_id}", "key_updated")

    async def _rotate(self, key_id: int) -> None:
        """A new secret for the key, shown on its page this once (never in a redirect)."""
        try:
            # The rotation count the page was shown with: a form sent twice rotates once.
            seen = optional_int(self.arg("rotations"), "rotations")
        except FormError as exc:
            await self._show(key_id, self.t(exc.key, **exc.params))
            return
        error = secret = None
        async with self.services.db.session() as session:
            row = await keys.get_key(session, key_id)
            if row is None:
                not_found()
            old_prefix = row.prefix
            try:
                row, secret = await keys.rotate_key(session, row.name, seen=seen)
            except keys.KeyRotateError as exc:
                if exc.reason == "unknown":
                    not_found()
                if exc.reason == "config":
                    error = self.t("keys.rotate_config")
                elif exc.reason == "rotated":
                    error = self.t("keys.rotate_again")
                else:
                    error = self.t("keys.rotate_revoked")
            else:
                await self.audit(
                    session, "key_rotated", row.name, f"{old_prefix}… -> {row.prefix}…"
                )
                await session.commit()
        if secret is None:
            await self._show(key_id, error)
            return
        # The old secret leaves this process's key table before the new one is shown.
        await self.services.reload()
        await self._show(key_id, new_key=secret)
