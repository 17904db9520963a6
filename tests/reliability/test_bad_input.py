"""Bad input on every API path, in both dialects, on passthrough and translated routes.

Each case pins the exact status and the client dialect's error envelope (PROTOCOL.md §3.1,
§5.6); none may be a 5xx, the upstream must not see a request the gateway refused, and the
same route must serve a good request right afterwards.

Passthrough routes forward content-block types the gateway does not know (a backend of the
same dialect may support newer ones) and relay the backend's verdict; every other check
happens in the gateway, so it holds whatever the backend is.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import socket
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from app.db import keys as key_queries
from app.gateway import PEEK_LIMIT, named_model
from tests.conftest import TEST_KEY
from tests.fakes import JsonReply
from tests.reliability.conftest import (
    DROP,
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

RESTRICTED_KEY = "bk-restricted-0000000000"
EXPIRED_KEY = "bk-expired-000000000000"
REVOKED_KEY = "bk-revoked-000000000000"
LIMIT_BYTES = 256 * 1024

MODEL = "MODEL"  # replaced by the route's model name
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


@pytest.fixture(scope="module")
def bed(bed_factory: Callable[..., Bed]) -> Bed:
    extra = f"""
[[keys]]
name = "restricted"
key = "{RESTRICTED_KEY}"
models = ["m-oa"]

[[keys]]
name = "expired"
key = "{EXPIRED_KEY}"
expires = "2020-01-31"
"""
    bed = bed_factory(server="max_body_mb = 0.25\n", extra=extra)

    async def add_revoked() -> None:
        async with bed.live.services.db.session() as session, session.begin():
            await key_queries.create_key(session, "revoked", key=REVOKED_KEY)
            await key_queries.revoke_key(session, "revoked")
        await bed.live.services.reload()

    bed.run(add_revoked())
    return bed


def invalid(dialect: str, resp: Resp, says: str, param: Any = DROP) -> None:
    if dialect == "anthropic":
        check_error(dialect, resp, 400, "invalid_request_error", says)
    else:
        check_error(dialect, resp, 400, "invalid_request_error", says, code=None, param=param)


def still_serving(bed: Bed, dialect: str, model: str) -> None:
    resp = post_json(bed.port, path_for(dialect), body_for(dialect, model), auth())
    assert resp.status == 200, resp.body[:300]


# -- the table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One malformed body; ``changes`` are applied to a valid body of the case's dialect."""

    id: str
    dialect: str
    says: str
    changes: dict[str, Any] = field(default_factory=dict)
    raw: bytes | None = None
    param: Any = DROP
    routes: tuple[str, ...] = ("passthrough", "translated")

    def body(self, model: str, stream: bool) -> bytes:
        if self.raw is not None:
            return self.raw.replace(b"MODEL", model.encode())
        base = body_for(self.dialect, model, stream=stream)
        for name, value in self.changes.items():
            if value is DROP:
                base.pop(name, None)
            else:
                base[name] = value
        return orjson.dumps(base).replace(b'"MODEL"', b'"' + model.encode() + b'"')


def user(*blocks: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": list(blocks)}]}


def a_image(source: Any) -> dict[str, Any]:
    return {"type": "image", "source": source}


def o_image(url: Any) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


DEEP = b"[" * 20000 + b"]" * 20000
RAW_CASES = [
    ("invalid_json", b'{"model": "MODEL", "messages": [', "not valid JSON"),
    ("json_array", b'[{"model": "MODEL"}]', "JSON object"),
    ("json_string", b'"hello"', "JSON object"),
    ("json_null", b"null", "JSON object"),
    ("empty_body", b"", "not valid JSON"),
    (
        "invalid_utf8",
        b'{"model": "MODEL", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        "not valid JSON",
    ),
    ("deep_nesting", b'{"model": "MODEL", "metadata": ' + DEEP + b"}", "not valid JSON"),
]

A = "anthropic"
O = "openai"  # noqa: E741

CASES: list[Case] = [
    *(Case(f"a-{name}", A, says, raw=raw) for name, raw, says in RAW_CASES),
    *(Case(f"o-{name}", O, says, raw=raw) for name, raw, says in RAW_CASES),
    # Anthropic: required fields and top-level types.
    Case("a-missing_model", A, "model: Field required", {"model": DROP}),
    Case("a-model_number", A, "model: Input should be a non-empty string", {"model": 5}),
    Case("a-model_empty", A, "model: Input should be a non-empty string", {"model": ""}),
    Case("a-missing_messages", A, "messages: Field required", {"messages": DROP}),
    Case("a-messages_string", A, "messages: Input should be a valid list", {"messages": "hi"}),
    Case("a-messages_object", A, "messages: Input should be a valid list", {"messages": {}}),
    Case("a-messages_empty", A, "messages: at least one message is required", {"messages": []}),
    Case("a-missing_max_tokens", A, "max_tokens: Field required", {"max_tokens": DROP}),
    Case(
        "a-max_tokens_string",
        A,
        "max_tokens: Input should be a valid integer",
        {"max_tokens": "16"},
    ),
    Case(
        "a-max_tokens_float", A, "max_tokens: Input should be a valid integer", {"max_tokens": 16.5}
    ),
    Case(
        "a-max_tokens_bool", A, "max_tokens: Input should be a valid integer", {"max_tokens": True}
    ),
    Case(
        "a-max_tokens_negative",
        A,
        "max_tokens: Input should be greater than or equal to 0",
        {"max_tokens": -1},
    ),
    Case(
        "a-max_tokens_absurd",
        A,
        "max_tokens: Input should be less than or equal to",
        {"max_tokens": 10**12},
    ),
    Case(
        "a-temperature_high",
        A,
        "temperature: Input should be between 0 and 1",
        {"temperature": 1.5},
    ),
    Case(
        "a-temperature_negative",
        A,
        "temperature: Input should be between 0 and 1",
        {"temperature": -0.1},
    ),
    Case(
        "a-temperature_string",
        A,
        "temperature: Input should be a valid number",
        {"temperature": "hot"},
    ),
    Case("a-top_p_high", A, "top_p:", {"top_p": 1.5}),
    Case("a-top_p_string", A, "top_p:", {"top_p": "x"}),
    Case("a-top_k_negative", A, "top_k:", {"top_k": -1}),
    Case("a-top_k_float", A, "top_k:", {"top_k": 2.5}),
    Case("a-stream_string", A, "stream: Input should be a valid boolean", {"stream": "yes"}),
    Case("a-system_number", A, "system:", {"system": 5}),
    Case("a-system_image_block", A, "system.0", {"system": [{"type": "image", "source": {}}]}),
    Case("a-system_text_without_text", A, "system.0", {"system": [{"type": "text"}]}),
    Case("a-stop_sequences_string", A, "stop_sequences:", {"stop_sequences": "STOP"}),
    Case("a-stop_sequences_numbers", A, "stop_sequences:", {"stop_sequences": [1, 2]}),
    Case("a-tools_object", A, "tools: Input should be a valid list", {"tools": {}}),
    Case("a-tool_not_object", A, "tools.0", {"tools": ["search"]}),
    Case("a-tool_without_name", A, "tools.0", {"tools": [{"input_schema": {"type": "object"}}]}),
    Case("a-tool_choice_string", A, "tool_choice:", {"tool_choice": "auto"}),
    Case("a-tool_choice_unknown", A, "tool_choice:", {"tool_choice": {"type": "banana"}}),
    Case("a-tool_choice_without_name", A, "tool_choice.name", {"tool_choice": {"type": "tool"}}),
    Case("a-metadata_string", A, "metadata:", {"metadata": "me"}),
    Case("a-thinking_string", A, "thinking:", {"thinking": "on"}),
    Case(
        "a-thinking_without_budget", A, "thinking.budget_tokens", {"thinking": {"type": "enabled"}}
    ),
    Case("a-service_tier_number", A, "service_tier:", {"service_tier": 1}),
    Case("a-output_config_string", A, "output_config:", {"output_config": "json"}),
    # Anthropic: messages and content blocks.
    Case("a-message_not_object", A, "messages.0:", {"messages": ["hi"]}),
    Case("a-message_null", A, "messages.0:", {"messages": [None]}),
    Case("a-role_missing", A, "messages.0.role", {"messages": [{"content": "hi"}]}),
    Case(
        "a-role_unknown", A, "messages.0.role", {"messages": [{"role": "wizard", "content": "hi"}]}
    ),
    Case("a-content_missing", A, "messages.0.content", {"messages": [{"role": "user"}]}),
    Case(
        "a-content_number", A, "messages.0.content", {"messages": [{"role": "user", "content": 5}]}
    ),
    Case("a-block_not_object", A, "messages.0.content.0", user("hi")),
    Case("a-block_without_type", A, "messages.0.content.0", user({"text": "hi"})),
    Case("a-text_without_text", A, "messages.0.content.0", user({"type": "text"})),
    Case("a-text_number", A, "messages.0.content.0", user({"type": "text", "text": 5})),
    Case("a-image_without_source", A, "messages.0.content.0", user({"type": "image"})),
    Case("a-image_source_unknown", A, "source.type", user(a_image({"type": "ftp", "url": "x"}))),
    Case(
        "a-image_bad_media_type",
        A,
        "media_type",
        user(a_image({"type": "base64", "media_type": "image/tiff", "data": PNG})),
    ),
    Case(
        "a-image_bad_base64",
        A,
        "base64",
        user(a_image({"type": "base64", "media_type": "image/png", "data": "!!not base64!!"})),
    ),
    Case(
        "a-image_empty_data",
        A,
        "source.data",
        user(a_image({"type": "base64", "media_type": "image/png", "data": ""})),
    ),
    Case("a-image_url_missing", A, "source.url", user(a_image({"type": "url"}))),
    Case(
        "a-tool_use_without_input",
        A,
        "messages.1.content.0",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "toolu_1", "name": "f"}],
                },
            ]
        },
    ),
    Case(
        "a-tool_use_without_id",
        A,
        "messages.1.content.0",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]},
            ]
        },
    ),
    Case(
        "a-tool_result_without_tool_use_id",
        A,
        "tool_use_id",
        user({"type": "tool_result", "content": "42"}),
    ),
    Case(
        "a-tool_result_content_number",
        A,
        "messages.0.content.0",
        user({"type": "tool_result", "tool_use_id": "toolu_1", "content": 42}),
    ),
    Case(
        "a-unknown_block_type",
        A,
        "hologram",
        user({"type": "hologram", "data": "x"}),
        routes=("translated",),
    ),
    # OpenAI: required fields and top-level types.
    Case("o-missing_model", O, "model", {"model": DROP}, param="model"),
    Case("o-model_number", O, "model", {"model": 5}, param="model"),
    Case("o-model_empty", O, "model", {"model": ""}, param="model"),
    Case("o-missing_messages", O, "'messages'", {"messages": DROP}, param="messages"),
    Case("o-messages_string", O, "'messages'", {"messages": "hi"}, param="messages"),
    Case("o-messages_empty", O, "empty array", {"messages": []}, param="messages"),
    Case("o-max_tokens_string", O, "'max_tokens'", {"max_tokens": "16"}, param="max_tokens"),
    Case("o-max_tokens_zero", O, "'max_tokens'", {"max_tokens": 0}, param="max_tokens"),
    Case("o-max_tokens_negative", O, "'max_tokens'", {"max_tokens": -5}, param="max_tokens"),
    Case("o-max_tokens_absurd", O, "'max_tokens'", {"max_tokens": 10**12}, param="max_tokens"),
    Case(
        "o-max_completion_tokens_negative",
        O,
        "'max_completion_tokens'",
        {"max_completion_tokens": -1},
        param="max_completion_tokens",
    ),
    Case(
        "o-max_completion_tokens_absurd",
        O,
        "'max_completion_tokens'",
        {"max_completion_tokens": 2**40},
        param="max_completion_tokens",
    ),
    Case("o-temperature_high", O, "'temperature'", {"temperature": 2.5}, param="temperature"),
    Case("o-temperature_string", O, "'temperature'", {"temperature": "warm"}, param="temperature"),
    Case("o-top_p_high", O, "'top_p'", {"top_p": 1.5}, param="top_p"),
    Case(
        "o-presence_penalty_high",
        O,
        "'presence_penalty'",
        {"presence_penalty": 3},
        param="presence_penalty",
    ),
    Case(
        "o-frequency_penalty_string",
        O,
        "'frequency_penalty'",
        {"frequency_penalty": "x"},
        param="frequency_penalty",
    ),
    Case("o-n_string", O, "'n'", {"n": "2"}, param="n"),
    Case("o-seed_float", O, "'seed'", {"seed": 1.5}, param="seed"),
    Case("o-stream_string", O, "'stream'", {"stream": "yes"}, param="stream"),
    Case("o-stop_number", O, "'stop'", {"stop": 5}, param="stop"),
    Case(
        "o-stream_options_string",
        O,
        "'stream_options'",
        {"stream_options": "x"},
        param="stream_options",
    ),
    Case("o-tools_object", O, "'tools'", {"tools": {}}, param="tools"),
    Case(
        "o-tool_without_type",
        O,
        "'tools[0]'",
        {"tools": [{"function": {"name": "f"}}]},
        param="tools[0]",
    ),
    Case(
        "o-tool_function_without_name",
        O,
        "tools[0].function",
        {"tools": [{"type": "function", "function": {"parameters": {}}}]},
        param="tools[0].function.name",
    ),
    Case("o-tool_choice_number", O, "'tool_choice'", {"tool_choice": 5}, param="tool_choice"),
    Case(
        "o-tool_choice_unknown",
        O,
        "'tool_choice'",
        {"tool_choice": "sometimes"},
        param="tool_choice",
    ),
    Case(
        "o-response_format_string",
        O,
        "'response_format'",
        {"response_format": "json"},
        param="response_format",
    ),
    Case(
        "o-response_format_without_type",
        O,
        "'response_format",
        {"response_format": {}},
        param="response_format.type",
    ),
    Case("o-logit_bias_string", O, "'logit_bias'", {"logit_bias": "x"}, param="logit_bias"),
    Case("o-user_number", O, "'user'", {"user": 5}, param="user"),
    # OpenAI: messages and content parts.
    Case("o-message_not_object", O, "'messages[0]'", {"messages": ["hi"]}, param="messages[0]"),
    Case(
        "o-role_missing",
        O,
        "'messages[0].role'",
        {"messages": [{"content": "hi"}]},
        param="messages[0].role",
    ),
    Case(
        "o-role_unknown",
        O,
        "'messages[0].role'",
        {"messages": [{"role": "wizard", "content": "hi"}]},
        param="messages[0].role",
    ),
    Case(
        "o-content_number",
        O,
        "'messages[0].content'",
        {"messages": [{"role": "user", "content": 5}]},
        param="messages[0].content",
    ),
    Case(
        "o-user_content_missing",
        O,
        "'messages[0].content'",
        {"messages": [{"role": "user"}]},
        param="messages[0].content",
    ),
    Case(
        "o-part_not_object", O, "messages[0].content[0]", user("hi"), param="messages[0].content[0]"
    ),
    Case(
        "o-part_without_type",
        O,
        "messages[0].content[0]",
        user({"text": "hi"}),
        param="messages[0].content[0]",
    ),
    Case(
        "o-text_part_without_text",
        O,
        "messages[0].content[0].text",
        user({"type": "text"}),
        param="messages[0].content[0].text",
    ),
    Case(
        "o-image_part_without_image_url",
        O,
        "messages[0].content[0].image_url",
        user({"type": "image_url"}),
        param="messages[0].content[0].image_url",
    ),
    Case(
        "o-image_url_without_url",
        O,
        "messages[0].content[0].image_url",
        user({"type": "image_url", "image_url": {}}),
        param="messages[0].content[0].image_url.url",
    ),
    Case(
        "o-image_bad_base64",
        O,
        "base64",
        user(o_image("data:image/png;base64,!!not base64!!")),
        param="messages[0].content[0].image_url.url",
    ),
    Case(
        "o-image_data_not_an_image",
        O,
        "media type",
        user(o_image("data:text/html;base64," + base64.b64encode(b"<b>hi</b>").decode())),
        param="messages[0].content[0].image_url.url",
    ),
    Case(
        "o-image_unsupported_media_type",
        O,
        "image/tiff",
        user(o_image("data:image/tiff;base64," + PNG)),
        param="messages[0].content[0].image_url.url",
        routes=("translated",),
    ),
    Case(
        "o-tool_message_without_id",
        O,
        "tool_call_id",
        {"messages": [{"role": "tool", "content": "42"}]},
        param="messages[0].tool_call_id",
    ),
    Case(
        "o-tool_calls_string",
        O,
        "'messages[1].tool_calls'",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": "f()"},
            ]
        },
        param="messages[1].tool_calls",
    ),
    Case(
        "o-tool_call_without_function",
        O,
        "messages[1].tool_calls[0].function",
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function"}]},
            ]
        },
        param="messages[1].tool_calls[0].function",
    ),
    Case(
        "o-unknown_part_type",
        O,
        "hologram",
        user({"type": "hologram"}),
        param="messages[0].content[0]",
        routes=("translated",),
    ),
]

MODELS = {
    (A, "passthrough"): "m-an",
    (A, "translated"): "m-oa",
    (O, "passthrough"): "m-oa",
    (O, "translated"): "m-an",
}


def _params() -> Iterator[Any]:
    for case in CASES:
        routes = ("any",) if case.raw is not None else case.routes
        for route in routes:
            streams = (
                (False,) if case.raw is not None or "stream" in case.changes else (False, True)
            )
            for stream in streams:
                name = f"{case.id}-{route}" + ("-stream" if stream else "")
                yield pytest.param(case, route, stream, id=name)


def test_the_table_is_big_enough() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize(("case", "route", "stream"), list(_params()))
def test_bad_body(bed: Bed, case: Case, route: str, stream: bool) -> None:
    model = MODELS[(case.dialect, "passthrough" if route == "any" else route)]
    seen = len(bed.fo.received) + len(bed.fa.received)
    resp = call(
        "POST", bed.port, path_for(case.dialect), body=case.body(model, stream), headers=auth()
    )
    invalid(case.dialect, resp, case.says, case.param)
    assert len(bed.fo.received) + len(bed.fa.received) == seen, "a refused request reached upstream"
    still_serving(bed, case.dialect, model)


COUNT_CASES = [
    ("invalid_json", b"{", "not valid JSON"),
    ("json_array", b"[]", "JSON object"),
    (
        "missing_model",
        b'{"messages": [{"role": "user", "content": "hi"}]}',
        "model: Field required",
    ),
    ("missing_messages", b'{"model": "m-an"}', "messages: Field required"),
    (
        "messages_string",
        b'{"model": "m-an", "messages": "hi"}',
        "messages: Input should be a valid list",
    ),
    (
        "role_unknown",
        b'{"model": "m-an", "messages": [{"role": "x", "content": "hi"}]}',
        "messages.0.role",
    ),
    (
        "image_bad_base64",
        b'{"model": "m-oa", "messages": [{"role": "user", "content": [{"type": "image", '
        b'"source": {"type": "base64", "media_type": "image/png", "data": "%%%"}}]}]}',
        "base64",
    ),
    (
        "tools_object",
        b'{"model": "m-an", "messages": [{"role": "user", "content": "hi"}], "tools": {}}',
        "tools",
    ),
]


@pytest.mark.parametrize(("body", "says"), [pytest.param(b, s, id=n) for n, b, s in COUNT_CASES])
def test_bad_count_tokens(bed: Bed, body: bytes, says: str) -> None:
    resp = call("POST", bed.port, "/v1/messages/count_tokens", body=body, headers=auth())
    invalid(A, resp, says)
    ok = post_json(
        bed.port,
        "/v1/messages/count_tokens",
        {"model": "m-an", "messages": [{"role": "user", "content": "hi"}]},
        auth(),
    )
    assert ok.status == 200 and isinstance(ok.json()["input_tokens"], int)


# -- size, method, path ------------------------------------------------------------------------

BIG = (
    b'{"model": "m-an", "max_tokens": 5, "messages": [{"role": "user", "content": "'
    + b"x" * (LIMIT_BYTES + 1024)
    + b'"}]}'
)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize(
    ("path", "dialect"),
    [
        ("/v1/messages", A),
        ("/anthropic/v1/messages", A),
        ("/v1/messages/count_tokens", A),
        ("/v1/chat/completions", O),
        ("/openai/v1/chat/completions", O),
    ],
)
def test_body_over_the_limit(bed: Bed, path: str, dialect: str, chunked: bool) -> None:
    resp = call("POST", bed.port, path, body=BIG, headers=auth(), chunked=chunked)
    if dialect == A:
        check_error(A, resp, 413, "request_too_large", "limit")
    else:
        check_error(O, resp, 413, "invalid_request_error", "limit", code="request_too_large")
    still_serving(bed, dialect, "m-an" if dialect == A else "m-oa")


@pytest.mark.parametrize("dialect", [A, O])
def test_a_chunked_body_far_over_the_limit_is_a_413_at_once(bed: Bed, dialect: str) -> None:
    """Four times the limit without Content-Length: the 413 goes out as soon as the limit
    is passed (once, past twice the limit, tornado's own bare 400 closed the connection)."""
    huge = BIG.replace(b"x" * 1024, b"x" * (3 * LIMIT_BYTES + 1024), 1)
    path = "/v1/messages" if dialect == A else "/v1/chat/completions"
    resp = call("POST", bed.port, path, body=huge, headers=auth(), chunked=True)
    if dialect == A:
        check_error(A, resp, 413, "request_too_large", "limit")
    else:
        check_error(O, resp, 413, "invalid_request_error", "limit", code="request_too_large")
    still_serving(bed, dialect, "m-an" if dialect == A else "m-oa")


@pytest.mark.parametrize(
    ("method", "path", "dialect", "headers"),
    [
        ("POST", "/v1/messages", A, {}),
        ("POST", "/openai/v1/chat/completions", O, {}),
        ("POST", "/v1/responses", O, {"x-api-key": TEST_KEY}),
        ("GET", "/v1/models", A, {"anthropic-version": "2023-06-01"}),
        ("GET", "/v1/models", O, {}),
        ("GET", "/anthropic/v1/models", A, {}),
    ],
)
def test_headers_over_the_limit_get_a_431_in_the_dialect(
    bed: Bed, method: str, path: str, dialect: str, headers: dict[str, str]
) -> None:
    """A header block past Tornado's 64 KiB: a 431 the client can read (it used to be a
    connection closed without a word), in the dialect of the path or its headers."""
    big = {**auth(), **headers, "x-trace": "t" * 100_000}
    body = orjson.dumps(body_for(dialect, "m-an")) if method == "POST" else None
    resp = call(method, bed.port, path, body=body, headers=big)
    check_error(dialect, resp, 431, "invalid_request_error", "larger than the 65536 bytes")
    assert resp.headers["connection"] == "close"
    still_serving(bed, dialect, "m-an" if dialect == A else "m-oa")


def raw_exchange(port: int, raw: bytes) -> Resp:
    """``raw`` as it is (no client library would send it), then the answer to EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(raw)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return Resp(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())


@pytest.mark.parametrize(
    ("head", "dialect"),
    [
        (b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n", A),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nno colon here\r\n", O),
        (b"POST /v1/messages HTTP/1.1\r\nHost: x\r\n folded: line\r\n", A),
        (b"POST /v1/chat/completions HTTP/1.1 extra\r\nHost: x\r\n", O),
        (b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: ten\r\n", A),
        (b"GET /v1/models HTTP/1.1\r\nanthropic-version: 2023-06-01\r\nX\x01: y\r\n", A),
    ],
)
def test_a_malformed_request_gets_a_400_in_the_dialect(bed: Bed, head: bytes, dialect: str) -> None:
    """What Tornado cannot parse got its bare ``400 Bad Request`` without a body; now the
    dialect's error says what is wrong, and the connection closes."""
    resp = raw_exchange(bed.port, head + b"Connection: close\r\n\r\n")
    check_error(dialect, resp, 400, "invalid_request_error", "not valid HTTP/1.1")
    assert resp.headers["connection"] == "close"
    still_serving(bed, dialect, "m-an" if dialect == A else "m-oa")


@pytest.mark.parametrize("dialect", [A, O])
def test_a_broken_chunked_body_gets_a_400_in_the_dialect(bed: Bed, dialect: str) -> None:
    path = "/v1/messages" if dialect == A else "/v1/chat/completions"
    raw = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TEST_KEY}\r\n"
        "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ).encode()
    resp = raw_exchange(bed.port, raw)
    check_error(dialect, resp, 400, "invalid_request_error", "not valid HTTP/1.1")
    still_serving(bed, dialect, "m-an" if dialect == A else "m-oa")


def test_body_just_under_the_limit_is_accepted(bed: Bed) -> None:
    text = "y" * (LIMIT_BYTES - 2048)
    resp = post_json(bed.port, "/v1/messages", body_for(A, "m-an", text=text), auth())
    assert resp.status == 200


@pytest.mark.parametrize(
    ("method", "path", "dialect", "headers"),
    [
        ("GET", "/v1/messages", A, {}),
        ("PUT", "/v1/messages", A, {}),
        ("DELETE", "/anthropic/v1/messages", A, {}),
        ("GET", "/v1/messages/count_tokens", A, {}),
        ("GET", "/v1/chat/completions", O, {}),
        ("PATCH", "/openai/v1/chat/completions", O, {}),
        ("POST", "/v1/models", O, {}),
        ("POST", "/v1/models", A, {"anthropic-version": "2023-06-01"}),
        ("DELETE", "/anthropic/v1/models", A, {}),
        ("POST", "/openai/v1/models", O, {}),
    ],
)
def test_wrong_method(
    bed: Bed, method: str, path: str, dialect: str, headers: dict[str, str]
) -> None:
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    resp = call(method, bed.port, path, body=body, headers={**auth(), **headers})
    check_error(dialect, resp, 405, "invalid_request_error", method)
    # RFC 9110 §15.5.6: a 405 says which methods the path takes.
    assert resp.headers["allow"] == ("GET, OPTIONS" if "models" in path else "POST, OPTIONS")
    still_serving(bed, dialect, "m-an" if dialect == A else "m-oa")


@pytest.mark.parametrize(
    ("method", "path", "dialect", "endpoint", "status"),
    [
        ("GET", "/v1/messages", A, "messages", 405),
        ("PUT", "/v1/chat/completions", O, "chat", 405),
        ("DELETE", "/v1/messages/count_tokens", A, "count_tokens", 405),
        ("POST", "/v1/nope", O, "unknown", 404),
        ("POST", "/anthropic/v1/messages/batches", A, "unknown", 404),
        ("GET", "/v2/chat/completions", O, "unknown", 404),
    ],
)
@pytest.mark.parametrize("key", ["valid", "none"])
def test_wrong_method_and_unknown_path_leave_a_usage_row(
    bed: Bed, method: str, path: str, dialect: str, endpoint: str, status: int, key: str
) -> None:
    """Every API request, failures included, leaves one row: these too (they left none)."""
    body = b"{}" if method in ("POST", "PUT") else None
    resp = call(method, bed.port, path, body=body, headers=auth() if key == "valid" else {})
    assert resp.status == status
    rows = [r for r in bed.run(usage_rows(bed.live)) if r.request_id == resp.headers["request-id"]]
    assert len(rows) == 1
    row = rows[0]
    assert (row.key_name, row.client_dialect, row.endpoint) == (
        "tester" if key == "valid" else None,
        dialect,
        endpoint,
    )
    assert (row.status, row.http_status, row.requested_model) == ("error", status, None)
    assert (row.input_tokens, row.output_tokens) == (0, 0)


def test_paths_outside_the_api_leave_no_usage_row(bed: Bed) -> None:
    before = len(bed.run(usage_rows(bed.live)))
    for path in ("/favicon.ico", "/wp-login.php", "/admin/nothing-here"):
        assert call("GET", bed.port, path, headers=auth()).status == 404
    assert len(bed.run(usage_rows(bed.live))) == before


# -- Content-Encoding ---------------------------------------------------------------------------


def raw_deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def gzip_members(data: bytes, count: int) -> bytes:
    """``data`` in ``count`` gzip members, one after the other (RFC 1952 §2.2)."""
    step = -(-len(data) // count)
    return b"".join(gzip.compress(data[i : i + step]) for i in range(0, len(data), step))


CODINGS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "x-gzip": gzip.compress,
    "GZip": gzip.compress,
    "gzip (3 members)": lambda data: gzip_members(data, 3),
    "deflate": zlib.compress,  # the zlib format, as RFC 9110 has it
    "deflate (raw)": raw_deflate,  # what some clients send for it
    "identity": lambda data: data,
}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("coding", list(CODINGS))
@pytest.mark.parametrize(("dialect", "model"), [(A, "m-an"), (A, "m-oa"), (O, "m-oa"), (O, "m-an")])
def test_a_compressed_body_is_decompressed(
    bed: Bed, dialect: str, model: str, coding: str, chunked: bool
) -> None:
    """A gzip or deflate body used to be read as it came: a 400 saying it was not UTF-8."""
    text = f"compressed {coding} {chunked}"
    body = CODINGS[coding](orjson.dumps(body_for(dialect, model, text=text)))
    headers = {**auth(), "Content-Encoding": coding.split(" ")[0]}
    resp = call("POST", bed.port, path_for(dialect), body=body, headers=headers, chunked=chunked)
    assert resp.status == 200, resp.body[:300]
    fake = bed.fa if model == "m-an" else bed.fo
    assert text in orjson.dumps(fake.received[-1].json).decode()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("dialect", [A, O])
def test_the_body_limit_holds_for_the_decompressed_body(
    bed: Bed, dialect: str, chunked: bool
) -> None:
    """A few KiB that decompress past the limit: a 413 (a gzip bomb fills nothing)."""
    model = "m-an" if dialect == A else "m-oa"
    seen = len(bed.fo.received) + len(bed.fa.received)
    body = gzip.compress(BIG if dialect == A else BIG.replace(b'"max_tokens": 5, ', b""))
    assert len(body) < LIMIT_BYTES // 10
    headers = {**auth(), "Content-Encoding": "gzip"}
    resp = call("POST", bed.port, path_for(dialect), body=body, headers=headers, chunked=chunked)
    if dialect == A:
        check_error(A, resp, 413, "request_too_large", "limit")
    else:
        check_error(O, resp, 413, "invalid_request_error", "limit", code="request_too_large")
    assert len(bed.fo.received) + len(bed.fa.received) == seen
    still_serving(bed, dialect, model)


@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, br", "bogus"])
@pytest.mark.parametrize("dialect", [A, O])
def test_an_unsupported_content_encoding_is_a_415(bed: Bed, dialect: str, coding: str) -> None:
    """Once read as if plain (a br header on a plain body passed): now a 415 naming it,
    with the codings that would do."""
    seen = len(bed.fo.received) + len(bed.fa.received)
    body = orjson.dumps(body_for(dialect, "m-an" if dialect == A else "m-oa"))
    headers = {**auth(), "Content-Encoding": coding}
    resp = call("POST", bed.port, path_for(dialect), body=body, headers=headers)
    if dialect == A:
        check_error(A, resp, 415, "invalid_request_error", repr(coding))
    else:
        check_error(O, resp, 415, "invalid_request_error", repr(coding))
    assert resp.headers["accept-encoding"] == "gzip, deflate"
    assert len(bed.fo.received) + len(bed.fa.received) == seen
    still_serving(bed, dialect, "m-an" if dialect == A else "m-oa")


@pytest.mark.parametrize(
    ("coding", "body", "says"),
    [
        ("gzip", b'{"model": "m-an"}', "not valid gzip data"),
        ("gzip", gzip.compress(b'{"model": "m-an"}')[:-6], "cut short"),
        ("gzip", gzip.compress(b'{"model": "m-an"}') + b"junk", "not valid gzip data"),
        ("deflate", zlib.compress(b'{"model": "m-an"}') + b"junk", "not valid deflate data"),
        # Each gzip member past the first cost a copy of the rest of the chunk: 1,200 tiny
        # ones in 60 KB held the event loop for seconds, before the key was even checked.
        ("gzip", gzip.compress(b" ") * 1200, "more than 16 gzip members"),
    ],
    ids=["not-gzip", "truncated", "trailing-junk", "deflate-trailing-junk", "many-members"],
)
def test_a_body_that_does_not_decompress_is_a_400(
    bed: Bed, coding: str, body: bytes, says: str
) -> None:
    seen = len(bed.fo.received) + len(bed.fa.received)
    resp = call(
        "POST", bed.port, "/v1/messages", body=body, headers={**auth(), "Content-Encoding": coding}
    )
    check_error(A, resp, 400, "invalid_request_error", says)
    assert len(bed.fo.received) + len(bed.fa.received) == seen
    still_serving(bed, A, "m-an")


@pytest.mark.parametrize(
    ("method", "path", "dialect", "headers"),
    [
        ("POST", "/v1/nope", O, {}),
        ("POST", "/v1/nope", A, {"anthropic-version": "2023-06-01"}),
        ("POST", "/v1/complete", A, {"x-api-key": TEST_KEY}),
        ("GET", "/anthropic/v1/unknown", A, {}),
        ("POST", "/anthropic/v1/messages/batches", A, {}),
        ("GET", "/openai/v1/unknown", O, {}),
        ("POST", "/openai/v1/images/generations", O, {}),
        ("POST", "/v2/chat/completions", O, {}),
    ],
)
def test_unknown_path(
    bed: Bed, method: str, path: str, dialect: str, headers: dict[str, str]
) -> None:
    body = b"{}" if method == "POST" else None
    resp = call(method, bed.port, path, body=body, headers={**auth(), **headers})
    if dialect == A:
        check_error(A, resp, 404, "not_found_error", path)
    else:
        # Not "model_not_found", which OpenAI clients take as a wrong model name.
        check_error(O, resp, 404, "invalid_request_error", path, code="unknown_url")


# -- keys and models -----------------------------------------------------------------------------

KEYS = {
    "missing": {},
    "unknown": auth("bk-not-a-key-at-all-00000"),
    "unknown_x_api_key": {"x-api-key": "bk-not-a-key-at-all-00000"},
    "not_bearer": {"Authorization": f"Basic {TEST_KEY}"},
    "empty_bearer": {"Authorization": "Bearer "},
    "revoked": auth(REVOKED_KEY),
    "expired": auth(EXPIRED_KEY),
}
AUTH_SAYS = {
    "missing": "Missing API key",
    "unknown": "Invalid API key",
    "unknown_x_api_key": "Invalid API key",
    "not_bearer": "Missing API key",
    "empty_bearer": "Missing API key",
    "revoked": "revoked",
    "expired": "expired",
}
AUTH_PATHS = [
    ("POST", "/v1/messages", A, body_for(A, "m-an")),
    ("POST", "/v1/messages", A, body_for(A, "m-oa", stream=True)),
    (
        "POST",
        "/v1/messages/count_tokens",
        A,
        {"model": "m-an", "messages": [{"role": "user", "content": "x"}]},
    ),
    ("POST", "/v1/chat/completions", O, body_for(O, "m-oa")),
    ("POST", "/v1/chat/completions", O, body_for(O, "m-an", stream=True)),
    ("GET", "/openai/v1/models", O, None),
    ("GET", "/anthropic/v1/models", A, None),
    ("GET", "/v1/models/m-oa", O, None),
]


@pytest.mark.parametrize(
    "path", AUTH_PATHS, ids=lambda p: f"{p[0]}{p[1]}-{p[3] and p[3].get('model')}"
)
@pytest.mark.parametrize("which", list(KEYS))
def test_bad_key(bed: Bed, which: str, path: tuple[str, str, str, Any]) -> None:
    method, url, dialect, payload = path
    seen = len(bed.fo.received) + len(bed.fa.received)
    body = orjson.dumps(payload) if payload is not None else None
    resp = call(method, bed.port, url, body=body, headers=KEYS[which])
    if dialect == A:
        check_error(A, resp, 401, "authentication_error", AUTH_SAYS[which])
    else:
        check_error(O, resp, 401, "invalid_request_error", AUTH_SAYS[which], code="invalid_api_key")
    # A key will not become valid by asking again (Claude Code retries a 401 without it).
    assert resp.headers["x-should-retry"] == "false"
    assert len(bed.fo.received) + len(bed.fa.received) == seen


def test_bad_key_does_not_leak_which_keys_exist(bed: Bed) -> None:
    """An unknown key and a near miss of a real one get the same answer."""
    near = TEST_KEY[:-1] + ("1" if TEST_KEY[-1] != "1" else "2")
    a = post_json(
        bed.port, "/v1/chat/completions", body_for(O, "m-oa"), auth("bk-zzzzzzzzzzzzzzzzzzzzzzzz")
    )
    b = post_json(bed.port, "/v1/chat/completions", body_for(O, "m-oa"), auth(near))
    assert (a.status, a.json()) == (b.status, b.json()) == (401, a.json())


@pytest.mark.parametrize(
    ("dialect", "path", "payload"),
    [
        (A, "/v1/messages", body_for(A, "m-an")),
        (A, "/v1/messages", body_for(A, "m-an", stream=True)),
        (
            A,
            "/v1/messages/count_tokens",
            {"model": "m-an", "messages": [{"role": "user", "content": "x"}]},
        ),
        (O, "/v1/chat/completions", body_for(O, "m-an")),
        (O, "/v1/chat/completions", body_for(O, "m-an", stream=True)),
    ],
)
def test_model_not_allowed_for_key(bed: Bed, dialect: str, path: str, payload: Any) -> None:
    seen = len(bed.fo.received) + len(bed.fa.received)
    resp = post_json(bed.port, path, payload, auth(RESTRICTED_KEY))
    check_error(dialect, resp, 403, "permission_error", "m-an")
    assert len(bed.fo.received) + len(bed.fa.received) == seen
    allowed = post_json(
        bed.port, path_for(dialect), body_for(dialect, "m-oa"), auth(RESTRICTED_KEY)
    )
    assert allowed.status == 200


@pytest.mark.parametrize(
    ("dialect", "path", "payload"),
    [
        (A, "/v1/messages", body_for(A, "no-such-model")),
        (A, "/v1/messages", body_for(A, "no-such-model", stream=True)),
        (
            A,
            "/v1/messages/count_tokens",
            {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]},
        ),
        (O, "/v1/chat/completions", body_for(O, "no-such-model")),
        (O, "/v1/chat/completions", body_for(O, "no-such-model", stream=True)),
    ],
)
def test_unknown_model(bed: Bed, dialect: str, path: str, payload: Any) -> None:
    resp = post_json(bed.port, path, payload, auth())
    if dialect == A:
        check_error(A, resp, 404, "not_found_error", "no-such-model")
    else:
        check_error(O, resp, 404, "invalid_request_error", "no-such-model", code="model_not_found")


@pytest.mark.parametrize(
    ("dialect", "headers"), [(O, {}), (A, {"anthropic-version": "2023-06-01"})]
)
def test_unknown_model_id_in_models_path(bed: Bed, dialect: str, headers: dict[str, str]) -> None:
    resp = call("GET", bed.port, "/v1/models/no-such-model", headers={**auth(), **headers})
    if dialect == A:
        check_error(A, resp, 404, "not_found_error", "no-such-model")
    else:
        check_error(O, resp, 404, "invalid_request_error", "no-such-model")


# -- what passthrough leaves to the backend, and what translation repairs ----------------------


def test_passthrough_forwards_unknown_block_types_and_relays_the_verdict(bed: Bed) -> None:
    """A newer block type reaches an Anthropic backend untouched; its 400 comes back as is."""
    verdict = {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "messages.0.content.0: bad"},
    }
    bed.fa.push(JsonReply(400, verdict))
    payload = body_for(A, "m-an") | user({"type": "hologram", "data": "x"})
    resp = post_json(bed.port, "/v1/messages", payload, auth())
    assert resp.json() == verdict  # the backend's body, verbatim
    check_error(A, resp, 400, "invalid_request_error", "messages.0.content.0: bad", relayed=True)
    assert bed.fa.received[-1].json["messages"][0]["content"] == [{"type": "hologram", "data": "x"}]


@pytest.mark.parametrize("dialect", [A, O])
def test_orphan_tool_results_are_repaired_into_text_when_translating(
    bed: Bed, dialect: str
) -> None:
    """PROTOCOL.md §6.2 step 3 / §9 #23: a result without a matching call becomes user text
    on translated routes (the backend would reject it); its id stays visible to the model."""
    if dialect == A:
        payload = body_for(A, "m-oa") | user(
            {"type": "tool_result", "tool_use_id": "toolu_orphan", "content": "42"}
        )
        resp = post_json(bed.port, "/v1/messages", payload, auth())
        sent = bed.fo.received[-1].json
    else:
        payload = body_for(O, "m-an")
        payload["messages"] = [
            {"role": "user", "content": "q"},
            {"role": "tool", "tool_call_id": "call_orphan", "content": "42"},
        ]
        resp = post_json(bed.port, "/v1/chat/completions", payload, auth())
        sent = bed.fa.received[-1].json
    assert resp.status == 200, resp.body
    text = orjson.dumps(sent["messages"]).decode()
    assert "orphan" in text and "42" in text
    assert "tool_result" not in text and '"tool"' not in text


def test_a_refused_key_s_model_is_read_only_from_a_small_json_body() -> None:
    assert named_model(b'{"messages": [], "model": "claude-x"}') == "claude-x"
    assert named_model(b'{"model": 7}') is None
    assert named_model(b"[1, 2]") is None
    assert named_model(b"not json") is None
    padded = b'{"model": "m", "pad": "' + b"x" * PEEK_LIMIT + b'"}'
    assert named_model(padded) is None  # a caller without a key gets no 32 MiB parse


@pytest.mark.parametrize("dialect", [A, O])
def test_a_client_that_sends_its_whole_oversized_body_first_gets_the_413(
    bed: Bed, dialect: str
) -> None:
    """As urllib and curl do: the whole body, then the answer. The 413 went out after the
    headers and the connection closed with the body unread, which reset it: the client's
    send failed and the 413 was lost. The rest of the body is drained now."""
    body = BIG.replace(b"x" * 1024, b"x" * (16 * LIMIT_BYTES + 1024), 1)
    path = "/v1/messages" if dialect == A else "/v1/chat/completions"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {TEST_KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", bed.port), timeout=20) as sock:
        sock.sendall(head + body)  # raised BrokenPipeError or ConnectionResetError
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"request_too_large" in answer
    still_serving(bed, dialect, "m-an" if dialect == A else "m-oa")


@pytest.fixture(scope="module")
def roomy(bed_factory: Callable[..., Bed]) -> Bed:
    """A gateway with the default body limit (32 MiB): bodies past `PEEK_LIMIT` fit."""
    return bed_factory()


def _answer_before_the_body(port: int, head: bytes, first: bytes = b"") -> bytes:
    """Send ``head`` (and ``first``), nothing more, and read what comes back until the
    server closes: a server waiting for the rest of the body answers nothing (timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + first)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("dialect", [A, O])
@pytest.mark.parametrize("key", ["bk-not-a-key-0000000000000000000", None], ids=["unknown", "none"])
def test_a_large_body_without_a_valid_key_is_refused_before_it_is_read(
    roomy: Bed, dialect: str, key: str | None
) -> None:
    """Anyone could make the gateway hold a whole body (32 MiB by default) per connection
    before the key was looked at: 20 connections took it from 118 to 767 MB."""
    bed = roomy
    path = "/v1/messages" if dialect == A else "/v1/chat/completions"
    auth_line = f"x-api-key: {key}\r\n" if key else ""
    for framing in (f"Content-Length: {8 * PEEK_LIMIT}", "Transfer-Encoding: chunked"):
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{auth_line}{framing}\r\n\r\n"
        ).encode()
        first = b"10\r\n" + b"x" * 16 + b"\r\n" if "chunked" in framing else b"{"
        answer = _answer_before_the_body(bed.port, head, first)
        assert answer.startswith(b"HTTP/1.1 401 "), answer[:200]
        kind = b"authentication_error" if dialect == A else b"invalid_api_key"
        assert kind in answer
    still_serving(bed, dialect, "m-an" if dialect == A else "m-oa")


def test_a_large_body_with_a_valid_key_is_read_as_before(roomy: Bed) -> None:
    bed = roomy
    text = "y" * (2 * PEEK_LIMIT)
    body = orjson.dumps(
        {"model": "m-oa", "messages": [{"role": "user", "content": text}], "max_tokens": 5}
    )
    resp = call("POST", bed.port, "/v1/chat/completions", body=body, headers=auth())
    assert resp.status == 200
    resp = call("POST", bed.port, "/v1/chat/completions", body=body, headers=auth(), chunked=True)
    assert resp.status == 200
