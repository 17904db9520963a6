"""UpstreamPool.update: live key state carries over; admin changes from the database win."""

from __future__ import annotations

import pytest

from app.upstreams.keyring import KeyState
from app.upstreams.pool import UpstreamPool, UpstreamSpec

pytestmark = pytest.mark.gen_test


async def test_update_keeps_live_state_and_takes_admin_changes() -> None:
    now = [1000.0]
    pool = UpstreamPool(clock=lambda: now[0])
    spec = UpstreamSpec(name="u", kind="openai", base_url="http://127.0.0.1:9/v1")
    try:
        pool.update(
            [spec], {"u": [KeyState(id=1, secret="sk-aaaa"), KeyState(id=2, secret="sk-bbbb")]}
        )
        first, second = pool.key_states("u")
        pool.get("u").ring.mark_rate_limited(first, 30, "slow down")
        # The admin disables key 2 in the dashboard with a reason, and relabels key 1.
        pool.update(
            [spec],
            {
                "u": [
                    KeyState(id=1, secret="sk-aaaa", label="primary"),
                    KeyState(
                        id=2,
                        secret="sk-bbbb",
                        enabled=False,
                        disabled_reason="rotated out",
                        disabled_at=999.0,
                    ),
                ]
            },
        )
        kept1, kept2 = pool.key_states("u")
        assert kept1 is first and kept1.label == "primary"
        assert kept1.cooldown_until == 1030.0 and kept1.errors == 1
        assert (kept2.enabled, kept2.disabled_reason, kept2.disabled_at) == (
            False,
            "rotated out",
            999.0,
        )
        assert pool.get("u").ring.candidates() == []
        # Re-enabled: the reason goes away with the flag.
        pool.update(
            [spec], {"u": [KeyState(id=1, secret="sk-aaaa"), KeyState(id=2, secret="sk-bbbb")]}
        )
        assert (kept2.enabled, kept2.disabled_reason) == (True, None)
        assert pool.get("u").ring.candidates() == [kept2]
    finally:
        await pool.close()
