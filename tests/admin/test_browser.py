"""The dashboard in real Chromium (Playwright), against the real server and a fake upstream.

The server runs on its own event loop in a background thread; Playwright's sync API
drives the browser from the test thread. Every page is saved under
``test-output/screenshots/``.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import threading
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import tornado.httpserver
import tornado.netutil

from app.db.engine import ROOT
from app.server import build_services
from app.services import Services
from app.settings import load_settings
from tests.admin.conftest import ADMIN_PASSWORD, full_app, write_config
from tests.fakes import FakeUpstream

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ROOT / "test-output" / "screenshots"
TEST_KEY = "bk-browser-test-key-0000000000"
KEY_ONE = "sk-fake-upstream-key-one-1111"
KEY_TWO = "sk-fake-upstream-key-two-2222"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None,
        reason=f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)",
    ),
]

T = TypeVar("T")


class LiveServer:
    """The gateway with its dashboard and a fake OpenAI upstream, on a loop of their own."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.port = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.fake: FakeUpstream | None = None
        self.services: Services | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="live-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        if not self.ready.wait(60) or self.error is not None:
            raise RuntimeError("the live server did not start") from self.error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.fake = await FakeUpstream("openai").start()
        config = f"""
[[upstreams]]
name = "echo"
kind = "echo"

[[upstreams]]
name = "fake"
kind = "openai"
base_url = "{self.fake.url}"

[[models]]
name = "echo-model"
upstream = "echo"

[[models]]
name = "fake-model"
upstream = "fake"

[[keys]]
name = "tester"
key = "{TEST_KEY}"
"""
        path = write_config(self.tmp_path, config)
        settings = load_settings(config_path=str(path), environ={}, cwd=self.tmp_path)
        self.services, _ = await build_services(settings)
        server = tornado.httpserver.HTTPServer(full_app(self.services))
        sockets = tornado.netutil.bind_sockets(0, address="127.0.0.1")
        server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            server.stop()
            await server.close_all_connections()
            await self.services.close()
            await self.fake.stop()

    def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Runs a coroutine on the server's loop and returns its result."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(make(), self.loop).result(30)  # type: ignore[arg-type]

    def flush_usage(self) -> None:
        assert self.services is not None
        services = self.services
        self.call(services.recorder.flush)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self.error is not None:
            raise self.error


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path)
    server.start()
    yield server
    server.stop()


def chat(live: LiveServer, key: str, model: str, text: str = "hello") -> tuple[int, Any]:
    """POST /v1/chat/completions; (status, parsed JSON body)."""
    request = urllib.request.Request(
        live.url + "/v1/chat/completions",
        data=json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_dashboard_end_to_end(live: LiveServer) -> None:
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    assert live.fake is not None
    problems: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(
            viewport={"width": 1360, "height": 900}, accept_downloads=True, locale="en-US"
        )
        page = context.new_page()

        def on_console(message: Any) -> None:
            # Error pages (the 401 of a wrong password) are reported as failed loads;
            # sub-resources are checked by the response handler below instead.
            if (
                message.type in ("error", "warning")
                and "Failed to load resource" not in message.text
            ):
                problems.append(message.text)

        def on_response(response: Any) -> None:
            if response.request.resource_type != "document" and response.status >= 400:
                problems.append(f"{response.status} {response.url}")

        def on_request_failed(request: Any) -> None:
            # Chromium fetches the favicon after the page loaded, and cancels the fetch when
            # the test has gone on to the next page first (seen on a busy machine).
            favicon = request.url.partition("?")[0].endswith("/static/favicon.svg")
            if not (favicon and request.failure == "net::ERR_ABORTED"):
                problems.append(f"failed: {request.url} {request.failure}")

        page.on("console", on_console)
        page.on("response", on_response)
        page.on("requestfailed", on_request_failed)
        page.on("pageerror", lambda e: problems.append(str(e)))

        def shot(name: str) -> None:
            page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

        # Sign in: an anonymous visit lands on the sign-in page and comes back.
        page.goto(live.url + "/admin/keys")
        expect(page).to_have_url(live.url + "/admin/login?next=%2Fadmin%2Fkeys")
        shot("login")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill("wrong password")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(live.url + "/admin/keys")

        # Create a key; it is shown once, with a working copy button.
        page.get_by_label("Name", exact=True).fill("browser-user")
        page.get_by_label("Requests per minute").fill("100")
        page.get_by_role("button", name="Create key").click()
        new_key = page.get_by_test_id("new-key").inner_text().strip()
        assert new_key.startswith("bk-")
        expect(page.get_by_role("button", name="Copy")).to_be_visible()
        shot("keys")

        # Use it through the API; the request shows on the usage page.
        status, answer = chat(live, new_key, "echo-model", "hello from the browser test")
        assert status == 200, answer
        assert answer["choices"][0]["message"]["content"] == "echo: hello from the browser test"
        live.flush_usage()
        page.get_by_role("link", name="Usage").click()
        row = page.locator("#usage tbody tr").first
        expect(row).to_contain_text("browser-user")
        expect(row).to_contain_text("echo-model")
        shot("usage")

        # Export CSV, and find the request there.
        with page.expect_download() as download_info:
            page.get_by_role("link", name="Export CSV").click()
        download = download_info.value
        assert download.suggested_filename.startswith("usage-")
        exported = list(csv.DictReader(io.StringIO(Path(download.path()).read_text())))
        mine = [r for r in exported if r["key_name"] == "browser-user"]
        assert len(mine) == 1
        assert (mine[0]["requested_model"], mine[0]["upstream"], mine[0]["status"]) == (
            "echo-model",
            "echo",
            "ok",
        )

        # Revoke it: the API refuses it at once.
        page.get_by_role("link", name="Keys").click()
        key_row = page.get_by_role("row").filter(has_text="browser-user")
        key_row.get_by_role("button", name="Revoke").click()
        expect(page.get_by_role("status")).to_contain_text("The key was revoked")
        expect(key_row).to_contain_text("revoked")
        status, answer = chat(live, new_key, "echo-model")
        assert status == 401, answer

        # Add two keys to the fake upstream; requests use the first one.
        page.get_by_role("link", name="Upstreams").click()
        shot("upstreams")
        page.get_by_role("link", name="fake", exact=True).first.click()
        for secret, label in ((KEY_ONE, "one"), (KEY_TWO, "two")):
            page.get_by_label("API key").fill(secret)
            page.get_by_label("Label (optional)").fill(label)
            page.get_by_role("button", name="Add key").click()
            expect(page.get_by_role("status")).to_contain_text("The key was added")
        assert KEY_ONE not in page.content() and KEY_TWO not in page.content()

        def used_key() -> str:
            assert live.fake is not None
            status, answer = chat(live, TEST_KEY, "fake-model")
            assert status == 200, answer
            return live.fake.received[-1].headers["Authorization"]

        assert used_key() == f"Bearer {KEY_ONE}"

        # Move the second key up: the next request uses it.
        rows = page.locator("tbody[data-reorder] tr")
        rows.nth(1).get_by_role("button", name="Move up").click()
        expect(page.get_by_role("status")).to_contain_text("The rotation order was changed.")
        expect(rows.nth(0)).to_contain_text("two")
        assert used_key() == f"Bearer {KEY_TWO}"

        # Drag the first row below the second (reorder.js): back to key one first.
        rows.nth(0).drag_to(rows.nth(1), target_position={"x": 40, "y": 30})
        expect(page.get_by_role("status")).to_contain_text("The new order was saved.")
        expect(rows.nth(0)).to_contain_text("one")
        assert used_key() == f"Bearer {KEY_ONE}"

        # Disable key one: requests go to key two.
        rows.nth(0).get_by_role("button", name="Disable").click()
        expect(rows.nth(0)).to_contain_text("disabled")
        assert used_key() == f"Bearer {KEY_TWO}"

        # The Test button sends a real request through the upstream.
        page.get_by_label("Model", exact=True).fill("fake-model")
        page.get_by_role("button", name="Test", exact=True).click()
        result = page.get_by_test_id("test-result")
        expect(result).to_contain_text("200")
        expect(result).to_contain_text("fake reply")
        assert KEY_ONE not in page.content() and KEY_TWO not in page.content()
        shot("upstream")

        # The remaining pages, each with a screenshot.
        page.get_by_role("link", name="Models").click()
        page.get_by_label("Model name", exact=True).fill("fake-model")
        page.get_by_role("button", name="Resolve").click()
        expect(page.get_by_test_id("resolution")).to_contain_text("fake")
        shot("models")
        page.get_by_role("link", name="Overview").click()
        expect(page.locator("svg.chart").first).to_be_visible()
        assert page.locator("svg.chart").count() == 6
        shot("overview")
        page.goto(live.url + "/admin/keys/1")
        # Every control of the key's page by its label (the chart of its models once took
        # the allowed-models field's id, and with it its label).
        for label in ("Requests per minute", "Tokens per minute", "Allowed models"):
            expect(page.get_by_label(label, exact=True)).to_have_count(1)
        shot("key")
        page.get_by_role("link", name="Audit").click()
        audit = page.locator("table.data tbody")
        for action in (
            "signed in",
            "key created",
            "key revoked",
            "upstream key added",
            "upstream keys reordered",
            "upstream key disabled",
            "upstream tested",
        ):
            expect(audit).to_contain_text(action)
        assert KEY_ONE not in page.content() and new_key not in page.content()
        shot("audit")
        page.get_by_role("link", name="Admins").click()
        shot("admins")
        page.goto(live.url + "/admin/account")
        shot("account")

        # Languages: the switcher submits on change (language.js) and sticks.
        page.goto(live.url + "/admin/")
        page.get_by_label("Language").select_option("fr")
        expect(page.get_by_role("heading", name="Vue d’ensemble")).to_be_visible()
        shot("overview-fr")
        page.get_by_label("Langue").select_option("zh")
        expect(page.get_by_role("heading", name="概览")).to_be_visible()
        page.get_by_role("link", name="用量").click()
        expect(page.get_by_role("link", name="导出 CSV")).to_be_visible()
        shot("usage-zh")
        page.get_by_label("语言").select_option("en")
        expect(page.get_by_role("heading", name="Usage")).to_be_visible()

        # Sign out.
        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        page.goto(live.url + "/admin/usage")
        expect(page).to_have_url(live.url + "/admin/login?next=%2Fadmin%2Fusage")
        browser.close()
    # No script errors and nothing blocked by the Content-Security-Policy.
    assert problems == []


def test_a_plain_click_on_revoke_revokes(live: LiveServer) -> None:
    """DESIGN.md's hook: a click on a key's Revoke revokes it. There is no confirm() as
    before a delete: Playwright dismisses a dialog nobody answers, and every script that
    clicks Revoke without answering one would have revoked nothing."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(locale="en-US")
        page.goto(live.url + "/admin/login")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        for name, answered in (("no-handler", False), ("accepting", True)):
            if answered:
                page.on("dialog", lambda dialog: dialog.accept())
            for where in ("list", "own-page"):
                page.goto(live.url + "/admin/keys")
                page.get_by_label("Name", exact=True).fill(f"{name}-{where}")
                page.get_by_role("button", name="Create key").click()
                row = page.get_by_role("row").filter(has_text=f"{name}-{where}")
                if where == "own-page":
                    row.get_by_role("link", name=f"{name}-{where}").click()
                    page.get_by_role("button", name="Revoke").click()
                else:
                    row.get_by_role("button", name="Revoke").click()
                expect(page.get_by_role("status")).to_contain_text("The key was revoked")
                expect(row).to_contain_text("revoked")
        browser.close()


def test_rotate_key_gives_a_new_key_and_refuses_the_old_one(live: LiveServer) -> None:
    """A leaked key: **Rotate key** on its page asks first (confirm.js), shows the new key
    once, and from then on the API refuses the old one and takes the new one."""
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(locale="en-US")
        page.goto(live.url + "/admin/keys")  # to the sign-in page, and back after it
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page).to_have_url(live.url + "/admin/keys")
        page.get_by_label("Name", exact=True).fill("leaky")
        page.get_by_label("Requests per minute").fill("7")
        page.get_by_role("button", name="Create key").click()
        old_key = page.get_by_test_id("new-key").inner_text().strip()
        assert chat(live, old_key, "echo-model")[0] == 200
        page.get_by_role("row").filter(has_text="leaky").get_by_role("link", name="leaky").click()

        # Dismissed: nothing happens.
        asked: list[str] = []

        def answer(accept: bool) -> Any:
            def handle(dialog: Any) -> None:
                asked.append(dialog.message)
                dialog.accept() if accept else dialog.dismiss()

            return handle

        page.once("dialog", answer(False))
        page.get_by_role("button", name="Rotate key").click()
        expect(page.get_by_test_id("new-key")).to_have_count(0)
        assert asked == ["Rotate the key leaky? Its current secret stops working at once."]
        assert chat(live, old_key, "echo-model")[0] == 200

        # Accepted: the new key, once; the old one is refused at once.
        page.once("dialog", answer(True))
        page.get_by_role("button", name="Rotate key").click()
        new_key = page.get_by_test_id("new-key").inner_text().strip()
        assert new_key.startswith("bk-") and new_key != old_key and len(asked) == 2
        expect(page.get_by_role("heading", name="New key for leaky")).to_be_visible()
        expect(page.get_by_role("button", name="Copy")).to_be_visible()
        expect(page.get_by_label("Requests per minute", exact=True)).to_have_value("7")
        shot = SHOTS / "key-rotated.png"
        page.screenshot(path=str(shot), full_page=True)
        status, answer_ = chat(live, old_key, "echo-model")
        assert status == 401, answer_
        status, answer_ = chat(live, new_key, "echo-model", "after the rotation")
        assert status == 200, answer_
        assert answer_["choices"][0]["message"]["content"] == "echo: after the rotation"
        # A reload sends the form again: refused, and the key just shown keeps working.
        page.reload()
        expect(page.get_by_role("alert")).to_contain_text("rotated again since this page")
        expect(page.get_by_test_id("new-key")).to_have_count(0)
        assert new_key not in page.content()
        assert chat(live, new_key, "echo-model")[0] == 200

        # The config file's key has no such button: its secret comes from the file.
        page.goto(live.url + "/admin/keys")
        page.get_by_role("row").filter(has_text="tester").get_by_role("link", name="tester").click()
        expect(page.get_by_role("heading", name="tester")).to_be_visible()
        expect(page.get_by_role("button", name="Rotate key")).to_have_count(0)
        browser.close()
