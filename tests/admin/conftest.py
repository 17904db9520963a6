"""Dashboard fixtures: real services on a temporary SQLite database, the dashboard
served on a free port, and a small cookie-keeping client that can sign in.

Tests are ``@pytest.mark.gen_test`` coroutines (pytest-tornado), so the server,
the client and the database all run on the test's IOLoop.
"""

from __future__ import annotations

import http.cookies
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import tornado.httpclient
import tornado.ioloop
import tornado.web

from app.db.usage import UsageRecord, insert_events
from app.server import build_app, build_services
from app.services import Services
from app.settings import load_settings
from tests.databases import database_url

ADMIN_PASSWORD = "correct-horse-battery"
SECRET_KEY = "Gk1hY0c7oQ7m0oGJbJ0xv0Hn7K3z4cQx0m9o0x2q3yE="


def write_config(tmp_path: Path, body: str = "") -> Path:
    db = database_url(tmp_path, "dash.db")
    text = (
        f'[server]\ndatabase_url = "{db}"\nadmin_password = "{ADMIN_PASSWORD}"\n'
        f'secret_key = "{SECRET_KEY}"\nusage_flush_seconds = 0.05\n' + body
    )
    path = tmp_path / "bridgekeeper.toml"
    path.write_text(text)
    return path


@pytest.fixture
def config_body() -> str:
    """Extra TOML for the test's config file (override in a module to add upstreams)."""
    return ""


@pytest.fixture
def services(
    io_loop: tornado.ioloop.IOLoop, tmp_path: Path, config_body: str
) -> Iterator[Services]:
    path = write_config(tmp_path, config_body)
    settings = load_settings(config_path=str(path), environ={}, cwd=tmp_path)
    built, _ = io_loop.run_sync(lambda: build_services(settings))
    yield built
    io_loop.run_sync(built.close)


def full_app(services: Services) -> tornado.web.Application:
    """The server's own Application (API and dashboard), as ``serve`` builds it."""
    return build_app(services)


@pytest.fixture
def app(services: Services) -> tornado.web.Application:
    return full_app(services)


@dataclass
class Client:
    """A browser-like client: keeps cookies, sends the XSRF token, never follows redirects."""

    base_url: str
    cookies: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    async def fetch(
        self, method: str, path: str, body: str | None = None, **headers: str
    ) -> tornado.httpclient.HTTPResponse:
        all_headers = dict(self.headers) | headers
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        if body is not None:
            all_headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        response = await tornado.httpclient.AsyncHTTPClient().fetch(
            self.base_url + path,
            method=method,
            body=body,
            headers=all_headers,
            follow_redirects=False,
            raise_error=False,
        )
        for raw in response.headers.get_list("Set-Cookie"):
            jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
            jar.load(raw)
            for name, morsel in jar.items():
                expires = morsel["expires"]
                expired = bool(expires) and parsedate_to_datetime(expires) < datetime.now(UTC)
                if expired or morsel["max-age"] == "0":
                    self.cookies.pop(name, None)
                else:
                    self.cookies[name] = morsel.value
        return response

    async def get(self, path: str) -> tornado.httpclient.HTTPResponse:
        return await self.fetch("GET", path)

    async def fetch_streaming(
        self, path: str, on_chunk: Callable[[bytes], None]
    ) -> tornado.httpclient.HTTPResponse:
        """A GET whose body goes to ``on_chunk`` piece by piece as it arrives."""
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        return await tornado.httpclient.AsyncHTTPClient().fetch(
            self.base_url + path,
            headers={"Cookie": cookie},
            streaming_callback=on_chunk,
            follow_redirects=False,
            raise_error=False,
        )

    async def xsrf(self) -> str:
        if "_xsrf" not in self.cookies:
            await self.get("/admin/login")
        return self.cookies["_xsrf"]

    async def post(
        self, path: str, data: dict[str, Any] | None = None, *, xsrf: bool = True
    ) -> tornado.httpclient.HTTPResponse:
        fields = dict(data or {})
        if xsrf:
            fields["_xsrf"] = await self.xsrf()
        return await self.fetch("POST", path, urlencode(fields, doseq=True))

    async def login(
        self, username: str = "admin", password: str = ADMIN_PASSWORD
    ) -> tornado.httpclient.HTTPResponse:
        response = await self.post(
            "/admin/login", {"username": username, "password": password, "next": "/admin/"}
        )
        assert response.code == 303, response.body
        return response


@pytest.fixture
def client(http_server: Any, base_url: str) -> Client:
    return Client(base_url.replace("localhost", "127.0.0.1"))


@pytest.fixture
def anon(http_server: Any, base_url: str) -> Client:
    """A second client with no session."""
    return Client(base_url.replace("localhost", "127.0.0.1"))


def body(response: tornado.httpclient.HTTPResponse) -> str:
    return response.body.decode("utf-8") if response.body else ""


def record(
    when: datetime,
    *,
    key: str | None = "alice",
    model: str = "claude-3-haiku",
    upstream: str = "echo",
    status: str = "ok",
    input_tokens: int = 10,
    output_tokens: int = 5,
    request_id: str | None = None,
    **extra: Any,
) -> UsageRecord:
    return UsageRecord(
        time=when,
        request_id=request_id or f"req-{when:%H%M%S%f}-{key}-{model}",
        client_dialect=extra.pop("client_dialect", "openai"),
        key_name=key,
        requested_model=model,
        upstream=upstream,
        target_model=extra.pop("target_model", model),
        status=status,
        http_status=200 if status == "ok" else 502,
        error_type=None if status == "ok" else "api_error",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        latency_ms=extra.pop("latency_ms", 120.0),
        **extra,
    )


def seed_usage(services: Services, records: list[UsageRecord]) -> None:
    """Writes events and their daily roll-up the way the recorder does (sync, in a thread)."""
    from sqlalchemy.orm import Session

    from app.db.engine import make_sync_engine

    engine = make_sync_engine(services.settings.database_url)
    try:
        with Session(engine) as session, session.begin():
            insert_events(session, records)
    finally:
        engine.dispose()
