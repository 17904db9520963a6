"""Client mistakes found past the first checks, and what the usage trail keeps of them.

JSON nested deeper than orjson writes (254 levels) but not than it reads (1,024) is a 400
in the client's dialect wherever the body is written again (token estimates, translation,
count_tokens): it was a 500 with a traceback."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.reliability.conftest import (
    Bed,
    Resp,
    auth,
    body_for,
    call,
    check_error,
    path_for,
    post_json,
    usage_rows,
)

ANTHROPIC, OPENAI = "anthropic", "openai"


@pytest.fixture(scope="module")
def bed(bed_factory: Callable[..., Bed]) -> Bed:
    return bed_factory()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        value = {"type": "object", "properties": {"x": value}}
    return value


def with_deep_tool(dialect: str, model: str) -> dict[str, Any]:
    body = body_for(dialect, model)
    schema = nested(150)  # two levels a step: 300 deep
    if dialect == ANTHROPIC:
        body["tools"] = [{"name": "t", "input_schema": schema}]
    else:
        body["tools"] = [{"type": "function", "function": {"name": "t", "parameters": schema}}]
    return body


def post_deep(port: int, path: str, body: dict[str, Any]) -> Resp:
    """The standard library writes what orjson will not."""
    return call("POST", port, path, body=json.dumps(body).encode(), headers=auth())


@pytest.mark.parametrize(
    ("dialect", "model", "path"),
    [
        (ANTHROPIC, "m-an", "/v1/messages"),
        (ANTHROPIC, "m-oa", "/v1/messages"),
        (ANTHROPIC, "m-an", "/v1/messages/count_tokens"),
        (OPENAI, "m-oa", "/v1/chat/completions"),
        (OPENAI, "m-an", "/v1/chat/completions"),
    ],
)
def test_json_nested_past_orjsons_writing_limit_is_a_400(
    bed: Bed, dialect: str, model: str, path: str
) -> None:
    body = with_deep_tool(dialect, model)
    if path.endswith("count_tokens"):
        body.pop("max_tokens", None)
    resp = post_deep(bed.port, path, body)
    check_error(dialect, resp, 400, "invalid_request_error", "nested too deeply")
    fine = post_json(bed.port, path_for(dialect), body_for(dialect, model), auth())
    assert fine.status == 200


def test_the_refusal_is_recorded(bed: Bed) -> None:
    before = len(bed.run(usage_rows(bed.live)))
    resp = post_deep(bed.port, "/v1/messages", with_deep_tool(ANTHROPIC, "m-oa"))
    assert resp.status == 400
    rows = bed.run(usage_rows(bed.live))
    assert len(rows) == before + 1
    assert (rows[-1].http_status, rows[-1].error_type) == (400, "invalid_request_error")


def test_a_refused_body_is_recorded_with_the_model_it_named(bed: Bed) -> None:
    before = len(bed.run(usage_rows(bed.live)))
    body = {**body_for(ANTHROPIC, "m-oa"), "max_tokens": "many"}
    resp = post_json(bed.port, "/v1/messages", body, auth())
    check_error(ANTHROPIC, resp, 400, "invalid_request_error", "max_tokens")
    rows = bed.run(usage_rows(bed.live))
    assert len(rows) == before + 1
    assert (rows[-1].requested_model, rows[-1].http_status) == ("m-oa", 400)
