"""Keys in the database: every change to a key moves the fingerprint by which running
gateways notice it (`keys_fingerprint`), its use does not; rotation keeps the row with a
new secret and is refused for what must not be rotated."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.auth import hash_key
from app.db import keys
from app.db.engine import Database, upgrade
from app.db.usage import UsageRecord
from app.services import make_writer
from tests.databases import database_url

FILED = "bk-filed-in-the-config-0123456789"


async def edit(session: AsyncSession, name: str, **changes: Any) -> None:
    """The dashboard's edit of one key: its form sends every field, ``changes`` changed."""
    row = await keys.get_key_by_name(session, name)
    assert row is not None
    fields: dict[str, Any] = {
        "rpm": row.rpm,
        "tpm": row.tpm,
        "models": row.models,
        "expires": keys.last_day(row.expires_at) if row.expires_at else None,
        "note": row.note,
    }
    keys.edit_key(row, **(fields | changes))


async def swap_rpm(session: AsyncSession) -> None:
    """alice 10 -> 20 and bob 20 -> 10: the limits' sum stays."""
    await edit(session, "alice", rpm=20)
    await edit(session, "bob", rpm=10)


async def config_file_models(session: AsyncSession) -> None:
    await keys.upsert_config_key(
        session, "filed", FILED, rpm=None, tpm=None, models=["m-1"], expires=None
    )


async def rotate(session: AsyncSession) -> None:
    await keys.rotate_key(session, "alice")


async def create(session: AsyncSession) -> None:
    await keys.create_key(session, "carol")


async def revoke(session: AsyncSession) -> None:
    await keys.revoke_key(session, "bob")


Edit = Callable[[AsyncSession], Awaitable[None]]


def empty_database(tmp_path: Path) -> Database:
    """The test's database, migrated and empty."""
    url = database_url(tmp_path, "keys.db")
    upgrade(url)
    return Database(url)


async def a_keys_database(tmp_path: Path) -> Database:
    """alice (rpm 10, m-*, until 2030), bob (rpm 20, until 2031) and the file's "filed"."""
    db = empty_database(tmp_path)
    async with db.session() as session, session.begin():
        await keys.create_key(session, "alice", rpm=10, models=["m-*"], expires=date(2030, 1, 1))
        await keys.create_key(session, "bob", rpm=20, expires=date(2031, 1, 1))
        await keys.upsert_config_key(
            session, "filed", FILED, rpm=None, tpm=None, models=(), expires=None
        )
    return db


async def fingerprint(db: Database) -> tuple[object, ...]:
    async with db.session() as session:
        return await keys.keys_fingerprint(session)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda s: edit(s, "alice", models=["m-1"]), id="allowed-models"),
        pytest.param(lambda s: edit(s, "alice", models=[]), id="models-to-any"),
        # bob's expiry, a year later, stays the latest.
        pytest.param(lambda s: edit(s, "alice", expires=date(2030, 6, 30)), id="expiry-not-latest"),
        pytest.param(lambda s: edit(s, "bob", expires=None), id="expiry-removed"),
        pytest.param(swap_rpm, id="limits-keeping-the-sum"),
        pytest.param(lambda s: edit(s, "alice", rpm=None, tpm=10), id="rpm-moved-to-tpm"),
        pytest.param(lambda s: edit(s, "alice", note="for the intern"), id="note"),
        pytest.param(config_file_models, id="config-file-models"),
        pytest.param(create, id="create"),
        pytest.param(revoke, id="revoke"),
        pytest.param(rotate, id="rotate"),
    ],
)
@pytest.mark.gen_test(timeout=30)
async def test_every_change_to_a_key_moves_the_fingerprint(tmp_path: Path, change: Edit) -> None:
    """What another running gateway must reload for; the old fingerprint (counts, maxima
    and sums of the columns) stood still for the edits that kept them."""
    db = await a_keys_database(tmp_path)
    try:
        before = await fingerprint(db)
        async with db.session() as session, session.begin():
            await change(session)
        assert await fingerprint(db) != before
    finally:
        await db.close()


@pytest.mark.gen_test(timeout=30)
async def test_what_changes_nothing_leaves_the_fingerprint(tmp_path: Path) -> None:
    """A form sent unchanged, the same file at the next start, a second revocation: no
    gateway reloads for them."""
    db = await a_keys_database(tmp_path)
    try:
        before = await fingerprint(db)
        async with db.session() as session, session.begin():
            await edit(session, "alice")
            await keys.upsert_config_key(
                session, "filed", FILED, rpm=None, tpm=None, models=(), expires=None
            )
        assert await fingerprint(db) == before
        async with db.session() as session, session.begin():
            await revoke(session)
        revoked = await fingerprint(db)
        assert revoked != before
        async with db.session() as session, session.begin():
            await revoke(session)
        assert await fingerprint(db) == revoked
    finally:
        await db.close()


@pytest.mark.gen_test(timeout=30)
async def test_the_usage_writer_leaves_the_fingerprint(tmp_path: Path) -> None:
    """It moves a key's ``last_used_at`` at every flush: were that a change, every
    gateway would reload its key table as often as usage is written."""
    db = await a_keys_database(tmp_path)
    write, _purge, close = make_writer(db.url)
    try:
        async with db.session() as session:
            alice = await keys.get_key_by_name(session, "alice")
        assert alice is not None and alice.last_used_at is None
        before = await fingerprint(db)
        for second in (1, 2):
            when = datetime(2026, 12, 7, 12, 0, second)
            record = UsageRecord(when, f"req_{second}", "openai", key_id=alice.id, key_name="alice")
            write([record], [])
            async with db.session() as session:
                row = await keys.get_key_by_name(session, "alice")
            assert row is not None and row.last_used_at == when
            assert await fingerprint(db) == before
    finally:
        close()
        await db.close()


@pytest.mark.gen_test(timeout=30)
async def test_rotate_keeps_the_row_and_moves_the_fingerprint(tmp_path: Path) -> None:
    db = empty_database(tmp_path)
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
    db = empty_database(tmp_path)
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
    db = empty_database(tmp_path)
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
