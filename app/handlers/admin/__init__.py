"""The admin dashboard: server-rendered pages under ``/admin`` (see DESIGN.md "Dashboard").

`admin_routes` is what ``server.build_app`` mounts. The Application must set
``cookie_secret``, ``xsrf_cookies=True``, ``static_path`` (the repo's ``static/``),
``static_url_prefix="/static/"`` and ``login_url="/admin/login"``.
"""

from __future__ import annotations

from typing import Any

import tornado.web

from app.handlers.admin.admins import AccountHandler, AdminDeleteHandler, AdminsHandler
from app.handlers.admin.audit import AuditHandler
from app.handlers.admin.base import AdminDeps
from app.handlers.admin.keys import KeyHandler, KeyRevokeHandler, KeysHandler
from app.handlers.admin.models import (
    ModelsHandler,
    RouteActionHandler,
    RouteHandler,
    RouteOrderHandler,
)
from app.handlers.admin.overview import OverviewHandler
from app.handlers.admin.rendering import make_environment
from app.handlers.admin.session import LanguageHandler, LoginHandler, LogoutHandler
from app.handlers.admin.throttle import LoginThrottle
from app.handlers.admin.upstream_keys import (
    UpstreamKeyActionHandler,
    UpstreamKeyOrderHandler,
    UpstreamKeysHandler,
)
from app.handlers.admin.upstreams import (
    UpstreamDeleteHandler,
    UpstreamHandler,
    UpstreamsHandler,
    UpstreamTestHandler,
)
from app.handlers.admin.usage import UsageCsvHandler, UsageHandler
from app.services import Services

__all__ = ["admin_routes"]

# A row id in a path: at most 9 digits, which always fits the id column (32 bits on
# PostgreSQL). A longer one is no page (404); it reached the database and came back an
# OverflowError (a 500).
ROW_ID = r"\d{1,9}"


def admin_routes(
    services: Services, *, throttle: LoginThrottle | None = None
) -> list[tuple[str, type[tornado.web.RequestHandler], dict[str, Any]] | tuple[str, Any, Any]]:
    """Every dashboard route, each handler given the same `AdminDeps`."""
    deps = {"deps": AdminDeps(services, make_environment(), throttle or LoginThrottle())}
    pages: list[tuple[str, type[tornado.web.RequestHandler]]] = [
        (r"/admin/", OverviewHandler),
        (r"/admin/login", LoginHandler),
        (r"/admin/logout", LogoutHandler),
        (r"/admin/lang", LanguageHandler),
        (r"/admin/keys", KeysHandler),
        (r"/admin/keys/({ID})", KeyHandler),
        (r"/admin/keys/({ID})/revoke", KeyRevokeHandler),
        (r"/admin/upstreams", UpstreamsHandler),
        (r"/admin/upstreams/({ID})", UpstreamHandler),
        (r"/admin/upstreams/({ID})/delete", UpstreamDeleteHandler),
        (r"/admin/upstreams/({ID})/test", UpstreamTestHandler),
        (r"/admin/upstreams/({ID})/keys", UpstreamKeysHandler),
        (r"/admin/upstreams/({ID})/keys/order", UpstreamKeyOrderHandler),
        (
            r"/admin/upstreams/({ID})/keys/({ID})/(up|down|enable|disable|delete)",
            UpstreamKeyActionHandler,
        ),
        (r"/admin/models", ModelsHandler),
        (r"/admin/models/order", RouteOrderHandler),
        (r"/admin/models/({ID})", RouteHandler),
        (r"/admin/models/({ID})/(up|down|enable|disable|delete)", RouteActionHandler),
        (r"/admin/usage", UsageHandler),
        (r"/admin/usage\.csv", UsageCsvHandler),
        (r"/admin/audit", AuditHandler),
        (r"/admin/admins", AdminsHandler),
        (r"/admin/admins/({ID})/delete", AdminDeleteHandler),
        (r"/admin/account", AccountHandler),
    ]
    routes: list[Any] = [(r"/admin", tornado.web.RedirectHandler, {"url": "/admin/"})]
    routes += [(pattern.replace("{ID}", ROW_ID), handler, deps) for pattern, handler in pages]
    return routes
