"""A relayed stream: `RelayPipeline` must pass every byte through (less a usage chunk the
gateway asked for on the client's behalf) and read exactly what parsing every event reads:
the same usage, end, errors and output estimate, however TCP cuts the upstream.

The streams are every upstream stream of the translation fixtures (OpenAI streams under
``anthropic_to_openai``, Anthropic ones under ``openai_to_anthropic``), relayed in their
own dialect; the reference is the parser, the meter and the sniffer fed every event.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from app.dialects.sse import SSEParser
from app.dialects.usage import OutputMeter
from app.translate.passthrough import AnthropicSniffer, OpenAISniffer
from app.translate.relay_pipeline import RelayPipeline
from tests.translate.test_stream_pipeline import READS, _anthropic_stream, _openai_chunk, _reads

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
UPSTREAM = {"anthropic_to_openai": "openai", "openai_to_anthropic": "anthropic"}


def _streams() -> list[Any]:
    out = []
    for direction, dialect in UPSTREAM.items():
        for case in sorted((FIXTURES / direction).glob("*/stream_in.sse")):
            raw = case.read_bytes()
            out.append(pytest.param(raw, dialect, id=f"{dialect}/{case.parent.name}"))
    return out


def _reference(raw: bytes, dialect: str, drop_usage: bool) -> tuple[bytes, dict[str, Any], int]:
    """Every event parsed, metered and sniffed; the usage-only chunk cut out if asked."""
    parser = SSEParser()
    meter = OutputMeter(dialect)
    sniffer = AnthropicSniffer() if dialect == "anthropic" else OpenAISniffer()
    out = raw
    for event in parser.feed(raw) + parser.finish():
        meter.feed(event)
        if sniffer.feed(event) and drop_usage:
            out = out.replace(b"data: " + event.data.encode() + b"\n\n", b"", 1)
    return out, _said(sniffer), meter.tokens


def _said(sniffer: AnthropicSniffer | OpenAISniffer) -> dict[str, Any]:
    return {name: getattr(sniffer, name) for name in sniffer.__slots__}


def _relay(
    raw: bytes, dialect: str, how: str, drop_usage: bool = False
) -> tuple[RelayPipeline, bytes]:
    relay = RelayPipeline(dialect, drop_usage=drop_usage)
    relayed = b"".join(relay.feed(chunk) for chunk in _reads(raw, how))
    relay.finish()
    return relay, relayed


@pytest.mark.parametrize(("raw", "dialect"), _streams())
def test_relay_passes_every_byte_and_reads_what_parsing_reads(raw: bytes, dialect: str) -> None:
    drops = [False, True] if dialect == "openai" else [False]
    for drop_usage in drops:
        expected, said, tokens = _reference(raw, dialect, drop_usage)
        for how in READS:
            relay, relayed = _relay(raw, dialect, how, drop_usage)
            assert relayed == expected, (how, drop_usage)
            assert _said(relay.sniffer) == said, how
            assert relay.meter.tokens == tokens, how


def _openai_stream(texts: list[str]) -> bytes:
    events = [_openai_chunk({"role": "assistant", "content": ""})]
    events += [_openai_chunk({"content": text}) for text in texts]
    events += [_openai_chunk({"reasoning_content": f"think {i} "}) for i in range(3)]
    events += [_openai_chunk({"content": text}) for text in texts]
    events.append(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n')
    usage = {"prompt_tokens": 7, "completion_tokens": 90, "total_tokens": 97}
    events.append(b"data: " + orjson.dumps({"choices": [], "usage": usage}) + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


TEXTS = [*(f"word{i} " for i in range(70)), 'say "hi"\n', "caf\u00e9 \U0001f600", "", "x"]


@pytest.mark.parametrize("drop_usage", [False, True])
def test_long_openai_runs_are_counted_not_parsed(drop_usage: bool) -> None:
    raw = _openai_stream(TEXTS)
    expected, said, tokens = _reference(raw, "openai", drop_usage)
    assert said["saw_usage"] and said["completed"] and tokens > 70
    for how in READS:
        relay, relayed = _relay(raw, "openai", how, drop_usage)
        assert relayed == expected, how
        assert _said(relay.sniffer) == said, how
        assert relay.meter.tokens == tokens, how
        # Not a timing: which path the deltas took. All but the escaped and the first of
        # each shape (learned by a parse) are only counted.
        if how in ("whole", "events"):
            assert relay.fast_events >= 2 * len(TEXTS) + 3 - 6, how


def test_anthropic_deltas_are_counted_not_parsed() -> None:
    raw = b"".join(_anthropic_stream())
    expected, said, tokens = _reference(raw, "anthropic", False)
    assert said["completed"] and tokens > 0
    for how in READS:
        relay, relayed = _relay(raw, "anthropic", how)
        assert relayed == expected, how
        assert _said(relay.sniffer) == said, how
        assert relay.meter.tokens == tokens, how
    assert _relay(raw, "anthropic", "whole")[0].fast_events >= 6


def test_crlf_streams_go_through_the_parser_and_lose_only_the_usage_chunk() -> None:
    raw = _openai_stream(["a", "b"]).replace(b"\n", b"\r\n")
    relay, relayed = _relay(raw, "openai", "whole", drop_usage=True)
    assert b'"usage"' not in relayed
    assert relayed == raw.replace(
        raw[raw.index(b'data: {"choices":[],') : raw.index(b"data: [DONE]")], b""
    )
    assert relay.sniffer.completed and relay.meter.tokens == _reference(raw, "openai", True)[2]


@pytest.mark.parametrize("dialect", ["anthropic", "openai"])
@pytest.mark.parametrize("drop_usage", [False, True])
def test_a_stream_cut_mid_event_is_relayed_up_to_its_last_whole_event(
    dialect: str, drop_usage: bool
) -> None:
    """Half an event is never relayed: the client's stream ends on an event boundary, where
    the gateway's error event can follow it (glued to half an event, no SDK could read
    it). A last event the upstream did not end with its blank line, but whole, is ended."""
    if drop_usage and dialect == "anthropic":
        return
    whole = b"".join(_anthropic_stream()) if dialect == "anthropic" else _openai_stream(["Hel"])
    events = [e + b"\n\n" for e in whole.split(b"\n\n") if e]
    kept = b"".join(events[:3])
    for cut in range(1, len(events[3]) - 2):
        relay = RelayPipeline(dialect, drop_usage=drop_usage)
        out = b"".join(relay.feed(piece) for piece in (kept[:7], kept[7:], events[3][:cut]))
        assert out + relay.finish() == kept, cut
    relay = RelayPipeline(dialect, drop_usage=drop_usage)
    unended = kept + events[3][:-2]  # whole, but without its blank line
    assert relay.feed(unended) + relay.finish() == kept + events[3]
    # Not SSE at all (a backend answering a stream request with one JSON body): nothing.
    relay = RelayPipeline(dialect, drop_usage=drop_usage)
    assert relay.feed(b'{"id": "x", "choices": []}') + relay.finish() == b""


@pytest.mark.parametrize(
    ("dialect", "events"),
    [
        (
            "openai",
            [
                b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1",'
                b'"type":"function","function":{"name":"get_weather","arguments":""}}]}}]}\n\n',
                b'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
                b'"function":{"arguments":"{}"}}]}}]}\n\n',
            ],
        ),
        (
            "anthropic",
            [
                b"event: content_block_start\n"
                b'data: {"type":"content_block_start","index":0,"content_block":'
                b'{"type":"tool_use","id":"toolu_1","name":"get_weather","input":{}}}\n\n',
                b'data: {"type":"content_block_delta","index":0,'
                b'"delta":{"type":"input_json_delta","partial_json":"{}"}}\n\n',
            ],
        ),
    ],
)
def test_a_tool_call_s_name_is_output_too(dialect: str, events: list[bytes]) -> None:
    """A stream cut after a call without arguments is charged for the call (was 1 token,
    the "{}" alone, and 0 before it)."""
    from app.dialects.tokens import estimate_text

    relay = RelayPipeline(dialect)
    for event in events:
        relay.feed(event)
    assert relay.meter.tokens == estimate_text("get_weather{}") == 4
