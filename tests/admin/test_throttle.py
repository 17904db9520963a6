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
    assert throttle._entries == {}  # nothing pending, nothing failed: forgotten


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
    assert len(throttle._entries) == 1


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
