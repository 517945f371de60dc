"""The rollout service on SQLite and PostgreSQL: start (what each node gets, what is
refused), the driver (outcomes, done), the canary (paused with the reason past
--max-failures, resume), cancel (the not-yet-admitted are given back), and two
drivers on one database writing each change once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import loopback_config
from sqlalchemy import select
from test_lifecycle import CONFIG_EXTRA

from bootd.config import Config, parse_config
from bootd.db import schema as t
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.db.rollouts import RolloutRows
from bootd.errors import Conflict, InvalidInput
from bootd.feed import ChangeFeed
from bootd.fleet.rollout import Rollouts, RolloutService
from bootd.keys import SecretBox
from bootd.lifecycle import Lifecycle
from bootd.model.records import NewNode
from bootd.model.rollout import Outcome, RolloutSelector, RolloutState
from bootd.model.states import NodeState as S

PATH = (S.HARDWARE_INSTALLED, S.INSTALLING, S.INSTALLED, S.READYING, S.READY)


class Ticking:
    """A clock that moves 1 ms at every reading: every write is later than the one before."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


@dataclass
class World:
    config: Config
    repo: Repository
    lifecycle: Lifecycle
    rollouts: Rollouts
    feed: ChangeFeed


def make(config: Config, repo: Repository, clock: Ticking) -> World:
    feed = ChangeFeed()
    lifecycle = Lifecycle(config, repo, feed=feed, clock=clock)
    return World(config, repo, lifecycle, Rollouts(config, RolloutRows(repo), lifecycle), feed)


@pytest.fixture
async def world(db_url: str, tmp_path: Path) -> AsyncIterator[World]:
    config = parse_config(loopback_config(tmp_path / "state", 8080, CONFIG_EXTRA))
    engine = await open_database(db_url)
    clock = Ticking()
    yield make(config, Repository(engine, SecretBox.from_file(tmp_path / "key"), clock=clock), clock)
    await engine.dispose()


async def add(w: World, name: str, rack: str = "r1", state: S = S.DISCOVERED) -> None:
    await w.repo.add_node(NewNode(name, (), rack=rack, state=state), actor="t")


async def walk(w: World, name: str, to: S = S.READY) -> None:
    """The node's own reports from hardware-installing on, up to `to`."""
    for target in PATH[:PATH.index(to) + 1]:
        await w.lifecycle.report(name, target)


async def admit(w: World, name: str) -> None:
    """What admission writes when it lets a node in (bootd.fleet.admission's row)."""
    node = await w.repo.get_node(name)
    now = datetime.now(UTC)
    async with w.repo._tx(write=True) as s:
        node_id = await s.scalar(select(t.Node.id).where(t.Node.name == name))
        s.add(t.Admission(node_id=node_id, state=node.state.value, rack=node.rack, daemon="d1",
                          allocated_at=now, queued_at=now, asked_at=now, admitted_at=now))


def outcomes(view: object) -> dict[str, Outcome]:
    return {n.name: n.outcome for n in view.nodes}  # type: ignore[attr-defined]


async def test_start_hands_each_node_over_by_its_state(world: World) -> None:
    w = world
    await add(w, "a1")
    await add(w, "a2", state=S.READY)
    await w.lifecycle.update("a2", actor="t", profile="ubuntu-20.04")
    await add(w, "a3", state=S.PROBLEM)
    await add(w, "b1", rack="r2")
    view = await w.rollouts.start(RolloutSelector.parse(racks=["r1"]), "rocky-9", actor="op", max_parallel=2)
    assert view.rollout.state is RolloutState.RUNNING
    assert (view.rollout.max_parallel, view.rollout.max_failures) == (2, 2)
    a1, a2, a3 = [await w.repo.get_node(n) for n in ("a1", "a2", "a3")]
    assert (a1.state, a1.profile, a1.allocated) == (S.HARDWARE_INSTALLING, "rocky-9", True)
    assert (a2.state, a2.profile) == (S.REINSTALL, "rocky-9")
    assert a3.state is S.PROBLEM
    assert (await w.repo.get_node("b1")).state is S.DISCOVERED  # another rack
    by_name = {n.name: n for n in view.nodes}
    assert by_name["a3"].outcome is Outcome.CANCELLED and "problem" in by_name["a3"].detail
    assert set(by_name) == {"a1", "a2", "a3"}
    events = await w.lifecycle.events("a1")
    assert events[-1].actor == "op" and "rollout" in events[-1].message
    view = await w.rollouts.drive(view.rollout.id)
    assert outcomes(view) == {"a1": Outcome.ACTIVE, "a2": Outcome.PENDING, "a3": Outcome.CANCELLED}


async def test_start_refuses(world: World) -> None:
    w = world
    await add(w, "a1")
    await add(w, "a2", state=S.DISCOVERING)
    with pytest.raises(InvalidInput, match="no profile named 'nope'"):
        await w.rollouts.start(RolloutSelector.parse(["a1"]), "nope", actor="op")
    with pytest.raises(InvalidInput, match="no nodes in rack r9"):
        await w.rollouts.start(RolloutSelector.parse(racks=["r9"]), "rocky-9", actor="op")
    with pytest.raises(InvalidInput, match="nothing to roll out"):
        await w.rollouts.start(RolloutSelector.parse(["a2"]), "rocky-9", actor="op")
    with pytest.raises(InvalidInput, match="--max-parallel"):
        await w.rollouts.start(RolloutSelector.parse(["a1"]), "rocky-9", actor="op", max_parallel=0)
    first = await w.rollouts.start(RolloutSelector.parse(["a1"]), "rocky-9", actor="op")
    await add(w, "a3")
    with pytest.raises(Conflict, match=f"a1 \\(rollout {first.rollout.id}, running\\)"):
        await w.rollouts.start(RolloutSelector.parse(racks=["r1"]), "rocky-9", actor="op")
    assert [v.rollout.id for v in await w.rollouts.list()] == [first.rollout.id]  # nothing recorded


async def test_driver_follows_nodes_to_done(world: World) -> None:
    w = world
    for name in ("a1", "a2"):
        await add(w, name)
    rid = (await w.rollouts.start(RolloutSelector.parse(all=True), "rocky-9", actor="op")).rollout.id
    await walk(w, "a1")
    await walk(w, "a2", S.INSTALLED)
    view = await w.rollouts.drive(rid)
    assert outcomes(view) == {"a1": Outcome.READY, "a2": Outcome.ACTIVE}
    assert view.rollout.state is RolloutState.RUNNING
    await walk_from(w, "a2", S.INSTALLED)
    view = await w.rollouts.drive(rid)
    assert view.rollout.state is RolloutState.DONE
    assert view.rollout.reason == "2 ready, 0 in problem, 0 cancelled"
    assert await w.rollouts.drive(rid) == view  # idempotent


async def walk_from(w: World, name: str, after: S) -> None:
    for target in PATH[PATH.index(after) + 1:]:
        await w.lifecycle.report(name, target)


async def test_canary_pauses_then_resume(world: World) -> None:
    w = world
    names = [f"n{i}" for i in range(1, 7)]
    for name in names:
        await add(w, name)
    rid = (await w.rollouts.start(RolloutSelector.parse(racks=["r1"]), "rocky-9", actor="op",
                                  max_failures=2)).rollout.id
    await w.lifecycle.report("n1", S.PROBLEM, message="kickstart: no disk")
    await w.lifecycle.mark_problem("n2", "disk smart failure", actor="op")
    view = await w.rollouts.drive(rid)
    assert view.rollout.state is RolloutState.RUNNING  # 2 failures: not more than 2
    await w.lifecycle.report("n3", S.PROBLEM, message="installer crashed")
    view = await w.rollouts.drive(rid)
    assert view.rollout.state is RolloutState.PAUSED
    assert view.rollout.reason == ("3 nodes in problem (n1: kickstart: no disk, n2: disk smart failure, "
                                   "n3: installer crashed), more than --max-failures 2: paused")
    with pytest.raises(Conflict, match="not running"):
        await w.rollouts.pause(rid, actor="op")
    view = await w.rollouts.resume(rid, actor="op")
    assert view.rollout.state is RolloutState.RUNNING
    assert view.rollout.max_failures == 3
    assert view.rollout.reason == "resumed by op; 3 failures acknowledged"
    await walk(w, "n4")
    assert (await w.rollouts.drive(rid)).rollout.state is RolloutState.RUNNING
    await w.lifecycle.report("n5", S.PROBLEM, message="again")
    view = await w.rollouts.drive(rid)
    assert view.rollout.state is RolloutState.PAUSED
    assert view.rollout.reason.startswith("4 nodes in problem")
    assert view.progress.as_dict() == {"pending": 0, "active": 1, "ready": 1, "problem": 4, "cancelled": 0}


async def test_pause_resume_by_operator(world: World) -> None:
    w = world
    await add(w, "a1")
    rid = (await w.rollouts.start(RolloutSelector.parse(["a1"]), "rocky-9", actor="op")).rollout.id
    view = await w.rollouts.pause(rid, actor="op")
    assert (view.rollout.state, view.rollout.reason) == (RolloutState.PAUSED, "paused by op")
    view = await w.rollouts.resume(rid, actor="op")
    assert (view.rollout.state, view.rollout.reason, view.rollout.max_failures) == (
        RolloutState.RUNNING, "resumed by op", 2)
    with pytest.raises(Conflict, match="not paused"):
        await w.rollouts.resume(rid, actor="op")


async def test_cancel_gives_back_the_not_yet_admitted(world: World) -> None:
    w = world
    for name in ("a1", "a2", "a3"):
        await add(w, name)
    await add(w, "a4", state=S.READY)
    await w.lifecycle.update("a4", actor="t", profile="rocky-9")
    rid = (await w.rollouts.start(RolloutSelector.parse(all=True), "rocky-9", actor="op")).rollout.id
    await admit(w, "a1")                      # admitted, installing: finishes
    await walk(w, "a2", S.HARDWARE_INSTALLED)  # past its first wave: finishes
    view = await w.rollouts.cancel(rid, actor="op")
    assert view.rollout.state is RolloutState.CANCELLED
    assert outcomes(view) == {"a1": Outcome.ACTIVE, "a2": Outcome.ACTIVE, "a3": Outcome.CANCELLED,
                              "a4": Outcome.CANCELLED}
    assert (await w.repo.get_node("a3")).state is S.RESET   # given back through the lifecycle
    assert (await w.repo.get_node("a4")).state is S.RESET
    assert (await w.repo.get_node("a1")).state is S.HARDWARE_INSTALLING
    with pytest.raises(Conflict, match="not running or paused"):
        await w.rollouts.cancel(rid, actor="op")
    await walk(w, "a1")
    await walk_from(w, "a2", S.HARDWARE_INSTALLED)
    view = await w.rollouts.drive(rid)
    assert outcomes(view)["a1"] is Outcome.READY and outcomes(view)["a2"] is Outcome.READY
    assert view.rollout.state is RolloutState.CANCELLED


async def test_two_drivers_write_each_change_once(world: World, db_url: str, tmp_path: Path) -> None:
    w = world
    for i in range(6):
        await add(w, f"n{i}")
    rid = (await w.rollouts.start(RolloutSelector.parse(all=True), "rocky-9", actor="op",
                                  max_failures=1)).rollout.id
    engine = await open_database(db_url)
    try:
        other = make(w.config, Repository(engine, SecretBox.from_file(tmp_path / "key"), clock=Ticking()),
                     Ticking())
        for name in ("n0", "n1"):
            await w.lifecycle.report(name, S.PROBLEM, message="bad profile")
        await walk(w, "n2")
        views = await asyncio.gather(w.rollouts.drive(rid), other.rollouts.drive(rid),
                                     w.rollouts.drive(rid), other.rollouts.drive(rid))
        final = await w.rollouts.view(rid)
        assert final.rollout.state is RolloutState.PAUSED
        assert final.rollout.reason.startswith("2 nodes in problem (n0: bad profile, n1: bad profile)")
        assert {v.rollout.state for v in views} <= {RolloutState.RUNNING, RolloutState.PAUSED}
        assert outcomes(final)["n2"] is Outcome.READY
        # The pause is written once, by whichever driver got there first.
        assert not await other.rollouts._rows.set_state(rid, {RolloutState.RUNNING}, RolloutState.PAUSED, "x")
    finally:
        await engine.dispose()


async def test_two_starts_cannot_take_one_node(world: World) -> None:
    w = world
    for i in range(4):
        await add(w, f"n{i}")
    results = await asyncio.gather(
        w.rollouts.start(RolloutSelector.parse(all=True), "rocky-9", actor="a"),
        w.rollouts.start(RolloutSelector.parse(["n1"]), "rocky-9", actor="b"), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "RolloutView"]


async def test_service_drives_on_changes(world: World) -> None:
    w = world
    await add(w, "a1")
    rid = (await w.rollouts.start(RolloutSelector.parse(["a1"]), "rocky-9", actor="op",
                                  wait=False)).rollout.id
    service = RolloutService(w.rollouts, w.feed, poll=0.05)
    await service.start()
    task = asyncio.create_task(service.run())
    try:
        for _ in range(200):  # bounded: the hand-over runs in the background
            if (await w.repo.get_node("a1")).state is S.HARDWARE_INSTALLING:
                break
            await asyncio.sleep(0.02)
        await walk(w, "a1")
        for _ in range(200):
            if (await w.rollouts.view(rid)).rollout.state is RolloutState.DONE:
                break
            await asyncio.sleep(0.05)
        assert (await w.rollouts.view(rid)).rollout.state is RolloutState.DONE
        assert w.rollouts.outcome_counts[Outcome.READY] == 0  # done rollouts are not live
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await service.stop()
