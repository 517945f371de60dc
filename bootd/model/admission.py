"""Install waves: which node booting into a heavy state may go now, as a pure decision.

A node that boots into a heavy state (config [waves] states: hardware-installing,
installing, readying) asks for a slot. Slots are limited globally, per rack, per
admin daemon and per rollout (its max_parallel; a paused rollout admits none);
0 is no limit. A node that gets no slot waits in one queue and asks again.

Which boot asks for which slot (SLOT_FOR): a node asks in the state whose boot
does the heavy work. The installer is booted while the node is still
hardware-installed (or reinstall) and only reports `installing` once it runs, so
that boot asks for an `installing` slot, and the slot is held while the node is
in any state that leads to it (`holds`): asked in hardware-installed, kept through
installing, ended at installed. Counting the nodes in `installing` alone would
let a whole rack download its installer at once.

The queue is ordered by rack (racks by name, no rack last), then by when the node
entered its state (allocated_at), then by node id. Fairness is "no overtaking":
walking the queue in order, every node ahead of the asker that the limits would
admit reserves its slot first, and the asker is admitted only if a slot is left
after them. A node ahead that cannot go because of a limit of its own (its rack,
its daemon or its rollout full, or its rollout paused) reserves nothing and does
not hold back nodes of other racks or rollouts; once the GLOBAL limit is used up
(by admitted nodes and reservations) nobody behind may pass. So a full rack never
stalls the fleet, and a free global slot always goes to the first node that can
use it.

A waiting node that stops asking (asked_at older than forget_after) is forgotten:
it leaves the queue, and when it asks again it queues behind its rack's waiting
nodes (`requeued`), instead of taking back its old place.

The per-daemon limit of a node of another daemon is taken to be ours: daemons
sharing a database are expected to share their [waves] section.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from bootd.model.states import NodeState as S

# The slot a boot in each state asks for (when that slot's state is a heavy one).
SLOT_FOR: Mapping[S, S] = {
    S.HARDWARE_INSTALLING: S.HARDWARE_INSTALLING,  # the hardware-install image does the work
    S.HARDWARE_INSTALLED: S.INSTALLING,  # boots the installer, which reports installing
    S.REINSTALL: S.INSTALLING,
    S.INSTALLING: S.INSTALLING,  # a retry's fresh boot of the installer
    S.INSTALLED: S.READYING,  # the first boot from disk, which reports readying
    S.READYING: S.READYING,
}


def slot_for(state: S, heavy: Iterable[S]) -> S | None:
    """The slot a node in `state` must hold to boot its image, or None: go ahead."""
    slot = SLOT_FOR.get(state)
    return slot if slot is not None and slot in frozenset(heavy) else None


def holds(slot: S, state: S) -> bool:
    """A node in `state` still holds a slot it got for `slot` (else the slot is free)."""
    return SLOT_FOR.get(state) is slot


class Limit(enum.StrEnum):
    """Which limit keeps a node waiting."""

    GLOBAL = "global"
    RACK = "rack"
    DAEMON = "daemon"
    ROLLOUT = "rollout"
    PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class Limits:
    """Slots at once; 0 = no limit at that level (config [waves])."""

    max_global: int = 0
    max_per_rack: int = 0
    max_per_daemon: int = 0


@dataclass(frozen=True, slots=True)
class RolloutGate:
    """A rollout's own limit on its nodes (bootd.fleet.rollout writes it)."""

    id: int
    max_parallel: int | None = None  # None or 0: no limit of its own
    paused: bool = False


@dataclass(frozen=True, slots=True)
class Entry:
    """A node in the waves: admitted, waiting, or asking now."""

    node_id: int
    name: str
    rack: str | None
    daemon: str
    allocated_at: datetime  # when it entered its state: its order in its rack
    rollout: int | None = None
    asked_at: datetime | None = None  # waiting entries: the last ask


def queue_key(e: Entry) -> tuple[bool, str, datetime, int]:
    """Racks by name, nodes without a rack last; then allocation time, then id."""
    return (e.rack is None, e.rack or "", e.allocated_at, e.node_id)


@dataclass(frozen=True, slots=True)
class Admit:
    pass


@dataclass(frozen=True, slots=True)
class Wait:
    place: int  # 1-based, in the whole queue
    of: int  # nodes waiting, this one included
    limit: Limit
    reason: str  # for the node's console and the status page


Decision = Admit | Wait


def forgotten(e: Entry, now: datetime, forget_after: float) -> bool:
    """A waiting node that has not asked for `forget_after` seconds has lost its place."""
    return e.asked_at is not None and now - e.asked_at > timedelta(seconds=forget_after)


def requeued(e: Entry, now: datetime) -> Entry:
    """A forgotten node asking again: behind every node of its rack queued so far."""
    return replace(e, allocated_at=now, asked_at=now)


class _Counts:
    """Slots in use (admitted and reserved) per level."""

    def __init__(self, admitted: Iterable[Entry]) -> None:
        self.total = 0
        self.racks: Counter[str | None] = Counter()
        self.daemons: Counter[str] = Counter()
        self.rollouts: Counter[int] = Counter()
        for e in admitted:
            self.take(e)

    def take(self, e: Entry) -> None:
        self.total += 1
        self.racks[e.rack] += 1
        self.daemons[e.daemon] += 1
        if e.rollout is not None:
            self.rollouts[e.rollout] += 1

    def own_limit(self, e: Entry, limits: Limits,
                  rollouts: Mapping[int, RolloutGate]) -> tuple[Limit, str] | None:
        """The limit of the node's own (rack, daemon, rollout) that is full, if any."""
        gate = None if e.rollout is None else rollouts.get(e.rollout)
        if gate is not None and gate.paused:
            return Limit.PAUSED, f"rollout {gate.id} paused"
        if gate is not None and gate.max_parallel and self.rollouts[gate.id] >= gate.max_parallel:
            return Limit.ROLLOUT, (f"rollout {gate.id} runs {gate.max_parallel} of its nodes at once "
                                   f"({self.rollouts[gate.id]} taken or promised)")
        # Nodes without a rack share no rack: the per-rack limit does not apply to them.
        if limits.max_per_rack and e.rack is not None and self.racks[e.rack] >= limits.max_per_rack:
            return Limit.RACK, (f"rack {e.rack} has {limits.max_per_rack} slots "
                                f"({self.racks[e.rack]} taken or promised)")
        if limits.max_per_daemon and self.daemons[e.daemon] >= limits.max_per_daemon:
            return Limit.DAEMON, (f"admin node {e.daemon} has {limits.max_per_daemon} slots "
                                  f"({self.daemons[e.daemon]} taken or promised)")
        return None

    def global_full(self, limits: Limits) -> bool:
        return bool(limits.max_global) and self.total >= limits.max_global


def queue(waiting: Iterable[Entry], asker: Entry | None, now: datetime, forget_after: float) -> list[Entry]:
    """The waiting nodes in order: forgotten ones out, the asker in (once)."""
    live = [e for e in waiting if not forgotten(e, now, forget_after)
            and (asker is None or e.node_id != asker.node_id)]
    if asker is not None:
        live.append(asker)
    return sorted(live, key=queue_key)


def decide(asker: Entry, admitted: Sequence[Entry], waiting: Sequence[Entry], limits: Limits,
           rollouts: Mapping[int, RolloutGate], now: datetime, forget_after: float) -> Decision:
    """May `asker` take a slot now? `admitted` are the slots held (by nodes still in
    their slot's states), `waiting` the queue as stored (forgotten entries included:
    they are left out here), `rollouts` the gates of the rollouts those nodes belong to."""
    if any(e.node_id == asker.node_id for e in admitted):
        return Admit()  # asked again (a second script fetch): it holds its slot
    order = queue(waiting, asker, now, forget_after)
    counts = _Counts(admitted)
    ahead = 0  # nodes ahead that take the slots first
    for place, e in enumerate(order, 1):
        if counts.global_full(limits):
            reason = f"all {limits.max_global} install slots are taken"
            if ahead:
                reason += f" ({ahead} promised to nodes ahead in the queue)"
            return Wait(order.index(asker) + 1, len(order), Limit.GLOBAL, reason)
        full = counts.own_limit(e, limits, rollouts)
        if e is asker:
            if full is None:
                return Admit()
            return Wait(place, len(order), *full)
        if full is None:  # it would go before the asker: its slot is promised
            counts.take(e)
            ahead += 1
    raise AssertionError("the asker is in its own queue")


def places(admitted: Sequence[Entry], waiting: Sequence[Entry], limits: Limits,
           rollouts: Mapping[int, RolloutGate], now: datetime,
           forget_after: float) -> list[tuple[Entry, Decision]]:
    """Every waiting node in queue order with what `decide` would answer it now (Admit:
    a slot is promised to it, it goes at its next ask). One pass: a node's answer
    depends only on the nodes ahead of it, walked exactly as `decide` walks them."""
    order = queue(waiting, None, now, forget_after)
    counts = _Counts(admitted)
    out: list[tuple[Entry, Decision]] = []
    ahead = 0
    for place, e in enumerate(order, 1):
        if counts.global_full(limits):
            reason = f"all {limits.max_global} install slots are taken"
            if ahead:
                reason += f" ({ahead} promised to nodes ahead in the queue)"
            out.append((e, Wait(place, len(order), Limit.GLOBAL, reason)))
            continue
        full = counts.own_limit(e, limits, rollouts)
        if full is None:
            counts.take(e)
            ahead += 1
            out.append((e, Admit()))
        else:
            out.append((e, Wait(place, len(order), *full)))
    return out


# -- stored places (bootd.db.admissions reads them) -------------------------------------


@dataclass(frozen=True, slots=True)
class AdmissionRecord:
    """One row of the admissions table, with its node's state now."""

    entry: Entry
    slot: S  # the heavy state the place is for
    node_state: S
    queued_at: datetime
    admitted_at: datetime | None

    @property
    def live(self) -> bool:
        """The node still holds (or waits for) this slot; else the row is left over
        (the node moved on, or a crash kept the row past the move) and counts for nothing."""
        return holds(self.slot, self.node_state)

    @property
    def admitted(self) -> bool:
        return self.admitted_at is not None


def clock_starts(rows: Iterable[AdmissionRecord], now: datetime,
                 forget_after: float) -> dict[str, datetime | None]:
    """When each node's state timer starts, for nodes in the waves (model.lifecycle.overdue):
    an admitted node's at its admission, a waiting node that still asks not yet (None),
    a waiting node that stopped asking at its last ask."""
    out: dict[str, datetime | None] = {}
    for r in rows:
        if not r.live:
            continue
        if r.admitted_at is not None:
            out[r.entry.name] = r.admitted_at
        elif forgotten(r.entry, now, forget_after):
            out[r.entry.name] = r.entry.asked_at
        else:
            out[r.entry.name] = None
    return out
