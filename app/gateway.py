"""The one pipeline every API request goes through.

authenticate -> limit -> route -> translate -> call upstream (rotate keys, fail
over) -> translate back -> account. Handlers hand it the raw body and headers
and write back the `Reply` it returns; every failure becomes an error in the
client's dialect, before the first byte as a status and envelope, after it as an
in-stream error event. Exactly one usage event is recorded per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

from app.accounting import Admission
from app.auth import KeyRecord
from app.db.usage import UsageRecord
from app.dialects import anthropic as anthropic_dialect
from app.dialects import embeddings as embeddings_dialect
from app.dialects import openai as openai_dialect
from app.dialects.ratelimits import backend_limit_headers
from app.dialects.sse import (
    ANTHROPIC_PING,
    OPENAI_KEEPALIVE,
    anthropic_event,
    openai_chunk,
)
from app.dialects.tokens import estimate_anthropic_input, estimate_openai_input
from app.dialects.usage import Usage, from_anthropic, from_openai
from app.errors import (
    GatewayError,
    InternalError,
    InvalidRequestError,
    OverloadedError,
    RateLimitedError,
    UnauthorizedError,
    UpstreamError,
    UpstreamTimeoutError,
    answer_error,
    from_upstream_status,
    nested_too_deeply,
)
from app.routing import Route
from app.secretbox import redact, redact_text, redactable
from app.services import Services
from app.silence import SilenceWatch
from app.translate import anthropic_to_openai as a2o
from app.translate import anthropic_to_openai_stream as a2o_stream
from app.translate import openai_to_anthropic as o2a
from app.translate import openai_to_anthropic_stream as o2a_stream
from app.translate import responses_answer, responses_request, route_settings
from app.translate.options import REPLAYED, BackendOptions, adaptive_thinking
from app.translate.passthrough import (
    AnthropicSniffer,
    OpenAISniffer,
    is_error_envelope,
    strip_refused_thinking,
    strip_unsigned_thinking,
)
from app.translate.refused_params import budget_refused, refused_params, without_refused
from app.translate.relay_pipeline import RelayPipeline
from app.translate.responses_context import ResponsesContext
from app.translate.responses_input import tool_media_moved
from app.translate.responses_sse import ResponsesSSE
from app.translate.stream_pipeline import StreamPipeline
from app.upstreams.base import UpstreamResponse, html_error_summary, retry_after_seconds
from app.upstreams.pool import Upstream

log = logging.getLogger("bridgekeeper.gateway")

HEARTBEAT_SECONDS = 15.0
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"


@dataclass(slots=True)
class ApiRequest:
    """One API call as the handler received it."""

    dialect: str  # "anthropic" | "openai": the client's dialect, from the endpoint
    # "messages" | "chat" | "count_tokens" | "responses" (OpenAI's Responses API: served as a
    # chat request, its answer turned back into a Response) | "embeddings"
    endpoint: str
    body: bytes
    headers: Mapping[str, str]
    request_id: str


@dataclass(slots=True)
class Reply:
    """What the handler writes: a whole body, or a stream of already-framed bytes."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None
    # Work for once the reply is written (a whole answer's usage record: not on the
    # client's critical path). The writer awaits it whether or not the write succeeded.
    after: Callable[[], Awaitable[None]] | None = None


class LastChunk(bytes):
    """A stream's final bytes: nothing follows them (the writer ends the body with them)."""

    __slots__ = ()


@dataclass(slots=True)
class _Call:
    """The bookkeeping of one request, turned into its usage event at the end."""

    req: ApiRequest
    started: float
    key: KeyRecord | None = None
    admission: Admission | None = None
    model: str | None = None
    route: Route | None = None
    upstream: str | None = None
    upstream_key: str | None = None
    secret: str | None = None  # the upstream key in use, masked wherever an answer echoes it
    target: str | None = None
    stream: bool = False
    usage: Usage = field(default_factory=Usage)
    ttft: float | None = None
    recorded: bool = False
    responses: ResponsesContext | None = None  # a Responses API request, run as a chat one
    sent: bool = False  # went to an upstream: refused before, it used no tokens


# The usage trail's name columns hold this much (a client may send any model name).
NAME_LIMIT = 200


def _clipped(name: str | None) -> str | None:
    return name[:NAME_LIMIT] if name is not None and len(name) > NAME_LIMIT else name


# A request refused before its body is read as the gateway's (a key that is not valid) has
# its model looked up for the usage trail when its body is at most this large: parsing 32
# MiB for a caller without a key would hand anyone a cheap way to spend the CPU.
PEEK_LIMIT = 256 * 1024


def named_model(body: bytes) -> str | None:
    """The ``model`` a request body names, for its usage row; None when it names none, is
    not JSON or is over `PEEK_LIMIT`."""
    if len(body) > PEEK_LIMIT:
        return None
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    model = parsed.get("model") if type(parsed) is dict else None
    return model if type(model) is str else None


def _dialect_module(dialect: str) -> Any:
    return anthropic_dialect if dialect == "anthropic" else openai_dialect


def error_reply(
    dialect: str, err: GatewayError, request_id: str, extra: Mapping[str, str] | None = None
) -> Reply:
    """``err`` as a JSON error response in ``dialect``, with retry headers: the
    same-dialect backend's own answer when it carries one (`GatewayError.upstream_reply`:
    its status and body as they came, ``insufficient_quota`` staying itself)."""
    headers = {"Content-Type": JSON_TYPE}
    headers.update(extra or {})
    headers.update(err.headers)
    if err.retry_after is not None:
        headers["retry-after"] = str(max(int(err.retry_after + 0.999), 1))
        headers["retry-after-ms"] = str(max(int(err.retry_after * 1000), 1))
    if err.upstream_reply is not None:
        status, body = err.upstream_reply
        return Reply(status, headers, body)
    module = _dialect_module(dialect)
    return Reply(
        status=module.error_status(err),
        headers=headers,
        body=orjson.dumps(module.error_body(err, request_id)),
    )


def shutdown_error() -> OverloadedError:
    """What a request still running when shutdown's grace is over is told (a 529 or 503,
    or the stream's error event): an overload, which every SDK retries."""
    return OverloadedError(
        "The gateway shut down before the answer was complete; retry the request.",
        retry_after=1,
    )


def stream_error_bytes(dialect: str, err: GatewayError) -> bytes:
    """``err`` as the in-stream error event of ``dialect`` (the stream's last)."""
    if dialect == "anthropic":
        return anthropic_event("error", anthropic_dialect.error_event(err))
    return openai_chunk({"error": openai_dialect.error_object(err)})


def _passthrough_error(status: int, body: bytes, retry_after: float | None) -> GatewayError:
    """For deciding rotation, the usage record, and the client's envelope when the body is
    not already in it (`Gateway._relay_error`)."""
    message = body[:300].decode("utf-8", "replace")
    try:
        data = orjson.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(error, str) and error:
            message = error  # Ollama, llama.cpp's older server
        elif isinstance(data, dict) and "detail" in data:
            message = str(data["detail"])[:1000]  # FastAPI's validation errors
    except orjson.JSONDecodeError:
        pass
    return from_upstream_status(status, message, retry_after=retry_after)


async def _as_responses(chat: AsyncIterator[bytes], ctx: ResponsesContext) -> AsyncIterator[bytes]:
    """A chat stream (the gateway's answer to a chat client) as Responses API events."""
    events = ResponsesSSE(ctx)
    ended = False
    try:
        async for chunk in chat:
            # After the last event the chat stream is still read to its own end, which
            # records its usage (closing it early would record the request as abandoned).
            if ended:
                continue
            out = events.feed(chunk)
            if events.done or isinstance(chunk, LastChunk):
                ended = True
                yield LastChunk(out + events.finish())
            elif out:
                yield out
        if not ended:
            yield LastChunk(events.finish())
    finally:
        await chat.aclose()  # type: ignore[attr-defined]


class _Opened:
    """An upstream stream whose first piece was already read (to fail over on an early break),
    with the watch that notices its silences."""

    __slots__ = ("_resp", "first", "status", "headers", "watch", "read_chunk")

    def __init__(self, resp: UpstreamResponse, first: bytes | None, watch: SilenceWatch) -> None:
        self._resp = resp
        self.first = first  # None when the upstream said nothing for a heartbeat
        self.status = resp.status
        self.headers = resp.headers
        self.watch = watch
        # The response's own reader: no wrapper coroutine on every chunk's way.
        self.read_chunk: Callable[[], Awaitable[bytes]] = resp.read_chunk

    async def read(self) -> bytes:
        return (self.first or b"") + await self._resp.read()

    def close(self, *, complete: bool = False) -> None:
        """Stop watching; ``complete``: the answer ended as it should, so its connection
        is kept for the next request (else it is closed, which also stops the upstream)."""
        self.watch.close()
        if complete:
            self._resp.release()
        else:
            self._resp.close()


async def _open_stream(resp: UpstreamResponse) -> _Opened:
    """Wait (up to one heartbeat) for a stream's first bytes.

    UpstreamError when the upstream breaks or ends before sending anything, or answers
    with a JSON body instead of a stream; a slow
    first byte is not an error: the stream is committed to and heartbeats cover it,
    until the upstream's timeout passes without a byte (then UpstreamTimeoutError).
    """
    kind = resp.headers.get("content-type", "")
    if kind.startswith("application/json"):
        # A backend that ignored "stream": true (or a JSON error with a 2xx): no stream
        # to relay, and nothing reached the client yet, so another key may answer.
        resp.close()
        raise UpstreamError(
            'upstream answered a stream request with a whole JSON body (it ignored "stream": true)'
        )
    limit = resp.timeout
    watch = SilenceWatch(
        HEARTBEAT_SECONDS,
        limit,
        lambda: UpstreamTimeoutError(f"upstream sent nothing for {limit:g} s mid-stream"),
        resp.read_error,
    )
    try:
        first = await watch.read(resp.read_chunk)
    except BaseException:
        watch.close()
        raise
    if first == b"":
        watch.close()
        raise UpstreamError("upstream ended the stream before sending anything")
    return _Opened(resp, first, watch)


class _Attempt:
    """One prepared try: an upstream, the body in its dialect, and how to read its answer."""

    __slots__ = (
        "upstream",
        "route",
        "dialect",
        "endpoint",
        "body",
        "ctx",
        "translated",
        "parsed",
        "stale",
    )

    def __init__(
        self,
        upstream: Upstream,
        route: Route,
        dialect: str,
        endpoint: str,
        body: bytes,
        ctx: Any,
        translated: bool,
        parsed: dict[str, Any],
    ) -> None:
        self.upstream = upstream
        self.route = route
        self.dialect = dialect
        self.endpoint = endpoint  # the upstream's (`Upstream.send`)
        self.body = body
        self.ctx = ctx
        self.translated = translated
        self.parsed = parsed
        self.stale = False  # to be translated again (what the upstream takes has changed)


# How `Gateway._try_routes` makes a route's request for its upstream, and reads a whole
# answer: the endpoint's own (chat's, or embeddings'). Passed as the class's functions, not
# bound methods, so a request makes no method objects for them.
_Prepare = Callable[["Gateway", _Call, dict[str, Any], Route, Upstream, int], _Attempt]
_ReadWhole = Callable[["Gateway", _Call, _Attempt, UpstreamResponse], Awaitable[Reply]]


class Gateway:
    """Serves API requests with the shared services."""

    def __init__(self, services: Services, *, perf_clock: Any = time.perf_counter) -> None:
        self.services = services
        self._perf = perf_clock
        # Optional fields each (upstream, model) refused: left out of its requests from then
        # on, rather than a refused request and a second one every time.
        self._refused: dict[tuple[str, str], frozenset[str]] = {}
        # (upstream, model) that refused a thinking budget: asked adaptively from then on.
        self._budgets_refused: set[tuple[str, str]] = set()
        # The endpoints with a pipeline of their own; every other one is `handle`'s. One
        # look-up whatever their number: a chat request pays nothing for them.
        self._entries: dict[str, Callable[[ApiRequest], Awaitable[Reply]]] = {
            "count_tokens": self.count_tokens,
        }

    # -- entry points ------------------------------------------------------------------------

    def answer(self, req: ApiRequest) -> Awaitable[Reply]:
        """The reply to ``req``, whichever proxy endpoint it came to."""
        entry = self._entries.get(req.endpoint)
        return self.handle(req) if entry is None else entry(req)

    async def handle(self, req: ApiRequest) -> Reply:
        """A Messages, Chat Completions or Responses request, streamed or not, or an
        embeddings request (`_embed`)."""
        call = _Call(req=req, started=self._perf())
        try:
            if req.endpoint == "embeddings":
                return await self._embed(call)
            return await self._handle(call)
        except GatewayError as err:
            await self._record(call, err)
            return error_reply(req.dialect, err, req.request_id, self._limit_headers(call))
        except asyncio.CancelledError:
            await self._record(call, None, status="client_closed", http_status=499)
            raise
        except Exception as exc:
            return await self._unexpected(call, exc)

    async def count_tokens(self, req: ApiRequest) -> Reply:
        """``POST /v1/messages/count_tokens``: the backend's own count, or a local estimate."""
        call = _Call(req=req, started=self._perf())
        try:
            body = await self._authenticate_and_parse(call, count_tokens=True)
            route = self._route(call, body["model"])
            upstream = self.services.pool.get(route.upstream)
            call.upstream = upstream.name
            count = await self._count(upstream, route, body, req)
            await self._record(call, None)
            return Reply(200, {"Content-Type": JSON_TYPE}, orjson.dumps({"input_tokens": count}))
        except GatewayError as err:
            await self._record(call, err)
            return error_reply(req.dialect, err, req.request_id)
        except asyncio.CancelledError:
            await self._record(call, None, status="client_closed", http_status=499)
            raise
        except Exception as exc:
            return await self._unexpected(call, exc)

    async def _unexpected(self, call: _Call, exc: Exception) -> Reply:
        """An exception that is not a `GatewayError`: a 500 with the traceback in the log,
        but for JSON nested deeper than orjson writes (254 levels; it reads 1,024), which
        is the client's to fix: a 400 (an upstream answer nested so deep is a 502, raised
        where the answer is written: `answer_error`)."""
        req = call.req
        err: GatewayError
        if nested_too_deeply(exc):  # the answer's nesting is caught where it is written
            err = InvalidRequestError(
                "The request's JSON is nested too deeply: at most 254 levels of objects and "
                "arrays are accepted."
            )
        else:
            log.exception("request %s failed inside the gateway", req.request_id)
            err = InternalError(f"internal error: {type(exc).__name__}")
        await self._record(call, err)
        return error_reply(req.dialect, err, req.request_id)

    async def reject(self, req: ApiRequest, err: GatewayError) -> Reply:
        """A request refused before the gateway read its body (a 413, 415, 404, 405, a body
        that does not decompress), recorded like any other."""
        await self.record_refusal(req, err)
        return error_reply(req.dialect, err, req.request_id)

    async def record_refusal(self, req: ApiRequest, err: GatewayError) -> None:
        """The usage row of a request refused without the gateway (`reject`'s; the HTTP
        layer's 408, 431 and 400, whose answer it has written itself): the key its headers
        carry, if a valid one, and ``err``."""
        call = _Call(req=req, started=self._perf())
        try:
            call.key = await self.services.authenticate_headers(req.headers)
        except GatewayError:
            pass
        await self._record(call, err)

    # -- the pipeline ------------------------------------------------------------------------

    async def _authenticate_and_parse(
        self,
        call: _Call,
        *,
        count_tokens: bool = False,
        validate: Callable[[Any], Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The request's body, its key authenticated and allowed its model; ``validate``:
        the endpoint's own check of the body (embeddings'), else chat's or messages'."""
        req = call.req
        try:
            call.key = await self.services.authenticate_headers(req.headers)
        except GatewayError:
            call.model = named_model(req.body)  # the usage row says what was asked for
            raise
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequestError(f"Request body is not valid JSON: {exc}") from None
        if type(body) is dict and type(model := body.get("model")) is str:
            call.model = model  # recorded even when the body is refused below
        if validate is not None:
            validate(body)
        else:
            if req.endpoint == "responses":
                body, call.responses = responses_request.translate_request(body)
                req.body = orjson.dumps(body)  # what a chat client would have sent
            if req.dialect == "anthropic":
                anthropic_dialect.validate_request(body, count_tokens=count_tokens)
                anthropic_dialect.validate_content(body)
            elif call.responses is None:
                openai_dialect.validate_request(body)
                openai_dialect.validate_content(body)
            else:
                try:
                    openai_dialect.validate_request(body)
                    openai_dialect.validate_content(body)
                except InvalidRequestError as err:
                    responses_request.blame_input(err, call.responses)
                    raise
        call.model = body["model"]
        call.stream = bool(body.get("stream")) and not count_tokens
        call.key.check_model(body["model"])
        return body  # type: ignore[no-any-return]

    def _route(self, call: _Call, model: str) -> Route:
        route = self.services.router.resolve(model)
        call.route = route
        call.upstream = route.upstream
        call.target = route.target
        return route

    async def _handle(self, call: _Call) -> Reply:
        req = call.req
        body = await self._authenticate_and_parse(call)
        route = self._route(call, body["model"])
        if req.dialect == "anthropic":
            estimate = estimate_anthropic_input(body)
        else:
            estimate = estimate_openai_input(body)
        call.usage = Usage(input_tokens=estimate, estimated=True)
        assert call.key is not None
        call.admission = self.services.limiter.admit(call.key, estimate, req.dialect)

        routes = [route] + self._fallback_routes(route, call.key)
        return await self._answer_from(
            call, body, routes, estimate, Gateway._prepare, Gateway._whole_reply
        )

    async def _answer_from(
        self,
        call: _Call,
        body: dict[str, Any],
        routes: list[Route],
        estimate: int,
        prepare: _Prepare,
        read: _ReadWhole,
    ) -> Reply:
        """The first reply of `routes` (`_try_routes`), else the error that ended them."""
        reply, last_error, soonest = await self._try_routes(
            call, body, routes, estimate, False, prepare, read
        )
        if reply is None and last_error is None and soonest is not None:
            # No key could be tried: all are cooling down. Those a failure cooled (a 5xx, a
            # timeout) are tried all the same: their cooldown is to send requests to other
            # keys first, not to turn one upstream error into seconds of refusals. Keys a
            # 429 cooled stay out until their retry-after.
            reply, last_error, soonest = await self._try_routes(
                call, body, routes, estimate, True, prepare, read
            )
        if reply is None:
            raise self._exhausted(last_error, soonest)
        return reply

    async def _embed(self, call: _Call) -> Reply:
        """`_handle` for an embeddings request: no translation (OpenAI-dialect backends
        only, a route to another refused with a 400), no per-model chat settings, never a
        stream; the answer relayed as it came."""
        body = await self._authenticate_and_parse(
            call, validate=embeddings_dialect.validate_request
        )
        call.stream = False  # whatever a ``stream`` field says: this API has no streams
        route = self._route(call, body["model"])
        refusal = self._no_embeddings(route)
        if refusal is not None:
            raise refusal
        request = cast(embeddings_dialect.EmbeddingsRequest, body)
        estimate = embeddings_dialect.estimate_input(request)
        call.usage = Usage(input_tokens=estimate, estimated=True)
        assert call.key is not None
        call.admission = self.services.limiter.admit(call.key, estimate, call.req.dialect)
        fallbacks = self._fallback_routes(route, call.key)
        routes = [route] + [r for r in fallbacks if self._no_embeddings(r) is None]
        return await self._answer_from(
            call, body, routes, estimate, Gateway._prepare_embeddings, Gateway._embeddings_reply
        )

    def _no_embeddings(self, route: Route) -> InvalidRequestError | None:
        """The 400 for a route whose upstream has no embeddings API (Anthropic's); None
        when it has one, or is not defined (which fails as it does for chat)."""
        try:
            upstream = self.services.pool.get(route.upstream)
        except GatewayError:
            return None
        if upstream.serves("embeddings"):
            return None
        return InvalidRequestError(
            f"Model {route.requested!r} is routed to upstream {upstream.name!r}, an "
            f"{upstream.kind.capitalize()} backend, which has no embeddings API: route "
            "embedding models to an OpenAI-compatible upstream (OpenAI, vLLM, Ollama, "
            "llama.cpp).",
            param="model",
        )

    async def _try_routes(
        self,
        call: _Call,
        body: dict[str, Any],
        routes: list[Route],
        estimate: int,
        last_resort: bool,
        prepare: _Prepare,
        read: _ReadWhole,
    ) -> tuple[Reply | None, GatewayError | None, float | None]:
        """Each route's upstream keys in turn until one answers: its reply, else None with
        the last failure and the soonest a cooling key is back (``last_resort``: only the
        keys a failure cooled). A client's own mistake is raised, or relayed as it came.
        ``prepare`` makes each route's request, ``read`` reads a whole answer: the
        endpoint's own (`_prepare` and `_whole_reply` for chat and messages)."""
        req = call.req
        last_error: GatewayError | None = None
        soonest: float | None = None
        for candidate in routes:
            try:
                upstream = self.services.pool.get(candidate.upstream)
            except GatewayError as err:
                last_error = err
                continue
            attempt = prepare(self, call, body, candidate, upstream, estimate)
            again = True
            while again:
                again = False
                if attempt.stale:
                    attempt = prepare(self, call, body, candidate, upstream, estimate)
                for key in upstream.ring.candidates(last_resort=last_resort):
                    call.upstream = upstream.name
                    call.upstream_key = key.display or None
                    call.secret = key.secret
                    call.target = candidate.target
                    call.route = candidate
                    call.sent = True
                    try:
                        resp = await upstream.send(
                            attempt.endpoint,
                            attempt.body,
                            key,
                            stream=call.stream,
                            client_headers=req.headers if req.dialect == "anthropic" else None,
                            parsed=attempt.parsed,
                            client_dialect=req.dialect,
                        )
                    except UpstreamError as exc:
                        upstream.ring.mark_failed(key, exc.message)
                        last_error = exc
                        continue
                    if resp.status < 400:
                        if call.stream:
                            try:
                                opened = await _open_stream(resp)
                            except UpstreamError as exc:
                                # Broke before its first byte: nothing reached the client yet,
                                # so the next key may still answer.
                                resp.close()
                                upstream.ring.mark_failed(key, exc.message)
                                last_error = exc
                                continue
                            upstream.ring.mark_success(key)
                            # A stream may stay open for minutes: keep only what reading it needs,
                            # not the request in three forms (raw, parsed, re-encoded; Claude Code
                            # sends ~120 KB a turn, several times that as Python objects).
                            req.body = attempt.body = b""
                            attempt.parsed = {}
                            return self._stream_reply(call, attempt, opened), None, None
                        try:
                            reply = await read(self, call, attempt, resp)
                        except UpstreamError as exc:
                            # Cut or late mid-body, or not JSON: nothing reached the client.
                            upstream.ring.mark_failed(key, exc.message)
                            last_error = exc
                            continue
                        upstream.ring.mark_success(key)
                        return reply, None, None
                    err_body = redact(await resp.read(), key.secret)
                    retry_after = retry_after_seconds(resp.headers)
                    failure = self._upstream_error(attempt, resp.status, err_body, retry_after)
                    verdict = resp.headers.get("x-should-retry")
                    if verdict in ("true", "false"):
                        failure.headers["x-should-retry"] = verdict  # the SDKs obey it
                    if not attempt.translated and call.responses is None:
                        if is_error_envelope(req.dialect, err_body):
                            failure.upstream_reply = (resp.status, err_body)
                    if resp.status == 429:
                        upstream.ring.mark_rate_limited(key, retry_after, failure.message)
                    elif resp.status == 403:
                        # Not allowed for this request (a model, a beta, a region): the key
                        # stays on; another key, or a fallback, may be allowed. The
                        # client sees the backend's own refusal if none is.
                        upstream.ring.mark_refused(key, failure.message)
                    elif resp.status == 401:
                        upstream.ring.mark_rejected(key, resp.status, failure.message)
                        # The client's key never goes upstream: this is the gateway's key, and a
                        # 401 would send the client (Claude Code: "please log in") the wrong way.
                        failure = UpstreamError(
                            f"upstream {upstream.name!r} rejected the gateway's API key "
                            f"(HTTP {resp.status}): {failure.message}"
                        )
                    elif resp.status >= 500 or resp.status == 408:
                        upstream.ring.mark_failed(key, failure.message)
                    else:
                        # The client's own mistake: another key or upstream would say the same,
                        # unless it refused what the request means the same without.
                        if self._drop_refused(attempt, upstream, err_body):
                            again = True  # the same request without what was refused
                            break
                        if not attempt.translated:
                            await self._record(call, failure)
                            relayed = self._relay_error(
                                call, resp.status, resp.headers, err_body, failure
                            )
                            return relayed, None, None
                        raise failure
                    last_error = failure
            wait = upstream.ring.soonest_recovery()
            if wait is not None:
                soonest = wait if soonest is None else min(soonest, wait)
        return None, last_error, soonest

    def _drop_refused(self, attempt: _Attempt, upstream: Upstream, err_body: bytes) -> bool:
        """When a 400 refuses what the request means the same without, take it out of
        ``attempt``: True. To an OpenAI backend, optional fields the gateway added or an
        assistant message's null content (`refused_params`, remembered for this upstream
        and model); to an Anthropic one, a thinking budget (remembered, and the attempt
        marked to be translated again adaptively) or thinking whose signature it did not
        make (the history's, for this request)."""
        message = err_body.decode("utf-8", "replace")
        if (
            attempt.dialect == "anthropic"
            and attempt.translated
            and budget_refused(message, attempt.parsed)
        ):
            self._budgets_refused.add((upstream.name, attempt.route.target))
            attempt.stale = True
            log.warning(
                "upstream %r refused a thinking budget for model %r: asked adaptively from now on",
                upstream.name,
                attempt.route.target,
            )
            return True
        if attempt.dialect == "anthropic":
            stripped = strip_refused_thinking(message, attempt.parsed)
            if stripped is None:
                return False
            attempt.parsed = stripped
            attempt.body = orjson.dumps(stripped)
            log.warning(
                "upstream %r refused a thinking signature in the history of a request for %r: "
                "sent again without the history's thinking",
                upstream.name,
                attempt.route.target,
            )
            return True
        dropped = refused_params(message, attempt.parsed) if attempt.translated else ()
        if not dropped:
            return False
        where = (upstream.name, attempt.route.target)
        self._refused[where] = self._refused.get(where, frozenset()).union(dropped)
        without_refused(attempt.parsed, dropped)
        attempt.body = orjson.dumps(attempt.parsed)
        log.warning(
            "upstream %r refused %s for model %r: sent again without it, and so from now on",
            upstream.name,
            ", ".join(dropped),
            attempt.route.target,
        )
        return True

    def _fallback_routes(self, route: Route, key: KeyRecord) -> list[Route]:
        """The route's fallbacks the key may use itself (a key held to cheap models does
        not get an expensive one's answer because the cheap one failed)."""
        out = []
        for name in route.fallbacks:
            if not key.allows(name):
                continue
            try:
                out.append(self.services.router.resolve(name))
            except GatewayError:
                log.warning("fallback model %r of %r does not resolve", name, route.requested)
        return out

    def _exhausted(self, last: GatewayError | None, soonest: float | None) -> GatewayError:
        """Every key of every candidate upstream failed or is cooling down.

        The client gets this request's last real failure (a refused connection stays a
        502, a timeout a 504); only when no key could even be tried does it get a 429
        saying when the first one is back.
        """
        if last is None:
            if soonest is not None:
                return RateLimitedError(
                    "All upstream keys for this model are cooling down; retry later",
                    retry_after=soonest,
                )
            # Nothing is cooling: every key is disabled (or the upstream is gone). Only an
            # admin can fix that, so it is not an overload a client should keep retrying.
            return UpstreamError(
                "No usable upstream key for this model: every key is disabled; "
                "an admin must re-enable or add one"
            )
        if isinstance(last, RateLimitedError | OverloadedError) and soonest is not None:
            last.retry_after = soonest
        return last

    def _options(
        self,
        upstream: Upstream,
        route: Route,
        input_tokens: int = 0,
        *,
        budgets_refused: bool = False,
    ) -> BackendOptions:
        spec = upstream.spec
        settings = route.settings
        quirks = upstream.quirks(route.target)
        return BackendOptions(
            target_model=route.target,
            max_tokens_field=quirks.max_tokens_field or spec.max_tokens_field,
            reasoning=quirks.reasoning or spec.reasoning,
            top_k=spec.top_k,
            chat_template_thinking=spec.chat_template_thinking and quirks.chat_template_kwargs,
            max_stop_sequences=quirks.max_stop_sequences,
            sampling=quirks.sampling,
            mistral_tool_ids=quirks.mistral_tool_ids,
            strict_schema=quirks.strict_schema,
            default_max_tokens=settings.max_tokens or 4096,
            max_tokens_limit=route_settings.output_limit(
                settings.max_tokens, settings.context_window, input_tokens
            ),
            prompt_cache=settings.prompt_cache,
            adaptive_thinking=adaptive_thinking(route.target),
            budgets_refused=budgets_refused,
            input_estimate=input_tokens or None,
        )

    def _prepare(
        self, call: _Call, body: dict[str, Any], route: Route, upstream: Upstream, estimate: int
    ) -> _Attempt:
        client = call.req.dialect
        settings = route.settings
        dialect = upstream.dialect(client)
        endpoint = "messages" if dialect == "anthropic" else "chat"
        if dialect != client:
            # What the translation drops, checked on the client's own body: the route's
            # params, merged in next, are the backend's (service_tier = "flex").
            _dialect_module(client).validate_translated(body)
        applied: dict[str, Any] = {
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            "context_window": settings.context_window,
            "params": settings.params,
            "input_tokens": estimate,
        }
        if client == "anthropic":
            # To an OpenAI backend a capped max_tokens leaves the thinking request whole (it
            # becomes reasoning_effort); Anthropic needs the budget fitted under the cap.
            adjusted = route_settings.apply_anthropic(body, **applied, translated=dialect != client)
        else:
            adjusted = route_settings.apply_openai(body, **applied)
        if dialect == client:
            out = dict(adjusted, model=route.target)
            if client == "anthropic":
                out = strip_unsigned_thinking(out)
            elif call.responses is not None:
                self._fit_responses_chat(out, upstream, route)
            drop_usage = False
            if (
                client == "openai"
                and call.stream
                and not upstream.quirks(route.target).strict_schema
            ):
                options = out.get("stream_options")
                if not (isinstance(options, dict) and options.get("include_usage")):
                    # Ask for usage so it can be accounted; that chunk is not relayed.
                    out["stream_options"] = dict(options or {}, include_usage=True)
                    drop_usage = True
            raw = call.req.body if out == body else orjson.dumps(out)
            return _Attempt(upstream, route, dialect, endpoint, raw, drop_usage, False, out)
        refused_budget = (
            bool(self._budgets_refused) and (upstream.name, route.target) in self._budgets_refused
        )
        opts = self._options(upstream, route, estimate, budgets_refused=refused_budget)
        ctx: Any
        if client == "anthropic":
            translated, ctx = a2o.translate_request(adjusted, opts, fields_checked=True)
        else:
            translated, ctx = o2a.translate_request(adjusted, opts, fields_checked=True)
        route_settings.force_params(translated, settings.params)
        if self._refused:
            without_refused(translated, self._refused.get((upstream.name, route.target), ()))
        return _Attempt(
            upstream, route, dialect, endpoint, orjson.dumps(translated), ctx, True, translated
        )

    def _prepare_embeddings(
        self, call: _Call, body: dict[str, Any], route: Route, upstream: Upstream, estimate: int
    ) -> _Attempt:
        """An embeddings request for ``route``: the client's body with the route's target
        model, nothing else changed (the route's chat settings do not apply)."""
        out = dict(body, model=route.target)
        raw = call.req.body if out == body else orjson.dumps(out)
        return _Attempt(upstream, route, "openai", "embeddings", raw, False, False, out)

    @staticmethod
    def _fit_responses_chat(out: dict[str, Any], upstream: Upstream, route: Route) -> None:
        """A Responses request's chat body, fitted to the OpenAI backend it goes to as is:
        its token limit under the name the backend takes; earlier thinking sent back only
        as the upstream's ``reasoning`` setting says (as for a Messages client), never as
        ``thinking_blocks``, which only the gateway's Anthropic translator reads; a tool
        output's images in a user message after it; no ``stream_options`` where the
        backend refuses fields it does not know."""
        quirks = upstream.quirks(route.target)
        field = upstream.max_tokens_field(route.target)
        if field != "max_completion_tokens" and "max_completion_tokens" in out:
            out[field] = out.pop("max_completion_tokens")
        if quirks.strict_schema:
            out.pop("stream_options", None)
        replay = REPLAYED.get(quirks.reasoning or upstream.spec.reasoning)
        messages = out.get("messages")
        if not isinstance(messages, list):
            return
        fitted = []
        for message in messages:
            if isinstance(message, dict) and (
                "reasoning_content" in message or "thinking_blocks" in message
            ):
                message = dict(message)
                thinking = message.pop("reasoning_content", None)
                message.pop("thinking_blocks", None)
                if replay is not None and thinking:
                    message[replay] = thinking
            fitted.append(message)
        out["messages"] = tool_media_moved(fitted)

    def _upstream_error(
        self, attempt: _Attempt, status: int, body: bytes, retry_after: float | None
    ) -> GatewayError:
        if not attempt.translated:
            err = _passthrough_error(status, body, retry_after)
        elif attempt.dialect == "openai":
            sent = attempt.parsed
            asked = sent.get("max_tokens", sent.get("max_completion_tokens"))
            err = a2o.upstream_error(
                status,
                body,
                retry_after,
                input_tokens=attempt.ctx.input_estimate,
                max_tokens=asked if type(asked) is int else None,
            )
        else:
            err = o2a.upstream_error(status, body, retry_after)
        summary = html_error_summary(status, body)
        if summary is not None:
            err.message = summary
        return err

    def _relay_error(
        self,
        call: _Call,
        status: int,
        headers: Mapping[str, str],
        body: bytes,
        failure: GatewayError,
    ) -> Reply:
        """A same-dialect backend's 4xx, as it came when it is in the client's envelope;
        else (an HTML page, Ollama's ``{"error": "…"}``, FastAPI's ``{"detail": …}``) its
        message in the envelope the client's SDK reads."""
        dialect = call.req.dialect
        if not is_error_envelope(dialect, body):
            return error_reply(dialect, failure, call.req.request_id, self._limit_headers(call))
        if call.responses is not None:
            body = responses_request.blame_error_body(body, call.responses)
        out = {"Content-Type": headers.get("Content-Type", JSON_TYPE)}
        for name in ("retry-after", "retry-after-ms", "x-should-retry"):
            if name in headers:
                out[name] = headers[name]
        out.update(self._answer_limit_headers(call, dialect, headers))
        return Reply(status, out, body)

    def _limit_headers(self, call: _Call) -> Mapping[str, str]:
        """The admission's limit headers (read only: every caller copies them into its own)."""
        return call.admission.headers if call.admission is not None else {}

    def _answer_limit_headers(
        self, call: _Call, backend: str, upstream_headers: Mapping[str, str]
    ) -> Mapping[str, str]:
        """The backend's rate-limit headers in the client's dialect, under the key's own
        (`_limit_headers`), which go over those of the kinds (requests, tokens) it limits."""
        backend_limits = backend_limit_headers(
            upstream_headers, backend, call.req.dialect, self.services.clock()
        )
        if not backend_limits:
            return self._limit_headers(call)
        backend_limits.update(self._limit_headers(call))
        return backend_limits

    # -- answers -----------------------------------------------------------------------------

    async def _whole_reply(self, call: _Call, attempt: _Attempt, resp: UpstreamResponse) -> Reply:
        raw = await resp.read()
        call.ttft = self._perf() - call.started
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("upstream sent a response that is not valid JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError("upstream sent a response that is not a JSON object")
        if attempt.dialect == "anthropic":
            usage = from_anthropic(data.get("usage"))
            if not isinstance(data.get("usage"), dict):
                usage = Usage(input_tokens=call.usage.input_tokens, estimated=True)
        else:
            found = from_openai(data.get("usage"))
            usage = found if found is not None else Usage(call.usage.input_tokens, estimated=True)
        call.usage = usage
        # An Anthropic answer's pieces in the order of its content blocks, which the chat
        # answer's one content string loses and a Response's output items keep.
        parts: list[o2a.AnswerPart] | None = None
        try:
            if attempt.translated:
                if attempt.dialect == "openai":
                    data = a2o.translate_response(data, attempt.ctx)
                else:
                    data, parts = o2a.translate_response_parts(data, attempt.ctx)
                if call.responses is None:
                    raw = orjson.dumps(data)
        except (TypeError, RecursionError) as exc:
            raise answer_error(exc) from None
        if call.responses is not None:
            # A Response echoes the request's tools and settings: nested too deep, they are
            # the request's (`_unexpected`'s 400).
            raw = orjson.dumps(responses_answer.translate_response(data, call.responses, parts))
        headers = {
            "Content-Type": JSON_TYPE,
            **self._answer_limit_headers(call, attempt.dialect, resp.headers),
        }
        return Reply(200, headers, raw, after=functools.partial(self._record, call, None))

    async def _embeddings_reply(
        self, call: _Call, attempt: _Attempt, resp: UpstreamResponse
    ) -> Reply:
        """An embeddings answer relayed as it came; its usage read from its end alone
        (`embeddings_dialect.answer_usage`: the vectors are not parsed)."""
        raw = await resp.read()
        call.ttft = self._perf() - call.started
        if not embeddings_dialect.is_json_object(raw):
            raise UpstreamError("upstream sent a response that is not a JSON object")
        usage = embeddings_dialect.answer_usage(raw)
        call.usage = usage if usage is not None else Usage(call.usage.input_tokens, estimated=True)
        headers = {
            "Content-Type": JSON_TYPE,
            **self._answer_limit_headers(call, attempt.dialect, resp.headers),
        }
        return Reply(200, headers, raw, after=functools.partial(self._record, call, None))

    def _stream_reply(self, call: _Call, attempt: _Attempt, resp: _Opened) -> Reply:
        headers = {
            "Content-Type": SSE_TYPE,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **self._answer_limit_headers(call, attempt.dialect, resp.headers),
        }
        if attempt.translated:
            body = self._translated_stream(call, attempt, resp)
        else:
            body = self._relayed_stream(call, attempt, resp)
        if call.responses is not None:
            body = _as_responses(body, call.responses)
        return Reply(200, headers, stream=body)

    async def _translated_stream(
        self, call: _Call, attempt: _Attempt, resp: _Opened
    ) -> AsyncIterator[bytes]:
        client = call.req.dialect
        if attempt.dialect == "openai":
            translator: Any = a2o_stream.StreamTranslator(attempt.ctx)
        else:
            translator = o2a_stream.StreamTranslator(attempt.ctx)
        pipeline = StreamPipeline(translator, attempt.dialect)
        secret = redactable(call.secret)
        status, err = "ok", None
        ended = False
        pending: bytes | None = resp.first
        resp.first = None
        chunk: bytes | None
        watch, read = resp.watch, resp.read_chunk
        try:
            while not (ended or translator.done):
                if pending is not None:
                    chunk, pending = pending, None
                else:
                    chunk = await watch.read(read)
                if chunk is None:
                    out = translator.ping()
                else:
                    ended = not chunk
                    out = pipeline.finish() if ended else pipeline.feed(chunk)
                    if not out:
                        watch.still_quiet()
                if out:
                    if call.ttft is None:
                        call.ttft = self._perf() - call.started
                    data = b"".join(out)
                    if secret is not None and data.find(secret) >= 0:
                        data = redact(data, call.secret)  # an error event echoing the key
                    yield LastChunk(data) if translator.done else data
            if translator.error is not None:
                status, err = "error", translator.error
        except GatewayError as exc:
            # A transport failure mid-stream: if the upstream had already finished its
            # answer, complete it normally; otherwise tell the client what went wrong.
            tail = translator.finish() if not translator.done else []
            if translator.error is not None:
                # The cut stream's own error event, last, gives way to what happened; the
                # block left open is still closed before it (PROTOCOL.md §7.1).
                tail[-1:] = [stream_error_bytes(client, exc)]
                status, err = "error", exc
            if tail:
                yield b"".join(tail)
        except (asyncio.CancelledError, GeneratorExit):
            status = "client_closed"
            raise
        finally:
            resp.close(complete=status == "ok" and translator.done)
            call.usage = translator.usage
            if status != "ok":
                call.usage = pipeline.meter.charge(call.usage)
            await self._record(
                call, err, status=status, http_status=499 if status == "client_closed" else 200
            )

    async def _relayed_stream(
        self, call: _Call, attempt: _Attempt, resp: _Opened
    ) -> AsyncIterator[bytes]:
        client = call.req.dialect
        keepalive = ANTHROPIC_PING if client == "anthropic" else OPENAI_KEEPALIVE
        # attempt.ctx: the gateway asked an OpenAI upstream for usage the client did not.
        relay = RelayPipeline(client, drop_usage=bool(attempt.ctx))
        sniffer, meter = relay.sniffer, relay.meter
        secret = redactable(call.secret)
        status, err = "ok", None
        pending: bytes | None = resp.first
        resp.first = None
        chunk: bytes | None
        watch, read = resp.watch, resp.read_chunk
        try:
            while True:
                if pending is not None:
                    chunk, pending = pending, None
                else:
                    chunk = await watch.read(read)
                if chunk is None:
                    if sniffer.completed or sniffer.error is not None:
                        break  # answered in full; nothing may follow the terminator
                    self._first_byte(call)
                    yield keepalive
                    continue
                ended = not chunk
                if ended:
                    chunk = relay.finish()  # what was held back to drop a usage chunk
                elif sniffer.completed or sniffer.error is not None:
                    continue  # bytes after the terminator are not relayed
                else:
                    chunk = relay.feed(chunk)
                if chunk:
                    self._first_byte(call)
                    if secret is not None and chunk.find(secret) >= 0:
                        chunk = redact(chunk, call.secret)  # an error event echoing the key
                    if sniffer.completed:
                        yield LastChunk(chunk)
                        break  # the rest of the body is drained when the connection is kept
                    yield chunk
                if ended:
                    break
            if sniffer.error is not None:
                status = "error"
                err = from_upstream_status(
                    529 if sniffer.error.get("type") == "overloaded_error" else 502,
                    str(sniffer.error.get("message", "upstream stream error")),
                )
            elif not sniffer.completed:
                status = "error"
                err = UpstreamError("upstream stream ended before completion")
                if isinstance(sniffer, AnthropicSniffer):
                    ended = sniffer.stop_reason is not None
                else:
                    ended = sniffer.finish_reason is not None
                if not ended:
                    # Cut off mid-answer: say so in-band, or the client takes it for the end.
                    yield stream_error_bytes(client, err)
        except GatewayError as exc:
            status, err = "error", exc
            yield stream_error_bytes(client, exc)
        except (asyncio.CancelledError, GeneratorExit):
            status = "client_closed"
            raise
        finally:
            resp.close(complete=status == "ok" and sniffer.completed)
            usage = sniffer.usage
            if isinstance(sniffer, OpenAISniffer) and not sniffer.saw_usage:
                usage = Usage(input_tokens=call.usage.input_tokens, estimated=True)
            if status != "ok":
                if usage.prompt_tokens == 0:  # cut before the upstream said
                    usage.input_tokens, usage.estimated = call.usage.input_tokens, True
                usage = meter.charge(usage)
            call.usage = usage
            await self._record(
                call, err, status=status, http_status=499 if status == "client_closed" else 200
            )

    def _first_byte(self, call: _Call) -> None:
        if call.ttft is None:
            call.ttft = self._perf() - call.started

    # -- count_tokens --------------------------------------------------------------------------

    async def _count(
        self, upstream: Upstream, route: Route, body: dict[str, Any], req: ApiRequest
    ) -> int:
        estimate = estimate_anthropic_input(body)
        spec = upstream.spec
        keys = upstream.ring.candidates()
        if not keys:
            return estimate
        key = keys[0]
        try:
            if spec.kind == "anthropic":
                out = dict(body, model=route.target)
                resp = await upstream.send(
                    "count_tokens",
                    orjson.dumps(strip_unsigned_thinking(out)),
                    key,
                    stream=False,
                    client_headers=req.headers,
                )
                raw = await resp.read()
                if resp.status < 400:
                    count = orjson.loads(raw).get("input_tokens")
                    if isinstance(count, int) and count > 0:
                        return count
                elif 400 <= resp.status < 500 and resp.status not in (401, 403, 404, 429):
                    # Relayed: masked as every other answer is (some backends echo the key).
                    raise _passthrough_error(resp.status, redact(raw, key.secret), None)
            elif spec.kind == "openai" and spec.tokenize_url:
                translated = a2o.count_tokens_request(body, self._options(upstream, route))
                resp = await upstream.tokenize(orjson.dumps(translated), key)
                raw = await resp.read()
                if resp.status < 400:
                    data = orjson.loads(raw)
                    count = data.get("count")
                    if not isinstance(count, int):
                        tokens = data.get("tokens")
                        count = len(tokens) if isinstance(tokens, list) else None
                    if isinstance(count, int) and count > 0:
                        return count
        except (UpstreamError, orjson.JSONDecodeError, AttributeError) as exc:
            log.info("token count from %s failed, using the local estimate: %s", upstream.name, exc)
        return estimate

    # -- accounting ----------------------------------------------------------------------------

    async def _record(
        self,
        call: _Call,
        err: GatewayError | None,
        *,
        status: str | None = None,
        http_status: int | None = None,
    ) -> None:
        if call.recorded:
            return
        call.recorded = True
        if call.key is None and isinstance(err, UnauthorizedError):
            call.key = cast(KeyRecord | None, err.key)  # a revoked or expired key's name
        if status == "client_closed" and self.services.stopping:
            # Cut by the shutdown, not by the client, which was told so (`shutdown_error`).
            err = shutdown_error()
            status = "error"
            if call.ttft is None:  # no byte sent: it got the error whole, else in the stream
                http_status = _dialect_module(call.req.dialect).error_status(err)
            else:
                http_status = 200
        req = call.req
        if status is None:
            if err is None:
                status = "ok"
            elif isinstance(err, RateLimitedError):
                status = "rate_limited"
            else:
                status = "error"
        if http_status is None:
            if err is None:
                http_status = 200
            else:
                http_status = err.upstream_reply[0] if err.upstream_reply else err.status
        if not call.sent:
            call.usage = Usage()  # refused before any upstream saw it (its TPM share back too)
        usage = call.usage
        if call.admission is not None:
            self.services.limiter.settle(call.admission, usage.prompt_tokens + usage.output_tokens)
        error_type = None
        if err is not None:
            error_type = anthropic_dialect.error_type(err)
        elif status == "client_closed":
            error_type = "client_closed"
        record = UsageRecord(
            time=self.services.now(),
            request_id=req.request_id,
            client_dialect=req.dialect,
            endpoint=req.endpoint,
            key_id=call.key.id if call.key else None,
            key_name=call.key.name if call.key else None,
            requested_model=_clipped(call.model),
            upstream=call.upstream,
            upstream_key=call.upstream_key,
            target_model=_clipped(call.target),
            stream=call.stream,
            status=status,
            http_status=http_status,
            error_type=error_type,
            error_message=redact_text(err.message, call.secret)[:1000] if err is not None else None,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
            tokens_estimated=usage.estimated,
            latency_ms=(self._perf() - call.started) * 1000,
            ttft_ms=call.ttft * 1000 if call.ttft is not None else None,
        )
        self.services.metrics.observe(record)
        await self.services.recorder.record(record)
