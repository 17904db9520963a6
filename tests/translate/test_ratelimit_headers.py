"""A backend's rate-limit headers in the client's dialect (PROTOCOL.md §6.11): the six
with a counterpart translated (resets between durations and RFC 3339 times), every one
kept as it came when the dialects match, none when the backend sent none."""

from __future__ import annotations

import pytest

from app.dialects.ratelimits import backend_limit_headers, duration_seconds

NOW = 1_700_000_000.0  # 2023-11-14T22:13:20Z

OPENAI_HEADERS = {
    "X-RateLimit-Limit-Requests": "500",
    "x-ratelimit-remaining-requests": "499",
    "x-ratelimit-reset-requests": "120ms",
    "x-ratelimit-limit-tokens": "30000",
    "x-ratelimit-remaining-tokens": "29000",
    "x-ratelimit-reset-tokens": "6m0s",
    "Content-Type": "application/json",
    "openai-processing-ms": "12",
}
ANTHROPIC_HEADERS = {
    "anthropic-ratelimit-requests-limit": "50",
    "anthropic-ratelimit-requests-remaining": "49",
    "anthropic-ratelimit-requests-reset": "2023-11-14T22:14:20Z",
    "anthropic-ratelimit-tokens-limit": "90000",
    "anthropic-ratelimit-tokens-remaining": "89000",
    "anthropic-ratelimit-tokens-reset": "2023-11-14T22:13:21.500Z",
    "anthropic-ratelimit-input-tokens-limit": "80000",
    "request-id": "req_1",
}


class _Insensitive(dict[str, str]):
    """Header lookups as aiohttp's CIMultiDictProxy makes them: by any casing."""

    def __init__(self, items: dict[str, str]) -> None:
        super().__init__({k.lower(): v for k, v in items.items()})

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)


def test_openai_limits_for_an_anthropic_client() -> None:
    out = backend_limit_headers(_Insensitive(OPENAI_HEADERS), "openai", "anthropic", NOW)
    assert out == {
        "anthropic-ratelimit-requests-limit": "500",
        "anthropic-ratelimit-requests-remaining": "499",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:21Z",  # 120 ms, to the second up
        "anthropic-ratelimit-tokens-limit": "30000",
        "anthropic-ratelimit-tokens-remaining": "29000",
        "anthropic-ratelimit-tokens-reset": "2023-11-14T22:19:20Z",
    }


def test_anthropic_limits_for_an_openai_client() -> None:
    out = backend_limit_headers(_Insensitive(ANTHROPIC_HEADERS), "anthropic", "openai", NOW)
    assert out == {
        "x-ratelimit-limit-requests": "50",
        "x-ratelimit-remaining-requests": "49",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "90000",
        "x-ratelimit-remaining-tokens": "89000",
        "x-ratelimit-reset-tokens": "2s",  # 1.5 s, to the second up
    }


def test_same_dialect_keeps_every_limit_header_as_it_came() -> None:
    assert backend_limit_headers(
        _Insensitive(ANTHROPIC_HEADERS), "anthropic", "anthropic", NOW
    ) == {k: v for k, v in ANTHROPIC_HEADERS.items() if k.startswith("anthropic-ratelimit-")}
    unified = {
        "anthropic-ratelimit-unified-status": "allowed",
        "anthropic-ratelimit-unified-reset": "1",
    }
    assert backend_limit_headers(_Insensitive(unified), "anthropic", "anthropic", NOW) == unified
    assert backend_limit_headers(_Insensitive(OPENAI_HEADERS), "openai", "openai", NOW) == {
        k.lower(): v for k, v in OPENAI_HEADERS.items() if k.lower().startswith("x-ratelimit-")
    }


def test_no_limit_headers_none_added() -> None:
    plain = _Insensitive({"Content-Type": "application/json", "x-ratelimit-reset-tokens": "1s"})
    for backend, client in (("openai", "anthropic"), ("openai", "openai"), ("anthropic", "openai")):
        assert backend_limit_headers(plain, backend, client, NOW) == {}


def test_a_reset_that_does_not_parse_is_left_out() -> None:
    odd = _Insensitive({"x-ratelimit-limit-requests": "5", "x-ratelimit-reset-requests": "soon"})
    assert backend_limit_headers(odd, "openai", "anthropic", NOW) == {
        "anthropic-ratelimit-requests-limit": "5"
    }
    odd = _Insensitive(
        {"anthropic-ratelimit-requests-limit": "5", "anthropic-ratelimit-requests-reset": "later"}
    )
    assert backend_limit_headers(odd, "anthropic", "openai", NOW) == {
        "x-ratelimit-limit-requests": "5"
    }


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("20ms", 0.02),
        ("59.9s", 59.9),
        ("", None),
        ("5", None),
        ("1x", None),
        ("s1", None),
        ("1s ", 1.0),
    ],
)
def test_openai_reset_durations(text: str, seconds: float | None) -> None:
    assert duration_seconds(text) == seconds
