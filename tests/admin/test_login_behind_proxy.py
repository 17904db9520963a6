"""Signing in behind a proxy (``behind_proxy = true``): the client's address comes from
X-Real-IP / X-Forwarded-For, which a client can write itself, so claiming a new address
per guess must not get it more guesses; the audit trail keeps the real peer too."""

from __future__ import annotations

from typing import Any

import pytest

from app.db import admins
from app.handlers.admin.throttle import LoginThrottle
from tests.admin.conftest import Client
from tests.conftest import StartGateway

PASSWORD = "test-admin-pw"  # tests/conftest.py's config


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The clock of the throttle the server's dashboard routes are built with."""
    clock = Clock()
    monkeypatch.setattr("app.handlers.admin.LoginThrottle", lambda: LoginThrottle(clock=clock))
    return clock


def claim(client: Client, i: int) -> None:
    """A new forged address per request, through either header Tornado reads."""
    if i % 2:
        client.headers = {"X-Real-IP": f"203.0.113.{i}"}
    else:
        client.headers = {"X-Forwarded-For": f"198.51.100.{i}"}


async def sign_in(client: Client, password: str, username: str = "admin") -> Any:
    return await client.post("/admin/login", {"username": username, "password": password})


@pytest.mark.gen_test(timeout=60)
async def test_forged_addresses_do_not_dodge_the_username_lock(
    gateway: StartGateway, clock: Clock
) -> None:
    live = await gateway(server="behind_proxy = true")
    client = Client(live.url)
    codes = []
    for i in range(24):
        claim(client, i)
        codes.append((await sign_in(client, "wrong", ["admin", "Admin", " ADMIN "][i % 3])).code)
    # Each address failed once (the per-IP rule never fired); the username's 20th
    # failure locked it, from every address.
    assert codes == [401] * 19 + [429] * 5
    claim(client, 99)
    locked = await sign_in(client, PASSWORD)
    assert locked.code == 429
    assert locked.headers["Retry-After"] == "600"
    assert "bk_session" not in client.cookies
    # Another admin is not locked out by the guessing at this one.
    assert (await sign_in(client, "wrong", "bob")).code == 401
    # The cool-down ends: the real admin gets in again.
    clock.now += 600
    assert (await sign_in(client, PASSWORD)).code == 303
    assert "bk_session" in client.cookies


@pytest.mark.gen_test(timeout=30)
async def test_the_audit_trail_keeps_the_real_peer(gateway: StartGateway) -> None:
    forged = {"X-Real-IP": "203.0.113.9"}
    direct = await gateway()  # without a proxy the header is ignored: one address
    assert (await sign_in(Client(direct.url, headers=forged), PASSWORD)).code == 303
    await direct.server.stop(1)
    live = await gateway(server="behind_proxy = true")  # the same database
    client = Client(live.url, headers=forged)
    assert (await sign_in(client, "wrong")).code == 401
    assert (await sign_in(client, PASSWORD)).code == 303
    async with live.services.db.session() as session:
        rows = await admins.list_audit(session, limit=10)
    assert [(r.action, r.remote_ip) for r in reversed(rows)] == [
        ("sign_in", "127.0.0.1"),
        ("sign_in_failed", "203.0.113.9 via 127.0.0.1"),
        ("sign_in", "203.0.113.9 via 127.0.0.1"),
    ]
