"""The policy's node directory follows the inventory by re-reading only changed nodes.

Another process (the CLI, a second daemon) writes the database; the policy finds
which nodes changed from the event log and re-reads those, so a rack of changes
a second does not re-read 10,000 nodes each time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import loopback_config
from sqlalchemy.ext.asyncio import AsyncEngine

from bootd.config import parse_config
from bootd.db.engine import open_database
from bootd.db.repository import REREAD, Repository
from bootd.feed import ChangeFeed
from bootd.keys import SecretBox
from bootd.lifecycle import Lifecycle
from bootd.model.records import DirectoryEntry, NewNode
from bootd.model.states import NodeState
from bootd.policy import Policy


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = await open_database(db_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def repo(tmp_path: Path, engine: AsyncEngine) -> Repository:
    return Repository(engine, SecretBox.from_file(tmp_path / "key"))


class Counting(Repository):
    """Counts the interfaces the policy reads, to prove it reads only changed nodes."""

    read = 0

    async def directory(self, name: str | None = None, *, names: object = None) -> list[DirectoryEntry]:
        rows = await super().directory(name, names=names)  # type: ignore[arg-type]
        self.read += len(rows)
        return rows


async def test_changes_by_another_writer_are_patched_in(tmp_path: Path, repo: Repository,
                                                        engine: AsyncEngine, db_url: str) -> None:
    for i in range(50):
        await repo.add_node(NewNode(f"n{i}", (f"52:54:00:00:01:{i:02x}",)), actor="t")
    mine = Counting(engine, SecretBox.from_file(tmp_path / "key"))
    policy = Policy(parse_config(loopback_config(tmp_path / "s", 8080)), mine, ChangeFeed())
    await policy.refresh()
    assert len(policy._nodes) == 50 and mine.read == 50
    mine.read = 0

    await repo.add_node(NewNode("fresh", ("52:54:00:00:02:01",)), actor="cli")
    lifecycle = Lifecycle(policy.config, repo)
    await repo.add_node(NewNode("n60", ("52:54:00:00:01:60",), state=NodeState.DISCOVERED), actor="t")
    await policy.refresh()
    # PostgreSQL re-reads the nodes of the last REREAD events too (late commits).
    slack = REREAD if db_url.startswith("postgresql") else 0
    assert mine.read <= 2 + slack  # fresh and n60
    mine.read = 0
    await lifecycle.allocate("n60", actor="cli", rename="renamed",
                             profile=next(iter(policy.config.profiles)))
    await lifecycle.delete("n2", actor="cli")
    await policy.refresh()
    assert mine.read <= 1 + slack, "only the changed nodes are re-read (renamed; n2 is gone)"
    assert policy.node("52:54:00:00:02:01") is not None
    assert policy.node("52:54:00:00:01:02") is None  # n2 deleted
    assert {e.name for e in policy._nodes.values()} >= {"fresh", "n3"}
    renamed = policy.node("52:54:00:00:01:60")
    assert renamed is not None and renamed.name == "renamed"
    assert len(policy._nodes) == 51

    mine.read = 0
    await policy.refresh()  # nothing changed: nothing read
    assert mine.read == 0
