"""The admin audit trail: who changed what in the dashboard, newest first."""

from __future__ import annotations

from dataclasses import dataclass

from app.db import admins
from app.db.models import AdminAudit
from app.handlers.admin.base import AdminHandler
from app.handlers.admin.forms import FormError, optional_int

PAGE_SIZE = 50


@dataclass(frozen=True, slots=True)
class AuditPage:
    rows: list[AdminAudit]
    older_url: str | None
    first_url: str | None


class AuditHandler(AdminHandler):
    nav = "audit"

    async def get(self) -> None:
        try:
            before = optional_int(self.qarg("before"), "before")
        except FormError:
            before = None
        async with self.services.db.session() as session:
            rows = await admins.list_audit(session, before_id=before, limit=PAGE_SIZE + 1)
        older = f"/admin/audit?before={rows[PAGE_SIZE - 1].id}" if len(rows) > PAGE_SIZE else None
        page = AuditPage(rows[:PAGE_SIZE], older, "/admin/audit" if before is not None else None)
        self.render_page("audit.html", page, title=self.t("audit.title"))
