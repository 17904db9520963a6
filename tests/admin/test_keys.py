"""Proxy keys: create (shown once), list with usage totals, edit limits, revoke, per-key page."""

from __future__ import annotations

import html
import re
from datetime import UTC, date, datetime, timedelta

import pytest

from app.db import admins, keys
from app.db.models import UsageDaily
from app.errors import UnauthorizedError
from app.services import Services
from tests.admin.conftest import Client, body, record, seed_usage

NEW_KEY = re.compile(r'<code id="new-key" data-testid="new-key">([^<]+)</code>')


async def audit_rows(services: Services) -> list[tuple[str, str, str]]:
    async with services.db.session() as session:
        rows = await admins.list_audit(session, limit=200)
    return [(r.action, r.target, r.detail) for r in reversed(rows)]


def row_of(page: str, name: str) -> str:
    """The table row whose header cell names ``name`` (already escaped)."""
    for row in re.findall(r"<tr[^>]*>.*?</tr>", page, flags=re.S):
        if f">{name}</a></th>" in row:
            return row
    raise AssertionError(f"no row for {name}")


@pytest.mark.gen_test(timeout=30)
async def test_keys_page_has_the_stable_hooks(client: Client) -> None:
    await client.login()
    page = body(await client.get("/admin/keys"))
    assert '<label for="key-name">Name</label>' in page
    assert '<button type="submit" class="primary">Create key</button>' in page


@pytest.mark.gen_test(timeout=30)
async def test_create_key_shows_it_once_and_the_gateway_accepts_it(
    client: Client, services: Services
) -> None:
    await client.login()
    response = await client.post(
        "/admin/keys",
        {
            "name": "alice",
            "rpm": "60",
            "tpm": "100000",
            "models": "claude-*, gpt-4o",
            "expires": "2999-12-31",
            "note": "laptop",
        },
    )
    assert response.code == 201
    page = body(response)
    match = NEW_KEY.search(page)
    assert match is not None
    secret = match.group(1)
    assert secret.startswith("bk-") and len(secret) == 46
    record_ = services.keys.authenticate(secret, services.now)
    assert (record_.name, record_.rpm, record_.tpm) == ("alice", 60, 100000)
    assert record_.models == ("claude-*", "gpt-4o")
    row = row_of(page, "alice")
    assert f"<code>{secret[:10]}…</code>" in row
    assert "claude-*, gpt-4o" in row and "2999-12-31" in row and ">Revoke</button>" in row
    # Shown once: never again on any page.
    for path in ("/admin/keys", "/admin/keys/2", "/admin/audit", "/admin/"):
        assert secret not in body(await client.get(path))
    assert (
        "key_created",
        "alice",
        "rpm=60 tpm=100000 models=claude-*,gpt-4o expires=2999-12-31",
    ) in (await audit_rows(services))
    async with services.db.session() as session:
        row_ = await keys.get_key_by_name(session, "alice")
    assert row_ is not None and row_.source == "dashboard" and row_.note == "laptop"
    assert row_.expires_at == datetime(3000, 1, 1)


@pytest.mark.gen_test(timeout=30)
async def test_key_names_are_escaped(client: Client) -> None:
    await client.login()
    response = await client.post("/admin/keys", {"name": "<script>alert(1)</script>"})
    assert response.code == 201
    for page in (body(response), body(await client.get("/admin/keys"))):
        assert "<script>alert(1)</script>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": ""}, "Name is required."),
        ({"name": "x", "rpm": "ten"}, "Requests per minute must be a whole number."),
        ({"name": "x", "tpm": "0"}, "Tokens per minute must be at least 1."),
        ({"name": "x", "expires": "31/12/2030"}, "must be a date (YYYY-MM-DD)."),
        ({"name": "default"}, "A key named default already exists."),
    ],
)
async def test_create_key_validation(
    client: Client, services: Services, fields: dict[str, str], message: str
) -> None:
    await client.login()
    response = await client.post("/admin/keys", fields)
    assert response.code == 400
    page = body(response)
    assert html.escape(message, quote=False) in page
    assert 'data-testid="new-key"' not in page
    async with services.db.session() as session:
        assert [k.name for k in await keys.list_keys(session)] == ["default"]


@pytest.mark.gen_test(timeout=30)
async def test_revoke_stops_the_key_at_once(client: Client, services: Services) -> None:
    await client.login()
    secret = NEW_KEY.search(body(await client.post("/admin/keys", {"name": "bob"})))
    assert secret is not None
    async with services.db.session() as session:
        row = await keys.get_key_by_name(session, "bob")
    assert row is not None
    response = await client.post(f"/admin/keys/{row.id}/revoke")
    assert response.code == 303
    assert response.headers["Location"] == "/admin/keys?msg=key_revoked"
    with pytest.raises(UnauthorizedError, match="revoked"):
        services.keys.authenticate(secret.group(1), services.now)
    page = body(await client.get("/admin/keys?msg=key_revoked"))
    assert "The key was revoked" in page
    bob = row_of(page, "bob")
    assert ">revoked</span>" in bob and ">Revoke</button>" not in bob
    assert ("key_revoked", "bob", "") in await audit_rows(services)


@pytest.mark.gen_test(timeout=30)
async def test_edit_limits(client: Client, services: Services) -> None:
    await client.login()
    await client.post("/admin/keys", {"name": "carol", "rpm": "5"})
    async with services.db.session() as session:
        row = await keys.get_key_by_name(session, "carol")
    assert row is not None
    bad = await client.post(f"/admin/keys/{row.id}", {"rpm": "-1"})
    assert bad.code == 400 and "must be at least 1" in body(bad)
    response = await client.post(
        f"/admin/keys/{row.id}",
        {"rpm": "", "tpm": "5000", "models": "gpt-*", "expires": "2030-01-31", "note": "n"},
    )
    assert response.code == 303
    async with services.db.session() as session:
        row = await keys.get_key_by_name(session, "carol")
    assert row is not None
    assert (row.rpm, row.tpm, row.models, row.note) == (None, 5000, ["gpt-*"], "n")
    assert row.expires_at == datetime(2030, 2, 1)
    live = next(r for r in services.keys._by_hash.values() if r.name == "carol")
    assert (live.rpm, live.tpm, live.models) == (None, 5000, ("gpt-*",))
    page = body(await client.get(f"/admin/keys/{row.id}"))
    assert 'value="2030-01-31"' in page and 'value="gpt-*"' in page
    assert ("key_limits_edited", "carol", "rpm=- tpm=5000 models=gpt-* expires=2030-01-31") in (
        await audit_rows(services)
    )


async def add_daily(services: Services, day: date, key: str, model: str, **values: int) -> None:
    async with services.db.session() as session:
        session.add(UsageDaily(day=day, key_name=key, model=model, upstream="echo", **values))
        await session.commit()


@pytest.mark.gen_test(timeout=30)
async def test_list_totals_come_from_the_daily_rollup(client: Client, services: Services) -> None:
    await client.login()
    today = services.now().date()
    # Only roll-up rows, no raw events: the list must still show them.
    await add_daily(
        services, today, "default", "m1", requests=7, input_tokens=100, output_tokens=23
    )
    await add_daily(
        services, today - timedelta(days=400), "default", "m2", requests=3, output_tokens=7
    )
    row = row_of(body(await client.get("/admin/keys")), "default")
    cells = re.findall(r'<td class="num">([^<]*)</td>', row)
    assert cells[-2:] == ["10", "130"]


@pytest.mark.gen_test(timeout=30)
async def test_key_page_shows_usage_over_time_and_by_model(
    client: Client, services: Services
) -> None:
    await client.login()
    now = datetime.now(UTC).replace(tzinfo=None)
    seed_usage(
        services,
        [
            record(now - timedelta(days=2), key="default", model="gpt-4o", input_tokens=100),
            record(now - timedelta(days=2), key="default", model="gpt-4o", status="error"),
            record(now, key="default", model="claude-3-haiku", output_tokens=50),
            record(now, key="other", model="never-shown"),
        ],
    )
    page = body(await client.get("/admin/keys/1"))
    assert "never-shown" not in page
    day = (now - timedelta(days=2)).strftime("%m-%d")
    assert f"<title>{day}: ok 1, errors 1</title>" in page
    assert f"<title>{now:%m-%d}: ok 1, errors 0</title>" in page
    assert "<title>gpt-4o: 2</title>" in page and "<title>claude-3-haiku: 1</title>" in page
    by_model = re.findall(
        r'<tr><th scope="row">([^<]+)</th><td class="num">(\d+)</td><td class="num">(\d+)</td></tr>',
        page,
    )
    assert by_model == [("gpt-4o", "2", "120"), ("claude-3-haiku", "1", "60")]
    assert 'href="/admin/usage?key=default"' in page


HUGE = "99999999999999999999999"  # past a signed 64-bit column: was a 500 (OverflowError)


def window(services: Services) -> str:
    """The dashboard's message for an expiry day out of range: today .. 9999-12-30."""
    field = "Expires after (UTC day)"
    return f"{field} must be between {services.now().date()} and 9999-12-30."


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rpm": HUGE}, "Requests per minute must be between 1 and 2147483647."),
        ({"tpm": HUGE}, "Tokens per minute must be between 1 and 2147483647."),
        ({"rpm": "2147483648"}, "Requests per minute must be between 1 and 2147483647."),
        ({"tpm": "0"}, "Tokens per minute must be at least 1."),
        ({"expires": "9999-12-31"}, None),  # its next midnight does not exist: was a 500
        ({"expires": "2020-01-01"}, None),  # dead on arrival
    ],
)
async def test_create_refuses_out_of_range_limits_and_days(
    client: Client, services: Services, fields: dict[str, str], message: str | None
) -> None:
    await client.login()
    response = await client.post("/admin/keys", {"name": "zed"} | fields)
    assert response.code == 400
    page = body(response)
    assert html.escape(message or window(services), quote=False) in page
    assert f'value="{next(iter(fields.values()))}"' in page  # the form again, as filled
    async with services.db.session() as session:
        assert await keys.get_key_by_name(session, "zed") is None


@pytest.mark.gen_test(timeout=30)
async def test_create_takes_the_largest_limits_and_the_last_day(
    client: Client, services: Services
) -> None:
    await client.login()
    big = "2147483647"
    fields = {"name": "max", "rpm": big, "tpm": big, "expires": "9999-12-30"}
    assert (await client.post("/admin/keys", fields)).code == 201
    today = {"name": "today", "expires": services.now().date().isoformat()}
    assert (await client.post("/admin/keys", today)).code == 201
    async with services.db.session() as session:
        row = await keys.get_key_by_name(session, "max")
    assert row is not None and (row.rpm, row.tpm) == (2**31 - 1, 2**31 - 1)
    assert row.expires_at == datetime(9999, 12, 31)


@pytest.mark.gen_test(timeout=30)
async def test_edit_refuses_out_of_range_but_keeps_a_past_expiry_it_has(
    client: Client, services: Services
) -> None:
    await client.login()
    await client.post("/admin/keys", {"name": "erin", "rpm": "5"})
    async with services.db.session() as session:
        row = await keys.get_key_by_name(session, "erin")
        assert row is not None
        row.expires_at = keys.end_of_day(date(2020, 1, 1))  # it expired long ago
        await session.commit()
        key_id = row.id
    for fields, message in (
        ({"rpm": HUGE}, "Requests per minute must be between 1 and 2147483647."),
        ({"expires": "9999-12-31"}, window(services)),
        ({"expires": "2021-06-01"}, window(services)),  # another past day
    ):
        response = await client.post(f"/admin/keys/{key_id}", fields)
        assert response.code == 400
        assert html.escape(message, quote=False) in body(response)
    # Its own past day stays: its other limits can still be edited.
    response = await client.post(f"/admin/keys/{key_id}", {"rpm": "7", "expires": "2020-01-01"})
    assert response.code == 303
    async with services.db.session() as session:
        row = await keys.get_key_by_name(session, "erin")
    assert row is not None and row.rpm == 7 and row.expires_at == datetime(2020, 1, 2)


ROTATE_BUTTON = '<button type="submit" class="danger">Rotate key</button>'
FILED_KEY = "bk-filed-in-the-config-0123456789"


async def key_id_of(services: Services, name: str) -> int:
    async with services.db.session() as session:
        row = await keys.get_key_by_name(session, name)
    assert row is not None
    return row.id


async def key_hash_of(services: Services, name: str) -> str:
    async with services.db.session() as session:
        row = await keys.get_key_by_name(session, name)
    assert row is not None
    return row.key_hash


@pytest.mark.gen_test(timeout=30)
async def test_rotate_shows_the_new_key_once_and_the_old_one_stops_at_once(
    client: Client, services: Services
) -> None:
    await client.login()
    fields = {
        "name": "alice",
        "rpm": "60",
        "tpm": "5000",
        "models": "gpt-*",
        "expires": "2999-12-31",
    }
    created = NEW_KEY.search(body(await client.post("/admin/keys", fields)))
    assert created is not None
    old_key = created.group(1)
    key_id = await key_id_of(services, "alice")
    page = body(await client.get(f"/admin/keys/{key_id}"))
    form = re.search(r'<form method="post" action="/admin/keys/\d+" class="inline"[^>]*>', page)
    assert form is not None
    assert 'data-confirm="Rotate the key alice? Its current secret stops working at once."' in (
        form.group(0)
    )
    assert ROTATE_BUTTON in page and 'name="action" value="rotate"' in page

    response = await client.post(f"/admin/keys/{key_id}", {"action": "rotate"})
    assert response.code == 200
    page = body(response)
    match = NEW_KEY.search(page)
    assert match is not None
    new_key = match.group(1)
    assert new_key.startswith("bk-") and len(new_key) == 46 and new_key != old_key
    assert "New key for alice" in page and "The previous secret no longer works." in page
    # The gateway's table already refuses the old secret and knows the new one as the same key.
    with pytest.raises(UnauthorizedError, match="Invalid API key"):
        services.keys.authenticate(old_key, services.now)
    live = services.keys.authenticate(new_key, services.now)
    assert (live.id, live.name, live.rpm, live.tpm, live.models) == (
        key_id,
        "alice",
        60,
        5000,
        ("gpt-*",),
    )
    assert live.expires_at == datetime(3000, 1, 1)
    async with services.db.session() as session:
        row = await keys.get_key(session, key_id)
    assert row is not None and row.prefix == new_key[:10] and row.rotated_at is not None
    # Shown once: never again on any page; the key's page says when it was rotated.
    key_page = body(await client.get(f"/admin/keys/{key_id}"))
    assert "<dt>Rotated</dt>" in key_page and f"<code>{new_key[:10]}…</code>" in key_page
    for path in ("/admin/keys", f"/admin/keys/{key_id}", "/admin/audit", "/admin/"):
        assert new_key not in body(await client.get(path))
    assert ("key_rotated", "alice", f"{old_key[:10]}… -> {new_key[:10]}…") in (
        await audit_rows(services)
    )
    assert "key rotated" in body(await client.get("/admin/audit"))


@pytest.mark.gen_test(timeout=30)
async def test_rotate_needs_the_xsrf_token(client: Client, services: Services) -> None:
    await client.login()
    await client.post("/admin/keys", {"name": "bob"})
    key_id = await key_id_of(services, "bob")
    before = await key_hash_of(services, "bob")
    response = await client.post(f"/admin/keys/{key_id}", {"action": "rotate"}, xsrf=False)
    assert response.code == 403
    assert await key_hash_of(services, "bob") == before
    assert "key_rotated" not in {action for action, _, _ in await audit_rows(services)}
    response = await client.post(f"/admin/keys/{key_id}", {"action": "rotate"})
    assert response.code == 200 and await key_hash_of(services, "bob") != before


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("config_body", [f'[[keys]]\nname = "filed"\nkey = "{FILED_KEY}"\n'])
async def test_rotate_is_refused_for_revoked_and_config_file_keys(
    client: Client, services: Services
) -> None:
    await client.login()
    await client.post("/admin/keys", {"name": "carol"})
    carol = await key_id_of(services, "carol")
    assert (await client.post(f"/admin/keys/{carol}/revoke")).code == 303
    filed = await key_id_of(services, "filed")
    cases = (
        (carol, "carol", "A revoked key cannot be rotated; create a new key under another name."),
        (filed, "filed", "This key is defined in the config file: its secret comes from there."),
    )
    for key_id, name, message in cases:
        page = body(await client.get(f"/admin/keys/{key_id}"))
        assert ROTATE_BUTTON not in page and 'value="rotate"' not in page
        before = await key_hash_of(services, name)
        response = await client.post(f"/admin/keys/{key_id}", {"action": "rotate"})
        assert response.code == 400
        page = body(response)
        assert f'<p class="alert error" role="alert">{message}' in page
        assert 'data-testid="new-key"' not in page
        assert await key_hash_of(services, name) == before
    # The file's key is told apart on its page, and keeps working.
    assert "its secret comes from there" in body(await client.get(f"/admin/keys/{filed}"))
    assert services.keys.authenticate(FILED_KEY, services.now).name == "filed"
    assert "key_rotated" not in {action for action, _, _ in await audit_rows(services)}


@pytest.mark.gen_test(timeout=30)
async def test_a_rotate_form_sent_twice_rotates_once(client: Client, services: Services) -> None:
    """A reload of the answer sends the form again: the key it showed must stay the key."""
    await client.login()
    await client.post("/admin/keys", {"name": "dora"})
    key_id = await key_id_of(services, "dora")
    page = body(await client.get(f"/admin/keys/{key_id}"))
    assert '<input type="hidden" name="rotations" value="0">' in page
    first = await client.post(f"/admin/keys/{key_id}", {"action": "rotate", "rotations": "0"})
    match = NEW_KEY.search(body(first))
    assert first.code == 200 and match is not None
    rotated = await key_hash_of(services, "dora")
    again = await client.post(f"/admin/keys/{key_id}", {"action": "rotate", "rotations": "0"})
    assert again.code == 400
    assert "This key was rotated again since this page was shown" in body(again)
    assert 'data-testid="new-key"' not in body(again)
    assert await key_hash_of(services, "dora") == rotated
    assert services.keys.authenticate(match.group(1), services.now).name == "dora"
    # The page as shown after the rotation rotates it once more.
    assert '<input type="hidden" name="rotations" value="1">' in body(first)
    third = await client.post(f"/admin/keys/{key_id}", {"action": "rotate", "rotations": "1"})
    assert third.code == 200 and await key_hash_of(services, "dora") != rotated
    actions = [action for action, target, _ in await audit_rows(services) if target == "dora"]
    assert actions == ["key_created", "key_rotated", "key_rotated"]
