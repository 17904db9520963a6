"""Fields a translation drops or maps are still checked as the real API checks them.

On a translated route nothing upstream sees such a field, so the gateway answers a wrong
type with the 400 the client's own API gives, naming the field, and no upstream sees the
request; on a passthrough route the same body goes to the backend as it came (the backend
decides). Likewise an Anthropic prompt of blank text, which a translation would otherwise
send as no prompt at all; and a legacy ``functions`` client gets the legacy answer shape.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from tests.fakes import JsonReply, SSEReply, anthropic_message, anthropic_stream
from tests.reliability.conftest import (
    Bed,
    auth,
    body_for,
    check_error,
    path_for,
    post_json,
)

A, O = "anthropic", "openai"  # noqa: E741
MODELS = {
    (A, "passthrough"): "m-an",
    (A, "translated"): "m-oa",
    (O, "passthrough"): "m-oa",
    (O, "translated"): "m-an",
}


@pytest.fixture(scope="module")
def bed(bed_factory: Callable[..., Bed]) -> Bed:
    return bed_factory()


@dataclass(frozen=True)
class Case:
    id: str
    dialect: str
    changes: dict[str, Any]
    says: str
    param: str | None = None  # OpenAI envelopes name it
    code: str | None = None


CASES = [
    # OpenAI client -> Anthropic backend (audit_http #12).
    Case("o-logprobs_int", O, {"logprobs": 1}, "Invalid type for 'logprobs'", "logprobs"),
    Case("o-logprobs_string", O, {"logprobs": "s"}, "expected a boolean", "logprobs"),
    Case("o-logprobs_object", O, {"logprobs": {}}, "expected a boolean", "logprobs"),
    Case(
        "o-parallel_tool_calls_string",
        O,
        {"parallel_tool_calls": "s"},
        "Invalid type for 'parallel_tool_calls'",
        "parallel_tool_calls",
    ),
    Case("o-metadata_int", O, {"metadata": 1}, "Invalid type for 'metadata'", "metadata"),
    Case(
        "o-metadata_value_int",
        O,
        {"metadata": {"run": 7}},
        "Invalid type for 'metadata.run'",
        "metadata.run",
    ),
    Case("o-store_string", O, {"store": "s"}, "Invalid type for 'store'", "store"),
    Case("o-modalities_int", O, {"modalities": 1}, "Invalid type for 'modalities'", "modalities"),
    Case("o-prediction_int", O, {"prediction": 1}, "Invalid type for 'prediction'", "prediction"),
    Case(
        "o-stream_options_include_usage_string",
        O,
        {"stream_options": {"include_usage": "yes"}},
        "Invalid type for 'stream_options.include_usage'",
        "stream_options.include_usage",
    ),
    Case(
        "o-service_tier_int",
        O,
        {"service_tier": 1},
        "Invalid type for 'service_tier'",
        "service_tier",
    ),
    Case("o-top_logprobs_string", O, {"top_logprobs": "2"}, "'top_logprobs'", "top_logprobs"),
    Case("o-seed_string", O, {"seed": "7"}, "'seed'", "seed"),
    Case("o-user_int", O, {"user": 5}, "'user'", "user"),
    # Anthropic client -> OpenAI backend.
    Case(
        "a-service_tier_unknown",
        A,
        {"service_tier": "s"},
        "service_tier: Input should be 'auto' or 'standard_only'",
    ),
    Case(
        "a-metadata_extra_key",
        A,
        {"metadata": {"a": 1}},
        "metadata.a: Extra inputs are not permitted",
    ),
    Case(
        "a-metadata_user_id_int",
        A,
        {"metadata": {"user_id": 5}},
        "metadata.user_id: Input should be a valid string",
    ),
    Case("a-container_int", A, {"container": 5}, "container: Input should be"),
    Case("a-speed_unknown", A, {"speed": "warp"}, "speed: Input should be 'standard' or 'fast'"),
    # An Anthropic prompt of blank text (audit_sdk #4): never `messages: []` upstream.
    Case(
        "a-prompt_empty_text",
        A,
        {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
        "messages: text content blocks must be non-empty",
    ),
    Case(
        "a-prompt_whitespace_text",
        A,
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "   "}]}]},
        "messages: text content blocks must contain non-whitespace text",
    ),
    Case(
        "a-prompt_whitespace_string",
        A,
        {"messages": [{"role": "user", "content": "   "}]},
        "messages: text content blocks must contain non-whitespace text",
    ),
    Case(
        "a-prompt_empty_string",
        A,
        {"messages": [{"role": "user", "content": ""}]},
        "messages.0: all messages must have non-empty content",
    ),
]
# Wrong on any route: the gateway's own checks, which these cases only confirm for the
# translated one.
EVERYWHERE = {"o-top_logprobs_string", "o-seed_string", "o-user_int"}


def _body(case: Case, model: str, stream: bool) -> dict[str, Any]:
    body = body_for(case.dialect, model, stream=stream)
    body.update(case.changes)
    return body


def _sent(bed: Bed) -> int:
    return len(bed.fo.received) + len(bed.fa.received)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_translated_route_refuses_as_the_real_api(bed: Bed, case: Case, stream: bool) -> None:
    model = MODELS[(case.dialect, "translated")]
    seen = _sent(bed)
    resp = post_json(bed.port, path_for(case.dialect), _body(case, model, stream), auth())
    if case.dialect == A:
        check_error(A, resp, 400, "invalid_request_error", case.says)
    else:
        check_error(
            O, resp, 400, "invalid_request_error", case.says, code=case.code, param=case.param
        )
    assert _sent(bed) == seen, "a refused request reached an upstream"


@pytest.mark.parametrize("case", [c for c in CASES if c.id not in EVERYWHERE], ids=lambda c: c.id)
def test_a_passthrough_route_leaves_the_verdict_to_the_backend(bed: Bed, case: Case) -> None:
    model = MODELS[(case.dialect, "passthrough")]
    fake = bed.fa if case.dialect == A else bed.fo
    seen = len(fake.received)
    resp = post_json(bed.port, path_for(case.dialect), _body(case, model, False), auth())
    assert resp.status == 200, resp.body[:300]
    assert len(fake.received) == seen + 1
    sent = fake.received[-1].json
    for name, value in case.changes.items():
        assert sent[name] == value, name


@pytest.mark.parametrize(
    "changes",
    [
        {"logprobs": False, "store": False, "metadata": {"run": "7"}, "modalities": ["text"]},
        {"parallel_tool_calls": True, "prediction": {"type": "content", "content": "hi"}},
        {"stream_options": {"include_usage": True, "include_obfuscation": False}},
        {"service_tier": "flex", "seed": 7, "user": "alice_01", "top_logprobs": 0},
    ],
    ids=["a", "b", "c", "d"],
)
def test_well_typed_openai_fields_still_go_through(bed: Bed, changes: dict[str, Any]) -> None:
    body = {**body_for(O, "m-an", stream="stream_options" in changes), **changes}
    resp = post_json(bed.port, path_for(O), body, auth())
    assert resp.status == 200, resp.body[:300]


@pytest.mark.parametrize(
    "changes",
    [
        {"service_tier": "standard_only", "metadata": {"user_id": "user_abc"}},
        {"container": "container_1", "speed": "fast", "inference_geo": "us"},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": " "}, {"type": "text", "text": "hi"}],
                }
            ]
        },
    ],
    ids=["a", "b", "c"],
)
def test_well_typed_anthropic_fields_still_go_through(bed: Bed, changes: dict[str, Any]) -> None:
    body = {**body_for(A, "m-oa"), **changes}
    resp = post_json(bed.port, path_for(A), body, auth())
    assert resp.status == 200, resp.body[:300]


# -- legacy functions (audit_sdk #3) -------------------------------------------------------------

FUNCTIONS = [
    {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]
TOOL_USE = {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}}


def _legacy_reply(stream: bool) -> JsonReply | SSEReply:
    if not stream:
        message = anthropic_message()
        message["content"] = [{**TOOL_USE, "input": {"city": "Paris"}}]
        message["stop_reason"] = "tool_use"
        return JsonReply(body=message)
    events = anthropic_stream([])
    start = orjson.dumps(
        {"type": "content_block_start", "index": 1, "content_block": TOOL_USE}
    ).decode()
    delta = orjson.dumps(
        {
            "type": "content_block_delta",
            "index": 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"city": "Paris"}'},
        }
    ).decode()
    stop = '{"type":"content_block_stop","index":1}'
    blocks = [
        f"event: content_block_start\ndata: {start}\n\n".encode(),
        f"event: content_block_delta\ndata: {delta}\n\n".encode(),
        f"event: content_block_stop\ndata: {stop}\n\n".encode(),
    ]
    # After the text block's stop, before message_delta; the stop reason becomes tool_use.
    tail = [e.replace(b'"end_turn"', b'"tool_use"') for e in events[-2:]]
    return SSEReply(events[:-2] + blocks + tail)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_legacy_functions_client_gets_function_call(bed: Bed, stream: bool) -> None:
    bed.fa.push(_legacy_reply(stream))
    body = {**body_for(O, "m-an", stream=stream), "functions": FUNCTIONS}
    resp = post_json(bed.port, path_for(O), body, auth())
    assert resp.status == 200, resp.body[:300]
    assert bed.fa.received[-1].json["tool_choice"] == {
        "type": "auto",
        "disable_parallel_tool_use": True,
    }
    if not stream:
        choice = resp.json()["choices"][0]
        assert choice["finish_reason"] == "function_call"
        assert "tool_calls" not in choice["message"]
        assert choice["message"]["function_call"] == {
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        }
        return
    chunks = [
        orjson.loads(line[6:])
        for line in resp.body.decode().splitlines()
        if line.startswith("data: {")
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["function_call"] for d in deltas if "function_call" in d]
    assert calls == [
        {"name": "get_weather", "arguments": ""},
        {"arguments": '{"city": "Paris"}'},
    ]
    assert not any("tool_calls" in d for d in deltas)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == (
        "function_call"
    )
