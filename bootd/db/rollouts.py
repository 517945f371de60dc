"""Rollout rows (tables rollouts, rollout_nodes): persistence only.

What a rollout does is decided by bootd.model.rollout and run by
bootd.fleet.rollout; this module reads and writes rows. Several daemons may
drive one rollout at once (one PostgreSQL): every write that follows a reading
is conditional on what was read (`UPDATE .. WHERE outcome = :read`, `WHERE
state IN (...)`), so two drivers reaching the same conclusion write it once and
a stale reading writes nothing. Creating a rollout locks its nodes' rows (FOR
UPDATE on PostgreSQL; SQLite's writes are serial) while it checks that none is
in another live rollout, so two starts cannot both take one node.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from bootd.db import schema as t
from bootd.db.store import Store
from bootd.errors import Conflict, NotFound
from bootd.model.rollout import (
    IN_PROGRESS,
    LIVE,
    NodeSeen,
    Outcome,
    Plan,
    RolloutNodeRecord,
    RolloutRecord,
    RolloutSelector,
    RolloutState,
    RolloutView,
    Slot,
    Step,
)
from bootd.model.states import NodeState

_LIVE = [s.value for s in LIVE]
_IN_PROGRESS = [o.value for o in IN_PROGRESS]


@dataclass(frozen=True, slots=True)
class Observed:
    """One rollout node as the driver reads it: its row and its node."""

    row_id: int
    name: str
    outcome: Outcome
    detail: str
    seen: NodeSeen


@dataclass(frozen=True, slots=True)
class Settle:
    """One conditional write: row `row_id` from `old` to `new`."""

    row_id: int
    old: Outcome
    new: Outcome
    detail: str


class RolloutRows(Store):
    def __init__(self, store: Store) -> None:
        # The repository's sessions, dialect and clock: one engine, one pool.
        self._sessions, self._dialect = store._sessions, store._dialect
        self._secrets, self._clock = store._secrets, store._clock

    async def create(self, profile: str, selector: RolloutSelector, max_parallel: int | None,
                     max_failures: int, plans: Sequence[Plan], *, actor: str) -> RolloutRecord:
        """The rollout and one row per planned node (skipped ones as cancelled); Conflict
        naming the nodes already pending or active in another live rollout."""
        now = self._clock()
        names = [p.name for p in plans]
        async with self._tx(write=True) as s:
            ids = dict((await s.execute(
                select(t.Node.name, t.Node.id).where(t.Node.name.in_(names)).order_by(t.Node.id)
                .with_for_update())).all())
            busy = (await s.execute(
                select(t.Node.name, t.Rollout.id, t.Rollout.state)
                .join(t.RolloutNode, t.RolloutNode.node_id == t.Node.id)
                .join(t.Rollout, t.Rollout.id == t.RolloutNode.rollout_id)
                .where(t.Node.name.in_(names), t.Rollout.state.in_(_LIVE),
                       t.RolloutNode.outcome.in_(_IN_PROGRESS))
                .order_by(t.Node.name))).all()
            if busy:
                shown = ", ".join(f"{n} (rollout {r}, {st})" for n, r, st in busy[:5])
                more = f" and {len(busy) - 5} more" if len(busy) > 5 else ""
                raise Conflict(f"already in another rollout: {shown}{more}")
            missing = [n for n in names if n not in ids]
            if missing:
                raise NotFound(f"no node named {', '.join(missing[:5])}")
            row = t.Rollout(profile=profile, selector=json.dumps(selector.to_json(), sort_keys=True),
                            max_parallel=max_parallel, max_failures=max_failures,
                            state=RolloutState.RUNNING.value, reason="", actor=actor,
                            created_at=now, updated_at=now)
            s.add(row)
            await s.flush()
            for p in plans:
                skip = p.step is Step.SKIP
                s.add(t.RolloutNode(rollout_id=row.id, node_id=ids[p.name], node_name=p.name, rack=p.rack,
                                    outcome=(Outcome.CANCELLED if skip else Outcome.PENDING).value,
                                    detail=p.reason if skip else "not handed over yet", updated_at=now))
            await s.flush()
            return _rollout(row)

    async def get(self, rollout_id: int) -> RolloutRecord:
        async with self._tx(write=False) as s:
            return _rollout(await self._row(s, rollout_id))

    async def view(self, rollout_id: int) -> RolloutView:
        async with self._tx(write=False) as s:
            row = await self._row(s, rollout_id)
            return RolloutView(_rollout(row), tuple(await self._nodes(s, rollout_id)))

    async def views(self, states: Collection[RolloutState] | None = None, *,
                    limit: int = 50) -> list[RolloutView]:
        """The newest rollouts first (only those in `states`, if given)."""
        query = select(t.Rollout).order_by(t.Rollout.id.desc()).limit(limit)
        if states is not None:
            query = query.where(t.Rollout.state.in_([st.value for st in states]))
        async with self._tx(write=False) as s:
            rows = list(await s.scalars(query))
            return [RolloutView(_rollout(r), tuple(await self._nodes(s, r.id))) for r in rows]

    async def outcome_counts(self) -> dict[Outcome, int]:
        """Nodes per outcome over the live rollouts (the metrics gauge)."""
        async with self._tx(write=False) as s:
            rows = (await s.execute(
                select(t.RolloutNode.outcome, func.count()).join(t.Rollout)
                .where(t.Rollout.state.in_(_LIVE)).group_by(t.RolloutNode.outcome))).all()
        counts = {o: 0 for o in Outcome}
        for outcome, n in rows:
            counts[Outcome(outcome)] = int(n)
        return counts

    async def to_drive(self) -> list[int]:
        """Rollouts whose rows may still move: live ones, and cancelled ones with nodes
        in progress (those finish)."""
        async with self._tx(write=False) as s:
            live = await s.scalars(select(t.Rollout.id).where(t.Rollout.state.in_(_LIVE)))
            ending = await s.scalars(
                select(t.RolloutNode.rollout_id).distinct().join(t.Rollout)
                .where(t.Rollout.state == RolloutState.CANCELLED.value,
                       t.RolloutNode.outcome.in_(_IN_PROGRESS)))
            return sorted(set(live) | set(ending))

    async def observe(self, rollout_id: int) -> tuple[RolloutRecord, list[Observed]]:
        """The rollout and each of its nodes with the node's state, its place in
        admission and, for one in problem, the message of that move."""
        async with self._tx(write=False) as s:
            rollout = _rollout(await self._row(s, rollout_id))
            rows = (await s.execute(
                select(t.RolloutNode.id, t.RolloutNode.node_name, t.RolloutNode.outcome,
                       t.RolloutNode.detail, t.RolloutNode.node_id, t.Node.state, t.Node.state_changed_at,
                       t.Admission.id, t.Admission.admitted_at)
                .outerjoin(t.Node, t.Node.id == t.RolloutNode.node_id)
                .outerjoin(t.Admission, t.Admission.node_id == t.RolloutNode.node_id)
                .where(t.RolloutNode.rollout_id == rollout_id)
                .order_by(t.RolloutNode.id))).all()
            in_problem = [node_id for *_, node_id, state, _c, _a, _b in rows
                          if state == NodeState.PROBLEM.value and node_id is not None]
            reasons = await self._problem_reasons(s, in_problem)
        out = []
        for row_id, name, outcome, detail, node_id, state, changed, adm_id, admitted in rows:
            slot = Slot.NONE if adm_id is None else Slot.WAITING if admitted is None else Slot.ADMITTED
            seen = NodeSeen(None if state is None else NodeState(state), changed, slot,
                            reasons.get(node_id or 0, ""))
            out.append(Observed(row_id, name, Outcome(outcome), detail, seen))
        return rollout, out

    async def settle(self, changes: Sequence[Settle]) -> int:
        """Conditional writes of outcomes; returns how many rows this call moved."""
        if not changes:
            return 0
        now, moved = self._clock(), 0
        async with self._tx(write=True) as s:
            for c in changes:
                res = await s.execute(
                    update(t.RolloutNode).where(t.RolloutNode.id == c.row_id,
                                                t.RolloutNode.outcome == c.old.value)
                    .values(outcome=c.new.value, detail=c.detail, updated_at=now)
                    .returning(t.RolloutNode.id))
                moved += len(res.all())
        return moved

    async def handed_over(self, rollout_id: int, name: str, detail: str) -> None:
        """The lifecycle took the node: pending (from pending, or from cancelled if a
        driver saw its old state in between)."""
        async with self._tx(write=True) as s:
            await s.execute(update(t.RolloutNode).where(
                t.RolloutNode.rollout_id == rollout_id, t.RolloutNode.node_name == name,
                t.RolloutNode.outcome.in_([Outcome.PENDING.value, Outcome.CANCELLED.value]))
                .values(outcome=Outcome.PENDING.value, detail=detail, updated_at=self._clock()))

    async def refuse(self, rollout_id: int, name: str, detail: str) -> None:
        """The lifecycle refused the node (or the rollout stopped before it): cancelled."""
        async with self._tx(write=True) as s:
            await s.execute(update(t.RolloutNode).where(
                t.RolloutNode.rollout_id == rollout_id, t.RolloutNode.node_name == name,
                t.RolloutNode.outcome == Outcome.PENDING.value)
                .values(outcome=Outcome.CANCELLED.value, detail=detail, updated_at=self._clock()))

    async def set_state(self, rollout_id: int, expect: Collection[RolloutState], state: RolloutState,
                        reason: str, *, max_failures: int | None = None) -> bool:
        """Move the rollout if it is still in one of `expect`; False if it was not
        (another driver or operator got there first)."""
        values: dict[str, object] = {"state": state.value, "reason": reason, "updated_at": self._clock()}
        if max_failures is not None:
            values["max_failures"] = max_failures
        async with self._tx(write=True) as s:
            res = await s.execute(
                update(t.Rollout).where(t.Rollout.id == rollout_id,
                                        t.Rollout.state.in_([e.value for e in expect]))
                .values(**values).returning(t.Rollout.id))
            if res.first() is not None:
                return True
            await self._row(s, rollout_id)  # NotFound for a bad id
            return False

    # -- helpers --------------------------------------------------------------------------

    async def _row(self, s: AsyncSession, rollout_id: int) -> t.Rollout:
        row = await s.get(t.Rollout, rollout_id)
        if row is None:
            raise NotFound(f"no rollout {rollout_id}")
        return row

    async def _nodes(self, s: AsyncSession, rollout_id: int) -> list[RolloutNodeRecord]:
        rows = (await s.execute(
            select(t.RolloutNode, t.Admission.id)
            .outerjoin(t.Admission, and_(t.Admission.node_id == t.RolloutNode.node_id,
                                         t.Admission.admitted_at.is_(None)))
            .where(t.RolloutNode.rollout_id == rollout_id)
            .order_by(t.RolloutNode.rack, t.RolloutNode.node_name))).all()
        return [RolloutNodeRecord(r.node_name, r.rack, Outcome(r.outcome), r.detail, r.updated_at,
                                  waiting=waiting is not None and r.outcome in _IN_PROGRESS)
                for r, waiting in rows]

    async def _problem_reasons(self, s: AsyncSession, node_ids: Sequence[int]) -> dict[int, str]:
        if not node_ids:
            return {}
        last = (select(func.max(t.Event.id)).where(t.Event.node_id.in_(node_ids),
                                                   t.Event.to_state == NodeState.PROBLEM.value)
                .group_by(t.Event.node_id))
        rows = (await s.execute(select(t.Event.node_id, t.Event.message)
                                .where(t.Event.id.in_(last)))).all()
        return {node_id: message for node_id, message in rows if node_id is not None}


def _rollout(r: t.Rollout) -> RolloutRecord:
    return RolloutRecord(r.id, r.profile, RolloutSelector.from_json(json.loads(r.selector)), r.max_parallel,
                         r.max_failures, RolloutState(r.state), r.reason, r.actor, r.created_at, r.updated_at)

