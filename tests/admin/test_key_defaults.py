"""The keys table shows the server's default limits for keys that set none (it showed "∞",
though such a key is held to the defaults)."""

from __future__ import annotations

import pytest

from app.db import keys
from app.services import Services
from tests.admin.conftest import Client, body
from tests.admin.test_keys import row_of


@pytest.fixture
def config_body() -> str:
    return "default_rpm = 60\ndefault_tpm = 50000\n"  # inside [server]


@pytest.mark.gen_test(timeout=30)
async def test_keys_without_limits_show_the_server_defaults(
    client: Client, services: Services
) -> None:
    async with services.db.session() as session, session.begin():
        await keys.create_key(session, "plain")
        await keys.create_key(session, "own", rpm=5)
        await keys.create_key(session, "unlimited", rpm=0, tpm=0)
    await client.login()
    page = body(await client.get("/admin/keys"))

    def limits(name: str) -> list[str]:
        """The key's RPM and TPM cells."""
        cells = row_of(page, name).split('<td class="num">')[1:3]
        return [cell.split("</td>")[0] for cell in cells]

    assert limits("plain") == ["60 (server default)", "50\u202f000 (server default)"]
    assert limits("own") == ["5", "50\u202f000 (server default)"]
    assert limits("unlimited") == ["∞", "∞"]
