"""The dashboard's handler base: session, language, security headers, rendering, audit.

Sessions are Tornado signed cookies naming the admin and a fingerprint of the
password hash, so changing a password or removing an admin ends its sessions.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlencode, urlsplit

import tornado.httputil
import tornado.web
from jinja2 import Environment
from markupsafe import Markup
from sqlalchemy.ext.asyncio import AsyncSession

from app.db import admins
from app.db.models import AdminUser
from app.handlers.admin.i18n import LANGUAGES, Translator, pick_language
from app.handlers.admin.throttle import LoginThrottle
from app.services import Services

SESSION_COOKIE = "bk_session"
LANG_COOKIE = "bk_lang"
SESSION_DAYS = 1
LOGIN_URL = "/admin/login"
HOME = "/admin/"

# SVG charts are inline markup styled by classes from app.css, so styles need no
# 'unsafe-inline'; scripts are static files only.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)

NAV = (
    ("overview", "/admin/", "nav.overview"),
    ("keys", "/admin/keys", "nav.keys"),
    ("upstreams", "/admin/upstreams", "nav.upstreams"),
    ("models", "/admin/models", "nav.models"),
    ("usage", "/admin/usage", "nav.usage"),
    ("audit", "/admin/audit", "nav.audit"),
    ("admins", "/admin/admins", "nav.admins"),
)

T = TypeVar("T")

# The audit trail's address column (`AdminAudit.remote_ip`).
AUDIT_ADDRESS_CHARS = 64


@dataclass(frozen=True, slots=True)
class AdminDeps:
    """What every dashboard handler receives from the route table."""

    services: Services
    env: Environment
    throttle: LoginThrottle


@dataclass(frozen=True, slots=True)
class Chrome:
    """What base.html needs besides the page: title, navigation, user, language, flash."""

    title: str
    nav: list[tuple[str, str, bool]]
    user: str | None
    lang: str
    languages: dict[str, str]
    flash: str | None
    here: str


def session_fingerprint(row: AdminUser) -> str:
    """What a session cookie must carry to be valid: it changes with the password and
    when the admin signs out (`AdminUser.session_epoch`)."""
    seed = f"{row.password_hash}|{row.session_epoch or 0}"
    return hashlib.sha256(seed.encode()).hexdigest()[:24]


def safe_next(value: str | None) -> str:
    """A same-site dashboard path to return to after sign-in; anything else goes home."""
    if not value or "\\" in value or any(ord(c) < 32 for c in value):
        return HOME
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or value.startswith("//"):
        return HOME
    if parts.path != "/admin" and not parts.path.startswith("/admin/"):
        return HOME
    return value


def not_found() -> NoReturn:
    raise tornado.web.HTTPError(404)


def client_address(request: tornado.httputil.HTTPServerRequest) -> str:
    """The client's address for the audit trail: ``remote_ip``, and after it the socket's
    peer when they differ ("203.0.113.9 via 127.0.0.1").

    With ``behind_proxy``, ``remote_ip`` is what X-Real-IP / X-Forwarded-For say, which a
    client writes itself when the proxy passes them on; the peer it cannot forge. When
    both do not fit the column (two long IPv6 addresses), the peer is left out: behind a
    proxy it is the proxy's.
    """
    claimed = request.remote_ip or ""
    address = getattr(getattr(request.connection, "context", None), "address", None)
    peer = str(address[0]) if isinstance(address, tuple) and address else ""
    both = f"{claimed} via {peer}"
    if not peer or peer == claimed or len(both) > AUDIT_ADDRESS_CHARS:
        return claimed
    return both


async def off_loop(func: Callable[..., T], *args: Any) -> T:
    """Runs slow CPU work (scrypt) in the default executor, never on the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


class AdminHandler(tornado.web.RequestHandler):
    """Base of every dashboard page; subclasses set ``nav`` and may set ``require_login``."""

    require_login = True
    nav = ""
    flashes: frozenset[str] = frozenset()

    def initialize(self, deps: AdminDeps) -> None:
        self.deps = deps
        self.services = deps.services
        self.lang = pick_language(self.get_cookie(LANG_COOKIE))
        self.t = Translator(self.lang)
        self.admin: AdminUser | None = None

    def set_default_headers(self) -> None:
        self.set_header("Content-Security-Policy", CSP)
        self.set_header("X-Frame-Options", "DENY")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "same-origin")
        self.set_header("Cache-Control", "no-store")

    async def prepare(self) -> None:
        if not self.require_login:
            return
        self.admin = await self.load_admin()
        if self.admin is not None:
            self.current_user = self.admin.username
            return
        if self.request.method in ("GET", "HEAD"):
            self.redirect(LOGIN_URL + "?" + urlencode({"next": self.request.uri or HOME}))
            return
        raise tornado.web.HTTPError(403)

    async def load_admin(self) -> AdminUser | None:
        raw = self.get_signed_cookie(SESSION_COOKIE, max_age_days=SESSION_DAYS)
        if not raw:
            return None
        username, _, fingerprint = raw.decode("utf-8", "replace").rpartition("|")
        async with self.services.db.session() as session:
            row = await admins.get_admin(session, username)
        if row is None or not hmac.compare_digest(session_fingerprint(row), fingerprint):
            return None
        return row

    def start_session(self, row: AdminUser) -> None:
        self.set_signed_cookie(
            SESSION_COOKIE,
            f"{row.username}|{session_fingerprint(row)}",
            expires_days=None,
            httponly=True,
            secure=self.request.protocol == "https",
            samesite="Lax",
            path="/admin",
        )

    def end_session(self) -> None:
        self.clear_cookie(SESSION_COOKIE, path="/admin")

    @property
    def username(self) -> str:
        return self.admin.username if self.admin is not None else ""

    def chrome(self, title: str) -> Chrome:
        msg = self.get_query_argument("msg", None)
        flash = self.t("flash." + msg) if msg and msg in self.flashes else None
        user = self.admin.username if self.admin is not None else None
        return Chrome(
            title=title,
            nav=[(href, self.t(label), name == self.nav) for name, href, label in NAV],
            user=user,
            lang=self.lang,
            languages=dict(LANGUAGES),
            flash=flash,
            here=self.request.uri or HOME,
        )

    def render_page(self, template: str, page: object, *, title: str, status: int = 200) -> None:
        html = self.deps.env.get_template(template).render(
            page=page,
            ui=self.chrome(title),
            t=self.t,
            xsrf_form_html=lambda: Markup(self.xsrf_form_html()),
            static_url=self.static_url,
        )
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.finish(html)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        messages = {403: "error.403", 404: "error.404", 429: "error.429"}
        key = messages.get(status_code, "error.other")
        page = {"status": status_code, "message": self.t(key)}
        self.render_page("error.html", page, title=self.t("error.title"), status=status_code)

    def redirect_with(self, path: str, msg: str | None = None) -> None:
        """Post/redirect/get, with an optional flash message key."""
        self.redirect(path + ("?" + urlencode({"msg": msg}) if msg else ""), status=303)

    async def audit(
        self, session: AsyncSession, action: str, target: str = "", detail: str = ""
    ) -> None:
        await admins.audit(
            session,
            self.username,
            action,
            target=target[:300],
            detail=detail,
            remote_ip=client_address(self.request),
        )

    def arg(self, name: str, default: str = "") -> str:
        """A form field, stripped."""
        return self.get_body_argument(name, default).strip()

    def qarg(self, name: str) -> str:
        """A query-string field, stripped."""
        return (self.get_query_argument(name, "") or "").strip()
