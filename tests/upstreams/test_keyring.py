"""KeyRing: rotation order, round robin, cooldowns on the injected clock, auto-disable."""

from __future__ import annotations

import pytest

from app.upstreams.keyring import FAILURE_COOLDOWN, RATE_LIMIT_COOLDOWN, KeyRing, KeyState
from tests.team.support import START, FakeClock


def ring(
    n: int = 3, rotation: str = "ordered", clock: FakeClock | None = None
) -> tuple[KeyRing, list[KeyState]]:
    changes: list[KeyState] = []
    keys = [KeyState(id=i + 1, secret=f"sk-key-{i + 1:04d}") for i in range(n)]
    r = KeyRing(keys, rotation, clock=clock or FakeClock(), on_change=changes.append)
    return r, changes


def secrets(keys: list[KeyState]) -> list[str | None]:
    return [k.secret for k in keys]


def test_ordered_always_starts_with_the_first_healthy_key() -> None:
    r, _ = ring()
    for _ in range(5):
        assert secrets(r.candidates()) == ["sk-key-0001", "sk-key-0002", "sk-key-0003"]


def test_round_robin_starts_one_further_each_request() -> None:
    r, _ = ring(rotation="round_robin")
    firsts = [r.candidates()[0].secret for _ in range(6)]
    assert firsts == ["sk-key-0001", "sk-key-0002", "sk-key-0003"] * 2
    assert secrets(r.candidates()) == ["sk-key-0001", "sk-key-0002", "sk-key-0003"]
    assert secrets(r.candidates()) == ["sk-key-0002", "sk-key-0003", "sk-key-0001"]


def test_rate_limited_key_cools_for_retry_after_then_returns() -> None:
    clock = FakeClock()
    r, changes = ring(clock=clock)
    first = r.keys[0]
    r.mark_rate_limited(first, 20, "slow down")
    assert first.state(clock()) == "cooling"
    assert (first.last_error, first.errors, first.cooldown_until) == ("slow down", 1, START + 20)
    assert changes == [first]
    assert secrets(r.candidates()) == ["sk-key-0002", "sk-key-0003"]
    assert r.soonest_recovery() == pytest.approx(20)
    clock.advance(19.9)
    assert secrets(r.candidates())[0] == "sk-key-0002"
    clock.advance(0.1)
    assert secrets(r.candidates())[0] == "sk-key-0001"
    assert r.soonest_recovery() is None


def test_rate_limit_without_retry_after_uses_the_default() -> None:
    clock = FakeClock()
    r, _ = ring(clock=clock)
    r.mark_rate_limited(r.keys[0], None, "429")
    assert r.keys[0].cooldown_until == START + RATE_LIMIT_COOLDOWN


def test_failures_cool_briefly() -> None:
    clock = FakeClock()
    r, _ = ring(clock=clock)
    r.mark_failed(r.keys[1], "HTTP 500")
    assert r.keys[1].cooldown_until == START + FAILURE_COOLDOWN
    assert FAILURE_COOLDOWN < RATE_LIMIT_COOLDOWN
    assert secrets(r.candidates()) == ["sk-key-0001", "sk-key-0003"]
    clock.advance(FAILURE_COOLDOWN)
    assert len(r.candidates()) == 3


def test_rejected_key_is_disabled_with_reason_and_time_and_never_comes_back_alone() -> None:
    clock = FakeClock()
    r, changes = ring(clock=clock)
    bad = r.keys[0]
    r.mark_rejected(bad, 401, "invalid x-api-key")
    assert not bad.enabled
    assert bad.disabled_reason == "HTTP 401: invalid x-api-key"
    assert bad.disabled_at == START
    assert bad.state(clock()) == "disabled"
    assert changes and changes[-1] is bad
    clock.advance(10 * 86400)
    assert secrets(r.candidates()) == ["sk-key-0002", "sk-key-0003"]
    assert r.soonest_recovery() is None  # a disabled key is not "recovering"


def test_soonest_recovery_is_the_nearest_cooldown() -> None:
    clock = FakeClock()
    r, _ = ring(clock=clock)
    r.mark_rate_limited(r.keys[0], 40, "a")
    r.mark_rate_limited(r.keys[1], 12, "b")
    r.mark_failed(r.keys[2], "c")
    assert r.candidates() == []
    assert r.soonest_recovery() == pytest.approx(FAILURE_COOLDOWN)
    clock.advance(FAILURE_COOLDOWN)
    assert secrets(r.candidates()) == ["sk-key-0003"]
    assert r.soonest_recovery() == pytest.approx(12 - FAILURE_COOLDOWN)


def test_a_keyless_upstream_is_never_disabled() -> None:
    clock = FakeClock()
    r = KeyRing([], clock=clock)
    only = r.keys[0]
    r.mark_rejected(only, 401, "no")
    assert only.enabled and only.cooldown_until == START + FAILURE_COOLDOWN


def test_success_counts_requests() -> None:
    r, changes = ring()
    r.mark_success(r.keys[0])
    r.mark_success(r.keys[0])
    assert (r.keys[0].requests, r.keys[0].errors) == (2, 0)
    assert len(changes) == 2


def test_display_never_shows_the_secret() -> None:
    key = KeyState(id=1, secret="sk-ant-very-secret-abcd")
    assert key.display == "…abcd"
    assert KeyState(id=1, secret="sk-x", label="team main").display == "team main"
    assert KeyState(id=None, secret=None).display == ""


def test_last_resort_is_the_keys_a_failure_cooled_soonest_back_first() -> None:
    """For when no key is healthy: failure-cooled keys by recovery time; a 429's stay out."""
    clock = FakeClock()
    r, _ = ring(clock=clock)
    r.mark_failed(r.keys[2], "HTTP 500")
    clock.advance(1)
    r.mark_failed(r.keys[0], "timeout")
    r.mark_rate_limited(r.keys[1], 20, "slow down")
    assert r.candidates() == []
    assert secrets(r.candidates(last_resort=True)) == ["sk-key-0003", "sk-key-0001"]
    r.mark_success(r.keys[2])  # tried as a last resort, and it answered: healthy again
    assert secrets(r.candidates()) == ["sk-key-0003"]
    r.mark_failed(r.keys[1], "HTTP 502")  # a failure after the 429: no longer rate limited
    assert "sk-key-0002" in secrets(r.candidates(last_resort=True))


def test_changes_are_logged_with_the_key_s_last_four_never_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    keys = [KeyState(id=i + 1, secret=f"sk-key-{i + 1:04d}") for i in range(3)]
    r = KeyRing(keys, clock=FakeClock(), name="main")
    caplog.set_level("INFO", logger="app.upstreams.keyring")
    r.mark_rate_limited(keys[0], 12, "slow down")
    r.mark_failed(keys[0], "still busy")  # already set aside: not logged again at INFO
    r.mark_refused(keys[1], "no such beta")  # a 403, about one request: DEBUG
    r.mark_rejected(keys[2], 401, "invalid x-api-key")
    lines = [(rec.levelname, rec.getMessage()) for rec in caplog.records]
    assert lines == [
        ("INFO", "upstream 'main' key …0001: slow down (set aside for 12 s)"),
        ("WARNING", "upstream 'main' key …0003 disabled (HTTP 401): an admin must re-enable it"),
    ]
    assert "sk-key" not in caplog.text
