"""``GET /v1/models`` with glob routes: the names they pass through as they are come from
their backends' own lists (PROTOCOL.md §6.12), fetched once for a while; an exact route
name first; a backend that cannot list leaves the others' names."""

from __future__ import annotations

import pytest

from tests.conftest import TEST_KEY, http
from tests.fakes import FakeUpstream, JsonReply

pytestmark = pytest.mark.gen_test(timeout=30)

AUTH = {"Authorization": f"Bearer {TEST_KEY}"}


def _listing(*ids: str) -> JsonReply:
    return JsonReply(
        body={
            "object": "list",
            "data": [{"id": i, "object": "model", "created": 0, "owned_by": "x"} for i in ids],
        }
    )


def _config(oa: FakeUpstream, an: FakeUpstream, *, default: str = "") -> str:
    server = f'[server]\ndefault_upstream = "{default}"\n' if default else ""
    return (
        server
        + f"""
[[upstreams]]
name = "oa"
kind = "openai"
base_url = "{oa.url}"
keys = ["sk-oa"]

[[upstreams]]
name = "an"
kind = "anthropic"
base_url = "{an.url}"
keys = ["sk-an"]

[[models]]
name = "team-model"
upstream = "oa"
target = "real-model"

[[models]]
name = "gpt-*"
upstream = "oa"

[[models]]
name = "claude-*"
upstream = "an"
target = "one-model"
"""
    )


async def test_glob_routes_list_their_backend_s_names(gateway, fake_openai, fake_anthropic):  # type: ignore[no-untyped-def]
    fake_openai.push(_listing("gpt-4o", "gpt-4o-mini", "text-embedding-3", "team-model"))
    live = await gateway(_config(fake_openai, fake_anthropic))
    body = (await http("GET", live.url + "/v1/models", headers=AUTH)).json()
    # claude-* sends every name to one target: its backend's names are not what it serves.
    assert [m["id"] for m in body["data"]] == ["team-model", "gpt-4o", "gpt-4o-mini"]
    page = await http(
        "GET", live.url + "/v1/models", headers=AUTH | {"anthropic-version": "2023-06-01"}
    )
    assert [m["id"] for m in page.json()["data"]] == ["team-model", "gpt-4o", "gpt-4o-mini"]
    assert [r.path for r in fake_openai.received] == ["/v1/models"]  # fetched once, then kept
    assert fake_openai.received[0].headers["Authorization"] == "Bearer sk-oa"
    assert fake_anthropic.received == []
    assert (await http("GET", live.url + "/v1/models/gpt-4o", headers=AUTH)).status == 200


async def test_a_key_sees_only_the_backend_names_it_may_use(gateway, fake_openai, fake_anthropic):  # type: ignore[no-untyped-def]
    key = "bk-only-mini-models-0123456789abcdef"
    fake_openai.push(_listing("gpt-4o", "gpt-4o-mini"))
    live = await gateway(
        _config(fake_openai, fake_anthropic)
        + f'\n[[keys]]\nname = "mini"\nkey = "{key}"\nmodels = ["*-mini"]\n'
    )
    body = (await http("GET", live.url + "/v1/models", headers={"x-api-key": key})).json()
    assert [m["id"] for m in body["data"]] == ["gpt-4o-mini"]


async def test_the_default_upstream_lists_its_backend_s_names(gateway, fake_openai, fake_anthropic):  # type: ignore[no-untyped-def]
    fake_anthropic.push(
        JsonReply(
            body={
                "data": [{"type": "model", "id": "claude-opus-4-1"}, {"type": "model", "id": "m2"}],
                "has_more": False,
            }
        )
    )
    fake_openai.push(JsonReply(status=500, body={"error": {"message": "down"}}))
    live = await gateway(_config(fake_openai, fake_anthropic), server='default_upstream = "an"')
    resp = await http("GET", live.url + "/v1/models", headers=AUTH)
    assert resp.status == 200
    # gpt-*'s backend failed to list: left out. The default upstream's names that no route
    # before it takes: claude-opus-4-1 goes to claude-*'s one target, m2 to the default.
    assert [m["id"] for m in resp.json()["data"]] == ["team-model", "m2"]
    assert [r.path for r in fake_anthropic.received] == ["/v1/models"]
