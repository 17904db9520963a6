"""What the gateway holds for everyone: proxy keys (stored as SHA-256 hashes), upstream keys
(Fernet-encrypted at rest, masked everywhere), the admin password and the Fernet key itself.
None of them may show up whole in a log line, the database file, a dashboard page or an API
answer, and a client's own key never travels upstream.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import orjson
import pytest
import tornado.httpserver
import tornado.netutil
from cryptography.fernet import Fernet
from sqlalchemy import select

from app.db import keys as key_queries
from app.db.engine import sqlite_path
from app.db.models import ProxyKey, Upstream, UpstreamKey
from app.secretbox import SecretBox
from app.server import build_services
from app.settings import load_settings
from tests.admin.conftest import Client, full_app
from tests.conftest import TEST_KEY, http
from tests.databases import POSTGRES
from tests.fakes import FakeUpstream, JsonReply, SSEReply
from tests.reliability.conftest import body_for, path_for, two_upstreams, usage_rows

pytestmark = pytest.mark.gen_test(timeout=90)

COMBOS = [("anthropic", "m-an"), ("anthropic", "m-oa"), ("openai", "m-oa"), ("openai", "m-an")]


def token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(24)


def config_text(db: Path, fo: FakeUpstream, fa: FakeUpstream, s: dict[str, str]) -> str:
    server = (
        f'database_url = "sqlite:///{db}"\nadmin_password = "{s["admin"]}"\n'
        f'secret_key = "{s["fernet"]}"\nusage_flush_seconds = 0.05\n'
    )
    text = "[server]\n" + two_upstreams(
        fo.url,
        fa.url,
        openai_keys=(s["oa1"], s["oa2"]),
        anthropic_keys=(s["an1"], s["an2"]),
        server=server,
    )
    text = text.replace(
        'name = "oa"\n', f'name = "oa"\ntokenize_url = "{fo.url.removesuffix("/v1")}/tokenize"\n'
    )
    return text + f'\n[[keys]]\nname = "from-config"\nkey = "{s["proxy_config"]}"\n'


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger at DEBUG, SQLAlchemy's too (it sets its own to WARNING on import):
    statements and their parameters are logged."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")
    yield caplog


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter()
    lines = []
    for record in caplog.records:
        lines.append(record.getMessage())
        if record.exc_info:
            lines.append(formatter.formatException(record.exc_info))
    return "\n".join(lines)


def db_bytes(db: Path) -> bytes:
    return b"".join(
        p.read_bytes()
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
        if p.exists()
    )


def leaks(secrets_by_name: dict[str, str], text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in secrets_by_name.items() if value.encode() in data]


HREF = re.compile(r'href="(/admin[^"#?]*)(?:\?[^"#]*)?"')


async def crawl(client: Client, start: list[str]) -> dict[str, str]:
    """Every dashboard page reachable by links from ``start`` (GET only)."""
    pages: dict[str, str] = {}
    queue = list(start)
    while queue:
        path = queue.pop()
        if path in pages or path.startswith(("/admin/logout", "/admin/lang")):
            continue
        response = await client.get(path)
        text = response.body.decode("utf-8", "replace") if response.body else ""
        pages[path] = text
        if response.code == 200 and "html" in response.headers.get("Content-Type", ""):
            queue += [urljoin(path, m) for m in HREF.findall(text)]
    return pages


async def test_a_full_session_reveals_no_secret_anywhere(  # type: ignore[no-untyped-def]
    tmp_path, fake_openai, fake_anthropic, captured, io_loop
):
    s = {
        "oa1": token("sk-oa-one-"),
        "oa2": token("sk-oa-two-"),
        "an1": token("sk-ant-one-"),
        "an2": token("sk-ant-two-"),
        "proxy_config": token("bk-config-"),
        "admin": token("pw-"),
        "fernet": Fernet.generate_key().decode(),
    }
    fo, fa = fake_openai, fake_anthropic
    db = tmp_path / "secrets.db"
    path = tmp_path / "bridgekeeper.toml"
    path.write_text(config_text(db, fo, fa, s))
    settings = load_settings(config_path=str(path), environ={}, cwd=tmp_path)
    services, _ = await build_services(settings)
    server = tornado.httpserver.HTTPServer(full_app(services))
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", family=socket.AF_INET)
    server.add_sockets(sockets)
    url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    answers: list[bytes] = []
    try:
        async with services.db.session() as session, session.begin():
            _, s["proxy_cli"] = await key_queries.create_key(session, "from-cli", source="cli")
        await services.reload()

        # Upstreams that echo the gateway's key back in their errors (some do).
        fo.push(JsonReply(401, {"error": {"message": f"Incorrect API key provided: {s['oa1']}"}}))
        fa.push(
            JsonReply(
                429,
                {
                    "type": "error",
                    "error": {"type": "rate_limit_error", "message": f"slow down {s['an1']}"},
                },
                {"retry-after": "30"},
            ),
            JsonReply(
                400,
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": f"bad, key {s['an2']}"},
                },
            ),
        )
        for key_name in ("proxy_config", "proxy_cli"):
            for dialect, model in COMBOS:
                for stream in (False, True):
                    resp = await http(
                        "POST",
                        url + path_for(dialect),
                        json=body_for(dialect, model, stream=stream),
                        headers={"Authorization": f"Bearer {s[key_name]}"},
                    )
                    answers.append(resp.content)
            for model in ("m-an", "m-oa"):
                resp = await http(
                    "POST",
                    url + "/v1/messages/count_tokens",
                    json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                    headers={"x-api-key": s[key_name]},
                )
                answers.append(resp.content)
        for headers in ({"x-api-key": s["proxy_config"] + "x"}, {"Authorization": "Bearer nope"}):
            answers.append(
                (await http("POST", url + "/v1/messages", json={}, headers=headers)).content
            )
        assert any(b"bad, key" in a for a in answers), "the relayed 400 should have been seen"
        await services.recorder.flush()

        # The dashboard: sign in, create a proxy key, add an upstream key, read every page.
        client = Client(url)
        await client.login(password=s["admin"])
        created = await client.post("/admin/keys", {"name": "from-dashboard"})
        assert created.code == 201
        shown = re.search(r'data-testid="new-key"[^>]*>\s*([^<\s]+)', created.body.decode())
        assert shown is not None
        s["proxy_dashboard"] = shown.group(1)
        async with services.db.session() as session:
            oa_id = await session.scalar(select(Upstream.id).where(Upstream.name == "oa"))
        s["added"] = token("sk-added-")
        added = await client.post(
            f"/admin/upstreams/{oa_id}/keys", {"secret": s["added"], "label": ""}
        )
        assert added.code in (302, 303), added.body
        pages = await crawl(client, ["/admin/", "/admin/usage.csv"])
        assert len(pages) >= 8, sorted(pages)
        assert any(p.startswith("/admin/upstreams/") for p in pages)
        assert any(p.startswith("/admin/keys/") for p in pages)
    finally:
        server.stop()
        await server.close_all_connections()
        await services.close()

    found = {name: [] for name in s}  # type: dict[str, list[str]]
    for name in leaks(s, log_text(captured)):
        found[name].append("logs")
    for name in leaks(s, db_bytes(db)):
        found[name].append("database file")
    for page, text in pages.items():
        for name in leaks(s, text):
            found[name].append(page)
    for answer in answers:
        for name in leaks(s, answer):
            found[name].append("an API answer")
    assert {k: v for k, v in found.items() if v} == {}
    # The scans looked at something: SQL statements with parameters were logged, keys were masked.
    assert "INSERT INTO usage_events" in log_text(captured)
    assert "…" + s["oa1"][-4:] in "".join(pages.values())


@pytest.mark.skipif(bool(POSTGRES), reason="reads the SQLite file's bytes")
async def test_proxy_keys_are_stored_as_sha256_hashes(gateway):  # type: ignore[no-untyped-def]
    live = await gateway("")
    async with live.services.db.session() as session, session.begin():
        _, key = await key_queries.create_key(session, "alice")
    async with live.services.db.session() as session:
        rows = {r.name: r for r in await session.scalars(select(ProxyKey))}
    assert rows["alice"].key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert rows["alice"].prefix == key[:10] and len(key) > 40
    assert rows["tester"].key_hash == hashlib.sha256(live.key.encode()).hexdigest()
    await live.services.reload()
    resp = await http(
        "POST",
        live.url + "/v1/chat/completions",
        json=body_for("openai", "x"),
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 200  # the echo backend answers
    await usage_rows(live)
    db = sqlite_path(live.services.settings.database_url)
    assert db is not None
    data = db_bytes(db)
    assert key.encode() not in data and live.key.encode() not in data
    assert rows["alice"].key_hash.encode() in data  # the scan reads the real file


def upstream_config(fake: FakeUpstream, secret: str) -> str:
    return f"""
[[upstreams]]
name = "oa"
kind = "openai"
base_url = "{fake.url}"
keys = ["{secret}"]
"""


async def stored_secrets(live: Any) -> list[str]:
    async with live.services.db.session() as session:
        return list(await session.scalars(select(UpstreamKey.secret)))


@pytest.mark.skipif(bool(POSTGRES), reason="reads the SQLite file's bytes")
async def test_upstream_keys_are_encrypted_with_the_configured_key(gateway, fake_openai):  # type: ignore[no-untyped-def]
    secret = token("sk-upstream-")
    fernet = Fernet.generate_key().decode()
    live = await gateway(
        upstream_config(fake_openai, secret), environ={"BRIDGEKEEPER_SECRET_KEY": fernet}
    )
    # The test config names its own secret_key; the environment wins over the file.
    [stored] = await stored_secrets(live)
    assert secret not in stored
    assert SecretBox(fernet.encode()).decrypt(stored) == secret
    db = sqlite_path(live.services.settings.database_url)
    assert db is not None
    assert not db.with_name(db.name + ".secret").exists()
    assert secret.encode() not in db_bytes(db)


async def test_without_a_configured_key_a_0600_key_file_is_made_beside_the_database(  # type: ignore[no-untyped-def]
    tmp_path, fake_openai, io_loop
):
    secret = token("sk-upstream-")
    db = tmp_path / "data" / "gw.db"
    config = (
        f'[server]\ndatabase_url = "sqlite:///{db}"\nadmin_password = "pw-123456789"\n'
        + upstream_config(fake_openai, secret)
    )
    path = tmp_path / "bridgekeeper.toml"
    path.write_text(config)
    settings = load_settings(config_path=str(path), environ={}, cwd=tmp_path)
    assert settings.secret_key is None
    services, _ = await build_services(settings)
    try:
        async with services.db.session() as session:
            [stored] = list(await session.scalars(select(UpstreamKey.secret)))
    finally:
        await services.close()
    key_file = db.with_name("gw.db.secret")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert SecretBox(key_file.read_bytes().strip()).decrypt(stored) == secret
    assert secret.encode() not in db_bytes(db)
    # A restart reads the same file: the stored key still decrypts, the file is unchanged.
    before = key_file.read_bytes()
    services, _ = await build_services(settings)
    try:
        assert [k.secret for k in services.pool.key_states("oa")] == [secret]
    finally:
        await services.close()
    assert key_file.read_bytes() == before


# -- the client's key stays with the gateway -----------------------------------------------------

CLIENT_AUTH = [
    pytest.param(lambda key: {"Authorization": f"Bearer {key}"}, id="bearer"),
    pytest.param(lambda key: {"x-api-key": key}, id="x-api-key"),
]


@pytest.mark.parametrize("client_auth", CLIENT_AUTH)
async def test_the_clients_key_never_reaches_an_upstream(
    gateway, fake_openai, fake_anthropic, client_auth
):  # type: ignore[no-untyped-def]
    fo, fa = fake_openai, fake_anthropic
    config = two_upstreams(fo.url, fa.url).replace(
        'name = "oa"\n', f'name = "oa"\ntokenize_url = "{fo.url.removesuffix("/v1")}/tokenize"\n'
    )
    live = await gateway(config)
    headers = client_auth(live.key) | {"anthropic-version": "2023-06-01", "X-Custom-Client": "yes"}
    calls = 0
    for dialect, model in COMBOS:
        for stream in (False, True):
            resp = await http(
                "POST",
                live.url + path_for(dialect),
                json=body_for(dialect, model, stream=stream),
                headers=headers,
            )
            assert resp.status == 200
            calls += 1
    for model in ("m-an", "m-oa"):
        for prefix in ("", "/anthropic"):
            resp = await http(
                "POST",
                live.url + prefix + "/v1/messages/count_tokens",
                json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
                headers=headers,
            )
            assert resp.status == 200
            calls += 1
    received = fo.received + fa.received
    assert len(received) == calls
    assert {r.path for r in received} == {
        "/v1/chat/completions",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/tokenize",
    }
    for r in received:
        dump = orjson.dumps(r.headers) + r.body
        assert live.key.encode() not in dump, (r.path, r.headers)
        assert "X-Custom-Client" not in r.headers
        sent_key = r.headers.get("X-Api-Key") or r.headers.get("Authorization", "").removeprefix(
            "Bearer "
        )
        assert sent_key in ("sk-oa-upstream-1", "sk-ant-upstream-1"), (r.path, r.headers)


@pytest.mark.parametrize(("dialect", "model"), COMBOS)
async def test_an_upstream_key_echoed_mid_stream_is_masked(gateway, tmp_path, dialect, model):  # type: ignore[no-untyped-def]
    """Some backends quote the key they were sent in an error: after the first byte that
    error travels in the stream, translated or relayed, and into the usage record."""
    fo = await FakeUpstream("openai").start()
    fa = await FakeUpstream("anthropic").start()
    try:
        oa_key, an_key = token("sk-oa-echo-"), token("sk-ant-echo-")
        live = await gateway(
            two_upstreams(fo.url, fa.url, openai_keys=(oa_key,), anthropic_keys=(an_key,))
        )
        echoed = f"Incorrect API key provided: {oa_key if model == 'm-oa' else an_key}"
        if model == "m-oa":
            first = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"x","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},"finish_reason":null}]}\n\n'
            error = (
                b"data: "
                + orjson.dumps({"error": {"message": echoed, "type": "server_error"}})
                + b"\n\n"
            )
            fo.push(SSEReply([first, error], delay=0.01))
        else:
            first = b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"x","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":3,"output_tokens":1}}}\n\n'
            error = (
                b"event: error\ndata: "
                + orjson.dumps({"type": "error", "error": {"type": "api_error", "message": echoed}})
                + b"\n\n"
            )
            fa.push(SSEReply([first, error], delay=0.01))
        body = body_for(dialect, model, stream=True)
        headers = (
            {"x-api-key": TEST_KEY}
            if dialect == "anthropic"
            else {"Authorization": f"Bearer {TEST_KEY}"}
        )
        resp = await http("POST", live.url + path_for(dialect), json=body, headers=headers)
        assert resp.status == 200
        assert b"Incorrect API key provided: " in resp.content  # the error did reach the client
        assert not leaks({"oa": oa_key, "an": an_key}, resp.content)
        rows = await usage_rows(live)
        assert rows[-1].status == "error" and rows[-1].error_message
        assert not leaks({"oa": oa_key, "an": an_key}, rows[-1].error_message)
    finally:
        await fo.stop()
        await fa.stop()


async def test_an_upstream_key_echoed_in_a_count_tokens_refusal_is_masked(  # type: ignore[no-untyped-def]
    gateway, fake_anthropic
):
    """count_tokens relays an Anthropic backend's 400 as it came: the key it quotes was
    sent to the client whole, and written to the usage row."""
    secret = token("sk-ant-count-")
    live = await gateway(
        f'[[upstreams]]\nname = "an"\nkind = "anthropic"\nbase_url = "{fake_anthropic.url}"\n'
        f'keys = ["{secret}"]\n\n[[models]]\nname = "m-an"\nupstream = "an"\n'
    )
    quoted = {"type": "invalid_request_error", "message": f"bad thing, your key was {secret}"}
    fake_anthropic.push(JsonReply(400, {"type": "error", "error": quoted}))
    resp = await http(
        "POST",
        live.url + "/v1/messages/count_tokens",
        json={"model": "m-an", "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": TEST_KEY},
    )
    assert resp.status == 400
    assert b"bad thing, your key was " in resp.content  # the backend's refusal did come back
    assert not leaks({"an": secret}, resp.content)
    rows = await usage_rows(live)
    assert rows[-1].http_status == 400
    assert not leaks({"an": secret}, rows[-1].error_message or "")
