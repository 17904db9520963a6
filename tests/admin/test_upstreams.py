"""Upstreams: add and edit, keys in rotation order (encrypted, masked, reordered, enabled,
disabled, deleted), live key state, the Test button, and that no secret reaches a page.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import pytest
import tornado.ioloop
from sqlalchemy import select

from app.db import admins
from app.db import upstreams_admin as ua
from app.db.models import Upstream, UpstreamKey
from app.handlers.admin.upstreams import form_of
from app.services import Services
from app.settings import timeout_problem, upstream_name_problem
from tests.admin.conftest import Client, body
from tests.fakes import FakeUpstream, JsonReply

FIRST = "sk-first-secret-0123456789-AAAA"
SECOND = "sk-second-secret-9876543210-BBBB"
PAGES = ["/admin/", "/admin/upstreams", "/admin/audit", "/admin/usage", "/admin/models"]


@pytest.fixture
def fake(io_loop: tornado.ioloop.IOLoop) -> Iterator[FakeUpstream]:
    upstream = io_loop.run_sync(FakeUpstream("openai").start)
    yield upstream
    io_loop.run_sync(upstream.stop)


def upstream_form(fake: FakeUpstream) -> dict[str, str]:
    """The upstream form as a browser posts it, every checkbox but Enabled left off."""
    return {
        "name": "local",
        "kind": "openai",
        "base_url": fake.url,
        "rotation": "ordered",
        "timeout": "30",
        "reasoning": "replay",
        "max_tokens_field": "max_completion_tokens",
        "tokenize_url": "",
        "enabled": "on",
    }


async def add_upstream(client: Client, fake: FakeUpstream, **fields: str) -> int:
    form = upstream_form(fake) | fields
    response = await client.post("/admin/upstreams", form)
    assert response.code == 303, body(response)
    match = re.fullmatch(
        r"/admin/upstreams/(\d+)\?msg=upstream_added", response.headers["Location"]
    )
    assert match is not None
    return int(match.group(1))


async def with_keys(client: Client, fake: FakeUpstream) -> int:
    upstream_id = await add_upstream(client, fake)
    for secret, label in ((FIRST, "first"), (SECOND, "")):
        response = await client.post(
            f"/admin/upstreams/{upstream_id}/keys", {"secret": secret, "label": label}
        )
        assert response.code == 303
    return upstream_id


async def stored_keys(services: Services, upstream_id: int) -> list[UpstreamKey]:
    async with services.db.session() as session:
        row = await ua.get_upstream(session, upstream_id)
        assert row is not None
        return sorted(row.keys, key=lambda k: k.position)


def ring(services: Services) -> list[str | None]:
    return [k.secret for k in services.pool.get("local").ring.keys]


async def audit_rows(services: Services) -> list[tuple[str, str, str]]:
    async with services.db.session() as session:
        rows = await admins.list_audit(session, limit=200)
    return [(r.action, r.target, r.detail) for r in reversed(rows)]


async def assert_no_secret(client: Client, upstream_id: int) -> None:
    for path in [*PAGES, f"/admin/upstreams/{upstream_id}"]:
        page = body(await client.get(path))
        for secret in (FIRST, SECOND):
            assert secret not in page, path
            assert secret[:-4] not in page, path


@pytest.mark.gen_test(timeout=30)
async def test_add_upstream_reaches_the_pool(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    await client.login()
    page = body(await client.get("/admin/upstreams"))
    for label in (
        "Upstream name",
        "Kind",
        "Base URL",
        "Key rotation",
        "Timeout (seconds)",
        "Reasoning",
        "Forward top_k",
        "Switch thinking through chat_template_kwargs",
        "Tokenizer endpoint",
        "Max-tokens field",
    ):
        assert f">{label}</label>" in page
    # The new upstream's timeout starts at the server's default, as in the config file
    # (it said 60 while a file's upstream got 600).
    # No max: the config file takes any timeout above 0 (one of 7200 s could not be saved).
    assert 'name="timeout" type="number" min="0" step="any" value="600"' in page
    upstream_id = await add_upstream(
        client, fake, top_k="on", tokenize_url="http://127.0.0.1:9/tokenize"
    )
    spec = services.pool.get("local").spec
    assert (spec.kind, spec.base_url, spec.timeout, spec.reasoning) == (
        "openai",
        fake.url,
        30.0,
        "replay",
    )
    assert spec.top_k and spec.tokenize_url == "http://127.0.0.1:9/tokenize"
    assert spec.max_tokens_field == "max_completion_tokens"
    assert ("upstream_added", "local", "kind=openai") in await audit_rows(services)
    page = body(await client.get(f"/admin/upstreams/{upstream_id}"))
    assert 'value="local"' in page and "No keys (requests go without one)." in page


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"base_url": ""}, "needs a base URL"),
        ({"base_url": "ftp://x"}, "needs a base URL"),
        ({"kind": "grpc"}, "Choose a valid Kind."),
        ({"rotation": "random"}, "Choose a valid Key rotation."),
        ({"timeout": "0"}, "Timeout (seconds) must be a number above 0."),
        ({"timeout": "soon"}, "Timeout (seconds) must be a number."),
        ({"tokenize_url": "localhost:8080"}, "Tokenizer endpoint must start with http://"),
        ({"name": "echo"}, "An upstream named echo already exists."),
        ({"name": ""}, "Upstream name is required."),
    ],
)
async def test_upstream_validation(
    client: Client, fake: FakeUpstream, fields: dict[str, str], message: str
) -> None:
    await client.login()
    form = {
        "name": "local",
        "kind": "openai",
        "base_url": fake.url,
        "rotation": "ordered",
        "timeout": "30",
        "reasoning": "strip",
        "max_tokens_field": "max_tokens",
    } | fields
    response = await client.post("/admin/upstreams", form)
    assert response.code == 400
    assert html.escape(message, quote=False) in body(response)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("field", "url", "label"),
    [
        ("base_url", "http://user:hunter2@127.0.0.1:9/v1", "Base URL"),
        ("base_url", "https://hunter2@127.0.0.1:9", "Base URL"),
        ("tokenize_url", "http://user:hunter2@127.0.0.1:9/tokenize", "Tokenizer endpoint"),
    ],
)
async def test_a_password_in_an_upstream_url_is_refused(
    client: Client, services: Services, fake: FakeUpstream, field: str, url: str, label: str
) -> None:
    """It showed on these pages, in every client's error message and in the usage trail,
    and a key beside it made every request a 500 (aiohttp refuses the two together)."""
    await client.login()
    message = (
        f"{label} may not hold a user name or password (every error message would show "
        "it): add the secret as one of the upstream's keys instead."
    )
    response = await client.post("/admin/upstreams", upstream_form(fake) | {field: url})
    assert response.code == 400
    page = body(response)
    assert message in html.unescape(page)
    assert "hunter2" not in page  # the form shown again leaves it out too
    assert "local" not in services.pool.names()
    upstream_id = await add_upstream(client, fake)
    response = await client.post(
        f"/admin/upstreams/{upstream_id}", upstream_form(fake) | {field: url}
    )
    assert response.code == 400
    page = body(response)
    assert message in html.unescape(page) and "hunter2" not in page
    spec = services.pool.get("local").spec
    assert (spec.base_url, spec.tokenize_url) == (fake.url, None)


@pytest.mark.gen_test(timeout=30)
async def test_test_button_does_not_follow_a_redirect(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    """A redirect took the request, and the upstream key, to wherever it pointed."""
    elsewhere = await FakeUpstream("openai").start()
    try:
        await client.login()
        upstream_id = await with_keys(client, fake)
        target = f"http://127.0.0.1:{elsewhere.port}/v1/chat/completions"
        fake.push(JsonReply(status=307, raw=b"", headers={"Location": target}))
        page = body(await client.post(f"/admin/upstreams/{upstream_id}/test", {"model": "m"}))
    finally:
        await elsewhere.stop()
    assert elsewhere.received == []
    result = page[page.index('data-testid="test-result"') :]
    assert "no answer" in result
    assert (
        f"upstream answered HTTP 307 (a redirect to {target}, not followed): "
        "set the upstream's base_url to where it points"
    ) in html.unescape(result)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "timeout", ["0.5", "0.001", "1", "3601", "7200", "0", "-0.5", "nan", "inf"]
)
async def test_the_dashboard_takes_the_timeouts_the_config_file_takes(
    client: Client, services: Services, fake: FakeUpstream, timeout: str
) -> None:
    """More than 0, as ``timeout`` in the config file (it refused 0.5, which a file takes:
    a local backend may well answer within half a second; and above 3600, while its
    message said "between 0 and 3600" and refused 0)."""
    await client.login()
    response = await client.post("/admin/upstreams", upstream_form(fake) | {"timeout": timeout})
    if timeout_problem(float(timeout)) is None:
        assert response.code == 303, body(response)
        assert services.pool.get("local").spec.timeout == float(timeout)
    else:
        assert response.code == 400
        assert "Timeout (seconds) must be a number above 0." in body(response)
        assert "local" not in services.pool.names()


@pytest.mark.gen_test(timeout=30)
async def test_echo_needs_no_base_url(client: Client, services: Services) -> None:
    await client.login()
    response = await client.post(
        "/admin/upstreams",
        {
            "name": "echo2",
            "kind": "echo",
            "rotation": "ordered",
            "reasoning": "strip",
            "max_tokens_field": "max_tokens",
            "timeout": "",
            "enabled": "on",
        },
    )
    assert response.code == 303
    assert services.pool.get("echo2").spec.kind == "echo"


@pytest.mark.gen_test(timeout=30)
async def test_keys_are_encrypted_masked_and_in_rotation_order(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    await client.login()
    upstream_id = await with_keys(client, fake)
    rows = await stored_keys(services, upstream_id)
    assert [(k.label, k.last4, k.position, k.source) for k in rows] == [
        ("first", "AAAA", 0, "dashboard"),
        ("", "BBBB", 1, "dashboard"),
    ]
    for row, secret in zip(rows, (FIRST, SECOND), strict=True):
        assert secret not in row.secret
        assert services.secrets.decrypt(row.secret) == secret
    assert ring(services) == [FIRST, SECOND]
    page = body(await client.get(f"/admin/upstreams/{upstream_id}"))
    assert "first <code>…AAAA</code>" in page and "<code>…BBBB</code>" in page
    await assert_no_secret(client, upstream_id)
    assert ("upstream_key_added", "local", f"key=first id={rows[0].id}") in await audit_rows(
        services
    )
    bad = await client.post(f"/admin/upstreams/{upstream_id}/keys", {"secret": "short"})
    assert bad.code == 400 and "8 to 4000 characters" in body(bad)


@pytest.mark.gen_test(timeout=30)
async def test_reorder_with_buttons_and_with_a_whole_order(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    await client.login()
    upstream_id = await with_keys(client, fake)
    first, second = await stored_keys(services, upstream_id)
    response = await client.post(f"/admin/upstreams/{upstream_id}/keys/{first.id}/down")
    assert response.headers["Location"] == f"/admin/upstreams/{upstream_id}?msg=key_moved"
    assert ring(services) == [SECOND, FIRST]
    assert [k.id for k in await stored_keys(services, upstream_id)] == [second.id, first.id]
    # Already last: nothing moves, nothing is audited.
    await client.post(f"/admin/upstreams/{upstream_id}/keys/{first.id}/down")
    assert ring(services) == [SECOND, FIRST]
    response = await client.post(
        f"/admin/upstreams/{upstream_id}/keys/order", {"order": f"{first.id},{second.id}"}
    )
    assert response.headers["Location"] == f"/admin/upstreams/{upstream_id}?msg=order_saved"
    assert ring(services) == [FIRST, SECOND]
    for bad in (f"{first.id}", f"{first.id},{first.id}", f"{first.id},999", "a,b"):
        response = await client.post(f"/admin/upstreams/{upstream_id}/keys/order", {"order": bad})
        assert response.code == 400
    assert ring(services) == [FIRST, SECOND]
    reorders = [r for r in await audit_rows(services) if r[0] == "upstream_keys_reordered"]
    assert reorders == [
        ("upstream_keys_reordered", "local", "order=…BBBB,first"),
        ("upstream_keys_reordered", "local", "order=first,…BBBB"),
    ]


@pytest.mark.gen_test(timeout=30)
async def test_disable_enable_and_delete_keys(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    await client.login()
    upstream_id = await with_keys(client, fake)
    first, second = await stored_keys(services, upstream_id)
    await client.post(f"/admin/upstreams/{upstream_id}/keys/{first.id}/disable")
    live = services.pool.key_states("local")
    assert [(k.secret, k.state(services.pool.now())) for k in live] == [
        (FIRST, "disabled"),
        (SECOND, "active"),
    ]
    assert [k.secret for k in services.pool.get("local").ring.candidates()] == [SECOND]
    page = body(await client.get(f"/admin/upstreams/{upstream_id}"))
    assert ">disabled</span>" in page and "disabled by admin" in page
    await client.post(f"/admin/upstreams/{upstream_id}/keys/{first.id}/enable")
    assert [k.secret for k in services.pool.get("local").ring.candidates()] == [FIRST, SECOND]
    await client.post(f"/admin/upstreams/{upstream_id}/keys/{first.id}/delete")
    assert ring(services) == [SECOND]
    assert [k.position for k in await stored_keys(services, upstream_id)] == [0]
    actions = [r[0] for r in await audit_rows(services)]
    assert actions[-3:] == ["upstream_key_disabled", "upstream_key_enabled", "upstream_key_deleted"]


@pytest.mark.gen_test(timeout=30)
async def test_live_state_is_shown_and_kept_across_edits(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    await client.login()
    upstream_id = await with_keys(client, fake)
    first, second = await stored_keys(services, upstream_id)
    keyring = services.pool.get("local").ring
    live_first, live_second = keyring.keys
    keyring.mark_rate_limited(live_first, 30, "HTTP 429: slow down")
    keyring.mark_rejected(live_second, 401, "invalid api key")
    page = body(await client.get(f"/admin/upstreams/{upstream_id}"))
    assert ">cooling down</span>" in page and "HTTP 429: slow down" in page
    assert "HTTP 401: invalid api key" in page
    overview = body(await client.get("/admin/"))
    assert ">cooling down</span>" in overview and "HTTP 401: invalid api key" in overview
    # Reordering reloads the pool; the key the gateway disabled stays disabled.
    await client.post(f"/admin/upstreams/{upstream_id}/keys/{second.id}/up")
    states = {k.secret: k.state(services.pool.now()) for k in services.pool.key_states("local")}
    assert states == {FIRST: "cooling", SECOND: "disabled"}
    async with services.db.session() as session:
        stored = await session.get(UpstreamKey, second.id)
    assert stored is not None and not stored.enabled
    assert stored.disabled_reason == "HTTP 401: invalid api key"


@pytest.mark.gen_test(timeout=30)
async def test_test_button_sends_a_real_request(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    await client.login()
    upstream_id = await with_keys(client, fake)
    await client.post(
        f"/admin/upstreams/{upstream_id}/keys/order",
        {"order": ",".join(str(k.id) for k in reversed(await stored_keys(services, upstream_id)))},
    )
    response = await client.post(f"/admin/upstreams/{upstream_id}/test", {"model": "fake-model"})
    assert response.code == 200
    page = body(response)
    result = page[page.index('data-testid="test-result"') :]
    assert "<dd>200</dd>" in result and "fake reply" in result
    assert re.search(r"<dd>\d+ ms</dd>", result)
    assert "<code>…BBBB</code>" in result
    sent = fake.received[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {SECOND}"
    assert sent.json["model"] == "fake-model" and sent.json["max_completion_tokens"] == 16
    assert FIRST not in page and SECOND not in page
    # The test does not count as traffic in the key ring.
    assert [k.requests for k in services.pool.key_states("local")] == [0, 0]
    assert ("upstream_tested", "local", "model=fake-model key=…BBBB status=200") in (
        await audit_rows(services)
    )
    # A chosen key, and an upstream that refuses it.
    first_id = (await stored_keys(services, upstream_id))[1].id
    fake.push(JsonReply(status=401, body={"error": {"message": f"bad key {FIRST}"}}))
    page = body(
        await client.post(
            f"/admin/upstreams/{upstream_id}/test", {"model": "m", "key": str(first_id)}
        )
    )
    result = page[page.index('data-testid="test-result"') :]
    assert "<dd>401</dd>" in result and "bad key …AAAA" in result
    assert fake.received[-1].headers["Authorization"] == f"Bearer {FIRST}"
    assert FIRST not in page


@pytest.mark.gen_test(timeout=30)
async def test_test_button_reports_connection_errors(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    await client.login()
    upstream_id = await add_upstream(client, fake, base_url="http://127.0.0.1:9/v1")
    page = body(await client.post(f"/admin/upstreams/{upstream_id}/test", {"model": "m"}))
    result = page[page.index('data-testid="test-result"') :]
    assert "no answer" in result and "cannot connect to upstream" in result
    missing = await client.post(f"/admin/upstreams/{upstream_id}/test", {"model": ""})
    assert missing.code == 400 and "Name a model to test with." in body(missing)


@pytest.mark.gen_test(timeout=30)
async def test_test_button_on_echo(client: Client, services: Services) -> None:
    await client.login()
    async with services.db.session() as session:
        echo_id = await session.scalar(select(Upstream.id).where(Upstream.name == "echo"))
    page = body(await client.post(f"/admin/upstreams/{echo_id}/test", {"model": ""}))
    result = page[page.index('data-testid="test-result"') :]
    assert "<dd>200</dd>" in result and "echo: Reply with the single word OK." in result


@pytest.mark.gen_test(timeout=30)
async def test_edit_and_delete_upstreams(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    await client.login()
    upstream_id = await with_keys(client, fake)
    form = {
        "name": "local",
        "kind": "openai",
        "base_url": fake.url,
        "rotation": "round_robin",
        "timeout": "30",
        "reasoning": "replay",
        "max_tokens_field": "max_completion_tokens",
        "tokenize_url": "",
        "enabled": "on",
    }
    response = await client.post(f"/admin/upstreams/{upstream_id}", form)
    assert response.headers["Location"] == f"/admin/upstreams/{upstream_id}?msg=upstream_updated"
    assert services.pool.get("local").spec.rotation == "round_robin"
    assert ring(services) == [FIRST, SECOND]  # keys untouched by a settings edit
    assert ("upstream_edited", "local", "rotation=round_robin") in await audit_rows(services)
    # Used by a route: refused.
    async with services.db.session() as session:
        echo_id = await session.scalar(select(Upstream.id).where(Upstream.name == "echo"))
    await client.post(
        "/admin/models", {"name": "m-*", "upstream": str(upstream_id), "enabled": "on"}
    )
    refused = await client.post(f"/admin/upstreams/{upstream_id}/delete")
    assert refused.headers["Location"] == f"/admin/upstreams/{upstream_id}?msg=upstream_in_use"
    assert "local" in services.pool.names()
    # Disabled: the gateway unloads it, the page still shows it.
    form["enabled"] = ""
    await client.post(f"/admin/upstreams/{upstream_id}", form)
    assert "local" not in services.pool.names()
    page = body(await client.get("/admin/upstreams"))
    assert "upstream disabled" in page
    deleted = await client.post(f"/admin/upstreams/{echo_id}/delete")
    assert deleted.headers["Location"] == "/admin/upstreams?msg=upstream_deleted"
    assert "echo" not in services.pool.names()
    async with services.db.session() as session:
        assert await session.get(Upstream, echo_id) is None


@pytest.mark.gen_test(timeout=30)
async def test_test_button_speaks_anthropic_to_anthropic_upstreams(
    client: Client, services: Services
) -> None:
    fake = await FakeUpstream("anthropic").start()
    try:
        await client.login()
        upstream_id = await add_upstream(client, fake, name="claude", kind="anthropic")
        await client.post(f"/admin/upstreams/{upstream_id}/keys", {"secret": FIRST})
        page = body(
            await client.post(f"/admin/upstreams/{upstream_id}/test", {"model": "claude-x"})
        )
        result = page[page.index('data-testid="test-result"') :]
        assert "<dd>200</dd>" in result and "fake reply" in result
        sent = fake.received[-1]
        assert sent.path == "/v1/messages"
        assert sent.headers["X-Api-Key"] == FIRST
        assert sent.json == {
            "model": "claude-x",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Reply with the single word OK."}],
        }
        assert FIRST not in page
    finally:
        await fake.stop()


@pytest.mark.parametrize(
    ("base_url", "model", "field"),
    [
        ("https://api.openai.com/v1", "o3-mini", "max_completion_tokens"),
        ("https://api.openai.com/v1", "gpt-4.1", "max_tokens"),
        ("http://127.0.0.1:8000/v1", "o3-mini", "max_tokens"),
    ],
)
def test_the_test_request_names_max_tokens_as_the_model_takes_it(
    base_url: str, model: str, field: str
) -> None:
    """OpenAI's reasoning models refuse ``max_tokens``: the Test button's request, like the
    gateway's, sends them ``max_completion_tokens`` (the upstream is set to max_tokens)."""
    from app.handlers.admin.probe import probe_body
    from app.upstreams.keyring import KeyRing
    from app.upstreams.pool import Upstream, UpstreamSpec

    spec = UpstreamSpec(name="u", kind="openai", base_url=base_url)
    endpoint, body = probe_body(Upstream(spec, KeyRing([]), None), model)
    assert endpoint == "chat" and body[field] == 16
    assert {"max_tokens", "max_completion_tokens"} & set(body) == {field}


@pytest.mark.gen_test(timeout=30)
async def test_thinking_replayed_as_reasoning_is_a_choice(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    """vLLM >= 0.16 reads earlier thinking only from ``reasoning``: the upstream form offers
    it, and the gateway's options carry it to the translator."""
    await client.login()
    page = body(await client.get("/admin/upstreams"))
    assert 'value="replay_reasoning"' in page and "replay earlier thinking as reasoning" in page
    await add_upstream(client, fake, reasoning="replay_reasoning")
    assert services.pool.get("local").spec.reasoning == "replay_reasoning"


@pytest.mark.gen_test(timeout=30)
async def test_chat_template_thinking_checkbox_round_trip(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    """Hybrid models behind vLLM, SGLang or llama.cpp are told to think (or not) through
    chat_template_kwargs when the upstream's box is ticked: off unless ticked, stored, shown
    ticked again, and cleared by an edit that leaves it unticked."""
    await client.login()
    page = body(await client.get("/admin/upstreams"))
    unticked = (
        '<input id="up-chat-template-thinking" name="chat_template_thinking" type="checkbox">'
    )
    assert unticked in page
    off_id = await add_upstream(client, fake, name="plain")
    assert services.pool.get("plain").spec.chat_template_thinking is False
    upstream_id = await add_upstream(client, fake, chat_template_thinking="on")
    assert services.pool.get("local").spec.chat_template_thinking is True
    ticked = 'name="chat_template_thinking" type="checkbox" checked>'
    assert ticked in body(await client.get(f"/admin/upstreams/{upstream_id}"))
    assert ticked not in body(await client.get(f"/admin/upstreams/{off_id}"))

    form = upstream_form(fake)
    await client.post(f"/admin/upstreams/{upstream_id}", form)
    assert services.pool.get("local").spec.chat_template_thinking is False
    assert ticked not in body(await client.get(f"/admin/upstreams/{upstream_id}"))
    await client.post(f"/admin/upstreams/{upstream_id}", form | {"chat_template_thinking": "on"})
    assert services.pool.get("local").spec.chat_template_thinking is True
    async with services.db.session() as session:
        row = await ua.get_upstream(session, upstream_id)
        assert row is not None and row.chat_template_thinking is True
    edits = [r for r in await audit_rows(services) if r[0] == "upstream_edited"]
    assert edits == [
        ("upstream_edited", "local", "chat_template_thinking="),
        ("upstream_edited", "local", "chat_template_thinking=on"),
    ]


SLOW_FROM_CONFIG = '[[upstreams]]\nname = "slow"\nkind = "echo"\ntimeout = 7200\n'


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("config_body", [SLOW_FROM_CONFIG])
async def test_an_upstream_from_the_config_file_saves_as_it_shows(
    client: Client, services: Services
) -> None:
    """Its timeout of 7200 s, which the file takes, could not be saved on its page: the
    input's max="3600" blocked the form, and the server refused it too."""
    await client.login()
    async with services.db.session() as session:
        row = await session.scalar(select(Upstream).where(Upstream.name == "slow"))
        assert row is not None
        form = form_of(row)
    page = body(await client.get(f"/admin/upstreams/{row.id}"))
    assert 'name="timeout" type="number" min="0" step="any" value="7200"' in page
    response = await client.post(f"/admin/upstreams/{row.id}", form | {"rotation": "round_robin"})
    assert response.code == 303, body(response)
    assert services.pool.get("slow").spec.timeout == 7200.0


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("x" * 300, False),  # stretched every page it shows on to 2589 px
        ("a:b/c d", False),  # ":" clashes with an inline upstream:model
        ("-local", False),
        ("a" * 65, False),
        ("local x", False),
        ("a" * 64, True),
        ("Local_2.eu-west", True),
    ],
)
async def test_a_new_upstream_name_is_checked(
    client: Client, services: Services, fake: FakeUpstream, name: str, accepted: bool
) -> None:
    await client.login()
    response = await client.post("/admin/upstreams", upstream_form(fake) | {"name": name})
    if accepted:
        assert response.code == 303, body(response)
        assert name in services.pool.names()
        return
    assert response.code == 400
    assert upstream_name_problem(name) is not None  # the config file refuses it too
    assert NAME_RULE in html.unescape(body(response))
    assert name not in services.pool.names()


NAME_RULE = (
    "An upstream name has up to 64 letters, digits, '.', '_' or '-', and starts with a "
    "letter or digit (no ':', '/' or spaces)."
)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("lang", "rule"),
    [
        ("en", NAME_RULE),
        ("fr", "Un nom d’amont compte au plus 64 lettres"),
        ("zh", "上游名称最多 64 个字符"),
    ],
)
async def test_the_name_rule_in_every_language(
    client: Client, fake: FakeUpstream, lang: str, rule: str
) -> None:
    await client.login()
    client.cookies["bk_lang"] = lang
    page = body(await client.get("/admin/upstreams"))
    assert 'aria-describedby="up-name-help"' in page
    response = await client.post("/admin/upstreams", upstream_form(fake) | {"name": "a:b"})
    assert response.code == 400
    assert rule in html.unescape(body(response))


@pytest.mark.gen_test(timeout=30)
async def test_an_upstream_named_before_the_rule_stays_editable(
    client: Client, services: Services, fake: FakeUpstream
) -> None:
    """Only a new or changed name is checked: a row from before shows and saves as it is."""
    await client.login()
    legacy = "a:b/c d"
    async with services.db.session() as session:
        fields = ua.UpstreamFields(name=legacy, kind="openai", base_url=fake.url)
        upstream_id = (await ua.create_upstream(session, fields)).id
        await session.commit()
    page = body(await client.get(f"/admin/upstreams/{upstream_id}"))
    assert f'value="{legacy}"' in page
    form = upstream_form(fake) | {"name": legacy}
    response = await client.post(f"/admin/upstreams/{upstream_id}", form | {"timeout": "45"})
    assert response.code == 303, body(response)
    response = await client.post(f"/admin/upstreams/{upstream_id}", form | {"name": "a:b/c e"})
    assert response.code == 400
    assert NAME_RULE in html.unescape(body(response))
    response = await client.post(f"/admin/upstreams/{upstream_id}", form | {"name": "abc-d"})
    assert response.code == 303, body(response)
    async with services.db.session() as session:
        row = await ua.get_upstream(session, upstream_id)
        assert row is not None and (row.name, row.timeout) == ("abc-d", 30.0)
