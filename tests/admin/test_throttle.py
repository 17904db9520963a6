"""Sign-in throttling and the post-sign-in redirect target (pure parts)."""

from __future__ import annotations

import pytest

from app.handlers.admin.base import safe_next
from app.handlers.admin.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_five_failures_lock_for_a_minute() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(4):
        assert throttle.failure("1.2.3.4", "admin") == 0
        assert throttle.locked_for("1.2.3.4", "admin") == 0
    assert throttle.failure("1.2.3.4", "admin") == 60
    assert throttle.locked_for("1.2.3.4", "admin") == 60
    clock.now += 59
    assert throttle.locked_for("1.2.3.4", "admin") == pytest.approx(1)
    clock.now += 1
    assert throttle.locked_for("1.2.3.4", "admin") == 0


def test_lock_is_per_ip_and_username_case_insensitively() -> None:
    throttle = LoginThrottle(clock=Clock())
    for _ in range(5):
        throttle.failure("1.2.3.4", "Admin")
    assert throttle.locked_for("1.2.3.4", "admin ") > 0
    assert throttle.locked_for("5.6.7.8", "admin") == 0
    assert throttle.locked_for("1.2.3.4", "bob") == 0


def test_failures_outside_the_window_do_not_count() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(4):
        throttle.failure("ip", "admin")
    clock.now += 61
    assert throttle.failure("ip", "admin") == 0
    assert throttle.locked_for("ip", "admin") == 0


def test_success_forgets_failures() -> None:
    throttle = LoginThrottle(clock=Clock())
    for _ in range(4):
        throttle.failure("ip", "admin")
    throttle.success("ip", "admin")
    assert throttle.failure("ip", "admin") == 0


def test_parallel_attempts_count_against_the_limit() -> None:
    throttle = LoginThrottle(clock=Clock())
    for _ in range(3):
        throttle.failure("ip", "admin")
    assert throttle.begin("ip", "admin") == 0
    assert throttle.begin("ip", "admin") == 0
    # Three failures and two checks under way: a sixth guess must wait.
    assert throttle.begin("ip", "admin") == 1.0
    throttle.end("ip", "admin")
    throttle.success("ip", "admin")
    throttle.end("ip", "admin")
    assert throttle.begin("ip", "admin") == 0
    throttle.end("ip", "admin")
    assert throttle._by_ip.entries == {}  # nothing pending, nothing failed: forgotten
    # The username's failures stay (they may come from other IPs); nothing is pending.
    assert [len(e.failures) for e in throttle._by_user.entries.values()] == [3]
    assert [e.pending for e in throttle._by_user.entries.values()] == [0]


def test_begin_respects_a_lockout() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for _ in range(5):
        throttle.failure("ip", "admin")
    assert throttle.begin("ip", "admin") == 60
    clock.now += 60
    assert throttle.begin("ip", "admin") == 0


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.handlers.admin.throttle.MAX_TRACKED", 10)
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for i in range(10):
        throttle.failure(f"ip{i}", "admin")
    clock.now += 120
    throttle.failure("new", "admin")
    assert len(throttle._by_ip.entries) == 1


def lock_username(throttle: LoginThrottle, name: str = "admin") -> list[float]:
    """20 failures for one username, each from another IP and spelled another way."""
    spellings = [name, name.upper(), f" {name.title()} ", f"{name}\t"]
    return [throttle.failure(f"10.0.0.{i}", spellings[i % 4]) for i in range(20)]


def test_twenty_failures_for_a_username_lock_it_from_every_ip() -> None:
    throttle = LoginThrottle(clock=Clock())
    assert lock_username(throttle) == [0] * 19 + [600]
    for ip in ("10.0.0.1", "203.0.113.7", "127.0.0.1"):
        assert throttle.locked_for(ip, "Admin") == 600
        assert throttle.begin(ip, " ADMIN ") == 600
    assert throttle.locked_for("203.0.113.7", "bob") == 0
    assert throttle.begin("203.0.113.7", "bob") == 0


def test_the_username_lock_ends_after_ten_minutes() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    lock_username(throttle)
    clock.now += 599
    assert throttle.begin("203.0.113.7", "admin") == pytest.approx(1)
    clock.now += 1
    assert throttle.locked_for("203.0.113.7", "admin") == 0
    assert throttle.begin("203.0.113.7", "admin") == 0
    throttle.end("203.0.113.7", "admin")
    throttle.success("203.0.113.7", "admin")
    assert throttle._by_user.entries == {}  # the lock is over and forgotten


def test_username_failures_outside_ten_minutes_do_not_count() -> None:
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    for i in range(19):
        throttle.failure(f"10.0.0.{i}", "admin")
    clock.now += 601
    assert throttle.failure("10.0.1.1", "admin") == 0
    assert throttle.locked_for("10.0.1.2", "admin") == 0


def test_a_success_does_not_clear_the_usernames_failures_from_elsewhere() -> None:
    throttle = LoginThrottle(clock=Clock())
    for i in range(19):
        throttle.failure(f"10.0.0.{i}", "admin")
    throttle.success("192.0.2.1", "admin")
    assert throttle.failure("10.0.1.1", "admin") == 600


def test_parallel_attempts_from_many_ips_count_against_the_username_limit() -> None:
    throttle = LoginThrottle(clock=Clock())
    for i in range(18):
        throttle.failure(f"10.0.0.{i}", "admin")
    assert throttle.begin("10.0.1.1", "admin") == 0
    assert throttle.begin("10.0.1.2", "admin") == 0
    assert throttle.begin("10.0.1.3", "admin") == 1.0
    # Refused by the username rule: the IP's own attempt is not left pending.
    assert ("10.0.1.3", "admin") not in throttle._by_ip.entries


def test_memory_is_bounded_under_random_names_and_addresses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("app.handlers.admin.throttle.MAX_TRACKED", 10)
    throttle = LoginThrottle(clock=Clock())
    lock_username(throttle)
    for i in range(200):  # all within the window: nothing is stale
        throttle.failure(f"198.51.100.{i}", f"guess{i}")
        assert len(throttle._by_ip.entries) <= 10
        assert len(throttle._by_user.entries) <= 10
    # The flood evicted the one-failure guesses, not the lock it may have aimed at.
    assert throttle.locked_for("203.0.113.7", "admin") == 600


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, "/admin/"),
        ("", "/admin/"),
        ("/admin/keys", "/admin/keys"),
        ("/admin/usage?key=alice&before=5", "/admin/usage?key=alice&before=5"),
        ("/admin", "/admin"),
        ("https://evil.example/admin/", "/admin/"),
        ("//evil.example/admin/", "/admin/"),
        ("/\\evil.example", "/admin/"),
        ("/admin\\..\\x", "/admin/"),
        ("javascript:alert(1)", "/admin/"),
        ("/v1/models", "/admin/"),
        ("/administrator", "/admin/"),
        ("/admin/\r\nSet-Cookie: x=1", "/admin/"),
        ("admin/keys", "/admin/"),
    ],
)
def test_safe_next(value: str | None, expected: str) -> None:
    assert safe_next(value) == expected
