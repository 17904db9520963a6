"""The live upstreams: one shared aiohttp session and one key ring per upstream.

`UpstreamPool.update` swaps in new definitions (after a config sync or a
dashboard edit) and keeps the live state of keys it already knew, so an edit
does not reset cooldowns or counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from app.errors import NotFoundError
from app.translate.options import NO_QUIRKS, OpenAIQuirks, openai_quirks
from app.upstreams import anthropic as anthropic_kind
from app.upstreams import echo
from app.upstreams import openai as openai_kind
from app.upstreams.base import UpstreamResponse, get_json, post
from app.upstreams.keyring import KeyRing, KeyState


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """An upstream's definition (a row of ``upstreams`` or an ``[[upstreams]]`` entry)."""

    name: str
    kind: str
    base_url: str = ""
    rotation: str = "ordered"
    timeout: float = 60.0
    reasoning: str = "strip"
    top_k: bool = False
    chat_template_thinking: bool = False
    tokenize_url: str | None = None
    max_tokens_field: str = "max_tokens"
    enabled: bool = True


class Upstream:
    """One backend: its definition, key ring and HTTP session."""

    def __init__(
        self,
        spec: UpstreamSpec,
        ring: KeyRing,
        session: aiohttp.ClientSession | None,
    ) -> None:
        self.spec = spec
        self.ring = ring
        self.session = session
        # Made once here rather than for every request (`send`).
        self.urls: Mapping[str, str] = {}
        if spec.kind == "anthropic":
            self.urls = anthropic_kind.urls(spec.base_url)
        elif spec.kind == "openai":
            self.urls = openai_kind.urls(spec.base_url)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return self.spec.kind

    def quirks(self, model: str) -> OpenAIQuirks:
        """What ``model`` on this upstream takes beyond its settings (`openai_quirks`); none
        for an upstream that does not speak the OpenAI dialect."""
        spec = self.spec
        if spec.kind != "openai":
            return NO_QUIRKS
        return openai_quirks(spec.base_url, model, spec.reasoning)

    def max_tokens_field(self, model: str) -> str:
        """The field an OpenAI-dialect request names its output limit with, for ``model``."""
        return self.quirks(model).max_tokens_field or self.spec.max_tokens_field

    def serves(self, endpoint: str) -> bool:
        """Whether the backend has ``endpoint`` (an Anthropic one has no "embeddings");
        echo answers every one."""
        return self.spec.kind == "echo" or endpoint in self.urls

    def dialect(self, client_dialect: str) -> str:
        """The dialect this upstream speaks to a client of ``client_dialect`` (echo mirrors it)."""
        return client_dialect if self.spec.kind == "echo" else self.spec.kind

    async def send(
        self,
        endpoint: str,
        body: bytes,
        key: KeyState,
        *,
        stream: bool,
        client_headers: Mapping[str, str] | None = None,
        parsed: Mapping[str, Any] | None = None,
        client_dialect: str = "openai",
    ) -> UpstreamResponse:
        """Send one request with ``key``; returns once status and headers are in.

        ``endpoint`` is "messages" or "count_tokens" (Anthropic), "chat" or "embeddings"
        (OpenAI): one the upstream `serves`. The echo kind answers ``parsed`` in the
        client's dialect without any I/O.
        """
        spec = self.spec
        if spec.kind == "echo":
            if endpoint == "embeddings":
                return echo.embeddings_response(parsed or {})
            return echo.respond(client_dialect, parsed or {}, stream, int(time.time()))
        assert self.session is not None
        url = self.urls[endpoint]
        if spec.kind == "anthropic":
            headers = anthropic_kind.headers(key.secret, client_headers)
        else:
            headers = openai_kind.headers(key.secret)
        return await post(self.session, url, body, headers, timeout=spec.timeout, stream=stream)

    async def tokenize(self, body: bytes, key: KeyState) -> UpstreamResponse:
        """POST to the upstream's tokenizer endpoint (vLLM / llama.cpp ``/tokenize``)."""
        assert self.session is not None and self.spec.tokenize_url
        headers = openai_kind.headers(key.secret)
        return await post(
            self.session,
            self.spec.tokenize_url,
            body,
            headers,
            timeout=self.spec.timeout,
            stream=False,
        )

    async def model_ids(self) -> list[str]:
        """The upstream's own model list (for the dashboard); empty for echo."""
        if self.spec.kind == "echo" or self.session is None:
            return []
        key = (self.ring.candidates() or self.ring.keys)[0]
        if self.spec.kind == "anthropic":
            data = await get_json(
                self.session,
                anthropic_kind.models_url(self.spec.base_url) + "?limit=1000",
                anthropic_kind.headers(key.secret),
                timeout=min(self.spec.timeout, 15),
            )
        else:
            data = await get_json(
                self.session,
                openai_kind.models_url(self.spec.base_url),
                openai_kind.headers(key.secret),
                timeout=min(self.spec.timeout, 15),
            )
        items = data.get("data") if isinstance(data, dict) else None
        return [str(m["id"]) for m in items or [] if isinstance(m, dict) and "id" in m]


def _new_session(limit: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, ttl_dns_cache=300, keepalive_timeout=60)
    # The gateway reads raw bodies and relays them; it sets its own headers.
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=True, skip_auto_headers=("User-Agent",)
    )


class UpstreamPool:
    """All upstreams by name."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        on_key_change: Callable[[KeyState], None] | None = None,
        # 0 = no cap. Each in-flight client request holds one upstream connection, so a cap
        # below the client concurrency only queued requests behind long streams until the 10 s
        # connect timeout turned them into 504s (issue 7: 488 of 1,000 concurrent 30 s
        # streams failed with 512). The open-file limit is the real bound.
        connection_limit: int = 0,
    ) -> None:
        self._clock = clock
        self._on_key_change = on_key_change
        self._limit = connection_limit
        self._upstreams: dict[str, Upstream] = {}
        self._retired: list[aiohttp.ClientSession] = []

    def update(self, specs: Iterable[UpstreamSpec], keys: Mapping[str, list[KeyState]]) -> None:
        """Install new definitions; live key state and sessions carry over where unchanged."""
        old = self._upstreams
        new: dict[str, Upstream] = {}
        for spec in specs:
            previous = old.get(spec.name)
            live: dict[tuple[int | None, str | None], KeyState] = {}
            if previous is not None:
                live = {(k.id, k.secret): k for k in previous.ring.keys}
            ring_keys = []
            for key in keys.get(spec.name, []):
                kept = live.get((key.id, key.secret))
                if kept is not None:
                    # The admin may have re-enabled or relabelled it.
                    kept.enabled = key.enabled
                    kept.label = key.label
                    if key.enabled:
                        kept.disabled_reason = None
                        kept.disabled_at = None
                    elif key.disabled_reason:
                        kept.disabled_reason = key.disabled_reason
                        kept.disabled_at = key.disabled_at
                    ring_keys.append(kept)
                else:
                    ring_keys.append(key)
            ring = KeyRing(
                ring_keys,
                spec.rotation,
                clock=self._clock,
                on_change=self._on_key_change,
                name=spec.name,
            )
            session = None
            if spec.kind != "echo":
                if previous is not None and previous.session is not None:
                    session = previous.session
                else:
                    session = _new_session(self._limit)
            new[spec.name] = Upstream(spec, ring, session)
        for name, upstream in old.items():
            if upstream.session is not None and (
                name not in new or new[name].session is not upstream.session
            ):
                self._retired.append(upstream.session)
        self._upstreams = new

    def get(self, name: str) -> Upstream:
        upstream = self._upstreams.get(name)
        if upstream is None:
            raise NotFoundError(f"upstream {name!r} is not defined")
        return upstream

    def names(self) -> list[str]:
        return list(self._upstreams)

    def all(self) -> list[Upstream]:
        return list(self._upstreams.values())

    def key_states(self, name: str) -> list[KeyState]:
        """Live state of an upstream's keys, in rotation order (for the dashboard)."""
        upstream = self._upstreams.get(name)
        return list(upstream.ring.keys) if upstream is not None else []

    def now(self) -> float:
        return self._clock()

    async def close(self) -> None:
        sessions = [u.session for u in self._upstreams.values() if u.session is not None]
        sessions += self._retired
        self._upstreams = {}
        self._retired = []
        for session in sessions:
            if not session.closed:
                await session.close()
