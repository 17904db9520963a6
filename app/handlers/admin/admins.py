"""Dashboard users: the list, adding and removing admins, and changing one's own password."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.auth import hash_password, verify_password
from app.db import admins
from app.db.admins import MAX_USERNAME, MIN_PASSWORD
from app.db.models import AdminUser
from app.handlers.admin.base import AdminHandler, not_found, off_loop
from app.handlers.admin.forms import FormError, required


def check_new_password(password: str, confirm: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise FormError("admins.password_short", min=MIN_PASSWORD)
    if password != confirm:
        raise FormError("admins.password_mismatch")


@dataclass(slots=True)
class AdminsPage:
    admins: list[AdminUser]
    me: str
    error: str | None = None
    form: dict[str, str] = field(default_factory=dict)


class AdminsHandler(AdminHandler):
    nav = "admins"
    flashes = frozenset({"admin_added", "admin_removed", "admin_kept", "password_changed"})

    async def get(self) -> None:
        await self._show()

    async def _show(self, error: str | None = None, form: dict[str, str] | None = None) -> None:
        async with self.services.db.session() as session:
            rows = await admins.list_admins(session)
        page = AdminsPage(rows, self.username, error, form or {})
        self.render_page(
            "admins.html", page, title=self.t("admins.title"), status=400 if error else 200
        )

    async def post(self) -> None:
        username = self.arg("username")
        password = self.get_body_argument("password", "")
        try:
            required(username, self.t("admins.username"), max_len=MAX_USERNAME)
            check_new_password(password, self.get_body_argument("confirm", ""))
        except FormError as exc:
            await self._show(self.t(exc.key, **exc.params), {"username": username})
            return
        password_hash = await off_loop(hash_password, password)
        async with self.services.db.session() as session:
            exists = await admins.get_admin(session, username) is not None
            if not exists:
                await admins.set_admin_password(session, username, password_hash)
                await self.audit(session, "admin_added", username)
                await session.commit()
        if exists:
            await self._show(self.t("admins.exists"), {"username": username})
            return
        self.redirect_with("/admin/admins", "admin_added")


class AdminDeleteHandler(AdminHandler):
    nav = "admins"

    async def post(self, admin_id: str) -> None:
        async with self.services.db.session() as session:
            row = await session.get(AdminUser, int(admin_id))
            if row is None:
                not_found()
            kept = row.username == self.username or await admins.count_admins(session) <= 1
            if not kept:
                await admins.delete_admin(session, row.username)
                await self.audit(session, "admin_removed", row.username)
                await session.commit()
        self.redirect_with("/admin/admins", "admin_kept" if kept else "admin_removed")


@dataclass(frozen=True, slots=True)
class AccountPage:
    username: str
    error: str | None = None


class AccountHandler(AdminHandler):
    """Change one's own password (the current one is asked again)."""

    nav = "admins"

    def get(self) -> None:
        self.render_page("account.html", AccountPage(self.username), title=self.t("account.title"))

    async def post(self) -> None:
        assert self.admin is not None
        current = self.get_body_argument("current", "")
        new = self.get_body_argument("password", "")
        try:
            if not await off_loop(verify_password, current, self.admin.password_hash):
                raise FormError("account.wrong_current")
            check_new_password(new, self.get_body_argument("confirm", ""))
        except FormError as exc:
            page = AccountPage(self.username, self.t(exc.key, **exc.params))
            self.render_page("account.html", page, title=self.t("account.title"), status=400)
            return
        password_hash = await off_loop(hash_password, new)
        async with self.services.db.session() as session:
            row = await admins.set_admin_password(session, self.username, password_hash)
            await self.audit(session, "password_changed", self.username)
            await session.commit()
        # The fingerprint changed: every other session of this admin has ended.
        self.start_session(row)
        self.redirect_with("/admin/admins", "password_changed")
