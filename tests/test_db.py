"""Migrations and the repository, on SQLite and on PostgreSQL (db_url runs each test on both)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import move
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from bootd.db.engine import (
    MigrationBroke,
    create_engine,
    current_revision,
    downgrade,
    head_revision,
    migrate,
    open_database,
)
from bootd.db.repository import Repository
from bootd.db.schema import Base
from bootd.errors import Conflict, DatabaseUnavailable, InvalidInput, NotFound
from bootd.keys import SecretBox
from bootd.model.lifecycle import Actor
from bootd.model.records import LeaseRecord, LeaseState, NewNode
from bootd.model.states import NodeState

TABLES = {"nodes", "interfaces", "leases", "bmcs", "events", "alembic_version"}


async def test_migrations_create_schema_on_empty_database(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        assert await current_revision(engine) is None
        await migrate(engine)
        assert await current_revision(engine) == head_revision()
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert tables >= TABLES
    finally:
        await engine.dispose()


def _schema_diff(conn: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(conn), Base.metadata))


async def test_migrations_match_the_models(db_url: str) -> None:
    """A model change without a migration fails here, before it reaches an operator."""
    engine = await open_database(db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_schema_diff) == []
    finally:
        await engine.dispose()


async def test_migrating_an_existing_database_keeps_its_data(db_url: str, tmp_path: Path) -> None:
    secrets = SecretBox.from_file(tmp_path / "key")
    engine = await open_database(db_url)
    try:
        await Repository(engine, secrets).add_node(NewNode("keep-me", ("52:54:00:aa:00:01",)),
                                                   actor="test")
    finally:
        await engine.dispose()
    engine = await open_database(db_url)  # second start: migrations run again, as at every start
    try:
        node = await Repository(engine, secrets).get_node("keep-me")
        assert node.boot_mac == "52:54:00:aa:00:01"
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


async def test_concurrent_starts_migrate_once(db_url: str) -> None:
    """Several processes (or admin nodes) opening one database together must not race."""
    engines = [create_engine(db_url) for _ in range(3)]
    try:
        await asyncio.gather(*(migrate(e) for e in engines))
        assert await current_revision(engines[0]) == head_revision()
    finally:
        for e in engines:
            await e.dispose()


async def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatabaseUnavailable, match="cannot open or migrate"):
        await open_database("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    (tmp_path / "notadb").write_bytes(b"this is not a database" * 100)
    with pytest.raises(DatabaseUnavailable, match="cannot open or migrate"):
        await open_database(f"sqlite+aiosqlite:///{tmp_path / 'notadb'}")


@pytest.fixture
async def repo(db_url: str, tmp_path: Path) -> AsyncIterator[Repository]:
    engine = await open_database(db_url)
    yield Repository(engine, SecretBox.from_file(tmp_path / "secret.key"))
    await engine.dispose()


async def test_node_round_trip(repo: Repository) -> None:
    added = await repo.add_node(NewNode("Node-01", ("52-54-00-00-00-01", "5254.0000.0002"),
                                        profile="rocky-9", admin_ip=IPv4Address("198.18.0.10"),
                                        rack="r1"), actor="test")
    assert added.name == "node-01"
    assert added.state is NodeState.DISCOVERING
    assert [(i.mac, i.is_boot) for i in added.interfaces] == [
        ("52:54:00:00:00:01", True), ("52:54:00:00:00:02", False)]
    got = await repo.get_node("node-01")
    assert got == added
    assert got.created_at.tzinfo is not None
    assert (await repo.find_node_by_mac("52:54:00:00:00:02")) == added
    assert await repo.find_node_by_mac("52:54:00:00:00:09") is None
    assert [n.name for n in await repo.list_nodes()] == ["node-01"]


async def test_conflicts_are_refused_by_name(repo: Repository) -> None:
    await repo.add_node(NewNode("a", ("52:54:00:00:00:01",), admin_ip=IPv4Address("198.18.0.10")),
                        actor="t")
    with pytest.raises(Conflict, match="a node named a already exists"):
        await repo.add_node(NewNode("a"), actor="t")
    with pytest.raises(Conflict, match="MAC 52:54:00:00:00:01 already belongs to node a"):
        await repo.add_node(NewNode("b", ("52:54:00:00:00:01",)), actor="t")
    with pytest.raises(Conflict, match=r"198.18.0.10 is already reserved for node a"):
        await repo.add_node(NewNode("b", admin_ip=IPv4Address("198.18.0.10")), actor="t")
    with pytest.raises(Conflict, match="listed twice"):
        await repo.add_node(NewNode("b", ("52:54:00:00:00:02", "52:54:00:00:00:02")), actor="t")
    with pytest.raises(InvalidInput, match="invalid node name"):
        await repo.add_node(NewNode("-bad-"), actor="t")
    with pytest.raises(InvalidInput, match="invalid MAC"):
        await repo.add_node(NewNode("b", ("52:54:00:00:00",)), actor="t")
    with pytest.raises(InvalidInput, match="invalid rack"):
        await repo.add_node(NewNode("b", rack="r" * 65), actor="t")
    with pytest.raises(InvalidInput, match="invalid profile"):
        await repo.add_node(NewNode("b", profile="rocky\n9"), actor="t")
    with pytest.raises(InvalidInput, match="invalid BMC user"):
        await repo.set_bmc("a", "198.18.0.200", "", "pw", actor="t")
    with pytest.raises(InvalidInput, match="invalid BMC password"):
        await repo.set_bmc("a", "198.18.0.200", "admin", "", actor="t")
    assert [n.name for n in await repo.list_nodes()] == ["a"]  # nothing half-written


async def test_racing_adds_of_one_mac_leave_exactly_one_owner(repo: Repository) -> None:
    results = await asyncio.gather(
        *(repo.add_node(NewNode(f"n{i}", ("52:54:00:00:00:77",)), actor="t") for i in range(5)),
        return_exceptions=True)
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))


async def test_delete_keeps_the_event_log(repo: Repository) -> None:
    await repo.add_node(NewNode("gone", ("52:54:00:00:00:05",)), actor="operator")
    await move(repo, "gone", NodeState.DELETE, Actor.OPERATOR, actor="operator")
    with pytest.raises(NotFound):
        await repo.get_node("gone")
    with pytest.raises(NotFound):
        await move(repo, "gone", NodeState.DELETE, Actor.OPERATOR, actor="operator")
    events = await repo.events("gone")
    assert [(e.kind, e.from_state, e.to_state, e.actor) for e in events] == [
        ("created", None, NodeState.DISCOVERING, "operator"),
        ("deleted", NodeState.DISCOVERING, None, "operator")]
    # Its MAC is free again: the next boot of that machine is a new discovery.
    await repo.add_node(NewNode("again", ("52:54:00:00:00:05",)), actor="t")


async def test_bmc_password_is_sealed_and_never_in_records(repo: Repository, db_url: str) -> None:
    await repo.add_node(NewNode("n1"), actor="t")
    node = await repo.set_bmc("n1", "198.18.1.10", "admin", "s3cret-pw", actor="t")
    assert node.bmc is not None and node.bmc.address == "198.18.1.10"
    assert "s3cret" not in repr(node)
    creds = await repo.bmc_credentials("n1")
    assert creds.password == "s3cret-pw"
    assert "s3cret" not in repr(creds)
    assert all("s3cret" not in e.message for e in await repo.events("n1"))
    engine = await open_database(db_url)
    try:
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT password_encrypted FROM bmcs"))).scalar_one()
        assert b"s3cret" not in bytes(stored)
    finally:
        await engine.dispose()
    await repo.set_bmc("n1", "198.18.1.11", "root", "other", actor="t")
    assert (await repo.bmc_credentials("n1")).password == "other"
    await repo.add_node(NewNode("n2"), actor="t")
    with pytest.raises(NotFound, match="has no BMC"):
        await repo.bmc_credentials("n2")


async def test_node_token_verification(repo: Repository) -> None:
    await repo.add_node(NewNode("a"), actor="t")
    await repo.add_node(NewNode("b"), actor="t")
    token_a = await repo.node_token("a")
    assert len(token_a) >= 40
    assert await repo.verify_token("a", token_a)
    assert not await repo.verify_token("b", token_a)
    assert not await repo.verify_token("a", "")
    assert not await repo.verify_token("nobody", token_a)


async def test_lease_round_trip(repo: Repository) -> None:
    expiry = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    lease = LeaseRecord(IPv4Address("198.18.0.100"), "52:54:00:00:00:01", LeaseState.BOUND, expiry,
                        client_id="01525400000001", hostname="n1")
    await repo.put_lease(lease)
    assert await repo.get_lease(IPv4Address("198.18.0.100")) == lease
    renewed = LeaseRecord(lease.ip, lease.mac, LeaseState.BOUND, expiry + timedelta(hours=1))
    await repo.put_lease(renewed)
    await repo.put_lease(LeaseRecord(IPv4Address("198.18.0.9"), "52:54:00:00:00:02",
                                     LeaseState.DECLINED, expiry))
    assert await repo.list_leases() == [
        LeaseRecord(IPv4Address("198.18.0.9"), "52:54:00:00:00:02", LeaseState.DECLINED, expiry),
        renewed]
    await repo.delete_lease(IPv4Address("198.18.0.9"))
    with pytest.raises(NotFound):
        await repo.delete_lease(IPv4Address("198.18.0.9"))
    assert await repo.get_lease(IPv4Address("198.18.0.9")) is None


async def test_ping(repo: Repository) -> None:
    await repo.ping()


# -- migrations and foreign keys (issue 11, 3.9) ------------------------------------

async def _child_rows(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        counts = {}
        for table in ("interfaces", "bmcs"):
            counts[table] = (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
        counts["events with node"] = (await conn.execute(
            text("SELECT count(*) FROM events WHERE node_id IS NOT NULL"))).scalar_one()
        return counts


async def test_downgrade_and_upgrade_keep_interfaces_and_bmcs(db_url: str, tmp_path: Path) -> None:
    """Batch migrations rebuild `nodes` by copy, drop and rename: with foreign keys on,
    the drop cascaded to every interface and BMC (seen on 0002 -> 0001)."""
    secrets = SecretBox.from_file(tmp_path / "key")
    engine = await open_database(db_url)
    try:
        repo = Repository(engine, secrets)
        for i in range(3):
            await repo.add_node(NewNode(f"n{i}", (f"52:54:00:aa:00:{i:02x}", f"52:54:00:bb:00:{i:02x}")),
                                actor="test")
            await repo.set_bmc(f"n{i}", f"198.18.0.{200 + i}", "admin", "secret", actor="test")
        before = await _child_rows(engine)
        assert before["interfaces"] == 6 and before["bmcs"] == 3 and before["events with node"] >= 6
        await downgrade(engine, "0001")
        assert await current_revision(engine) == "0001"
        assert await _child_rows(engine) == before
        await migrate(engine)
        assert await current_revision(engine) == head_revision()
        assert await _child_rows(engine) == before
        node = await Repository(engine, secrets).get_node("n1")
        assert node.boot_mac == "52:54:00:aa:00:01"
    finally:
        await engine.dispose()


async def test_foreign_keys_are_on_again_after_migrating(tmp_path: Path) -> None:
    """The migration connection goes back to the pool: the daemon's sessions need
    ON DELETE CASCADE, so the pragma is restored."""
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'bootd.db'}")
    try:
        await downgrade(engine, "0001")
        await migrate(engine)
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar_one() == 1
    finally:
        await engine.dispose()


async def test_migration_leaving_orphans_is_rolled_back(tmp_path: Path) -> None:
    """foreign_key_check after a migration: orphans fail the start loudly, and the
    schema stays where it was."""
    path = tmp_path / "bootd.db"
    engine = await open_database(f"sqlite+aiosqlite:///{path}")
    try:
        await downgrade(engine, "0001")
    finally:
        await engine.dispose()
    with sqlite3.connect(path) as raw:  # an orphan, as a cascade-less copy would leave
        raw.execute("PRAGMA foreign_keys=OFF")
        raw.execute("INSERT INTO interfaces (node_id, mac, is_boot) VALUES (4242, '52:54:00:cc:00:01', 1)")
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        with pytest.raises(MigrationBroke, match=r"foreign_key_check.*1 in interfaces"):
            await migrate(engine)
        assert await current_revision(engine) == "0001"
    finally:
        await engine.dispose()
