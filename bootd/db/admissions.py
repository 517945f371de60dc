"""Admission rows: the install waves' places, stored so the queue survives a restart and
the limits hold across several daemons sharing one database.

`admit` is one short transaction under one lock: PostgreSQL's
pg_advisory_xact_lock (every daemon takes the same key; READ COMMITTED then reads
every slot committed before it), SQLite's BEGIN IMMEDIATE (one writer at a time,
as for every write here). Inside it: read the node and every row, drop the rows
their node left behind, hand the facts to the caller's decision (pure:
bootd.model.admission.decide), write the asker's row. Persistence only: what is
decided is the caller's.

A row counts only while its node is in a state that holds its slot
(model.admission.holds), read in the same statement: a row a crash left behind
holds no slot. The lifecycle ends a row in the transaction that moves the node
(`end_admission`, called from Repository.commit).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from bootd.db import schema as t
from bootd.db.store import Store
from bootd.errors import Conflict, NotFound
from bootd.model.admission import (
    AdmissionRecord,
    Admit,
    Decision,
    Entry,
    RolloutGate,
    forgotten,
    holds,
    requeued,
    slot_for,
)
from bootd.model.states import NodeState

_PG_ADMISSION_LOCK = 0x61646D31  # "adm1": advisory lock key every daemon takes to admit
# A rollout's node waits under its rollout while both are live (bootd.fleet.rollout writes them).
ACTIVE_OUTCOMES = ("pending", "active")
LIVE_ROLLOUTS = ("running", "paused")


@dataclass(frozen=True)
class AdmissionFacts:
    """What a decision reads: the asker as it queues now, and everyone else's places."""

    asker: Entry
    slot: NodeState
    admitted: list[Entry]  # live admitted places; the asker's own if it holds one
    waiting: list[Entry]  # live waiting places, the asker's excluded (forgotten ones included)
    gates: dict[int, RolloutGate]


Choose = Callable[[AdmissionFacts], Decision]


@dataclass(frozen=True)
class _Read:
    facts: AdmissionFacts
    mine: AdmissionRecord | None  # the asker's own live place for this slot
    new_place: bool  # it has none, or its last was forgotten
    gone: list[int]  # node ids whose rows hold nothing any more


class AdmissionRows(Store):
    def __init__(self, store: Store) -> None:
        # The repository's sessions, dialect and clock: one engine, one pool.
        self._sessions, self._dialect = store._sessions, store._dialect
        self._secrets, self._clock = store._secrets, store._clock

    async def admit(self, name: str, daemon: str, heavy: Collection[NodeState], forget_after: float,
                    choose: Choose, now: datetime) -> tuple[Entry | None, Decision]:
        """Node `name` asks at `now` for its slot: (its place, the decision), in one
        transaction. A node in no heavy state needs none: (None, Admit()), nothing written."""
        async with self._tx(write=True) as s:
            if self._dialect == "postgresql":
                await s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_ADMISSION_LOCK})
            read = await self._read(s, name, daemon, heavy, forget_after, now)
            if read is None:
                return None, Admit()
            if read.gone:  # left behind by a move that did not end them (a crash, an older bootd)
                await s.execute(delete(t.Admission).where(t.Admission.node_id.in_(read.gone)))
            facts, mine, asker, slot = read.facts, read.mine, read.facts.asker, read.facts.slot
            decision = choose(facts)
            row = await s.scalar(select(t.Admission).where(t.Admission.node_id == asker.node_id))
            if row is not None and (mine is None or row.state != slot.value):
                await s.delete(row)  # a place for another slot: this ask starts a new one
                await s.flush()
                row = None
            if row is None:
                row = t.Admission(node_id=asker.node_id, state=slot.value, queued_at=now)
                s.add(row)
            elif read.new_place:
                row.queued_at = now
            row.rack, row.daemon, row.rollout_id = asker.rack, asker.daemon, asker.rollout
            row.allocated_at, row.asked_at = asker.allocated_at, now
            if isinstance(decision, Admit) and row.admitted_at is None:
                row.admitted_at = now
                # In the node's log, so a wave's history can be read back (and checked: the
                # multi-daemon lab replays these to count slots held at each instant).
                s.add(t.Event(node_id=asker.node_id, node_name=asker.name, at=now, kind="admitted",
                              from_state=None, to_state=None, actor=daemon, message=f"slot={slot.value}"))
            return asker, decision

    async def _read(self, s: AsyncSession, name: str, daemon: str, heavy: Collection[NodeState],
                    forget_after: float, now: datetime) -> _Read | None:
        """The node and every place, as an ask at `now` sees them; None: no heavy state."""
        fresh = await self._fresh_entry(s, name, daemon, heavy, now)
        if fresh is None:
            return None
        fresh_entry, slot = fresh
        node_id, rack, rollout = fresh_entry.node_id, fresh_entry.rack, fresh_entry.rollout
        records = await self._records(s)
        live = [r for r in records if r.live]
        mine = next((r for r in live if r.entry.node_id == node_id and r.slot is slot), None)
        # A new place (first ask, or the last one was forgotten) or the one it keeps.
        new_place = mine is None or (not mine.admitted and forgotten(mine.entry, now, forget_after))
        if mine is None:
            asker = fresh_entry
        elif mine.admitted:
            asker = replace(mine.entry, asked_at=now)
        else:
            kept = requeued(mine.entry, now) if new_place else mine.entry
            asker = replace(kept, rack=rack, daemon=daemon, rollout=rollout, asked_at=now)
        others = [r for r in live if r.entry.node_id != node_id]
        admitted = [r.entry for r in others if r.admitted]
        if mine is not None and mine.admitted:
            admitted.append(asker)
        waiting = [r.entry for r in others if not r.admitted]
        gates = await self._gates(s, {e.rollout for e in [asker, *admitted, *waiting]})
        return _Read(AdmissionFacts(asker, slot, admitted, waiting, gates), mine, new_place,
                     [r.entry.node_id for r in records if not r.live])

    async def admission_rows(self) -> list[AdmissionRecord]:
        """Every place with its node's state now (live or not: see AdmissionRecord.live)."""
        async with self._tx(write=False) as s:
            return await self._records(s)

    async def board(self) -> tuple[list[AdmissionRecord], dict[int, RolloutGate]]:
        """Every place and the gates of their rollouts, in one read (no lock): what a
        waiting node's repeated ask is answered from (bootd.fleet.admission)."""
        async with self._tx(write=False) as s:
            records = await self._records(s)
            return records, await self._gates(s, {r.entry.rollout for r in records})

    async def newcomer(self, name: str, daemon: str, heavy: Collection[NodeState],
                       now: datetime) -> tuple[Entry, NodeState, RolloutGate | None] | None:
        """The place node `name` would take if it queued now, the slot and its rollout's
        gate, from the node's row alone (no lock, every place unread); None: no heavy state."""
        async with self._tx(write=False) as s:
            fresh = await self._fresh_entry(s, name, daemon, heavy, now)
            if fresh is None:
                return None
            entry, slot = fresh
            rollout = entry.rollout
            gate = (await self._gates(s, {rollout})).get(rollout) if rollout is not None else None
            return entry, slot, gate

    async def _fresh_entry(self, s: AsyncSession, name: str, daemon: str, heavy: Collection[NodeState],
                           now: datetime) -> tuple[Entry, NodeState] | None:
        """Node `name`'s place as a first ask at `now` would take it, and its slot; None:
        its state is not heavy."""
        node = (await s.execute(
            select(t.Node.id, t.Node.name, t.Node.state, t.Node.rack, t.Node.state_changed_at)
            .where(t.Node.name == name.lower()))).first()
        if node is None:
            raise NotFound(f"no node named {name!r}")
        node_id, node_name, state, rack, since = node
        slot = slot_for(NodeState(state), heavy)
        if slot is None:
            return None
        rollout = await self._active_rollout(s, node_id)
        return Entry(node_id, node_name, rack, daemon, since, rollout, now), slot

    async def enqueue(self, entry: Entry, slot: NodeState, now: datetime) -> bool:
        """A waiting place for a node that has none, without the lock (a waiting place
        takes no slot). False if the node has a row meanwhile: the locked path decides."""
        try:
            async with self._tx(write=True) as s:
                if await s.scalar(select(t.Admission.id).where(t.Admission.node_id == entry.node_id)):
                    return False
                s.add(t.Admission(node_id=entry.node_id, state=slot.value, rack=entry.rack,
                                  daemon=entry.daemon, rollout_id=entry.rollout,
                                  allocated_at=entry.allocated_at, queued_at=now, asked_at=now))
        except Conflict:  # another daemon queued it at the same instant
            return False
        return True

    async def touch(self, node_id: int, slot: NodeState, now: datetime) -> None:
        """A waiting node asked again: its stored ask, so it is not forgotten. One row,
        no lock: it changes no count."""
        async with self._tx(write=True) as s:
            await s.execute(update(t.Admission).where(
                t.Admission.node_id == node_id, t.Admission.state == slot.value,
                t.Admission.admitted_at.is_(None)).values(asked_at=now))

    async def rollout_gates(self, ids: Iterable[int | None]) -> dict[int, RolloutGate]:
        async with self._tx(write=False) as s:
            return await self._gates(s, set(ids))

    # -- reads inside a transaction ----------------------------------------------------

    async def _records(self, s: AsyncSession) -> list[AdmissionRecord]:
        # Columns, not ORM objects: a waiting fleet of 1,000 is read on every ask.
        a = t.Admission
        rows = await s.execute(
            select(a.node_id, t.Node.name, a.rack, a.daemon, a.allocated_at, a.rollout_id, a.asked_at,
                   a.state, t.Node.state, a.queued_at, a.admitted_at)
            .join(t.Node, a.node_id == t.Node.id).order_by(a.id))
        return [AdmissionRecord(Entry(node_id, name, rack, daemon, allocated, rollout, asked),
                                NodeState(slot), NodeState(state), queued, admitted)
                for node_id, name, rack, daemon, allocated, rollout, asked, slot, state, queued, admitted
                in rows]

    async def _active_rollout(self, s: AsyncSession, node_id: int) -> int | None:
        return await s.scalar(
            select(t.Rollout.id).join(t.RolloutNode, t.RolloutNode.rollout_id == t.Rollout.id)
            .where(t.RolloutNode.node_id == node_id, t.RolloutNode.outcome.in_(ACTIVE_OUTCOMES),
                   t.Rollout.state.in_(LIVE_ROLLOUTS))
            .order_by(t.Rollout.id.desc()).limit(1))

    async def _gates(self, s: AsyncSession, ids: set[int | None]) -> dict[int, RolloutGate]:
        wanted = {i for i in ids if i is not None}
        if not wanted:
            return {}
        rows = await s.execute(select(t.Rollout.id, t.Rollout.max_parallel, t.Rollout.state)
                               .where(t.Rollout.id.in_(wanted), t.Rollout.state.in_(LIVE_ROLLOUTS)))
        return {i: RolloutGate(i, mp, state == "paused") for i, mp, state in rows}


async def end_admission(s: AsyncSession, node_id: int, state: NodeState, *, retry: bool) -> None:
    """In the caller's transaction (Repository.commit): the node moved to `state`, or
    spent a timeout retry. Its place ends unless the new state still holds its slot;
    a retry's fresh boot always asks again."""
    row = await s.scalar(select(t.Admission).where(t.Admission.node_id == node_id))
    if row is not None and (retry or not holds(NodeState(row.state), state)):
        await s.delete(row)
