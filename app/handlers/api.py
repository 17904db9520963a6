"""The proxy API endpoints (both dialects), health, and the dialect-aware 404.

Handlers only move bytes: the request body and headers go to `Gateway`, its
`Reply` comes back out. A client that disconnects cancels its request, which
cancels the upstream call. API answers carry CORS headers for browsers (never the
dashboard's), and a gzip or deflate request body is decompressed here.
"""

from __future__ import annotations

import asyncio
import hmac
import zlib
from collections.abc import Awaitable
from fnmatch import fnmatchcase
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
    UnsupportedMediaTypeError,
)
from app.gateway import (
    PEEK_LIMIT,
    ApiRequest,
    Gateway,
    Reply,
    error_reply,
    shutdown_error,
    stream_error_bytes,
)
from app.http1 import LeanConnection
from app.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from app.services import Services
from app.translate.ids import random_hex


def new_request_id() -> str:
    return "req_" + random_hex()


# CORS. A proxy key is a bearer token a browser never attaches on its own, so any origin may
# call the API, as Anthropic's and OpenAI's APIs let it (Anthropic's SDK asks with
# ``anthropic-dangerous-direct-browser-access``); the dashboard (same-origin, cookies) never.
# Only an answer to a request with an ``Origin`` carries them: one header lookup otherwise.
CORS_EXPOSED = (
    "request-id",
    "x-request-id",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    *(
        f"anthropic-ratelimit-{kind}-{part}"
        for kind in ("requests", "tokens")
        for part in ("limit", "remaining", "reset")
    ),
    *(
        f"x-ratelimit-{part}-{kind}"
        for kind in ("requests", "tokens")
        for part in ("limit", "remaining", "reset")
    ),
)
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Expose-Headers", ", ".join(CORS_EXPOSED)),
)
PREFLIGHT_MAX_AGE = "86400"  # browsers cap it (Chromium at 2 h)
# How long `GET /v1/models` waits for a backend's own model list (`ModelLists`).
BACKEND_LIST_SECONDS = 5.0


def is_dashboard_path(path: str) -> bool:
    return path.startswith("/admin")


def is_api_path(path: str) -> bool:
    """A path under ``/v<N>/``, ``/anthropic/`` or ``/openai/``: an unknown one is still an
    API request (its 404 is recorded), unlike a ``/favicon.ico`` or a scanner's guess."""
    first = path[1:].partition("/")[0]
    return first in ("anthropic", "openai") or (first[:1] == "v" and first[1:].isdigit())


def allowed_methods(handler: type[tornado.web.RequestHandler]) -> str:
    """The methods ``handler`` answers, for ``Allow`` (RFC 9110 §15.5.6: a 405 must send it)."""
    base = tornado.web.RequestHandler
    return ", ".join(
        method
        for method in handler.SUPPORTED_METHODS
        if getattr(handler, method.lower(), None) is not getattr(base, method.lower(), None)
    )


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
    """Knows its dialect; renders every error in that dialect's envelope; answers CORS
    preflights and adds CORS headers to what it answers a browser."""

    dialect = "openai"
    cors = True

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
        if "Origin" in self.request.headers and self.cors:
            for name, value in CORS_HEADERS:
                self.set_header(name, value)

    def options(self, *args: str) -> None:
        """Any OPTIONS: the methods the path takes; to a browser's CORS preflight (with
        ``Origin`` and ``Access-Control-Request-Method``), leave to send them from any origin
        with whatever headers it asked about. No key needed: a preflight never has one."""
        methods = allowed_methods(type(self))
        self.set_status(204)
        self.set_header("Allow", methods)
        headers = self.request.headers
        if self.cors and "Origin" in headers and "Access-Control-Request-Method" in headers:
            self.set_header("Access-Control-Allow-Methods", methods)
            if "Access-Control-Request-Headers" in headers:
                asked = headers["Access-Control-Request-Headers"]
                self.set_header("Access-Control-Allow-Headers", asked)
            self.set_header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE)
        self._id_headers()
        self.finish()

    def _method_error(self) -> MethodNotAllowedError:
        return MethodNotAllowedError(
            f"Method {self.request.method} is not allowed on {self.request.path}",
            headers={"Allow": allowed_methods(type(self))},
        )

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Tornado-level failures (405, internal errors) in the dialect's envelope."""
        err: GatewayError
        if status_code == 405:
            err = self._method_error()
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
    ``/v1/messages/count_tokens``, ``/v1/embeddings``."""

    def initialize(  # type: ignore[override]
        self, services: Services, gateway: Gateway, dialect: str, endpoint: str
    ) -> None:
        super().initialize(services, gateway, dialect)
        self.endpoint = endpoint
        self._chunks: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._decoder: BodyDecoder | None = None
        # What `post` answers instead of calling the gateway, once the body is read (a
        # 415, a compressed body that does not decompress).
        self._refusal: GatewayError | None = None
        self._answered = False  # refused before its body was read (a key that is not valid)

    async def prepare(self) -> None:
        method = self.request.method
        if method != "POST":
            if method != "OPTIONS":
                # Refused here rather than by tornado's `write_error`: recorded like any other.
                refused = await self.gateway.reject(self._request(b""), self._method_error())
                self._write_plain(refused)
            return
        headers = self.request.headers
        limit = self.services.settings.max_body_bytes
        length = headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > limit:
            self._too_large = True
            self._refuse_unread()
            self._write_plain(await self.gateway.reject(self._request(b""), self._payload_error()))
            return
        framed = length is None or length.isdigit()  # else Tornado's 400 comes first
        if framed and (length is None or int(length) > PEEK_LIMIT or "Content-Encoding" in headers):
            # A body that may be large (or decompress to it) is read only for a valid key,
            # as on the lean path (`ApiCall._key_before_body`).
            try:
                await self.services.authenticate_headers(headers)
            except GatewayError as err:
                self._answered = True
                self._refuse_unread()
                self._write_plain(await self.gateway.reject(self._request(b""), err))
                return
        # A chunked body's size shows only as it arrives: `data_received` discards what is
        # over the limit and `post` answers 413, so tornado's own cap (a bare 400) sits above.
        cap = limit + 1 if length is not None else 2 * limit + 1
        self.request.connection.set_max_body_size(cap)  # type: ignore[union-attr]
        if "Content-Encoding" in headers:
            coding = headers["Content-Encoding"]
            name = coding.strip().lower()
            if name in BodyDecoder.CODINGS:
                self._decoder = BodyDecoder(name)
            elif name not in ("", "identity"):
                self._refusal = _unsupported_coding(coding)

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
        if self._answered:
            return None
        if self._refusal is not None:
            return None  # read to its end (the connection stays usable), then refused
        if self._decoder is not None:
            if self._too_large:
                return None
            # The limit holds for the body decompressed (what a gzip bomb would fill).
            room = self.services.settings.max_body_bytes - self._size
            try:
                chunk = self._decoder.feed(chunk, room)
            except zlib.error as exc:
                self._chunks = []
                self._refusal = self._decoder.error(exc)
                return None
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
            self._refuse_unread()
            self._write_plain(await self.gateway.reject(self._request(b""), self._payload_error()))

    def _refuse_unread(self) -> None:
        """The 413 goes out before the body is read, and the connection closes after it:
        what the client still sends is drained for a while (as nginx's lingering close), so
        a client that sends its whole body before reading (urllib, curl) gets the 413, not a
        reset."""
        conn = self.request.connection
        if isinstance(conn, LeanConnection) and conn._lean is not None:
            conn._lean.linger = True

    async def post(self) -> None:
        if self._answered:
            return
        if self._too_large:
            if not self._finished:
                refused = await self.gateway.reject(self._request(b""), self._payload_error())
                self._write_plain(refused)
            return
        if self._decoder is not None and self._refusal is None:
            try:
                self._decoder.finish()
            except zlib.error as exc:
                self._refusal = self._decoder.error(exc)
        if self._refusal is not None:
            self._write_plain(await self.gateway.reject(self._request(b""), self._refusal))
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
            # The client went away (the gateway has recorded it and closed the upstream
            # call), or shutdown's grace is over: then the client is told.
            if self.services.stopping:
                self._cut_by_shutdown()
            return
        finally:
            if reply is not None and reply.after is not None:
                await reply.after()
            if self._task is not None:
                self.services.inflight.discard(self._task)

    def _cut_by_shutdown(self) -> None:
        """As `app.handlers.lean.ApiCall._cut_by_shutdown`: a 529/503 for an answer not
        begun, the error event and the end for a stream, a Responses stream closed."""
        err = shutdown_error()
        try:
            if not self._headers_written:
                self._write_plain(error_reply(self.dialect, err, self.request_id))
            elif self.endpoint == "responses":
                self.request.connection.close()  # type: ignore[union-attr]
            elif not self._finished:
                self.write(stream_error_bytes(self.dialect, err))
                self.finish()
        except StreamClosedError:
            pass


def _unsupported_coding(coding: str) -> UnsupportedMediaTypeError:
    """A 415 (RFC 9110 §15.5.16), with the codings that would do in ``Accept-Encoding``."""
    return UnsupportedMediaTypeError(
        f"Content-Encoding {coding[:100]!r} is not supported: send the body uncompressed, "
        "or compressed with gzip or deflate.",
        headers={"Accept-Encoding": "gzip, deflate"},
    )


class BodyDecoder:
    """A ``Content-Encoding: gzip`` or ``deflate`` request body, decompressed as it comes.

    ``deflate`` is the zlib format (RFC 9110 §8.4.1.2); the raw deflate some clients send
    for it is taken too. A gzip body may hold several members (RFC 1952 §2.2).
    """

    CODINGS = ("gzip", "x-gzip", "deflate")

    # Gzip members one body may hold: clients send one; each member after the first costs a
    # copy of the rest of the chunk (zlib's ``unused_data``), so thousands of tiny members
    # in one chunk held the event loop for seconds (before any key was checked).
    MAX_MEMBERS = 16

    def __init__(self, coding: str) -> None:
        self.coding = "deflate" if coding == "deflate" else "gzip"
        # Made at the first two bytes, which show deflate's form; again for each gzip member.
        self._zlib: zlib._Decompress | None = None
        self._head = b""  # a first byte alone, until the second comes
        self._members = 0

    def feed(self, data: bytes, room: int) -> bytes:
        """``data`` decompressed, cut at ``room`` + 1 bytes (more than ``room``: the body is
        over the limit, and no more of it is made); `zlib.error` for data not in the coding."""
        out: list[bytes] = []
        made = 0
        while data:
            if self._zlib is None:
                data = self._head + data
                if len(data) < 2:
                    self._head = data
                    break
                self._head = b""
                self._members += 1
                if self._members > self.MAX_MEMBERS:
                    raise zlib.error(f"more than {self.MAX_MEMBERS} gzip members")
                self._zlib = zlib.decompressobj(self._wbits(data))
            decoder = self._zlib
            piece = decoder.decompress(data, room + 1 - made)
            out.append(piece)
            made += len(piece)
            if made > room:
                break
            data = decoder.unconsumed_tail
            if decoder.eof and decoder.unused_data:
                if self.coding != "gzip":
                    raise zlib.error("data after the end of the compressed body")
                data = decoder.unused_data
                self._zlib = None  # another gzip member
        return b"".join(out)

    def finish(self) -> None:
        """`zlib.error` when the body ended before its compressed data did."""
        if self._head or (self._zlib is not None and not self._zlib.eof):
            raise zlib.error("the compressed body is cut short")

    def error(self, exc: zlib.error) -> InvalidRequestError:
        return InvalidRequestError(f"Request body is not valid {self.coding} data: {exc}")

    def _wbits(self, data: bytes) -> int:
        if self.coding == "gzip":
            return 16 + zlib.MAX_WBITS
        # A zlib header: compression method 8 and a check value (RFC 1950 §2.2).
        zlib_form = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
        return zlib.MAX_WBITS if zlib_form else -zlib.MAX_WBITS


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

    async def _backend_names(self, key: KeyRecord, listed: list[str]) -> list[str]:
        """The names glob routes (and a default upstream) pass through as they are, from
        their backends' own lists: those the key may use, that no earlier route sends
        elsewhere, not `listed` already. A backend slow to list is left out of this answer
        (its list comes in for the next one)."""
        router = self.services.router
        pairs = [
            (pattern, name)
            for pattern, name in router.listed_by_backends()
            if name in self.services.pool.names()
        ]
        if not pairs:
            return []
        names = list(dict.fromkeys(name for _, name in pairs))
        lists = self.services.model_lists
        fetched = await asyncio.gather(
            *(
                asyncio.wait_for(lists.ids(self.services.pool.get(name)), BACKEND_LIST_SECONDS)
                for name in names
            ),
            return_exceptions=True,
        )
        ids = {
            name: got if isinstance(got, list) else []
            for name, got in zip(names, fetched, strict=True)
        }
        seen = set(listed)
        out: list[str] = []
        for pattern, upstream in pairs:
            for model in ids[upstream]:
                if model in seen or not fnmatchcase(model, pattern) or not key.allows(model):
                    continue
                try:
                    route = router.resolve(model)
                except GatewayError:
                    continue
                if route.upstream == upstream and route.target == model:
                    seen.add(model)
                    out.append(model)
        return out

    async def get(self, model_id: str | None = None) -> None:
        if not self.fixed:
            self.dialect = "anthropic" if "anthropic-version" in self.request.headers else "openai"
        try:
            key = await self._authenticate()
            names = self._names(key)
            names += await self._backend_names(key, names)
            if model_id is not None:
                if not key.allows(model_id):
                    # As for a name that does not exist: a key held to some models learns
                    # nothing of the others (or of the upstreams behind ``name:model``).
                    raise NotFoundError(f"model {model_id!r} not found")
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
    required; without it only loopback clients may read, and only when not ``behind_proxy``.

    Loopback is judged by the socket's peer, never ``request.remote_ip``: with
    ``behind_proxy`` that comes from X-Real-IP / X-Forwarded-For, which a client sets
    itself when the proxy passes them on (``X-Real-IP: 127.0.0.1`` opened this from
    anywhere). Behind a proxy the peer tells nothing either: the proxy's connection
    usually comes from loopback too, carrying every outside client's request. So there
    the token is the only way in (403 without one), while without a proxy
    ``curl localhost:8000/metrics`` keeps working.
    """

    def initialize(self, services: Services) -> None:
        self.services = services

    def get(self) -> None:
        settings = self.services.settings
        token = settings.metrics_token
        if token:
            given = self.request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise tornado.web.HTTPError(401)
        elif settings.behind_proxy:
            raise tornado.web.HTTPError(403, "behind_proxy: /metrics needs metrics_token")
        elif self._peer_ip() not in ("127.0.0.1", "::1"):
            raise tornado.web.HTTPError(403)
        self.set_header("Content-Type", METRICS_CONTENT_TYPE)
        self.finish(self.services.metrics.render())

    def _peer_ip(self) -> str:
        """The connected socket's address, whatever forwarded headers say."""
        address = getattr(getattr(self.request.connection, "context", None), "address", None)
        return str(address[0]) if isinstance(address, tuple) and address else ""


class HelloHandler(tornado.web.RequestHandler):
    """Claude Code warms its connection with ``HEAD /api/hello``."""

    def head(self) -> None:
        self.set_status(200)

    def get(self) -> None:
        self.finish({"status": "ok"})


class NotFoundHandler(BaseApiHandler):
    """Unknown paths: 404 in the dialect the path or headers suggest; recorded in the usage
    trail when it is an API path (`is_api_path`)."""

    def initialize(self, services: Services, gateway: Gateway, dialect: str | None = None) -> None:
        super().initialize(services, gateway, dialect)
        self.dialect = guess_dialect(self.request)
        self.cors = not is_dashboard_path(self.request.path)

    async def prepare(self) -> None:
        request = self.request
        says = f"No such endpoint: {request.method} {request.path}"
        err = NotFoundError(says, code="unknown_url")
        if self.gateway is not None and is_api_path(request.path):
            req = ApiRequest(self.dialect, "unknown", b"", request.headers, self.request_id)
            reply = await self.gateway.reject(req, err)
        else:
            reply = error_reply(self.dialect, err, self.request_id)
        self._write_plain(reply)
