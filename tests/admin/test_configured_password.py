"""The configured ``admin_password`` across restarts: applied when the admin is new or
the configured value changes, never over a password changed since (it used to reset
the password at every start, undoing the dashboard's and ``admin set-password``'s)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.auth import hash_password, verify_password
from app.db import admins
from app.server import build_services
from app.settings import load_settings
from tests.databases import database_url

pytestmark = pytest.mark.gen_test(timeout=60)


_URLS: dict[Path, str] = {}


async def restart(tmp_path: Path, password: str | None) -> str:
    """Start and stop the services on the test's database; the admin's password hash."""
    if tmp_path not in _URLS:
        _URLS[tmp_path] = database_url(tmp_path, "pw.db")
    lines = [f'[server]\ndatabase_url = "{_URLS[tmp_path]}"']
    if password is not None:
        lines.append(f'admin_password = "{password}"')
    path = tmp_path / "bridgekeeper.toml"
    path.write_text("\n".join(lines) + "\n")
    services, _ = await build_services(load_settings(config_path=str(path), environ={}))
    try:
        async with services.db.session() as session:
            row = await admins.get_admin(session, "admin")
            assert row is not None
            return row.password_hash
    finally:
        await services.close()


async def change_in_dashboard(tmp_path: Path, password: str) -> None:
    path = tmp_path / "bridgekeeper.toml"
    services, _ = await build_services(load_settings(config_path=str(path), environ={}))
    try:
        async with services.db.session() as session, session.begin():
            await admins.set_admin_password(session, "admin", hash_password(password))
    finally:
        await services.close()


async def test_a_password_changed_since_survives_restarts_until_the_configured_one_changes(
    tmp_path: Path,
) -> None:
    assert verify_password("first-password-1", await restart(tmp_path, "first-password-1"))
    await change_in_dashboard(tmp_path, "changed-in-the-dashboard")
    kept = await restart(tmp_path, "first-password-1")  # the same file: not applied again
    assert verify_password("changed-in-the-dashboard", kept)
    assert not verify_password("first-password-1", kept)
    changed = await restart(tmp_path, "second-password-2")  # the file changed: it wins
    assert verify_password("second-password-2", changed)
    unset = await restart(tmp_path, None)  # none configured: nothing generated or reset
    assert verify_password("second-password-2", unset)
