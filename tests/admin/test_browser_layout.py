"""The dashboard's layout in real Chromium, over realistic data: no page wider than a phone's
or a laptop's screen, wide tables scrolling in a box of their own with a cue that they do,
the routes' buttons in reach; and an upstream's form taking what the config file takes.

Pages are saved under ``test-output/screenshots/layout-<width>-<page>.png``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from app.auth import hash_password
from app.db import admins, keys
from app.db import routes_admin as ra
from app.db import upstreams_admin as ua
from app.services import Services
from tests.admin.conftest import ADMIN_PASSWORD, record, seed_usage
from tests.admin.test_browser import ARGS, CHROMIUM, SHOTS, LiveServer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        shutil.which(CHROMIUM) is None,
        reason=f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)",
    ),
]

PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 900}
AZURE = "azure-openai-sweden-central-prod-gpt-4o-2024-08-06-deployment-eu"  # 64, the most
# Named before names were checked: it must still show (and wrap) on every page.
LEGACY = "legacy:" + "x" * 150


async def seed(services: Services) -> dict[str, int]:
    """Upstreams with keys, five routes, keys with limits, admins and audit lines, the
    way a team's gateway looks after a few weeks; returns the ids the pages need."""
    async with services.db.session() as session:
        router = await ua.create_upstream(
            session,
            ua.UpstreamFields(
                name="openrouter",
                kind="openai",
                base_url="https://openrouter.ai/api/v1",
                rotation="round_robin",
                timeout=7200,  # as the config file takes it
            ),
        )
        azure = await ua.create_upstream(
            session,
            ua.UpstreamFields(
                name=AZURE,
                kind="openai",
                base_url="https://contoso-ai-swedencentral.openai.azure.com/openai/deployments/"
                "gpt-4o-2024-08-06-global-standard",
            ),
        )
        legacy = await ua.create_upstream(
            session, ua.UpstreamFields(name=LEGACY, kind="anthropic", base_url="https://x.test")
        )
        for row, labels in ((router, ("primary-team-budget", "fallback-personal")), (azure, ("",))):
            for n, label in enumerate(labels):
                secret = f"sk-or-v1-{n}{'0123456789abcdef' * 4}"
                await ua.add_key(session, row, services.secrets.encrypt(secret), secret[-4:], label)
        routes = [
            ("claude-3-5-sonnet-*", router, "anthropic/claude-3.5-sonnet", 0.7, 8192, 200_000,
             ("gpt-4o-mini", "claude-3-haiku-20240307"), True),
            ("gpt-4o*", azure, "gpt-4o-2024-08-06", None, 16_384, 128_000,
             ("claude-3-5-sonnet-latest",), False),
            ("qwen2.5-coder:32b-instruct-q4_K_M", router, "qwen/qwen-2.5-coder-32b-instruct",
             0.2, 4096, 32_768, (), False),
        ]  # fmt: skip
        for name, upstream, target, temperature, max_tokens, window, fallbacks, cache in routes:
            await ra.create_route(
                session,
                ra.RouteFields(
                    name=name,
                    upstream_id=upstream.id,
                    target=target,
                    temperature=temperature,
                    max_tokens=max_tokens,
                    context_window=window,
                    fallbacks=fallbacks,
                    prompt_cache=cache,
                ),
            )
        today = services.now().date()
        for name, models in (
            ("ci-pipeline-nightly-integration-tests", ("claude-3-5-sonnet-*", "gpt-4o*")),
            ("data-science-notebooks-shared", ()),
            ("support-bot-production-eu-west", ("qwen2.5-coder:32b-instruct-q4_K_M",)),
        ):
            key_row, _ = await keys.create_key(
                session,
                name,
                rpm=600,
                tpm=2_000_000,
                models=models,
                expires=today + timedelta(days=90),
                note="Owner: platform team; rotate every quarter",
                source="dashboard",
            )
        await admins.set_admin_password(session, "operations-oncall", hash_password("x" * 16))
        await admins.audit(
            session,
            "admin",
            "upstream_edited",
            target=AZURE,
            detail="timeout=7200 rotation=round_robin base_url=https://contoso-ai-swedencentral"
            ".openai.azure.com/openai/deployments/gpt-4o-2024-08-06-global-standard",
            remote_ip="2001:db8:85a3::8a2e:370:7334 via 127.0.0.1",
        )
        await session.commit()
        ids = {"router": router.id, "azure": azure.id, "legacy": legacy.id, "key": key_row.id}
    await services.reload()
    return ids


def usage(services: Services) -> None:
    now = services.now()
    statuses = ["ok", "ok", "ok", "error", "rate_limited", "ok", "client_closed"]
    models = [
        "claude-3-5-sonnet-20241022",
        "gpt-4o-2024-08-06",
        "qwen2.5-coder:32b-instruct-q4_K_M",
    ]
    records = [
        record(
            now - timedelta(minutes=i),
            key=["ci-pipeline-nightly-integration-tests", "support-bot-production-eu-west"][i % 2],
            model=models[i % 3],
            upstream=["openrouter", AZURE][i % 2],
            upstream_key="primary-team-budget" if i % 2 == 0 else None,
            target_model=["anthropic/claude-3.5-sonnet", "gpt-4o-2024-08-06"][i % 2],
            status=statuses[i % len(statuses)],
            error_message="upstream answered HTTP 529: overloaded" if i % 7 == 3 else None,
            request_id=f"chatcmpl-{i:04d}AbCdEfGhIjKlMnOpQrStUvWxYz012345",
            client_dialect=["anthropic", "openai"][i % 2],
            endpoint=["messages", "responses", "count_tokens"][i % 3],
            stream=i % 2 == 0,
            input_tokens=12_345 * i,
            output_tokens=1_234 * i,
            latency_ms=0.4 if i % 5 == 0 else 12_345.6,
            ttft_ms=812.3 if i % 2 else None,
        )
        for i in range(60)
    ]
    seed_usage(services, records)


class Site:
    """The seeded server, a browser, and the page ids."""

    def __init__(self, live: LiveServer, browser: Any, ids: dict[str, int]) -> None:
        self.live = live
        self.browser = browser
        self.ids = ids

    def page(self, viewport: dict[str, int]) -> Any:
        """A signed-in page at ``viewport``; console errors (a script the CSP blocked, a
        script error) and failed sub-resources go to ``page.problems``."""
        context = self.browser.new_context(viewport=viewport, locale="en-US")
        page = context.new_page()
        problems: list[str] = []

        def on_console(message: Any) -> None:
            # A form's 400 page is a failed load too; sub-resources are checked below.
            if message.type == "error" and "Failed to load resource" not in message.text:
                problems.append(message.text)

        def on_response(response: Any) -> None:
            if response.request.resource_type != "document" and response.status >= 400:
                problems.append(f"{response.status} {response.url}")

        page.on("console", on_console)
        page.on("response", on_response)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.problems = problems
        page.goto(self.live.url + "/admin/login")
        page.get_by_label("Username").fill("admin")
        page.get_by_label("Password").fill(ADMIN_PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(self.live.url + "/admin/")
        return page

    def paths(self) -> list[str]:
        ids = self.ids
        return [
            "/admin/",
            "/admin/keys",
            f"/admin/keys/{ids['key']}",
            "/admin/upstreams",
            f"/admin/upstreams/{ids['router']}",
            f"/admin/upstreams/{ids['azure']}",
            f"/admin/upstreams/{ids['legacy']}",
            "/admin/models",
            "/admin/models?resolve=claude-3-5-sonnet-20241022",
            "/admin/models/3",
            "/admin/usage",
            "/admin/usage?since=2999-01-02&until=2999-01-01",
            "/admin/audit",
            "/admin/admins",
            "/admin/account",
        ]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from playwright.sync_api import sync_playwright

    live = LiveServer(tmp_path_factory.mktemp("layout"))
    live.start()
    try:
        services = live.services
        assert services is not None
        ids = live.call(lambda: seed(services))
        usage(services)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            yield Site(live, browser, ids)
            browser.close()
    finally:
        live.stop()


def page_width(page: Any) -> int:
    return int(page.evaluate("document.documentElement.scrollWidth"))


def shot(page: Any, width: int, path: str) -> None:
    name = path.strip("/").replace("/", "-").replace("?", "-").replace("=", "-") or "overview"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"layout-{width}-{name}.png"), full_page=True)


@pytest.mark.parametrize("viewport", [PHONE, LAPTOP], ids=["390", "1280"])
def test_no_page_is_wider_than_the_screen(site: Site, viewport: dict[str, int]) -> None:
    """Wide tables scroll in their own box; the page never does (on a phone, the overview's
    and the upstreams' tables pushed it to 857 and 764 px, and a long upstream name to
    2589 px on any screen)."""
    page = site.page(viewport)
    too_wide = {}
    for path in site.paths():
        page.goto(site.live.url + path)
        shot(page, viewport["width"], path)
        if page_width(page) > viewport["width"]:
            too_wide[path] = page_width(page)
    page.context.clear_cookies()  # and the sign-in page, signed out
    page.goto(site.live.url + "/admin/login")
    if page_width(page) > viewport["width"]:
        too_wide["/admin/login"] = page_width(page)
    assert too_wide == {}
    assert page.problems == []


def test_the_routes_buttons_are_in_reach_on_a_laptop(site: Site) -> None:
    """At 1280 px, Disable / Edit / Delete were behind a scroll no one could see."""
    page = site.page(LAPTOP)
    page.goto(site.live.url + "/admin/models")
    rows = page.locator("tbody[data-reorder] tr")
    assert rows.count() == 5
    box = page.locator(".scroll", has=page.locator("tbody[data-reorder]"))
    assert box.evaluate("b => b.scrollWidth <= b.clientWidth"), "the routes table scrolls"
    edge = min(box.bounding_box()["x"] + box.bounding_box()["width"], LAPTOP["width"])
    for i in range(rows.count()):
        controls = rows.nth(i).locator("td.row-actions").locator("button, a")
        names = [controls.nth(j).inner_text() for j in range(controls.count())]
        assert {"Edit", "Delete"} <= set(names)
        for j in range(controls.count()):
            control = controls.nth(j).bounding_box()
            assert control["x"] >= 0 and control["x"] + control["width"] <= edge, names[j]


def test_a_table_wider_than_its_box_shows_it(site: Site) -> None:
    """The hidden columns had no cue at all; the edge with more now fades (scroll.js)."""
    from playwright.sync_api import expect

    page = site.page(PHONE)
    page.goto(site.live.url + "/admin/usage")
    box = page.locator(".scroll", has=page.locator("#usage"))
    assert box.evaluate("b => b.scrollWidth > b.clientWidth")
    expect(box).to_have_class("scroll more-right")  # the right edge fades
    assert box.evaluate("b => getComputedStyle(b).maskImage").startswith("linear-gradient")
    box.evaluate("b => { b.scrollLeft = b.scrollWidth; }")
    expect(box).to_have_class("scroll more-left")  # scrolled to the end: the left one
    box.evaluate("b => { b.scrollLeft = b.scrollWidth / 3; }")
    expect(box).to_have_class(re.compile(r"^scroll (more-left more-right|more-right more-left)$"))
    # A table that fits has no cue: nothing faded over the routes' buttons.
    page.set_viewport_size(LAPTOP)
    page.goto(site.live.url + "/admin/models")
    routes = page.locator(".scroll", has=page.locator("tbody[data-reorder]"))
    assert routes.evaluate("b => getComputedStyle(b).maskImage") == "none"
    assert page.problems == []


def test_an_upstream_saves_with_a_timeout_the_config_file_takes(site: Site) -> None:
    """Its timeout of 7200 s blocked the form in the browser (max="3600"); 0 is still
    refused, by the server's message rather than the browser's."""
    page = site.page(LAPTOP)
    page.goto(f"{site.live.url}/admin/upstreams/{site.ids['router']}")
    assert page.get_by_label("Timeout (seconds)").input_value() == "7200"
    page.get_by_role("button", name="Save").click()
    page.get_by_role("status").filter(has_text="The upstream was saved.").wait_for()
    page.get_by_label("Timeout (seconds)").fill("0")
    page.get_by_role("button", name="Save").click()
    alert = page.get_by_role("alert")
    alert.wait_for()
    assert alert.inner_text() == "Timeout (seconds) must be a number above 0."
    assert page.problems == []
