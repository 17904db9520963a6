"""Sign in, sign out and the language switcher: the pages that need no session."""

from __future__ import annotations

from dataclasses import dataclass

from app.auth import verify_password
from app.db import admins
from app.handlers.admin.base import (
    LANG_COOKIE,
    LOGIN_URL,
    AdminHandler,
    client_address,
    off_loop,
    safe_next,
)
from app.handlers.admin.i18n import LANGUAGES

# Checked when the username is unknown, so a miss costs the same scrypt time as a
# wrong password and response timing does not reveal which admins exist. Nobody
# knows its password: it was made from random bytes that were thrown away.
_DUMMY_HASH = (
    "scrypt$16384$8$1$c2LnMJBwuGMLscuxV1uOPQ==$uFjyFnNSAa2AdD7G+JPwx0bfkRvxLLT8QydTUFswBxs="
)


@dataclass(frozen=True, slots=True)
class LoginPage:
    next: str
    username: str = ""
    error: str | None = None


class LoginHandler(AdminHandler):
    require_login = False
    flashes = frozenset({"signed_out", "password_changed"})

    async def get(self) -> None:
        target = safe_next(self.get_query_argument("next", None))
        if await self.load_admin() is not None:
            self.redirect(target)
            return
        self.render_page("login.html", LoginPage(next=target), title=self.t("login.title"))

    async def post(self) -> None:
        username = self.arg("username")
        password = self.get_body_argument("password", "")
        target = safe_next(self.get_body_argument("next", None))
        # Behind a proxy this is what X-Real-IP / X-Forwarded-For claim, which a client
        # can forge; the throttle's per-username rule holds whatever address it claims.
        ip = self.request.remote_ip or ""
        throttle = self.deps.throttle
        wait = throttle.begin(ip, username)
        if wait:
            self._refuse(target, username, "login.locked", 429, wait)
            return
        # Responses are written only once the session is closed (here and in every
        # handler): a finished response must not leave a connection still in use.
        async with self.services.db.session() as session:
            try:
                row = await admins.get_admin(session, username) if username else None
                ok = await off_loop(
                    verify_password, password, row.password_hash if row else _DUMMY_HASH
                )
            finally:
                throttle.end(ip, username)
            if row is not None and ok:
                throttle.success(ip, username)
                row.last_login_at = self.services.now()
                self.admin = row
                await self.audit(session, "sign_in", row.username)
                await session.commit()
        if row is None or not ok:
            lockout = throttle.failure(ip, username)
            # Recorded under the name tried (never the password), with the address: the
            # audit trail shows guessing, not only the sign-ins that worked.
            async with self.services.db.session() as session:
                await admins.audit(
                    session,
                    "",
                    "sign_in_failed",
                    target=username[:300],
                    detail="locked out" if lockout else "",
                    remote_ip=client_address(self.request),
                )
                await session.commit()
            if lockout:
                self._refuse(target, username, "login.locked", 429, lockout)
            else:
                self._refuse(target, username, "login.failed", 401, 0)
            return
        self.start_session(row)
        self.redirect(target, status=303)

    def _refuse(self, target: str, username: str, key: str, status: int, wait: float) -> None:
        if wait:
            self.set_header("Retry-After", str(int(wait + 0.999)))
        page = LoginPage(
            next=target, username=username, error=self.t(key, seconds=int(wait + 0.999))
        )
        self.render_page("login.html", page, title=self.t("login.title"), status=status)


class LogoutHandler(AdminHandler):
    async def post(self) -> None:
        """Ends the session on the server too: the admin's epoch moves on, so this cookie
        (a copy of it, and the admin's other sessions) no longer signs anyone in."""
        async with self.services.db.session() as session:
            row = await admins.get_admin(session, self.username)
            if row is not None:
                row.session_epoch = (row.session_epoch or 0) + 1
            await self.audit(session, "sign_out", self.username)
            await session.commit()
        self.end_session()
        self.redirect_with(LOGIN_URL, "signed_out")


class LanguageHandler(AdminHandler):
    """Remembers the chosen language in a cookie and goes back where the admin was."""

    require_login = False

    def post(self) -> None:
        lang = self.get_body_argument("lang", "")
        if lang in LANGUAGES:
            self.set_cookie(
                LANG_COOKIE,
                lang,
                expires_days=365,
                path="/admin",
                httponly=True,
                samesite="Lax",
                secure=self.request.protocol == "https",
            )
        self.redirect(safe_next(self.get_body_argument("next", None)), status=303)
