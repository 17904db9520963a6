"""RateLimiter: exact RPM/TPM edges over the sliding 60 s window, with an injected clock."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest

from app.accounting import RateLimiter
from app.auth import KeyRecord
from app.errors import RateLimitedError
from tests.team.support import START, FakeClock


def key(rpm: int | None = None, tpm: int | None = None, key_id: int = 1) -> KeyRecord:
    return KeyRecord(
        id=key_id, name=f"k{key_id}", key_hash=f"h{key_id}", prefix="bk-x", rpm=rpm, tpm=tpm
    )


def test_rpm_admits_exactly_n_then_refuses_until_the_oldest_leaves_the_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(rpm=3)
    for second in (0, 10, 20):
        clock.now = START + second
        limiter.admit(k, 1, "anthropic")
    clock.now = START + 59.999
    with pytest.raises(RateLimitedError) as info:
        limiter.admit(k, 1, "anthropic")
    assert info.value.retry_after == pytest.approx(0.001)
    assert "3 requests per minute" in info.value.message
    # The request admitted at 0 leaves the window at exactly 60.
    clock.now = START + 60
    limiter.admit(k, 1, "anthropic")
    with pytest.raises(RateLimitedError) as info:
        limiter.admit(k, 1, "anthropic")
    assert info.value.retry_after == pytest.approx(10)  # the one from 10 s leaves at 70


def test_refused_requests_do_not_count() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(rpm=1)
    limiter.admit(k, 1, "openai")
    for _ in range(5):
        clock.advance(10)
        with pytest.raises(RateLimitedError):
            limiter.admit(k, 1, "openai")
    clock.now = START + 60
    limiter.admit(k, 1, "openai")


def test_keys_have_separate_windows_and_defaults_apply_without_overrides() -> None:
    clock = FakeClock()
    limiter = RateLimiter(default_rpm=2, default_tpm=None, clock=clock)
    a, b, custom = key(key_id=1), key(key_id=2), key(rpm=3, key_id=3)
    assert limiter.limits(a) == (2, None)
    assert limiter.limits(custom) == (3, None)
    for _ in range(2):
        limiter.admit(a, 1, "openai")
        limiter.admit(b, 1, "openai")
    for _ in range(3):
        limiter.admit(custom, 1, "openai")
    for k in (a, b, custom):
        with pytest.raises(RateLimitedError):
            limiter.admit(k, 1, "openai")


def test_a_changed_key_record_brings_its_new_limits_and_keeps_the_window() -> None:
    """Keys edited in the dashboard or CLI arrive as new records: their limits apply at
    once, to the requests already in the window."""
    limiter = RateLimiter(clock=FakeClock())
    for _ in range(3):
        limiter.admit(key(rpm=5), 1, "openai")
    with pytest.raises(RateLimitedError):
        limiter.admit(key(rpm=3), 1, "openai")
    headers = limiter.admit(key(rpm=4), 1, "openai").headers
    assert (headers["x-ratelimit-limit-requests"], headers["x-ratelimit-remaining-requests"]) == (
        "4",
        "0",
    )
    assert limiter.admit(key(), 1, "openai").headers == {}  # limits removed: not counted
    six = key(rpm=6)
    for _ in range(2):
        limiter.admit(six, 1, "openai")
    with pytest.raises(RateLimitedError):
        limiter.admit(six, 1, "openai")


def test_no_limit_means_no_headers_and_no_refusal() -> None:
    limiter = RateLimiter(clock=FakeClock())
    k = key()
    for _ in range(1000):
        assert limiter.admit(k, 10**6, "anthropic").headers == {}


def test_tpm_reserves_the_estimate_and_refuses_what_would_exceed() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(tpm=1000)
    limiter.admit(k, 600, "openai")
    clock.advance(1)
    limiter.admit(k, 400, "openai")  # exactly at the limit: allowed
    clock.advance(1)
    with pytest.raises(RateLimitedError) as info:
        limiter.admit(k, 1, "openai")
    assert "1000 tokens per minute" in info.value.message
    # One token over: the first reservation (600 at t=0) must leave, at t=60.
    assert info.value.retry_after == pytest.approx(58)


def test_tpm_first_request_of_a_window_is_admitted_even_when_larger_than_the_limit() -> None:
    limiter = RateLimiter(clock=FakeClock())
    k = key(tpm=100)
    limiter.admit(k, 5000, "anthropic")  # else it could never run at all
    with pytest.raises(RateLimitedError):
        limiter.admit(k, 1, "anthropic")


def test_settle_trues_the_reservation_up_and_down() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(tpm=1000)
    first = limiter.admit(k, 900, "openai")
    with pytest.raises(RateLimitedError):
        limiter.admit(k, 200, "openai")
    limiter.settle(first, 100)  # the request used far less than estimated
    second = limiter.admit(k, 200, "openai")
    limiter.settle(second, 900)  # ... and this one far more
    with pytest.raises(RateLimitedError):
        limiter.admit(k, 1, "openai")


def test_real_usage_is_charged_when_the_request_ends() -> None:
    """A request longer than the window still costs its tokens, from when it ended."""
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(tpm=1000)
    long_request = limiter.admit(k, 10, "anthropic")
    clock.advance(90)  # a long stream: the reservation made at 0 has left the window
    limiter.settle(long_request, 1000)
    clock.advance(1)
    with pytest.raises(RateLimitedError) as info:
        limiter.admit(k, 10, "anthropic")
    assert info.value.retry_after == pytest.approx(59)
    clock.advance(59)
    limiter.admit(k, 10, "anthropic")


def test_anthropic_headers_on_admission_and_refusal() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(rpm=2, tpm=1000)
    headers = limiter.admit(k, 100, "anthropic").headers
    assert headers == {
        "anthropic-ratelimit-requests-limit": "2",
        "anthropic-ratelimit-requests-remaining": "1",
        "anthropic-ratelimit-requests-reset": "2025-06-15T12:01:00Z",
        "anthropic-ratelimit-tokens-limit": "1000",
        "anthropic-ratelimit-tokens-remaining": "900",
        "anthropic-ratelimit-tokens-reset": "2025-06-15T12:01:00Z",
    }
    clock.advance(30)
    limiter.admit(k, 100, "anthropic")
    with pytest.raises(RateLimitedError) as info:
        limiter.admit(k, 100, "anthropic")
    assert info.value.headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert info.value.headers["anthropic-ratelimit-requests-reset"] == "2025-06-15T12:01:00Z"
    assert info.value.headers["anthropic-ratelimit-tokens-remaining"] == "800"
    assert info.value.retry_after == pytest.approx(30)


def test_openai_headers_on_admission_and_refusal() -> None:
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(rpm=2, tpm=1000)
    headers = limiter.admit(k, 250, "openai").headers
    assert headers == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "750",
        "x-ratelimit-reset-tokens": "1m0s",
    }
    clock.advance(45.5)
    limiter.admit(k, 250, "openai")
    with pytest.raises(RateLimitedError) as info:
        limiter.admit(k, 250, "openai")
    assert info.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert info.value.headers["x-ratelimit-reset-requests"] == "15s"
    assert info.value.headers["x-ratelimit-remaining-tokens"] == "500"


def _settle_one(
    rng: random.Random,
    limiter: RateLimiter,
    open_: list[tuple[object, list[float]]],
    charges: list[list[float]],
    now: float,
    *,
    most: int,
) -> None:
    """Settles a random open admission with a random real usage, and the model with it:
    its reservation becomes 0 and the real usage a charge of now."""
    admission, entry = open_.pop(rng.randrange(len(open_)))
    actual = rng.randint(0, most)
    limiter.settle(admission, actual)  # type: ignore[arg-type]
    entry[1] = 0.0
    if actual:
        charges.append([now, float(actual)])


@pytest.mark.parametrize("seed", range(20))
def test_token_window_matches_a_list_of_every_charge(seed: int) -> None:
    """Reservations taken back in any order, before and after they leave the window: the
    tokens in the window are those of a plain list of every charge still in it."""
    rng = random.Random(seed)
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(tpm=10**12)
    charges: list[list[float]] = []  # [time, tokens], as the window should hold them
    open_: list[tuple[object, list[float]]] = []
    for _ in range(400):
        step = rng.random()
        if step < 0.45:
            estimate = rng.randint(1, 500)
            entry = [clock(), float(estimate)]
            charges.append(entry)
            open_.append((limiter.admit(k, estimate, "openai"), entry))
        elif step < 0.8 and open_:
            _settle_one(rng, limiter, open_, charges, clock(), most=500)
        else:
            clock.advance(rng.choice([0.5, 5.0, 30.0]))
        window = limiter._windows.get(k.id)
        if window is None:
            continue
        window.expire(clock())
        in_window = sum(t for when, t in charges if when > clock() - 60)
        assert window.used_tokens() == int(in_window)


def _reference_headers(
    dialect: str, rpm: int, tpm: int, requests: list[float], charges: list[list[float]], now: float
) -> dict[str, str]:
    """The limit headers by their definition, from every request and charge in the window."""
    in_window = [c for c in charges if c[0] > now - 60]
    req_reset = (min(requests) if requests else now) + 60
    tok_reset = (in_window[0][0] if in_window else now) + 60
    used = int(sum(c[1] for c in in_window))
    out = {}
    for kind, limit, left, reset in (
        ("requests", rpm, rpm - len(requests), req_reset),
        ("tokens", tpm, tpm - used, tok_reset),
    ):
        if dialect == "anthropic":
            when = datetime.fromtimestamp(math.floor(reset), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            out[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
            out[f"anthropic-ratelimit-{kind}-remaining"] = str(max(left, 0))
            out[f"anthropic-ratelimit-{kind}-reset"] = when
        else:
            seconds = reset - now
            if seconds < 1:
                text = f"{max(int(seconds * 1000), 0)}ms"
            else:
                minutes, secs = divmod(int(seconds + 0.999), 60)
                text = f"{minutes}m{secs}s" if minutes else f"{secs}s"
            out[f"x-ratelimit-limit-{kind}"] = str(limit)
            out[f"x-ratelimit-remaining-{kind}"] = str(max(left, 0))
            out[f"x-ratelimit-reset-{kind}"] = text
    return out


@pytest.mark.parametrize("seed", range(10))
def test_admission_headers_match_their_definition(seed: int) -> None:
    """Random admissions, settlements and clock steps on keys with both limits, in both
    dialects: every admission's headers are those computed from the window's contents."""
    rng = random.Random(seed)
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    k = key(rpm=rng.choice([40, 1000]), tpm=rng.choice([3000, 10**6]), key_id=seed + 1)
    assert k.rpm is not None and k.tpm is not None
    requests: list[float] = []
    charges: list[list[float]] = []
    open_: list[tuple[object, list[float]]] = []
    for _ in range(300):
        step = rng.random()
        if step < 0.5:
            estimate = rng.randint(1, 400)
            dialect = rng.choice(["anthropic", "openai"])
            now = clock()
            requests = [t for t in requests if t > now - 60]
            try:
                admission = limiter.admit(k, estimate, dialect)
            except RateLimitedError:
                continue
            requests.append(now)
            entry = [now, float(estimate)]
            charges.append(entry)
            expected = _reference_headers(dialect, k.rpm, k.tpm, requests, charges, now)
            assert admission.headers == expected
            open_.append((admission, entry))
        elif step < 0.8 and open_:
            _settle_one(rng, limiter, open_, charges, clock(), most=400)
        else:
            clock.advance(rng.choice([0.25, 0.9, 7.5, 30.0]))
