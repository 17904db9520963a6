"""Every dashboard page needs a session, every POST needs the XSRF token, and every
page carries the security headers.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from app.handlers.admin import admin_routes
from app.handlers.admin.base import CSP
from app.services import Services
from tests.admin.conftest import Client, body
from tests.conftest import ECHO_CONFIG

# One concrete path per GET route (ids 1 exist: the bootstrap key, the echo upstream,
# the echo-model route and the admin).
PAGES = [
    "/admin/",
    "/admin/keys",
    "/admin/keys/1",
    "/admin/upstreams",
    "/admin/upstreams/1",
    "/admin/models",
    "/admin/models?resolve=echo-model",
    "/admin/models/1",
    "/admin/usage",
    "/admin/usage.csv",
    "/admin/audit",
    "/admin/admins",
    "/admin/account",
]

POSTS = [
    "/admin/login",
    "/admin/logout",
    "/admin/lang",
    "/admin/keys",
    "/admin/keys/1",
    "/admin/keys/1/revoke",
    "/admin/upstreams",
    "/admin/upstreams/1",
    "/admin/upstreams/1/delete",
    "/admin/upstreams/1/test",
    "/admin/upstreams/1/keys",
    "/admin/upstreams/1/keys/order",
    "/admin/upstreams/1/keys/1/up",
    "/admin/upstreams/1/keys/1/disable",
    "/admin/upstreams/1/keys/1/delete",
    "/admin/models",
    "/admin/models/order",
    "/admin/models/1",
    "/admin/models/1/down",
    "/admin/models/1/disable",
    "/admin/models/1/delete",
    "/admin/admins",
    "/admin/admins/1/delete",
    "/admin/account",
]


@pytest.fixture
def config_body() -> str:
    return ECHO_CONFIG


def test_the_lists_cover_every_route(services: Services) -> None:
    patterns = [r[0] for r in admin_routes(services)]
    for pattern in patterns:
        if pattern == "/admin":
            continue
        regex = re.compile(pattern + "$")
        covered = [p for p in PAGES + POSTS if regex.match(p.split("?")[0])]
        assert covered, pattern


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("path", PAGES)
async def test_every_page_needs_a_session(client: Client, path: str) -> None:
    response = await client.get(path)
    assert response.code == 302
    assert response.headers["Location"].startswith("/admin/login?next=")


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("path", PAGES)
async def test_every_page_renders_with_security_headers(client: Client, path: str) -> None:
    await client.login()
    response = await client.get(path)
    assert response.code == 200, body(response)
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "same-origin"
    if path != "/admin/usage.csv":
        page = body(response)
        assert "<script>" not in page and "style=" not in page and " on" + "click" not in page
        # Nothing is loaded from anywhere but this server.
        assert not re.search(r'(src|href|action)="(https?:)?//', page)


def test_csp_is_strict() -> None:
    assert "'unsafe-inline'" not in CSP and "'unsafe-eval'" not in CSP
    assert "script-src 'self'" in CSP and "frame-ancestors 'none'" in CSP
    assert "default-src 'none'" in CSP


@pytest.mark.gen_test(timeout=30)
async def test_error_pages_carry_the_headers_too(client: Client) -> None:
    await client.login()
    response = await client.get("/admin/keys/999")
    assert response.code == 404
    assert response.headers["Content-Security-Policy"] == CSP
    assert response.headers["X-Frame-Options"] == "DENY"
    login = await client.get("/admin/login")
    assert login.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("path", POSTS)
async def test_every_post_needs_the_xsrf_token(client: Client, path: str) -> None:
    await client.login()
    response = await client.post(path, {"name": "x", "order": "1"}, xsrf=False)
    assert response.code == 403
    assert response.headers["X-Frame-Options"] == "DENY"
    # A token that does not match the cookie is refused as well.
    client.cookies["_xsrf"] = client.cookies["_xsrf"]
    forged = await client.fetch("POST", path, "_xsrf=2%7Cdeadbeef%7C00%7C1")
    assert forged.code == 403


@pytest.mark.gen_test(timeout=60)
@pytest.mark.parametrize("path", [p for p in POSTS if p not in ("/admin/login", "/admin/lang")])
async def test_every_post_needs_a_session(client: Client, path: str) -> None:
    response = await client.post(path, {"name": "x"})
    assert response.code == 403


@pytest.mark.gen_test(timeout=30)
async def test_unknown_ids_are_404(client: Client) -> None:
    await client.login()
    for path in ("/admin/keys/42", "/admin/upstreams/42", "/admin/models/42"):
        assert (await client.get(path)).code == 404
    for path in ("/admin/keys/42/revoke", "/admin/upstreams/1/keys/42/up", "/admin/models/42/up"):
        assert (await client.post(path)).code == 404
    huge = "9" * 23  # past the id column: was an OverflowError, a 500
    for path in (f"/admin/keys/{huge}", f"/admin/upstreams/{huge}", f"/admin/models/{huge}"):
        assert (await client.get(path)).code == 404
    assert (await client.post(f"/admin/admins/{huge}/delete")).code == 404
    assert (await client.get("/admin/keys/" + "9" * 9)).code == 404  # the longest id there is
    assert (await client.get("/admin/keys/" + "2" * 10)).code == 404


class _Controls(HTMLParser):
    """Collects form controls and label targets of one page."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.labelled: set[str] = set()
        self.buttons: list[str] = []
        self._button: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "label" and attributes.get("for"):
            self.labelled.add(attributes["for"] or "")
        if tag in ("input", "select", "textarea") and attributes.get("type") != "hidden":
            self.controls.append(attributes)
        if tag == "button":
            self._button = []

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None:
            self.buttons.append("".join(self._button).strip())
            self._button = None


@pytest.mark.gen_test(timeout=30)
@pytest.mark.parametrize("path", [p for p in PAGES if not p.endswith(".csv")] + ["/admin/login"])
async def test_every_control_has_a_visible_label(client: Client, path: str) -> None:
    if path != "/admin/login":
        await client.login()
    parser = _Controls()
    parser.feed(body(await client.get(path)))
    assert parser.controls, path
    for control in parser.controls:
        assert control.get("id") in parser.labelled, (path, control)
    assert parser.buttons and all(parser.buttons), (path, parser.buttons)


@pytest.mark.gen_test(timeout=30)
async def test_action_urls_do_not_answer_get(client: Client) -> None:
    await client.login()
    for path in ("/admin/upstreams/1/test", "/admin/upstreams/1/keys", "/admin/keys/1/revoke"):
        assert (await client.get(path)).code == 405, path
