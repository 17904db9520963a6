"""Deterministic mutation fuzzing of the proxy endpoints, both dialects, both kinds of route.

Valid request bodies (real Claude Code, Codex and SDK captures, the golden translation cases
and a few written here) are mutated with seeded `random.Random`s: a node anywhere in the JSON
tree replaced by a value of another type (a list nested past what orjson writes or reads
among them), a key deleted or added, an array element duplicated, a string made 100 KB long
or odd, two strings swapped, a number set out of range, a block or message given another
type or role, a value emptied, an object nested in its own array as deep as JSON is read.

Each mutant of a Messages, count_tokens, Chat Completions, Responses or embeddings body goes
through real HTTP to a backend of the client's dialect (passthrough) and to one of the other
(translated), streamed or not as its body says; every other one to routes with per-model
settings and backend quirks, a quarter of them chunked (the Tornado application's way in
rather than `ApiCall`'s). Whatever the gateway makes of a mutant, the client gets a 200 that
is a valid answer in its dialect (for a stream, a well-formed SSE sequence that ends
properly) or a 4xx in its dialect's exact error envelope: never a 5xx (the fake upstreams do
not fail), never a traceback in the log; what the gateway sends upstream is a JSON request;
and it serves a valid request after the batch.

Seeds are strings, so every run makes the same mutants; a failure names the seed body and
its mutations. The bugs the fuzzing found are pinned by the named cases at the end.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.reliability.conftest import (
    Bed,
    Resp,
    auth,
    call,
    message_blocks,
)

A, O = "anthropic", "openai"  # noqa: E741
ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT.parent / "shared" / "captures"
FIXTURES = ROOT / "tests" / "fixtures"
MODEL = "MODEL"  # the route's model name, where a mutation left the model alone
HUGE = 100 * 1024
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="

# Every other mutant goes to a "tuned" route: per-model settings (a max_tokens cap, a
# default temperature, a context window Claude Code's prompt plus a huge string overflows,
# forced params, prompt caching) and backend quirks (thinking replayed as
# reasoning_content, top_k, chat_template_kwargs, max_completion_tokens, Mistral's tool
# ids; a Claude model that thinks adaptively).
TUNED = """
[[upstreams]]
name = "oa-tuned"
kind = "openai"
base_url = "{openai_url}"
keys = ["sk-oa-upstream-2"]
reasoning = "replay"
top_k = true
chat_template_thinking = true
max_tokens_field = "max_completion_tokens"

[[models]]
name = "m-oa-tuned"
upstream = "oa-tuned"
target = "mistral-small-latest"
max_tokens = 1024
temperature = 0.3
context_window = 40000
params = {{ repetition_penalty = 1.05 }}

[[models]]
name = "m-an-tuned"
upstream = "an"
target = "claude-opus-4-6"
max_tokens = 2048
temperature = 0.3
context_window = 200000
prompt_cache = true
"""


def model_for(dialect: str, route: str, tuned: bool) -> str:
    """``m-an`` is the Anthropic backend's, ``m-oa`` the OpenAI one's (as in conftest)."""
    same = route == "passthrough"
    name = "m-an" if (dialect == A) == same else "m-oa"
    return name + "-tuned" if tuned else name


@pytest.fixture(scope="module")
def bed(bed_factory: Callable[..., Bed]) -> Bed:
    return bed_factory(extra=lambda fo, _fa: TUNED.format(openai_url=fo.url))


# -- the seed bodies ---------------------------------------------------------------------------

Seeds = list[tuple[str, dict[str, Any]]]

# Claude Code sends the same ~120 KB prompt on every turn: one of each kind of turn is enough.
CLAUDE_CODE = [
    "01-basic-print/0001",  # first turn: system blocks, 20-odd tools, thinking, metadata
    "04-tool-bash/0002",  # a tool_use answered by a tool_result
    "10-bare/0001",  # three tools, a tiny system prompt
    "11-tool-bash-thinking/0002",  # a signed thinking block before the tool_use
    "12-default-model-tool-thinking/0002",  # output_config, a mid-conversation system message
    "17-fault-stream-cut/0002",  # the same prompt, not streamed
]
CODEX = [
    "03-tool-call/0004",  # first turn: developer instructions, tools, reasoning, include
    "03-tool-call/0005",  # a function_call and its output
    "07-builtin-openai-openai_base_url/0011",  # "responses-lite": text.format, no tools
]


def _capture(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    body = orjson.loads(path.read_bytes())["body"]
    return body if isinstance(body, dict) else None  # some Codex bodies were compressed


def _captured(pattern: str, names: list[str] | None = None) -> Iterator[tuple[str, Any]]:
    """Captured bodies: ``names`` ("folder/NNNN") under ``pattern``'s folder, else all that
    match ``pattern``; bodies alike (Claude Code repeats itself) taken once."""
    seen: set[bytes] = set()
    if names is not None:
        folder, suffix = pattern.split("*", 1)
        paths = [CAPTURES / folder / f"{n}{suffix}" for n in names]
    else:
        paths = sorted(CAPTURES.glob(pattern))
    for path in paths:
        body = _capture(path)
        if body is None or (key := orjson.dumps(body, option=orjson.OPT_SORT_KEYS)) in seen:
            continue
        seen.add(key)
        yield f"{path.parent.name}/{path.stem[:4]}", body


def _golden(pair: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The golden translation cases' valid requests (those with an expected translation)."""
    for folder in sorted((FIXTURES / pair).iterdir()):
        request = folder / "request.json"
        if request.is_file() and (folder / "expected.json").is_file():
            yield f"{pair}/{folder.name}", orjson.loads(request.read_bytes())


def _streamed(name: str, body: dict[str, Any], **extra: Any) -> Seeds:
    return [(name, body), (f"{name}-stream", {**copy.deepcopy(body), "stream": True, **extra})]


WRITTEN_MESSAGES: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 2048,
    "system": [{"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}}],
    "temperature": 1,
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "tools": [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
    ],
    "tool_choice": {"type": "auto"},
    "stop_sequences": ["END"],
    "metadata": {"user_id": "user_01"},
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Look it up.", "signature": "sig_01"},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": [{"type": "text", "text": "Sunny, 21 C"}],
                },
                {"type": "text", "text": "Thanks."},
            ],
        },
    ],
}
WRITTEN_CHAT: dict[str, Any] = {
    "model": MODEL,
    "max_completion_tokens": 512,
    "temperature": 0.5,
    "top_p": 0.9,
    "stop": ["END"],
    "user": "user_01",
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ],
    "tool_choice": "auto",
    "response_format": {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    },
    "messages": [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this picture, and the weather?"},
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_01",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_01", "content": "Sunny, 21 C"},
    ],
}
WRITTEN_RESPONSES: dict[str, Any] = {
    "model": MODEL,
    "instructions": "You are terse.",
    "max_output_tokens": 512,
    "reasoning": {"effort": "low"},
    "tools": [
        {
            "type": "function",
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        }
    ],
    "input": [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is in this picture, and the weather?"},
                {"type": "input_image", "image_url": f"data:image/png;base64,{PNG}"},
            ],
        },
        {"type": "function_call", "call_id": "call_01", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_01", "output": "Sunny, 21 C"},
    ],
}  # fmt: skip


def messages_seeds() -> Seeds:
    return [
        *_captured("claude-code/*_POST_v1_messages.json", CLAUDE_CODE),
        *_captured("anthropic-python-sdk/2.12.0/*_POST_v1_messages.json"),
        *_golden("anthropic_to_openai"),
        *_streamed("written", WRITTEN_MESSAGES),
    ]


def chat_seeds() -> Seeds:
    return [
        *_captured("openai-python-sdk/3.54.0/*_POST_v1_chat_completions.json"),
        *_golden("openai_to_anthropic"),
        *_streamed("written", WRITTEN_CHAT, stream_options={"include_usage": True}),
    ]


def count_tokens_seeds() -> Seeds:
    counted = {k: v for k, v in WRITTEN_MESSAGES.items() if k != "max_tokens"}
    return [
        *_captured("claude-code/20-interactive/*_POST_v1_messages_count_tokens.json"),
        *_captured("anthropic-python-sdk/2.12.0/*_POST_v1_messages_count_tokens.json"),
        ("written", counted),
    ]


def responses_seeds() -> Seeds:
    return [
        *_captured("codex/*_POST_v1_responses.json", CODEX),
        *_captured("openai-python-sdk/3.54.0/*_POST_v1_responses.json"),
        *_golden("responses_request"),
        *_streamed("written", WRITTEN_RESPONSES),
    ]


def embeddings_seeds() -> Seeds:
    """The four forms of ``input``; the SDK asks for base64."""
    return [
        ("text", {"model": MODEL, "input": "The food was delicious."}),
        ("texts", {"model": MODEL, "input": ["one", "two"], "encoding_format": "base64"}),
        ("ids", {"model": MODEL, "input": [1, 2, 3], "dimensions": 3}),
        ("id-lists", {"model": MODEL, "input": [[1, 2], [3]], "user": "user_01"}),
    ]


# -- mutations ---------------------------------------------------------------------------------

Where = tuple[str | int, ...]


@dataclass
class Raw:
    """JSON text nested deeper than an encoder writes, put into the body's text as it is."""

    text: str
    said: str

    @staticmethod
    def deep_list(depth: int) -> Raw:
        return Raw("[" * depth + "]" * depth, f"<list nested {depth} deep>")


ODD_VALUES: list[Any] = [None, True, 0, -1, 1.5, 1e308, "", "x", [], {}]
DEEP_LISTS = (30, 300, 1100)  # within what orjson writes, past it, past what it reads
READ_DEPTH = 1024  # what orjson reads
OUT_OF_RANGE: list[Any] = [-1, 0, -(2**31), 2**31, 2**63, 10**30, 1e308, -1e308, 0.5, 3.5]
# The type names of both dialects' blocks, parts, items, options and tools, and their roles.
TYPES = [
    "text", "image", "document", "tool_use", "tool_result", "thinking", "redacted_thinking",
    "server_tool_use", "web_search_tool_result", "search_result", "container_upload",
    "image_url", "input_audio", "file", "refusal", "function", "custom", "json_object",
    "json_schema", "enabled", "disabled", "adaptive", "auto", "any", "tool", "none",
    "required", "allowed_tools", "base64", "url", "ephemeral", "content", "bash_20250124",
    "web_search_20250305", "text_editor_20250728", "message", "input_text", "output_text",
    "input_image", "input_file", "function_call", "function_call_output", "reasoning",
    "summary_text", "custom_tool_call", "web_search", "local_shell", "namespace",
]  # fmt: skip
ROLES = ["user", "assistant", "system", "developer", "tool", "function", "model"]


def _kind(value: Any) -> str:
    """The value's JSON type; integers and fractions apart, as the APIs tell them apart."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    if isinstance(value, float):
        return "fraction"
    if isinstance(value, Raw):
        return "list"
    return type(value).__name__


def _children(node: Any) -> list[str | int]:
    if isinstance(node, dict):
        return list(node)
    if isinstance(node, list):
        return list(range(len(node)))
    return []


def _get(root: Any, where: Where) -> Any:
    for step in where:
        root = root[step]
    return root


def _set(root: Any, where: Where, value: Any) -> Any:
    """``root`` with the node at ``where`` replaced (the new root when ``where`` is empty)."""
    if not where:
        return value
    _get(root, where[:-1])[where[-1]] = value
    return root


def _all(node: Any, where: Where = ()) -> Iterator[Where]:
    yield where
    for step in _children(node):
        yield from _all(node[step], (*where, step))


def _walk(rng: random.Random, root: Any) -> Where:
    """A random walk down from the root: structure (messages, blocks, top-level fields) is
    picked far more often than under a uniform choice, which a 20-tool schema dominates."""
    where: Where = ()
    node = root
    while True:
        steps = _children(node)
        if not steps or rng.random() < (0.2 if where else 0.02):
            return where
        step = rng.choice(steps)
        where, node = (*where, step), node[step]


def _pick(rng: random.Random, root: Any, fits: Callable[[Any], bool]) -> Where | None:
    """A node ``fits`` accepts: by random walk mostly, else uniformly."""
    if rng.random() < 0.7:
        for _ in range(20):
            where = _walk(rng, root)
            if fits(_get(root, where)):
                return where
    found = [w for w in _all(root) if fits(_get(root, w))]
    return rng.choice(found) if found else None


def _name(where: Where) -> str:
    return "$" + "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in where)


def _short(value: Any) -> str:
    if isinstance(value, Raw):
        return value.said
    if isinstance(value, str) and len(value) > 20:
        return f"<string of {len(value)} characters>"
    return json.dumps(value)


Mutation = Callable[[random.Random, Any, "Endpoint"], tuple[Any, str]]


def replace_node(rng: random.Random, body: Any, endpoint: Endpoint) -> tuple[Any, str]:
    where = _pick(rng, body, lambda n: True)
    assert where is not None
    old = _kind(_get(body, where))
    choices = [*ODD_VALUES, *(Raw.deep_list(d) for d in DEEP_LISTS)]
    new = rng.choice([v for v in choices if _kind(v) != old])
    return _set(body, where, copy.deepcopy(new)), f"{_name(where)} = {_short(new)}"


def delete_key(rng: random.Random, body: Any, endpoint: Endpoint) -> tuple[Any, str]:
    where = _pick(rng, body, lambda n: isinstance(n, dict) and bool(n))
    if where is None:
        return body, "nothing to delete"
    key = rng.choice(list(_get(body, where)))
    del _get(body, where)[key]
    return body, f"del {_name((*where, key))}"


def add_key(rng: random.Random, body: Any, endpoint: Endpoint) -> tuple[Any, str]:
    where = _pick(rng, body, lambda n: isinstance(n, dict))
    if where is None:
        return body, "nowhere to add a key"
    value = copy.deepcopy(rng.choice(ODD_VALUES))
    _get(body, where)["x_fuzz_unknown"] = value
    return body, f"{_name((*where, 'x_fuzz_unknown'))} = {_short(value)}"


def duplicate_item(rng: random.Random, body: Any, endpoint: Endpoint) -> tuple[Any, str]:
    where = _pick(rng, body, lambda n: isinstance(n, list) and bool(n))
    if where is None:
        return body, "no array to grow"
    items = _get(body, where)
    i = rng.randrange(len(items))
    items.insert(i + 1, copy.deepcopy(items[i]))
    return body, f"{_name((*where, i))} duplicated"


def huge_string(rng: random.Random, body: Any, endpoint: Endpoint) -> tuple[Any, str]:
    where = _pick(rng, body, lambda n: isinstance(n, str))
    if where is None:
        return body, "no string to grow"
    old = _get(body, where) or "x"
    new = (old * (HUGE // len(old) + 1))[:HUGE]
    return _set(body, where, new), f"{_name(where)} = <its text repeated to {HUGE} characters>"


def number_out_of_range(rng: random.Random, body: Any, endpoint: Endpoint) -> tuple[Any, str]:
    """A number of the body, or one of the endpoint's numeric fields, set out of range."""
    new = rng.choice(OUT_OF_RANGE)
    where: Where | None = None
    if rng.random() < 0.5:
        where = _pick(rng, body, lambda n: _kind(n) in ("integer", "fraction"))
    if where is not None:
        return _set(body, where, new), f"{_name(where)} = {_short(new)}"
    if not isinstance(body, dict):
        return body, "no number to change"
    where = rng.choice(endpoint.numbers)
    parent = body
    for step in where[:-1]:
        if not isinstance(parent.get(step), dict):
            parent[step] = {"type": "enabled"} if step == "thinking" else {}
        parent = parent[step]
    parent[where[-1]] = new
    return body, f"{_name(where)} = {_short(new)}"


def retype(rng: random.Random, body: Any, endpoint: Endpoint) -> tuple[Any, str]:
    """A block, part, item, tool or option of one type given another's name, or a message
    another role: it then lacks its own fields and has the other's."""
    key = "role" if rng.random() < 0.25 else "type"
    where = _pick(rng, body, lambda n: isinstance(n, dict) and isinstance(n.get(key), str))
    if where is None:
        return body, f"no {key} to change"
    node = _get(body, where)
    new = rng.choice([t for t in (ROLES if key == "role" else TYPES) if t != node[key]])
    node[key] = new
    return body, f"{_name((*where, key))} = {json.dumps(new)}"


def empty(rng: random.Random, body: Any, endpoint: Endpoint) -> tuple[Any, str]:
    """A string, array or object emptied: its type kept, its content gone."""
    where = _pick(rng, body, lambda n: isinstance(n, str | list | dict) and bool(n))
    if where is None:
        return body, "nothing to empty"
    old = _get(body, where)
    new: Any = rng.choice(["", " ", "\n", "\x00"]) if isinstance(old, str) else type(old)()
    return _set(body, where, new), f"{_name(where)} = {json.dumps(new)}"


def _text(value: Any) -> str:
    """``value`` as JSON text, with its `Raw` parts written in."""
    raws: list[Raw] = []

    def default(value: Any) -> Any:
        if isinstance(value, Raw):
            raws.append(value)
            return f"__RAW_{len(raws) - 1}__"
        raise TypeError(type(value))

    text = json.dumps(value, default=default, ensure_ascii=False, separators=(",", ":"))
    for i, raw in enumerate(raws):
        text = text.replace(f'"__RAW_{i}__"', raw.text)
    return text


def _depth(value: Any) -> int:
    """How many arrays and objects deep ``value`` is."""
    if isinstance(value, Raw):
        depth = deepest = 0
        for char in value.text:  # no strings with brackets in a Raw's text that matter here
            depth += (char in "[{") - (char in "]}")
            deepest = max(deepest, depth)
        return deepest
    if isinstance(value, dict | list):
        items = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(v) for v in items), default=0)
    return 0


def _shape(where: Where) -> Where:
    """A path with its array indices left out: where every message's content is one place."""
    return tuple(step for step in where if isinstance(step, str))


def nest(rng: random.Random, body: Any, endpoint: Endpoint) -> tuple[Any, str]:
    """An array-holding object (a tool result and its content, a message, a schema and its
    ``anyOf``) put in its own array again and again, up to what orjson reads: the shape that
    code recursing over it meets. Each place (path without indices) is as likely as any
    other, so a tool schema's many objects do not crowd out the one tool result."""
    sites: dict[tuple[Where, str], list[Where]] = {}
    for where in _all(body):
        node = _get(body, where)
        if not where or not isinstance(node, dict):
            continue
        for key, value in node.items():
            if isinstance(value, list) and value:
                sites.setdefault((_shape(where), key), []).append(where)
    if not sites:
        return body, "nothing to nest"
    place = rng.choice(sorted(sites, key=repr))
    where, key = rng.choice(sites[place]), place[1]
    node = _get(body, where)
    leaf = node[key][0]
    head, tail = _text(dict(node, **{key: "__NEST__"})).split('"__NEST__"', 1)
    # Nested ``times`` times, the object's deepest point is 2 (it and its array) a time
    # deeper, below the ``len(where)`` arrays and objects around it.
    room = max(1, (READ_DEPTH - len(where) - _depth(dict(node, **{key: [leaf]}))) // 2 + 1)
    times = rng.choice((20, room, room))  # deep is the point; shallow for contrast
    text = (head + "[") * times + _text(leaf) + ("]" + tail) * times
    said = f"<itself in its {key!r} {times} times>"
    return _set(body, where, Raw(text, said)), f"{_name(where)} = {said}"


# Strings that ids, names, media types, URLs and enums take badly: a control character, text
# past Anthropic's 64-character tool names, a Kimi-style call id, a path, astral characters,
# a data URL with no data, a number and a keyword as text.
ODD_STRINGS = [
    "\x00", "\u2028", "a" * 65, "functions.Bash:0", "../../etc/passwd", "\U0001f600" * 40,
    "data:image/png;base64,", "data:,", "http://", "-1", "null", "true", "{}", " x ",
]  # fmt: skip


def odd_string(rng: random.Random, body: Any, endpoint: Endpoint) -> tuple[Any, str]:
    where = _pick(rng, body, lambda n: isinstance(n, str))
    if where is None:
        return body, "no string to change"
    new = rng.choice(ODD_STRINGS)
    return _set(body, where, new), f"{_name(where)} = {_short(new)}"


def swap_strings(rng: random.Random, body: Any, endpoint: Endpoint) -> tuple[Any, str]:
    """Two strings of the body trade places: ids, names and roles that no longer match."""
    first = _pick(rng, body, lambda n: isinstance(n, str))
    second = _pick(rng, body, lambda n: isinstance(n, str))
    if first is None or second is None or first == second:
        return body, "no strings to swap"
    one, other = _get(body, first), _get(body, second)
    _set(body, first, other)
    _set(body, second, one)
    return body, f"{_name(first)} <-> {_name(second)}"


MUTATIONS: list[Mutation] = [
    replace_node,
    replace_node,
    delete_key,
    add_key,
    duplicate_item,
    huge_string,
    number_out_of_range,
    retype,
    empty,
    nest,
    nest,
    odd_string,
    swap_strings,
]


@dataclass
class Mutant:
    id: str
    body: Any
    tuned: bool  # to the routes with settings and quirks
    chunked: bool = False  # sent without a Content-Length

    def encode(self, model: str) -> bytes:
        """The body as JSON text, the route's model in place of MODEL, deep lists written in."""

        body = self.body
        if isinstance(body, dict) and body.get("model") == MODEL:
            body = dict(body, model=model)
        text = _text(body)
        return text.encode()


# -- what a client may get ---------------------------------------------------------------------


def check_error_shape(dialect: str, resp: Resp) -> None:
    """A 4xx the gateway made, in the client's dialect's envelope exactly."""
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    assert resp.headers.get("request-id", "").startswith("req_")
    body = resp.json()
    if dialect == A:
        assert set(body) == {"type", "error", "request_id"}, body
        assert body["type"] == "error"
        assert set(body["error"]) == {"type", "message"}, body
        assert body["request_id"] == resp.headers["request-id"]
    else:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert body["error"]["param"] is None or isinstance(body["error"]["param"], str), body
        assert body["error"]["code"] is None or isinstance(body["error"]["code"], str), body
    assert isinstance(body["error"]["type"], str) and body["error"]["type"], body
    message = body["error"]["message"]
    assert isinstance(message, str) and message.strip(), body


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_message(data: Any) -> None:
    assert data["type"] == "message" and data["role"] == "assistant", data
    assert isinstance(data["id"], str) and isinstance(data["model"], str), data
    assert isinstance(data["content"], list), data
    for block in data["content"]:
        assert isinstance(block, dict) and isinstance(block.get("type"), str), data
    assert isinstance(data["stop_reason"], str), data
    assert _is_int(data["usage"]["input_tokens"]) and _is_int(data["usage"]["output_tokens"])


def check_completion(data: Any) -> None:
    assert data["object"] == "chat.completion", data
    assert isinstance(data["id"], str) and isinstance(data["model"], str), data
    assert isinstance(data["choices"], list) and data["choices"], data
    for choice in data["choices"]:
        assert choice["message"]["role"] == "assistant", data
        assert isinstance(choice["finish_reason"], str), data
    assert _is_int(data["usage"]["prompt_tokens"]), data
    assert _is_int(data["usage"]["completion_tokens"]), data


def check_count(data: Any) -> None:
    assert set(data) == {"input_tokens"} and _is_int(data["input_tokens"]), data
    assert data["input_tokens"] >= 0, data


def check_embeddings(data: Any) -> None:
    assert data["object"] == "list" and isinstance(data["model"], str), data
    assert isinstance(data["data"], list) and data["data"], data
    for i, item in enumerate(data["data"]):
        assert item["object"] == "embedding" and item["index"] == i, data
        assert isinstance(item["embedding"], list | str), data
    assert _is_int(data["usage"]["prompt_tokens"]), data


def check_response(data: Any) -> None:
    assert data["object"] == "response" and data["status"] == "completed", data
    assert isinstance(data["id"], str) and isinstance(data["model"], str), data
    assert isinstance(data["output"], list) and data["output"], data
    for item in data["output"]:
        assert isinstance(item, dict) and isinstance(item.get("type"), str), data
    assert _is_int(data["usage"]["input_tokens"]) and _is_int(data["usage"]["output_tokens"])


def sse_frames(raw: bytes) -> list[list[str]]:
    """The stream's events, each its lines; the stream must end with a complete one."""
    text = raw.decode()
    assert text.endswith("\n\n"), text[-200:]
    return [frame.split("\n") for frame in text.strip("\n").split("\n\n")]


def named_events(raw: bytes) -> list[dict[str, Any]]:
    """An ``event:``/``data:`` stream's data, each checked to name its own event."""
    events = []
    for lines in sse_frames(raw):
        fields = dict(line.split(": ", 1) for line in lines if not line.startswith(":"))
        if not fields:
            continue  # a keep-alive comment
        assert set(fields) == {"event", "data"}, lines
        data = orjson.loads(fields["data"])
        assert data["type"] == fields["event"], lines
        events.append(data)
    return events


def check_message_stream(raw: bytes) -> None:
    """message_start first, message_delta then message_stop last; blocks opened at 0, 1,
    2... one at a time, each delta in the open one."""
    events = named_events(raw)
    names = [e["type"] for e in events]
    assert "error" not in names, events
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"], names
    assert names.count("message_start") == names.count("message_delta") == 1, names
    count, open_block = message_blocks(events, names)
    assert open_block is None and count, names
    delta = events[-2]
    assert isinstance(delta["delta"]["stop_reason"], str), delta
    assert _is_int(delta["usage"]["output_tokens"]), delta


def chat_data(raw: bytes) -> list[str]:
    """A chat stream's ``data:`` payloads in order (keep-alive comments left out); each
    event holds exactly one ``data:`` line."""
    data = []
    for lines in sse_frames(raw):
        payload = [line for line in lines if not line.startswith(":")]
        if not payload:
            continue  # a keep-alive comment
        assert len(payload) == 1 and payload[0].startswith("data: "), lines
        data.append(payload[0][6:])
    return data


def check_chat_stream(raw: bytes) -> None:
    """``data:`` chunks of ``chat.completion.chunk``, one finish reason, then ``[DONE]``."""
    data = chat_data(raw)
    assert data and data[-1] == "[DONE]", data[-3:]
    chunks = [orjson.loads(d) for d in data[:-1]]
    assert chunks, data
    for chunk in chunks:
        assert "error" not in chunk, chunk
        assert chunk["object"] == "chat.completion.chunk", chunk
        assert isinstance(chunk["choices"], list), chunk
    finishes = [c["finish_reason"] for k in chunks for c in k["choices"] if c["finish_reason"]]
    assert len(finishes) == 1 and isinstance(finishes[0], str), chunks


def check_responses_stream(raw: bytes) -> None:
    """response.created first, response.completed last, numbered 0, 1, 2..."""
    events = named_events(raw)
    names = [e["type"] for e in events]
    assert names[0] == "response.created" and names[-1] == "response.completed", names
    assert "response.failed" not in names and "error" not in names, events
    assert [e["sequence_number"] for e in events] == list(range(len(events))), names
    check_response(events[-1]["response"])


# -- the endpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    name: str
    dialect: str  # the client's
    path: str
    mutants: int  # each goes to both routes
    seeds: Callable[[], Seeds]
    valid: dict[str, Any]  # a small valid body, for after the batch
    sends: str  # the array every request it sends upstream holds
    whole: Callable[[Any], None]
    stream: Callable[[bytes], None] | None  # None: never streams
    numbers: list[Where]  # numeric fields `number_out_of_range` sets

    def __str__(self) -> str:
        return self.name


HI = [{"role": "user", "content": "hi"}]
ENDPOINTS = [
    Endpoint(
        name="messages",
        dialect=A,
        path="/v1/messages",
        mutants=1200,
        seeds=messages_seeds,
        valid={"model": MODEL, "max_tokens": 16, "messages": HI},
        sends="messages",
        whole=check_message,
        stream=check_message_stream,
        numbers=[("max_tokens",), ("temperature",), ("top_p",), ("top_k",), ("thinking", "budget_tokens")],
    ),
    Endpoint(
        name="chat",
        dialect=O,
        path="/v1/chat/completions",
        mutants=800,
        seeds=chat_seeds,
        valid={"model": MODEL, "messages": HI},
        sends="messages",
        whole=check_completion,
        stream=check_chat_stream,
        numbers=[
            ("max_tokens",), ("max_completion_tokens",), ("temperature",), ("top_p",), ("n",),
            ("presence_penalty",), ("frequency_penalty",), ("seed",), ("top_logprobs",),
            ("logit_bias", "50256"),
        ],
    ),
    Endpoint(
        name="count_tokens",
        dialect=A,
        path="/v1/messages/count_tokens",
        mutants=240,
        seeds=count_tokens_seeds,
        valid={"model": MODEL, "messages": HI},
        sends="messages",
        whole=check_count,
        stream=None,
        numbers=[("thinking", "budget_tokens"), ("max_tokens",)],
    ),
    Endpoint(
        name="responses",
        dialect=O,
        path="/v1/responses",
        mutants=500,
        seeds=responses_seeds,
        valid={"model": MODEL, "input": "hi"},
        sends="messages",
        whole=check_response,
        stream=check_responses_stream,
        numbers=[("max_output_tokens",), ("temperature",), ("top_p",), ("top_logprobs",)],
    ),
    Endpoint(
        name="embeddings",
        dialect=O,
        path="/v1/embeddings",
        mutants=120,
        seeds=embeddings_seeds,
        valid={"model": MODEL, "input": "hi"},
        sends="input",
        whole=check_embeddings,
        stream=None,
        numbers=[("dimensions",), ("input", 0)],
    ),
]  # fmt: skip


def mutants(endpoint: Endpoint) -> list[Mutant]:
    """``endpoint.mutants`` mutants, spread evenly over its seed bodies, every other one for
    the tuned routes; each seed body's name seeds its generator, so adding a seed body
    leaves the others' mutants as they were."""
    bodies = endpoint.seeds()
    per_seed = -(-endpoint.mutants // len(bodies))
    out = []
    for name, body in bodies:
        body = dict(body, model=MODEL)
        for k in range(per_seed):
            rng = random.Random(f"{endpoint.name}:{name}:{k}")
            mutant: Any = copy.deepcopy(body)
            done = []
            for _ in range(rng.choice((1, 1, 1, 2, 3))):
                mutant, said = rng.choice(MUTATIONS)(rng, mutant, endpoint)
                done.append(said)
            # A quarter go chunked: to the Tornado application rather than `ApiCall`.
            chunked = rng.random() < 0.25
            said = "; ".join(done) + (" (chunked)" if chunked else "")
            out.append(Mutant(f"{name} #{k}: {said}", mutant, tuned=k % 2 == 1, chunked=chunked))
    return out


def _problems(caplog: pytest.LogCaptureFixture, seen: int) -> list[str]:
    """Log records from the ``seen``-th on that betray a crash inside the gateway."""
    out = []
    for record in caplog.records[seen:]:
        text = record.getMessage()
        if record.exc_info or "Traceback" in text or "failed inside the gateway" in text:
            out.append(f"{record.name}: {text} ({record.exc_info and record.exc_info[1]!r})")
    return out


def verdict(
    bed: Bed, endpoint: Endpoint, route: str, mutant: Mutant, caplog: pytest.LogCaptureFixture
) -> tuple[int, str | None]:
    """The status the gateway answers ``mutant`` with on ``route``, and what is wrong with
    that answer (None if nothing)."""
    model = model_for(endpoint.dialect, route, mutant.tuned)
    fake = bed.fa if model.startswith("m-an") else bed.fo
    seen_logs, seen_sent = len(caplog.records), len(fake.received)
    body = mutant.encode(model)
    resp = call("POST", bed.port, endpoint.path, body=body, headers=auth(), chunked=mutant.chunked)
    sent = fake.received[seen_sent:]
    del fake.received[:]  # ~120 KB a Claude Code request: keep the fakes' memory flat
    stream = (
        endpoint.stream is not None
        and isinstance(mutant.body, dict)
        and mutant.body.get("stream") is True
    )
    try:
        assert resp.status == 200 or 400 <= resp.status < 500, "a 5xx"
        if resp.status == 200:
            ctype = resp.headers.get("content-type", "")
            if stream:
                assert ctype.startswith("text/event-stream"), ctype
                assert endpoint.stream is not None
                endpoint.stream(resp.body)
            else:
                assert ctype.startswith("application/json"), ctype
                endpoint.whole(resp.json())
            # A count for an OpenAI backend is the gateway's own estimate.
            local = endpoint.name == "count_tokens" and route == "translated"
            assert sent or local, "a 200 no upstream answered"
            for received in sent:  # what went upstream is a JSON request of its dialect
                upstream = orjson.loads(received.body)
                assert isinstance(upstream.get("model"), str), upstream
                assert isinstance(upstream.get(endpoint.sends), list | str), upstream
                if endpoint.stream is not None:
                    assert (upstream.get("stream") is True) == stream, upstream
        else:
            check_error_shape(endpoint.dialect, resp)
    except (AssertionError, KeyError, IndexError, TypeError, ValueError) as exc:
        said = (str(exc).splitlines() or [""])[0]  # pytest's explanation follows
        return (
            resp.status,
            f"{resp.status} {type(exc).__name__}({said:.200}) <- {resp.body[:300]!r}",
        )
    logged = _problems(caplog, seen_logs)
    return resp.status, f"{resp.status}, logged {logged}" if logged else None


@pytest.mark.parametrize("route", ["passthrough", "translated"])
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_mutated_bodies_get_an_answer_or_a_4xx_in_the_dialect(
    bed: Bed, endpoint: Endpoint, route: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    cases = mutants(endpoint)
    assert len(cases) >= endpoint.mutants
    failures = []
    answered = 0
    for mutant in cases:
        status, problem = verdict(bed, endpoint, route, mutant, caplog)
        answered += status == 200
        if problem is not None:
            failures.append(f"{mutant.id}: {problem}")
    assert not failures, f"{len(failures)} of {len(cases)}:\n" + "\n".join(failures[:60])
    # An Anthropic backend has no embeddings API: every embeddings request to it is a 400.
    refused = endpoint.name == "embeddings" and route == "translated"
    still = model_for(endpoint.dialect, "passthrough" if refused else route, False)
    valid = Mutant("valid", endpoint.valid, tuned=False).encode(still)
    fine = call("POST", bed.port, endpoint.path, body=valid, headers=auth())
    assert fine.status == 200, fine.body[:300]
    endpoint.whole(fine.json())
    assert _problems(caplog, 0) == []
    # Both outcomes are exercised: mutants the gateway answers and mutants it refuses.
    if refused:
        assert answered == 0
    else:
        assert len(cases) // 10 < answered < len(cases) * 9 // 10, (answered, len(cases))


# -- what the fuzzing found ----------------------------------------------------------------------


def _nested_results(depth: int) -> str:
    """``depth`` tool results, each the only block of the one around it, as JSON text."""
    head = '{"type":"tool_result","tool_use_id":"toolu_1","content":['
    return head * depth + '{"type":"text","text":"x"}' + "]}" * depth


# The local token estimate recursed twice a level into a tool result's content: 509 of them
# (1,018 levels, within the 1,024 orjson reads) were a RecursionError and a 500 before any
# translation or backend could refuse them, on every route (`mutants`: "<itself in its
# 'content' 509 times>"). An OpenAI client's part of that type reaches the estimate too.
NESTED_RESULTS = [
    ("messages", "m-an", 400),  # too deep to write again for the backend
    ("messages", "m-oa", 400),  # the translation refuses a tool result in a tool result
    ("count_tokens", "m-an", 400),
    ("count_tokens", "m-oa", 200),  # the local estimate counts it
    ("chat", "m-oa", 400),
    ("chat", "m-an", 400),
]


@pytest.mark.parametrize(("name", "model", "status"), NESTED_RESULTS)
def test_tool_results_nested_as_deep_as_json_is_read_are_no_500(
    bed: Bed, name: str, model: str, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    endpoint = next(e for e in ENDPOINTS if e.name == name)
    tokens = '"max_tokens":16,' if name == "messages" else ""
    content = f'[{{"role":"user","content":[{_nested_results(509)}]}}]'
    body = f'{{"model":"{model}",{tokens}"messages":{content}}}'.encode()
    resp = call("POST", bed.port, endpoint.path, body=body, headers=auth())
    assert resp.status == status, resp.body[:300]
    if status == 200:
        endpoint.whole(resp.json())
    else:
        check_error_shape(endpoint.dialect, resp)
    assert _problems(caplog, 0) == []
