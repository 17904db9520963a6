"""Sign in and out, sessions, throttling, passwords, admins and the language switch."""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from app.db import admins
from app.handlers.admin import session as session_module
from app.services import Services
from tests.admin.conftest import ADMIN_PASSWORD, Client, body


async def audit_actions(services: Services) -> list[tuple[str, str, str]]:
    async with services.db.session() as session:
        rows = await admins.list_audit(session, limit=100)
    return [(r.username, r.action, r.target) for r in reversed(rows)]


@pytest.mark.gen_test(timeout=30)
async def test_pages_redirect_to_sign_in_with_next(client: Client) -> None:
    response = await client.get("/admin/usage?key=alice")
    assert response.code == 302
    location = urlsplit(response.headers["Location"])
    assert location.path == "/admin/login"
    assert parse_qs(location.query) == {"next": ["/admin/usage?key=alice"]}


@pytest.mark.gen_test(timeout=30)
async def test_login_page_has_the_stable_labels(client: Client) -> None:
    page = body(await client.get("/admin/login"))
    assert '<label for="username">Username</label>' in page
    assert '<label for="password">Password</label>' in page
    assert '<button type="submit" class="primary">Sign in</button>' in page
    assert 'name="_xsrf"' in page


@pytest.mark.gen_test(timeout=30)
async def test_sign_in_sets_a_safe_session_cookie_and_goes_to_next(
    client: Client, services: Services
) -> None:
    await client.get("/admin/login")
    response = await client.post(
        "/admin/login",
        {"username": "admin", "password": ADMIN_PASSWORD, "next": "/admin/keys"},
    )
    assert response.code == 303
    assert response.headers["Location"] == "/admin/keys"
    cookie = next(c for c in response.headers.get_list("Set-Cookie") if c.startswith("bk_session="))
    attributes = [a.strip().lower() for a in cookie.split(";")]
    assert "httponly" in attributes
    assert "samesite=lax" in attributes
    assert "path=/admin" in attributes
    assert "secure" not in attributes  # plain HTTP here; see the TLS test below
    assert (await client.get("/admin/keys")).code == 200
    assert ("admin", "sign_in", "admin") in await audit_actions(services)
    async with services.db.session() as session:
        row = await admins.get_admin(session, "admin")
    assert row is not None and row.last_login_at is not None


def test_session_cookie_is_secure_over_tls(services: Services) -> None:
    import tornado.httputil
    import tornado.web

    from app.db.models import AdminUser
    from app.handlers.admin.base import AdminDeps, AdminHandler
    from app.handlers.admin.rendering import make_environment
    from app.handlers.admin.throttle import LoginThrottle

    class Context:
        protocol = "https"
        remote_ip = "127.0.0.1"

    class Connection:
        context = Context()

        def set_close_callback(self, callback: Any) -> None:
            pass

    app = tornado.web.Application(cookie_secret="x" * 32)
    request = tornado.httputil.HTTPServerRequest(
        start_line=tornado.httputil.RequestStartLine("POST", "/admin/login", "HTTP/1.1"),
        headers=tornado.httputil.HTTPHeaders({"Host": "gateway.example"}),
        connection=Connection(),
    )
    assert request.protocol == "https"
    handler = AdminHandler(
        app, request, deps=AdminDeps(services, make_environment(), LoginThrottle())
    )
    handler.start_session(AdminUser(username="admin", password_hash="scrypt$x"))
    cookie = handler._new_cookie["bk_session"]  # type: ignore[attr-defined]
    assert cookie["secure"] is True
    assert cookie["httponly"] is True
    assert cookie["samesite"] == "Lax"


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize(
    "target", ["https://evil.example/", "//evil.example/admin/", "/\\evil.example", "/v1/models"]
)
async def test_no_open_redirect(client: Client, target: str) -> None:
    response = await client.post(
        "/admin/login", {"username": "admin", "password": ADMIN_PASSWORD, "next": target}
    )
    assert response.code == 303
    assert response.headers["Location"] == "/admin/"


@pytest.mark.gen_test(timeout=30)
async def test_wrong_password_and_unknown_user_are_refused_alike(
    client: Client, services: Services
) -> None:
    wrong = await client.post("/admin/login", {"username": "admin", "password": "nope"})
    unknown = await client.post("/admin/login", {"username": "mallory", "password": "nope"})
    assert wrong.code == unknown.code == 401
    assert "Wrong username or password." in body(wrong)
    assert "Wrong username or password." in body(unknown)
    assert "bk_session" not in client.cookies
    assert (await client.get("/admin/")).code == 302
    # Both in the audit trail, under the name tried, never the password.
    actions = await audit_actions(services)
    assert ("", "sign_in_failed", "admin") in actions
    assert ("", "sign_in_failed", "mallory") in actions
    async with services.db.session() as session:
        rows = await admins.list_audit(session, limit=100)
    assert all("nope" not in (r.detail + r.target) for r in rows)
    assert {r.remote_ip for r in rows if r.action == "sign_in_failed"} == {"127.0.0.1"}


@pytest.mark.gen_test(timeout=60)
async def test_repeated_failures_are_throttled(client: Client, anon: Client) -> None:
    for _ in range(4):
        response = await client.post("/admin/login", {"username": "admin", "password": "bad"})
        assert response.code == 401
    fifth = await client.post("/admin/login", {"username": "admin", "password": "bad"})
    assert fifth.code == 429
    assert fifth.headers["Retry-After"] == "60"
    assert "Too many failed sign-ins" in body(fifth)
    # Locked out even with the right password, for this IP and username.
    locked = await client.post("/admin/login", {"username": "admin", "password": ADMIN_PASSWORD})
    assert locked.code == 429
    assert "bk_session" not in client.cookies
    # Another username from the same IP is not locked.
    other = await anon.post("/admin/login", {"username": "someone", "password": "bad"})
    assert other.code == 401


@pytest.mark.gen_test(timeout=30)
async def test_scrypt_runs_off_the_event_loop(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = session_module.verify_password

    def spy(password: str, stored: str) -> bool:
        threads.append(threading.current_thread().name)
        return real(password, stored)

    monkeypatch.setattr(session_module, "verify_password", spy)
    await client.login()
    await client.post("/admin/login", {"username": "ghost", "password": "x"})
    assert len(threads) == 2
    assert threading.main_thread().name not in threads


@pytest.mark.gen_test(timeout=30)
async def test_sign_out_ends_the_session_on_the_server(
    client: Client, anon: Client, services: Services
) -> None:
    await client.login()
    await anon.login()  # the same admin in another browser
    stolen = dict(client.cookies)
    response = await client.post("/admin/logout")
    assert response.code == 303
    assert response.headers["Location"] == "/admin/login?msg=signed_out"
    assert "bk_session" not in client.cookies
    assert (await client.get("/admin/")).code == 302
    assert ("admin", "sign_out", "admin") in await audit_actions(services)
    # A copy of the cookie no longer signs anyone in (it used to, until it expired):
    # signing out ends the admin's sessions everywhere.
    replay = Client(client.base_url, cookies=stolen)
    assert (await replay.get("/admin/")).code == 302
    assert (await replay.post("/admin/keys", {"name": "sneaky"})).code in (302, 403)
    assert (await anon.get("/admin/")).code == 302
    await client.login()  # and signing in again works
    assert (await client.get("/admin/")).code == 200


@pytest.mark.gen_test(timeout=30)
async def test_forged_or_tampered_cookies_are_ignored(client: Client) -> None:
    await client.login()
    good = client.cookies["bk_session"]
    client.cookies["bk_session"] = good[:-1] + ("0" if good[-1] != "0" else "1")
    assert (await client.get("/admin/")).code == 302
    forged = Client(client.base_url, cookies={"bk_session": "admin|0000"})
    assert (await forged.get("/admin/")).code == 302


@pytest.mark.gen_test(timeout=60)
async def test_change_password_ends_other_sessions(
    client: Client, anon: Client, services: Services
) -> None:
    await client.login()
    await anon.login()
    page = body(await client.get("/admin/account"))
    assert '<label for="current">Current password</label>' in page
    wrong = await client.post(
        "/admin/account", {"current": "nope", "password": "n" * 12, "confirm": "n" * 12}
    )
    assert wrong.code == 400 and "The current password is wrong." in body(wrong)
    short = await client.post(
        "/admin/account", {"current": ADMIN_PASSWORD, "password": "short", "confirm": "short"}
    )
    assert short.code == 400 and "at least 8 characters" in body(short)
    differ = await client.post(
        "/admin/account",
        {"current": ADMIN_PASSWORD, "password": "a" * 12, "confirm": "b" * 12},
    )
    assert differ.code == 400 and "The two passwords differ." in body(differ)
    ok = await client.post(
        "/admin/account",
        {"current": ADMIN_PASSWORD, "password": "new-password-1", "confirm": "new-password-1"},
    )
    assert ok.code == 303
    assert (await client.get("/admin/")).code == 200  # this session got a fresh cookie
    assert (await anon.get("/admin/")).code == 302  # the other one ended
    fresh = Client(client.base_url)
    await fresh.login(password="new-password-1")
    assert ("admin", "password_changed", "admin") in await audit_actions(services)
    audit_page = body(await client.get("/admin/audit"))
    assert "new-password-1" not in audit_page


@pytest.mark.gen_test(timeout=60)
async def test_add_and_remove_admins(client: Client, anon: Client, services: Services) -> None:
    await client.login()
    page = body(await client.get("/admin/admins"))
    assert '<label for="new-admin">Username</label>' in page
    added = await client.post(
        "/admin/admins",
        {"username": "bob", "password": "bobs-password", "confirm": "bobs-password"},
    )
    assert added.code == 303
    again = await client.post(
        "/admin/admins", {"username": "bob", "password": "x" * 12, "confirm": "x" * 12}
    )
    assert again.code == 400 and "That admin already exists." in body(again)
    await anon.login("bob", "bobs-password")
    assert (await anon.get("/admin/")).code == 200
    async with services.db.session() as session:
        bob = await admins.get_admin(session, "bob")
        me = await admins.get_admin(session, "admin")
    assert bob is not None and me is not None
    # Nobody removes themselves.
    kept = await client.post(f"/admin/admins/{me.id}/delete")
    assert kept.headers["Location"] == "/admin/admins?msg=admin_kept"
    removed = await client.post(f"/admin/admins/{bob.id}/delete")
    assert removed.headers["Location"] == "/admin/admins?msg=admin_removed"
    assert (await anon.get("/admin/")).code == 302  # bob's session ended with bob
    actions = await audit_actions(services)
    assert ("admin", "admin_added", "bob") in actions
    assert ("admin", "admin_removed", "bob") in actions
    assert "bobs-password" not in body(await client.get("/admin/audit"))


@pytest.mark.gen_test(timeout=30)
async def test_english_whatever_the_browser_prefers_until_the_switcher_says(
    client: Client,
) -> None:
    """DESIGN.md's hooks (Username, Password, Sign in) hold for a browser of any language."""
    client.headers["Accept-Language"] = "fr-FR,fr;q=0.9"
    page = body(await client.get("/admin/login"))
    assert '<label for="username">Username</label>' in page and 'lang="en"' in page
    await client.post("/admin/lang", {"lang": "fr", "next": "/admin/login"})
    page = body(await client.get("/admin/login"))
    assert "Nom d’utilisateur" in page and 'lang="fr"' in page
    response = await client.post("/admin/lang", {"lang": "zh", "next": "/admin/login"})
    assert response.code == 303 and response.headers["Location"] == "/admin/login"
    assert client.cookies["bk_lang"] == "zh"
    page = body(await client.get("/admin/login"))
    assert '<label for="username">用户名</label>' in page and 'lang="zh-Hans"' in page
    await client.post("/admin/lang", {"lang": "klingon", "next": "https://evil.example/"})
    assert client.cookies["bk_lang"] == "zh"
    english = Client(client.base_url)
    assert "Username" in body(await english.get("/admin/login"))
