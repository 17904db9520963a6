"""Key rotation in the database: the same row with a new secret, seen by the key refresh
of every running gateway (`keys_fingerprint`), refused for what must not be rotated."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.auth import hash_key
from app.db import keys
from app.db.engine import Database, upgrade
from tests.databases import database_url

FILED = "bk-filed-in-the-config-0123456789"


@pytest.mark.gen_test(timeout=30)
async def test_rotate_keeps_the_row_and_moves_the_fingerprint(tmp_path: Path) -> None:
    url = database_url(tmp_path, "keys.db")
    upgrade(url)
    db = Database(url)
    try:
        async with db.session() as session, session.begin():
            row, old_key = await keys.create_key(session, "alice", rpm=5, models=["m-*"])
            await keys.create_key(session, "bob")
        prints = []
        for name in ("alice", "bob", "alice"):  # each rotation, whichever key, every time
            async with db.session() as session:
                prints.append(await keys.keys_fingerprint(session))
            async with db.session() as session, session.begin():
                rotated, new_key = await keys.rotate_key(session, name)
        async with db.session() as session:
            prints.append(await keys.keys_fingerprint(session))
            alice = await keys.get_key_by_name(session, "alice")
        assert len(set(prints)) == len(prints)
        assert alice is not None and alice.id == row.id and alice.rotations == 2
        assert alice.key_hash == hash_key(new_key) != hash_key(old_key)
        assert (alice.rpm, alice.models, alice.prefix) == (5, ["m-*"], new_key[:10])
        assert alice.rotated_at is not None and alice.created_at == row.created_at
        # A stale count (a form sent twice) changes nothing.
        async with db.session() as session:
            with pytest.raises(keys.KeyRotateError, match="rotated meanwhile") as caught:
                await keys.rotate_key(session, "alice", seen=1)
            assert caught.value.reason == "rotated"
            rotated, newest = await keys.rotate_key(session, "alice", seen=2)
            await session.commit()
        assert rotated.rotations == 3 and rotated.key_hash == hash_key(newest)
    finally:
        await db.close()


@pytest.mark.gen_test(timeout=30)
async def test_rotate_refuses_unknown_revoked_and_config_keys(tmp_path: Path) -> None:
    url = database_url(tmp_path, "keys.db")
    upgrade(url)
    db = Database(url)
    try:
        async with db.session() as session, session.begin():
            await keys.create_key(session, "gone")
            await keys.revoke_key(session, "gone")
            await keys.upsert_config_key(
                session, "filed", FILED, rpm=None, tpm=None, models=(), expires=None
            )
        for name, reason in (("nobody", "unknown"), ("gone", "revoked"), ("filed", "config")):
            async with db.session() as session:
                with pytest.raises(keys.KeyRotateError) as caught:
                    await keys.rotate_key(session, name)
            assert caught.value.reason == reason
        async with db.session() as session:
            filed = await keys.get_key_by_name(session, "filed")
        assert filed is not None and filed.key_hash == hash_key(FILED) and filed.rotations == 0
    finally:
        await db.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_new_secret_from_the_config_file_counts_as_a_rotation(tmp_path: Path) -> None:
    """Other running gateways drop the file's old secret too (the fingerprint moves)."""
    url = database_url(tmp_path, "keys.db")
    upgrade(url)
    db = Database(url)
    try:
        prints = []
        for secret in (FILED, FILED, FILED + "-new"):
            async with db.session() as session, session.begin():
                await keys.upsert_config_key(
                    session, "filed", secret, rpm=None, tpm=None, models=(), expires=None
                )
            async with db.session() as session:
                prints.append(await keys.keys_fingerprint(session))
                row = await keys.get_key_by_name(session, "filed")
        assert prints[0] == prints[1] != prints[2]
        assert row is not None and row.rotations == 1 and row.rotated_at is not None
    finally:
        await db.close()
