"""Admission rows and the admission service, on SQLite and PostgreSQL (db_url runs both):
limits, queue order across a restart, forgetting, slots ending with the state, rollout
gates, the state timer, and concurrent asks from two daemons (two engines)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import loopback_config
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import async_sessionmaker

from bootd.config import Config, parse_config
from bootd.config.sections import WavesConfig
from bootd.db import schema as t
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.feed import ChangeFeed
from bootd.fleet.admission import Admissions
from bootd.keys import SecretBox
from bootd.lifecycle import Lifecycle
from bootd.model.admission import Admit, Limit, Wait
from bootd.model.records import NewNode
from bootd.model.states import NodeState as S

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.now.timestamp()

    def step(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def make_config(tmp_path: Path, daemon: str = "a", **waves: int) -> Config:
    config = parse_config(loopback_config(tmp_path / "state", 8080))
    defaults = {"max_global": 2, "max_per_rack": 0, "max_per_daemon": 0, "wait": 15, "forget_after": 120}
    return replace(config, daemon_id=daemon, waves=WavesConfig(**{**defaults, **waves}))  # type: ignore[arg-type]


@dataclass
class World:
    repo: Repository
    clock: Clock
    config: Config
    admissions: Admissions
    lifecycle: Lifecycle
    feed: ChangeFeed

    async def node(self, name: str, rack: str | None = "r1", state: S = S.HARDWARE_INSTALLING) -> None:
        await self.repo.add_node(NewNode(name, (), rack=rack, state=state), actor="test")
        self.clock.step(1)  # allocation order = creation order

    async def ask(self, name: str, **kw: object) -> Admit | Wait:
        node = await self.repo.get_node(name)
        return await self.admissions.ask(name, node.state, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def world(db_url: str, tmp_path: Path) -> AsyncIterator[World]:
    engine = await open_database(db_url)
    clock = Clock()
    repo = Repository(engine, SecretBox.from_file(tmp_path / "key"), clock=clock)
    config = make_config(tmp_path)
    feed = ChangeFeed()
    try:
        admissions = Admissions(config, repo, feed=feed, clock=clock, monotonic=clock.monotonic)
        yield World(repo, clock, config, admissions, Lifecycle(config, repo, clock=clock, feed=feed), feed)
    finally:
        await engine.dispose()


async def test_limit_then_queue_with_places(world: World) -> None:
    for i in range(5):
        await world.node(f"n{i}", rack=f"r{i % 2}")
    assert await world.ask("n0") == Admit()
    assert await world.ask("n1") == Admit()
    # Queue order: rack r0 first (n2, n4), then r1 (n3).
    third = await world.ask("n3")
    assert isinstance(third, Wait) and (third.place, third.of, third.limit) == (1, 1, Limit.GLOBAL)
    fourth = await world.ask("n4")
    assert isinstance(fourth, Wait) and (fourth.place, fourth.of) == (1, 2)
    again = await world.ask("n3")
    assert isinstance(again, Wait) and (again.place, again.of) == (2, 2)
    snap = await world.admissions.snapshot()
    assert snap.admitted == 2 and snap.admitted_per_rack == {"r0": 1, "r1": 1}
    assert snap.admitted_per_daemon == {"a": 2}
    assert [(w.name, w.place, w.of) for w in snap.waiting] == [("n4", 1, 2), ("n3", 2, 2)]
    assert all(w.limit is Limit.GLOBAL for w in snap.waiting)


async def test_leaving_the_state_frees_the_slot_for_the_head(world: World) -> None:
    for name in ("n0", "n1", "n2", "n3"):
        await world.node(name)
    assert [await world.ask(n) == Admit() for n in ("n0", "n1")] == [True, True]
    assert isinstance(await world.ask("n3"), Wait)
    assert isinstance(await world.ask("n2"), Wait)
    await world.lifecycle.report("n0", S.HARDWARE_INSTALLED, expect=S.HARDWARE_INSTALLING)
    # n3 asks first, but n2 is ahead of it and still asking: no overtaking.
    assert isinstance(await world.ask("n3"), Wait)
    assert await world.ask("n2") == Admit()
    # n0 now boots its installer: it queues for an installing slot, behind n3.
    decision = await world.ask("n0")
    assert isinstance(decision, Wait) and (decision.place, decision.of) == (2, 2)
    async with world.repo._sessions() as s:
        slots = {name: state for name, state in await s.execute(
            select(t.Node.name, t.Admission.state).join(t.Node, t.Admission.node_id == t.Node.id))}
    assert slots == {"n0": "installing", "n1": "hardware-installing", "n2": "hardware-installing",
                     "n3": "hardware-installing"}


async def test_a_slot_is_kept_from_hardware_installed_through_installing(world: World) -> None:
    await world.node("n0", state=S.HARDWARE_INSTALLED)
    await world.node("n1", state=S.HARDWARE_INSTALLED)
    await world.node("n2", state=S.HARDWARE_INSTALLED)
    assert await world.ask("n0") == Admit() and await world.ask("n1") == Admit()
    await world.lifecycle.report("n0", S.INSTALLING)  # the installer started: same slot
    assert isinstance(await world.ask("n2"), Wait)
    await world.lifecycle.report("n0", S.INSTALLED)
    assert await world.ask("n2") == Admit()


async def test_a_row_left_behind_holds_no_slot(world: World) -> None:
    """A node that moved on without its row ending (a crash, an older bootd) frees its slot."""
    for name in ("n0", "n1", "n2"):
        await world.node(name)
    assert await world.ask("n0") == Admit() and await world.ask("n1") == Admit()
    async with world.repo._sessions() as s, s.begin():
        await s.execute(update(t.Node).where(t.Node.name == "n0").values(state=S.READY.value))
    assert await world.ask("n2") == Admit()
    assert {r.entry.name for r in await admission_rows(world)} == {"n1", "n2"}


async def admission_rows(world: World) -> list:  # type: ignore[type-arg]
    from bootd.db.admissions import AdmissionRows
    return await AdmissionRows(world.repo).admission_rows()


async def test_daemon_limit_counts_this_daemons_rows(world: World) -> None:
    world.admissions.reconfigure(replace(world.config, waves=replace(world.config.waves, max_global=0,
                                                                     max_per_daemon=1)))
    for name in ("n0", "n1", "n2"):
        await world.node(name)
    assert await world.ask("n0") == Admit()
    held = await world.ask("n1")
    assert isinstance(held, Wait) and held.limit is Limit.DAEMON
    assert await world.ask("n2", daemon="b") == Admit()


async def test_restart_keeps_the_queue_order(world: World, tmp_path: Path) -> None:
    for name in ("n0", "n1", "n2", "n3"):
        await world.node(name)
    assert await world.ask("n0") == Admit() and await world.ask("n1") == Admit()
    for name in ("n3", "n2"):
        assert isinstance(await world.ask(name), Wait)
    # A new daemon process: a new service (no cache) over the same database.
    again = Admissions(world.config, world.repo, clock=world.clock, monotonic=world.clock.monotonic)
    first = await again.ask("n3", S.HARDWARE_INSTALLING)
    assert isinstance(first, Wait) and (first.place, first.of) == (2, 2)
    await world.lifecycle.report("n1", S.PROBLEM)
    # Made by another service (no feed between them): seen once the board expires (1 s).
    world.clock.step(1)
    assert isinstance(await again.ask("n3", S.HARDWARE_INSTALLING), Wait)
    assert await again.ask("n2", S.HARDWARE_INSTALLING) == Admit()


async def test_a_node_that_stops_asking_loses_its_place(world: World) -> None:
    for name in ("n0", "n1", "n2", "n3"):
        await world.node(name)
    assert await world.ask("n0") == Admit() and await world.ask("n1") == Admit()
    head = await world.ask("n2")
    assert isinstance(head, Wait) and head.place == 1
    for _ in range(10):  # n3 keeps asking every 15 s; n2 went silent
        world.clock.step(15)
        last = await world.ask("n3")
    assert isinstance(last, Wait) and (last.place, last.of) == (1, 1)
    snap = await world.admissions.snapshot()
    assert [w.name for w in snap.waiting] == ["n3"] and snap.forgotten == 1
    back = await world.ask("n2")  # it comes back: behind n3 now
    assert isinstance(back, Wait) and (back.place, back.of) == (2, 2)
    await world.lifecycle.report("n0", S.HARDWARE_INSTALLED)
    assert isinstance(await world.ask("n2"), Wait)
    assert await world.ask("n3") == Admit()


async def _rollout(world: World, names: list[str], *, state: str = "running",
                   max_parallel: int | None = None) -> int:
    async with world.repo._sessions() as s, s.begin():
        r = t.Rollout(profile="p", selector="{}", max_parallel=max_parallel, max_failures=0, state=state,
                      reason="", actor="test", created_at=T0, updated_at=T0)
        s.add(r)
        await s.flush()
        for name in names:
            node_id = await s.scalar(select(t.Node.id).where(t.Node.name == name))
            s.add(t.RolloutNode(rollout_id=r.id, node_id=node_id, node_name=name, rack="r1",
                                outcome="active", detail="", updated_at=T0))
        return r.id


async def test_rollout_gates(world: World) -> None:
    world.admissions.reconfigure(replace(world.config, waves=replace(world.config.waves, max_global=0)))
    for name in ("n0", "n1", "n2", "n3"):
        await world.node(name)
    paused = await _rollout(world, ["n0"], state="paused")
    narrow = await _rollout(world, ["n1", "n2"], max_parallel=1)
    decision = await world.ask("n0")
    assert decision == Wait(1, 1, Limit.PAUSED, f"rollout {paused} paused")
    assert await world.ask("n1") == Admit()
    held = await world.ask("n2")
    assert isinstance(held, Wait) and held.limit is Limit.ROLLOUT and f"rollout {narrow}" in held.reason
    assert await world.ask("n3") == Admit()  # in no rollout: neither holds it back
    async with world.repo._sessions() as s, s.begin():
        await s.execute(update(t.Rollout).where(t.Rollout.id == paused).values(state="running"))
    assert await world.ask("n0") == Admit()


async def test_an_admitted_node_is_answered_from_memory(world: World) -> None:
    await world.node("n0")
    assert await world.ask("n0") == Admit()
    asks = world.admissions.asks
    for _ in range(5):
        assert await world.ask("n0") == Admit()
    assert world.admissions.asks == asks


async def test_the_timer_spares_waiting_nodes_and_a_retry_queues_again(world: World, tmp_path: Path) -> None:
    config = replace(world.config, lifecycle=replace(world.config.lifecycle,
                                                     timeouts={S.HARDWARE_INSTALLING: 100}))
    lifecycle = Lifecycle(config, world.repo, clock=world.clock, feed=world.feed)
    for name in ("n0", "n1", "n2"):
        await world.node(name)
    world.clock.step(50)
    assert await world.ask("n0") == Admit() and await world.ask("n1") == Admit()
    for _ in range(6):  # n2 waits 90 s, asking; n0's clock runs from its admission
        world.clock.step(15)
        assert isinstance(await world.ask("n2"), Wait)
    assert await lifecycle.tick() == []  # 140 s in the state, 90 since admission
    world.clock.step(15)
    assert isinstance(await world.ask("n2"), Wait)
    timed = await lifecycle.tick()  # n0 and n1: 105 s since admission; n2 still asking
    assert sorted((n.name, n.retries) for n in timed) == [("n0", 1), ("n1", 1)]
    # The retry's fresh boot queues again (the cached admission went with the change):
    # both slots are free, n2 is the head and one is promised to it.
    assert {r.entry.name for r in await admission_rows(world)} == {"n2"}
    assert await world.ask("n0") == Admit()
    held = await world.ask("n1")
    assert isinstance(held, Wait) and (held.place, held.of) == (2, 2)
    assert await world.ask("n2") == Admit()
    # A waiting node that stops asking is timed out once forgotten (120 s after its last
    # stored ask: an ask within forget_after/2 of the stored one is answered, not stored).
    world.clock.step(15)
    assert isinstance(await world.ask("n1"), Wait)
    world.clock.step(104)
    assert "n1" not in [n.name for n in await lifecycle.tick()]
    world.clock.step(2)
    assert "n1" in [n.name for n in await lifecycle.tick()]


async def test_concurrent_asks_from_two_daemons_never_exceed_the_limit(db_url: str, tmp_path: Path) -> None:
    """Two engines (two daemons' pools) over one database; 24 nodes ask at once, twice."""
    engines = [await open_database(db_url), await open_database(db_url)]
    clock = Clock()
    secrets = SecretBox.from_file(tmp_path / "key")
    repos = [Repository(e, secrets, clock=clock) for e in engines]
    try:
        services = [Admissions(make_config(tmp_path, daemon=d, max_global=5, max_per_daemon=3), r,
                               clock=clock, monotonic=clock.monotonic)
                    for d, r in zip(("a", "b"), repos, strict=True)]
        names = [f"n{i:02}" for i in range(24)]
        for i, name in enumerate(names):
            await repos[0].add_node(NewNode(name, (), rack=f"r{i % 4}", state=S.HARDWARE_INSTALLING),
                                    actor="test")

        async def ask(i: int) -> bool:
            return isinstance(await services[i % 2].ask(names[i], S.HARDWARE_INSTALLING), Admit)

        for _ in range(2):
            admitted = await asyncio.gather(*(ask(i) for i in range(len(names))))
            assert sum(admitted) == 5
        async with async_sessionmaker(engines[0])() as s:
            per_daemon = {d: n for d, n in await s.execute(
                select(t.Admission.daemon, func.count()).where(t.Admission.admitted_at.is_not(None))
                .group_by(t.Admission.daemon))}
        assert sum(per_daemon.values()) == 5 and max(per_daemon.values()) <= 3
    finally:
        for e in engines:
            await e.dispose()
