"""Builds the services and Tornado applications from settings; starts and stops listeners.

`build_services` migrates, syncs the config file into the database and loads
the in-memory tables; `build_app` (and `build_anthropic_app` for the optional
dedicated port) wires handlers to their dependencies; `run` serves until
SIGTERM/SIGINT, then stops accepting, lets in-flight requests finish within the
grace period, flushes usage and closes upstream sessions.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import secrets
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tornado.httpserver
import tornado.web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app import ioloop
from app.accounting import RateLimiter, UsageRecorder
from app.auth import KeyTable, hash_password, verify_password
from app.db import admins as admin_queries
from app.db import keys as key_queries
from app.db.catalog import has_backends, sync_config
from app.db.engine import ROOT, Database, sqlite_path, upgrade
from app.db.models import ProxyKey
from app.gateway import Gateway
from app.handlers.admin import admin_routes
from app.handlers.api import (
    HealthHandler,
    HelloHandler,
    MetricsHandler,
    ModelsHandler,
    NotFoundHandler,
    ProxyHandler,
)
from app.handlers.lean import ApiRouter, log_request
from app.http1 import LeanHTTPServer
from app.metrics import Metrics
from app.routing import Router
from app.secretbox import SecretBox, key_file_for, load_or_create_key
from app.services import Services, make_writer
from app.settings import Settings
from app.upstreams.pool import UpstreamPool

log = logging.getLogger("bridgekeeper.server")
# The most one socket read takes (and the body's pieces). Tornado zeroed a fresh buffer this
# size for every read, so it was cut to 16 KiB; reads now go into `LeanStream`'s scratch
# buffer, and a long conversation's body comes in a quarter of the reads at 64 KiB.
READ_CHUNK = 64 * 1024


@dataclass(slots=True)
class FirstStart:
    """What `serve` prints once: credentials generated on the first start."""

    admin_password: str | None = None
    proxy_key: str | None = None


async def _bootstrap(services: Services, settings: Settings) -> FirstStart:
    """Config sync, the first admin, and a first proxy key on an empty database."""
    first = FirstStart()
    loop = asyncio.get_running_loop()
    async with services.db.session() as session, session.begin():
        if settings.echo_default and await has_backends(session):
            # Nothing in the file or the environment, but upstreams added in the dashboard:
            # those are the configuration (and echo, deleted there, is not made again).
            settings = services.settings = settings.without_echo_default()
        await sync_config(session, settings.upstreams, settings.models, services.secrets)
        for key in settings.keys:
            await key_queries.upsert_config_key(
                session,
                key.name,
                key.key,
                rpm=key.rpm,
                tpm=key.tpm,
                models=key.models,
                expires=key.expires,
            )
        if settings.proxy_key:
            await key_queries.upsert_config_key(
                session, "default", settings.proxy_key, rpm=None, tpm=None, models=(), expires=None
            )
        named = {key.name for key in settings.keys} | ({"default"} if settings.proxy_key else set())
        for row in await session.scalars(select(ProxyKey).where(ProxyKey.source == "config")):
            if row.name not in named:
                row.source = "dashboard"  # no longer in the file: the dashboard's now
        no_admins = await admin_queries.count_admins(session) == 0
        if settings.admin_password:
            await _apply_configured_password(session, settings.admin_password)
        elif no_admins:
            first.admin_password = secrets.token_urlsafe(12)
            hashed = await loop.run_in_executor(None, hash_password, first.admin_password)
            await admin_queries.set_admin_password(session, "admin", hashed)
        if no_admins and not await key_queries.list_keys(session):
            _, first.proxy_key = await key_queries.create_key(session, "default", source="serve")
    return first


async def _apply_configured_password(session: AsyncSession, password: str) -> None:
    """The configured ``admin_password`` becomes the ``admin`` user's password when the
    user is new or the configured value changed since it was last applied. Unchanged, it
    leaves alone a password set since in the dashboard or with ``admin set-password``
    (it used to reset it at every start)."""
    loop = asyncio.get_running_loop()
    row = await admin_queries.get_admin(session, "admin")
    if row is not None and row.config_password_hash is not None:
        same = await loop.run_in_executor(None, verify_password, password, row.config_password_hash)
        if same:
            return
    hashed = await loop.run_in_executor(None, hash_password, password)
    row = await admin_queries.set_admin_password(session, "admin", hashed)
    row.config_password_hash = hashed


async def build_services(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    migrate: bool = True,
) -> tuple[Services, FirstStart]:
    """Everything the server shares, loaded and ready; the caller owns `Services.close`."""
    loop = asyncio.get_running_loop()
    if migrate:
        await loop.run_in_executor(None, upgrade, settings.database_url)
    key_path = key_file_for(sqlite_path(settings.database_url))
    fernet_key = await loop.run_in_executor(None, load_or_create_key, settings.secret_key, key_path)
    write, purge, close_writer = make_writer(settings.database_url)
    recorder = UsageRecorder(
        write,
        interval=settings.usage_flush_seconds,
        max_buffer=settings.usage_buffer_size,
        purge=purge,
        retention_days=settings.retention_days,
        clock=clock,
        on_close=close_writer,
    )
    pool = UpstreamPool(clock=clock, on_key_change=recorder.key_changed)
    services = Services(
        settings=settings,
        db=Database(settings.database_url),
        secrets=SecretBox(fernet_key),
        keys=KeyTable(),
        router=Router([], []),
        pool=pool,
        limiter=RateLimiter(
            default_rpm=settings.default_rpm, default_tpm=settings.default_tpm, clock=clock
        ),
        recorder=recorder,
        metrics=Metrics(pool),
        clock=clock,
        cookie_secret=hashlib.sha256(b"bridgekeeper-cookie:" + fernet_key).hexdigest(),
    )
    first = await _bootstrap(services, settings)
    await services.reload()
    recorder.start()
    services.start_refresh(settings.key_refresh_seconds)
    return services, first


def _api_routes(
    services: Services, gateway: Gateway, prefix: str, dialect: str | None
) -> list[Any]:
    deps: dict[str, Any] = {"services": services, "gateway": gateway}
    routes: list[Any] = []
    if dialect in (None, "openai"):
        routes.append(
            (
                prefix + r"/v1/chat/completions",
                ProxyHandler,
                dict(deps, dialect="openai", endpoint="chat"),
            )
        )
        routes.append(
            (
                prefix + r"/v1/responses",
                ProxyHandler,
                dict(deps, dialect="openai", endpoint="responses"),
            )
        )
        routes.append(
            (
                prefix + r"/v1/embeddings",
                ProxyHandler,
                dict(deps, dialect="openai", endpoint="embeddings"),
            )
        )
    if dialect in (None, "anthropic"):
        routes += [
            (
                prefix + r"/v1/messages",
                ProxyHandler,
                dict(deps, dialect="anthropic", endpoint="messages"),
            ),
            (
                prefix + r"/v1/messages/count_tokens",
                ProxyHandler,
                dict(deps, dialect="anthropic", endpoint="count_tokens"),
            ),
        ]
    routes += [
        (prefix + r"/v1/models", ModelsHandler, dict(deps, dialect=dialect)),
        (prefix + r"/v1/models/([^/]+)", ModelsHandler, dict(deps, dialect=dialect)),
    ]
    return routes


def _common_settings(services: Services) -> dict[str, Any]:
    return {
        "default_handler_class": NotFoundHandler,
        "default_handler_args": {"services": services, "gateway": None},
        "compress_response": False,
        "log_function": _log_request,
    }


def _log_request(handler: tornado.web.RequestHandler) -> None:
    request = handler.request
    log_request(handler.get_status(), request.method or "", request.path, request.request_time())


def _proxy_endpoints(routes: list[Any]) -> dict[str, tuple[str, str]]:
    """Path -> (dialect, endpoint) of the routes `ApiRouter` serves without the Application."""
    return {
        path: (kwargs["dialect"], kwargs["endpoint"])
        for path, handler, kwargs in (r for r in routes if len(r) == 3)
        if handler is ProxyHandler
    }


def build_router(
    services: Services, gateway: Gateway, *, anthropic_only: bool = False
) -> ApiRouter:
    """What a listener serves: the proxy endpoints' lean path in front of the Application."""
    if anthropic_only:
        app = build_anthropic_app(services, gateway)
        routes = _api_routes(services, gateway, "", "anthropic")
    else:
        app = build_app(services, gateway)
        routes = [
            *_api_routes(services, gateway, "", None),
            *_api_routes(services, gateway, "/anthropic", "anthropic"),
            *_api_routes(services, gateway, "/openai", "openai"),
        ]
    dialect = "anthropic" if anthropic_only else None
    return ApiRouter(app, _proxy_endpoints(routes), services, gateway, dialect=dialect)


def build_app(services: Services, gateway: Gateway | None = None) -> tornado.web.Application:
    """The main listener: both dialects under /v1, /anthropic/v1 and /openai/v1; the dashboard."""
    gateway = gateway or Gateway(services)
    routes: list[Any] = [
        (r"/", tornado.web.RedirectHandler, {"url": "/admin/"}),
        (r"/health", HealthHandler, {"services": services}),
        (r"/api/hello", HelloHandler),
        (r"/metrics", MetricsHandler, {"services": services}),
    ]
    routes += _api_routes(services, gateway, "", None)
    routes += _api_routes(services, gateway, "/anthropic", "anthropic")
    routes += _api_routes(services, gateway, "/openai", "openai")
    routes += admin_routes(services)
    settings = _common_settings(services)
    settings["default_handler_args"] = {"services": services, "gateway": gateway}
    return tornado.web.Application(
        routes,
        cookie_secret=services.cookie_secret,
        xsrf_cookies=True,
        static_path=str(ROOT / "static"),
        static_url_prefix="/static/",
        login_url="/admin/login",
        **settings,
    )


def build_anthropic_app(services: Services, gateway: Gateway) -> tornado.web.Application:
    """The optional dedicated port: the Anthropic dialect at the root."""
    routes: list[Any] = [
        (r"/health", HealthHandler, {"services": services}),
        (r"/api/hello", HelloHandler),
    ]
    routes += _api_routes(services, gateway, "", "anthropic")
    settings = _common_settings(services)
    settings["default_handler_args"] = {"services": services, "gateway": gateway}
    return tornado.web.Application(routes, **settings)


class Server:
    """The running listeners and how to stop them gracefully."""

    def __init__(self, services: Services, *, body_timeout: float | None = None) -> None:
        self.services = services
        # How long a request body may stall (no byte of it) before the request gets a 408
        # and its connection closes: nginx's client_body_timeout. Without it a client that
        # sends headers and part of a body holds a connection and its buffer for ever, key
        # or no key (auth runs once the body is in). ``body_timeout`` overrides the setting.
        self.body_timeout = (
            body_timeout if body_timeout is not None else services.settings.body_timeout_seconds
        )
        self.gateway = Gateway(services)
        self.http: list[tornado.httpserver.HTTPServer] = []
        self.ports: list[int] = []

    def listen(
        self,
        host: str,
        port: int,
        anthropic_port: int | None = None,
        *,
        bound: list[list[socket.socket]] | None = None,
    ) -> None:
        """Serve on ``host``:``port`` (and the Anthropic port); ``bound``: the sockets
        `bind_listeners` already bound for them."""
        bound = bound if bound is not None else bind_listeners(host, port, anthropic_port)
        limit = self.services.settings.max_body_bytes + 1
        main = LeanHTTPServer(
            build_router(self.services, self.gateway),
            max_body_size=limit,
            idle_connection_timeout=75,
            body_timeout=self.body_timeout,
            chunk_size=READ_CHUNK,
            xheaders=self.services.settings.behind_proxy,
        )
        self.ports.append(_add(main, bound[0]))
        self.http.append(main)
        if anthropic_port is not None:
            extra = LeanHTTPServer(
                build_router(self.services, self.gateway, anthropic_only=True),
                max_body_size=limit,
                idle_connection_timeout=75,
                body_timeout=self.body_timeout,
                chunk_size=READ_CHUNK,
                xheaders=self.services.settings.behind_proxy,
            )
            self.ports.append(_add(extra, bound[1]))
            self.http.append(extra)

    async def stop(self, grace: float) -> None:
        """Stop accepting, let in-flight requests (streams included) finish for ``grace`` s,
        cancel what is still running, then close connections, flush usage, close sessions."""
        for server in self.http:
            server.stop()
        # Wait on the requests themselves: tornado's close_all_connections closes sockets
        # at once, which would cut every stream still being answered.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while running := [t for t in self.services.inflight if not t.done()]:
            left = deadline - loop.time()
            if left <= 0:
                log.warning("grace period of %gs over; cancelling %d requests", grace, len(running))
                self.services.stopping = True  # each answers its client before it ends
                for task in running:
                    task.cancel()
                await asyncio.wait(running, timeout=5)
                break
            await asyncio.wait(running, timeout=left)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(s.close_all_connections() for s in self.http)), timeout=5
            )
        except TimeoutError:
            log.warning("some connections did not close within 5 s")
        await self.services.close()


class BindError(OSError):
    """A port that could not be bound, with the address: "Address already in use" alone
    did not say which of the two ports."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def __str__(self) -> str:
        reason = self.strerror or "cannot bind"
        return f"cannot listen on {self.address}: {reason[:1].lower()}{reason[1:]}"


def _bind(host: str, port: int) -> list[socket.socket]:
    try:
        return tornado.netutil.bind_sockets(port, address=host)
    except OSError as exc:
        raise BindError(host, port, exc) from exc


def bind_listeners(
    host: str, port: int, anthropic_port: int | None = None
) -> list[list[socket.socket]]:
    """The listening sockets of the main port and the Anthropic port, bound now (so a
    port in use is found before anything else happens); closed again on failure
    (`BindError`, naming the port)."""
    bound = [_bind(host, port)]
    if anthropic_port is not None:
        try:
            bound.append(_bind(host, anthropic_port))
        except OSError:
            for sock in bound[0]:
                sock.close()
            raise
    return bound


def _add(server: tornado.httpserver.HTTPServer, sockets: list[socket.socket]) -> int:
    server.add_sockets(sockets)
    return int(sockets[0].getsockname()[1])


def install_uvloop() -> bool:
    """Use uvloop when installed (the optional ``fast`` extra)."""
    try:
        import uvloop
    except ImportError:
        return False
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def _tune_gc() -> None:
    """Keep start-up objects out of the collector's scans, and run it less often.

    Under load, full collections re-scanned the ~110k objects loaded at start-up
    (SQLAlchemy, alembic, Jinja, ...) and young collections ran every few
    requests: about 12% of the gateway's CPU, and 200 ms pauses (`make bench`).
    A request's own garbage is freed by reference counting; the collector only
    has cycles to find, which a larger first threshold still finds soon enough.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def serve_forever(settings: Settings, announce: Callable[[Server, FirstStart], None]) -> None:
    """Start, announce, serve until SIGTERM/SIGINT, stop gracefully."""
    ioloop.install()
    # The ports first: a second `serve` on a port in use must stop before it writes the
    # config file into a database a running server is using.
    bound = bind_listeners(settings.host, settings.port, settings.anthropic_port)
    try:
        services, first = await build_services(settings, migrate=False)
    except BaseException:
        for sock in (s for group in bound for s in group):
            sock.close()
        raise
    server = Server(services)
    server.listen(settings.host, settings.port, settings.anthropic_port, bound=bound)
    _tune_gc()
    announce(server, first)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: finishing in-flight requests (grace %gs)", settings.grace_seconds)
    await server.stop(settings.grace_seconds)
