"""Two daemons' change feeds joined by LISTEN/NOTIFY on one PostgreSQL (bootd/fleet/notices.py).

In one process, two "daemons" (each its own engine, repository, feed and
lifecycle): a node added, moved, renamed and deleted through one arrives on
the other's feed as a remote change carrying the record read back from the
database, and is never echoed back; the other daemon's subscribers (DNS zone,
status page, policy directory) take it like a local change. Bounded waits only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import _pg_admin, loopback_config

from bootd.config import Config, parse_config
from bootd.db.engine import open_database
from bootd.db.notify import Notice
from bootd.db.repository import Repository
from bootd.feed import ChangeFeed, NodeChanged
from bootd.fleet.notices import ChangeNotices, change_notices, sending
from bootd.keys import SecretBox
from bootd.lifecycle import Lifecycle
from bootd.model.records import NewNode
from bootd.model.states import NodeState

pytestmark = pytest.mark.postgres


@dataclass
class Side:
    feed: ChangeFeed
    lifecycle: Lifecycle
    notices: ChangeNotices
    seen: list[NodeChanged]


@pytest.fixture
async def two(postgres_server: str, tmp_path: Path) -> AsyncIterator[tuple[Side, Side]]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    await _pg_admin(postgres_server, f"CREATE DATABASE {name}")
    url = f"{postgres_server}/{name}"
    config = parse_config(loopback_config(tmp_path / "state", 8080, "")
                          .replace("[services]", f'database_url = "{url}"\n[services]'))
    secrets = SecretBox.from_file(tmp_path / "secret.key")  # shared, as two admin nodes must share it
    engines, sides, tasks = [], [], []
    try:
        for _ in range(2):
            engine = await open_database(url)
            engines.append(engine)
            repo = Repository(engine, secrets)
            feed = ChangeFeed()
            seen: list[NodeChanged] = []
            feed.subscribe(seen.append)
            notices = ChangeNotices(config, repo, feed)
            await notices.start()
            tasks.append(asyncio.create_task(notices.run()))
            sides.append(Side(feed, Lifecycle(config, repo, feed=feed), notices, seen))
        yield sides[0], sides[1]
    finally:
        for task in tasks:
            task.cancel()
        for side in sides:
            await side.notices.stop()
        for engine in engines:
            await engine.dispose()
        await _pg_admin(postgres_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def until(check: Callable[[], object], what: str) -> None:
    for _ in range(400):  # bounded: 20 s
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def remote(side: Side) -> list[NodeChanged]:
    return [c for c in side.seen if c.remote]


async def test_changes_of_one_daemon_reach_the_others_feed(two: tuple[Side, Side]) -> None:
    a, b = two
    await a.lifecycle.add(NewNode("r1-n1", ("52:54:00:00:01:01",), rack="r1", state=NodeState.DISCOVERED),
                          actor="test")
    await until(lambda: remote(b), "the add on b's feed")
    change = remote(b)[0]
    assert (change.node.name, change.node.rack, change.kind, change.deleted) == ("r1-n1", "r1", "created",
                                                                                   False)
    await b.lifecycle.update("r1-n1", actor="test", rack="r9")
    await until(lambda: [c for c in remote(a) if c.node.rack == "r9"], "b's update on a's feed")
    await a.lifecycle.allocate("r1-n1", actor="test", profile="ubuntu-24.04", rename="web-1")
    await until(lambda: [c for c in remote(b) if c.old_name == "r1-n1"], "the rename on b's feed")
    renamed = next(c for c in remote(b) if c.old_name == "r1-n1")
    assert renamed.node.name == "web-1" and not renamed.deleted
    await a.lifecycle.delete("web-1", actor="test")
    await until(lambda: [c for c in remote(b) if c.deleted], "the delete on b's feed")
    assert [c.node.name for c in remote(b) if c.deleted] == ["web-1"]
    await asyncio.sleep(0.3)  # any echo would have come back by now
    # No echo: each side's remote events are exactly the other side's local ones.
    assert [c.node.name for c in remote(a)] == ["r1-n1"]
    assert all(c.node.name in ("r1-n1", "web-1") for c in remote(b))
    assert a.notices.sent == 3 and b.notices.sent == 1


def test_notice_payload_round_trip_and_foreign_payloads() -> None:
    for notice in (Notice("n1", "transition"), Notice("web-1", "renamed", "r1-n1")):
        assert Notice.parse(notice.payload()) == notice
    assert Notice.parse("") is None and Notice.parse("a b c d") is None


def test_no_notices_service_on_sqlite(tmp_path: Path) -> None:
    config: Config = parse_config(loopback_config(tmp_path / "state", 8080))
    assert change_notices(config, Repository.__new__(Repository), ChangeFeed()) == []


async def test_a_cli_process_sends_its_changes_too(two: tuple[Side, Side], postgres_server: str) -> None:
    """`sending` (what bootd/backend.py's open_backend wraps a CLI command in): no listener,
    its changes still reach a daemon's feed, the last one flushed on the way out."""
    a, b = two
    cli_feed = ChangeFeed()
    cli = Lifecycle(a.notices.config, a.lifecycle._repo, feed=cli_feed)
    async with sending(a.notices.config, a.lifecycle._repo, cli_feed):
        await cli.add(NewNode("cli-made", ("52:54:00:00:0c:01",)), actor="cli")
    await until(lambda: [c for c in remote(b) if c.node.name == "cli-made"], "the CLI's add on b's feed")
    assert [c.node.name for c in remote(a)] == ["cli-made"]  # a daemon too: it hears the CLI


async def test_a_lost_notice_connection_comes_back(two: tuple[Side, Side], postgres_server: str) -> None:
    """PostgreSQL drops both daemons' notice connections (a restart, an admin's kill): each
    connects again within RETRY seconds and changes flow as before."""
    import asyncpg

    from bootd.db.notify import APPLICATION_NAME, asyncpg_dsn

    a, b = two
    conn = await asyncpg.connect(asyncpg_dsn(a.notices.config.database_url))
    pids = "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
    try:
        old = {r["pid"] for r in await conn.fetch(pids, APPLICATION_NAME)}
        assert len(old) == 2
        await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE application_name = $1", APPLICATION_NAME)
        # Two new backends, not the terminated ones (they linger in pg_stat_activity a moment).
        for _ in range(300):  # bounded: RETRY (5 s) and a connect
            now = {r["pid"] for r in await conn.fetch(pids, APPLICATION_NAME)}
            if len(now) == 2 and not now & old:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"notice connections not back: {old} -> {now}")
        await a.lifecycle.add(NewNode("after-drop", ("52:54:00:00:0d:01",)), actor="test")
        await until(lambda: [c for c in remote(b) if c.node.name == "after-drop"], "a change after the drop")
    finally:
        await conn.close()


async def test_a_change_made_while_the_connection_is_dead_is_sent_after(
        two: tuple[Side, Side], postgres_server: str) -> None:
    """A change published while the sender's notice connection is dead (not yet noticed) is
    kept and sent once it connects again, not left to the other daemons' stamp polls. (Only
    the sender's connection is dropped: a NOTIFY reaches only those listening when it is sent,
    which is why every daemon also polls.)"""
    import asyncpg

    from bootd.db.notify import asyncpg_dsn

    a, b = two
    conn = await asyncpg.connect(asyncpg_dsn(a.notices.config.database_url))
    try:
        await conn.execute("SELECT pg_terminate_backend($1)", a.notices._channel._pid)
        # At once: a's connection may or may not have noticed yet; either way nothing is lost.
        await a.lifecycle.add(NewNode("while-dead", ("52:54:00:00:0d:02",)), actor="test")
        await until(lambda: [c for c in remote(b) if c.node.name == "while-dead"], "the kept change")
        assert a.notices.dropped == 0
    finally:
        await conn.close()
