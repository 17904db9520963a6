"""The proxy API endpoints (both dialects), health, and the dialect-aware 404.

Handlers only move bytes: the request body and headers go to `Gateway`, its
`Reply` comes back out. A client that disconnects cancels its request, which
cancels the upstream call.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable
from typing import Any

import orjson
import tornado.web
from tornado.iostream import StreamClosedError

from app import __version__
from app.auth import KeyRecord
from app.dialects import anthropic as anthropic_dialect
from app.dialects import openai as openai_dialect
from app.errors import (
    GatewayError,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
)
from app.gateway import ApiRequest, Gateway, Reply, error_reply
from app.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from app.services import Services
from app.translate.ids import random_hex


def new_request_id() -> str:
    return "req_" + random_hex()


def dialect_for(path: str, anthropic_headers: bool) -> str:
    """For paths that do not say: Anthropic when the client sends Anthropic's headers
    (``anthropic-version`` or ``x-api-key``)."""
    if path.startswith("/anthropic/"):
        return "anthropic"
    if path.startswith("/openai/"):
        return "openai"
    return "anthropic" if anthropic_headers else "openai"


def guess_dialect(request: tornado.httputil.HTTPServerRequest) -> str:
    headers = request.headers
    return dialect_for(request.path, "anthropic-version" in headers or "X-Api-Key" in headers)


class BaseApiHandler(tornado.web.RequestHandler):
    """Knows its dialect; renders every error in that dialect's envelope."""

    dialect = "openai"

    def initialize(self, services: Services, gateway: Gateway, dialect: str | None = None) -> None:
        self.services = services
        self.gateway = gateway
        if dialect is not None:
            self.dialect = dialect
        self.request_id = new_request_id()
        self._task: asyncio.Task[Any] | None = None

    def check_xsrf_cookie(self) -> None:
        """API calls authenticate with keys, not cookies: no XSRF token to check."""

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.clear_header("Server")

    def _id_headers(self) -> None:
        self.set_header("request-id", self.request_id)
        self.set_header("x-request-id", self.request_id)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado-level failures (405, internal errors) in the dialect's envelope."""
        err: GatewayError
        if status_code == 405:
            err = MethodNotAllowedError(
                f"Method {self.request.method} is not allowed on {self.request.path}"
            )
        elif status_code == 404:
            err = NotFoundError(
                f"No such endpoint: {self.request.method} {self.request.path}", code="unknown_url"
            )
        elif status_code == 413:
            err = PayloadTooLargeError("Request body is too large")
        elif 400 <= status_code < 500:
            # Tornado's own refusals of what the client sent (a URL that is not UTF-8, a
            # bad query argument): the client's mistake, whatever tornado logged about it.
            err = InvalidRequestError(
                f"{self._reason}: the request's path or query arguments could not be read"
            )
            err.status = status_code
        else:
            err = InternalError("internal error")
        self._write_plain(error_reply(self.dialect, err, self.request_id))

    def _write_plain(self, reply: Reply) -> None:
        self.set_status(reply.status)
        self._id_headers()
        for name, value in reply.headers.items():
            self.set_header(name, value)
        self.finish(reply.body)

    async def write_reply(self, reply: Reply) -> None:
        if reply.stream is None:
            self._write_plain(reply)
            return
        self.set_status(reply.status)
        self._id_headers()
        for name, value in reply.headers.items():
            self.set_header(name, value)
        # Tornado leaves Nagle on until `finish`: each chunk after the first then waited for
        # the client's delayed ACK, up to 40 ms (`make bench`, paced streams). Tornado turns
        # it back on when the response ends.
        self.request.connection.stream.set_nodelay(True)  # type: ignore[union-attr]
        stream = reply.stream
        try:
            async for chunk in stream:
                self.write(chunk)
                await self.flush()
        except StreamClosedError:
            pass
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        if not self.request.connection.stream.closed():  # type: ignore[union-attr]
            self.finish()

    def on_connection_close(self) -> None:
        # Tornado's own: it fails a streamed body's future, without which a client that
        # leaves mid-upload strands the handler and every chunk it read (a leak).
        super().on_connection_close()
        if self._task is not None and not self._task.done():
            self._task.cancel()


@tornado.web.stream_request_body
class ProxyHandler(BaseApiHandler):
    """``POST /v1/messages``, ``/v1/chat/completions``, ``/v1/responses``,
    ``/v1/messages/count_tokens``."""

    def initialize(  # type: ignore[override]
        self, services: Services, gateway: Gateway, dialect: str, endpoint: str
    ) -> None:
        super().initialize(services, gateway, dialect)
        self.endpoint = endpoint
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False

    async def prepare(self) -> None:
        limit = self.services.settings.max_body_bytes
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self._too_large = True
            self._write_plain(await self.gateway.reject(self._request(b""), self._payload_error()))
            return
        # A chunked body's size shows only as it arrives: `data_received` discards what is
        # over the limit and `post` answers 413, so tornado's own cap (a bare 400) sits above.
        cap = limit + 1 if length is not None else 2 * limit + 1
        self.request.connection.set_max_body_size(cap)  # type: ignore[union-attr]

    def _request(self, body: bytes) -> ApiRequest:
        return ApiRequest(
            dialect=self.dialect,
            endpoint=self.endpoint,
            body=body,
            headers=self.request.headers,
            request_id=self.request_id,
        )

    def _payload_error(self) -> PayloadTooLargeError:
        limit = self.services.settings.max_body_bytes
        return PayloadTooLargeError(f"Request body exceeds the {limit / (1024 * 1024):g} MiB limit")

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self._size += len(chunk)
        if self._size > self.services.settings.max_body_bytes:
            self._chunks = []
            if not self._too_large:
                self._too_large = True
                return self._refuse_now()
            return None
        self._chunks.append(chunk)
        return None

    async def _refuse_now(self) -> None:
        """A chunked body past the limit: the 413 goes out at once, and tornado closes the
        connection after it rather than read the rest (however long the client goes on)."""
        if not self._finished:
            self._write_plain(await self.gateway.reject(self._request(b""), self._payload_error()))

    async def post(self) -> None:
        if self._too_large:
            if not self._finished:
                refused = await self.gateway.reject(self._request(b""), self._payload_error())
                self._write_plain(refused)
            return
        self._task = asyncio.current_task()
        if self._task is not None:
            self.services.inflight.add(self._task)
        req = self._request(b"".join(self._chunks))
        self._chunks = []
        reply: Reply | None = None
        try:
            reply = await self.gateway.answer(req)
            await self.write_reply(reply)
        except asyncio.CancelledError:
            # The client went away; the gateway has recorded it and closed the upstream call.
            return
        finally:
            if reply is not None and reply.after is not None:
                await reply.after()
            if self._task is not None:
                self.services.inflight.discard(self._task)


class ModelsHandler(BaseApiHandler):
    """``GET /v1/models`` (shape by ``anthropic-version``) and ``GET /v1/models/{id}``."""

    def initialize(self, services: Services, gateway: Gateway, dialect: str | None = None) -> None:
        super().initialize(services, gateway, dialect)
        self.fixed = dialect is not None
        if not self.fixed and "anthropic-version" in self.request.headers:
            self.dialect = "anthropic"  # errors before `get` (405) in the client's envelope

    async def _authenticate(self) -> KeyRecord:
        return await self.services.authenticate_headers(self.request.headers)

    def _names(self, key: KeyRecord) -> list[str]:
        """The routable names this key may use: the exact route names it is allowed, then
        the exact names among its allowed models that a glob route takes."""
        router = self.services.router
        names = router.public_names()
        if not names and self.services.settings.echo_default:
            names = ["echo"]
        if not key.models:
            return names
        allowed = [n for n in names if key.allows(n)]
        for name in key.models:
            if name not in allowed and not any(c in name for c in "*?["):
                try:
                    router.resolve(name)
                except GatewayError:
                    continue
                allowed.append(name)
        return allowed

    async def get(self, model_id: str | None = None) -> None:
        if not self.fixed:
            self.dialect = "anthropic" if "anthropic-version" in self.request.headers else "openai"
        try:
            key = await self._authenticate()
            names = self._names(key)
            if model_id is not None:
                if model_id not in names:
                    try:
                        self.services.router.resolve(model_id)
                    except GatewayError:
                        raise NotFoundError(f"model {model_id!r} not found") from None
                body: Any = (
                    anthropic_dialect.model_info(model_id, self.services.started_at)
                    if self.dialect == "anthropic"
                    else openai_dialect.model_object(model_id, int(self.services.started_at))
                )
            elif self.dialect == "anthropic":
                limit_raw = self.get_query_argument("limit", "20")
                limit = int(limit_raw) if limit_raw.isdigit() else 20
                body = anthropic_dialect.models_page(
                    names,
                    limit=limit,
                    after_id=self.get_query_argument("after_id", None),
                    before_id=self.get_query_argument("before_id", None),
                    created=self.services.started_at,
                )
            else:
                body = openai_dialect.models_list(
                    [(n, "bridgekeeper") for n in names], created=int(self.services.started_at)
                )
        except GatewayError as err:
            self._write_plain(error_reply(self.dialect, err, self.request_id))
            return
        self._id_headers()
        self.finish(orjson.dumps(body))


class HealthHandler(tornado.web.RequestHandler):
    def initialize(self, services: Services) -> None:
        self.services = services

    def head(self) -> None:
        """Load balancers' checks: the status alone."""
        self.set_header("Content-Type", "application/json")

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(
            orjson.dumps(
                {
                    "status": "ok",
                    "version": __version__,
                    "upstreams": self.services.pool.names(),
                    "usage_pending": self.services.recorder.pending,
                }
            )
        )


class MetricsHandler(tornado.web.RequestHandler):
    """``GET /metrics`` for Prometheus: with ``metrics_token`` set, that bearer token is
    required; without it only loopback clients may read."""

    def initialize(self, services: Services) -> None:
        self.services = services

    def get(self) -> None:
        token = self.services.settings.metrics_token
        if token:
            given = self.request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise tornado.web.HTTPError(401)
        elif self.request.remote_ip not in ("127.0.0.1", "::1"):
            raise tornado.web.HTTPError(403)
        self.set_header("Content-Type", METRICS_CONTENT_TYPE)
        self.finish(self.services.metrics.render())


class HelloHandler(tornado.web.RequestHandler):
    """Claude Code warms its connection with ``HEAD /api/hello``."""

    def head(self) -> None:
        self.set_status(200)

    def get(self) -> None:
        self.finish({"status": "ok"})


class NotFoundHandler(BaseApiHandler):
    """Unknown paths: 404 in the dialect the path or headers suggest."""

    def initialize(self, services: Services, gateway: Gateway, dialect: str | None = None) -> None:
        super().initialize(services, gateway, dialect)
        self.dialect = guess_dialect(self.request)

    def prepare(self) -> None:
        err = NotFoundError(
            f"No such endpoint: {self.request.method} {self.request.path}", code="unknown_url"
        )
        self._write_plain(error_reply(self.dialect, err, self.request_id))
