"""Rollouts, as pure rules: which nodes a rollout takes and how, what each node's
outcome is, when a rollout pauses itself (the canary rule) and when it is done.

A rollout (`bootd rollout start --rack r3 --profile rocky-9`) hands every selected
node to the lifecycle: a discovered node is allocated with the profile, a ready
or installed one is reinstalled with it; any other node is recorded as
`cancelled` with the reason and left alone. From then on each node's outcome
follows its state (`outcome_of`): the heavy states are `active`, a node on its
way to one (reinstall) `pending`, `ready` and `problem` are themselves, and a
node that went back to discovery (an operator reset it) or was deleted left the
rollout (`cancelled`). Admission (bootd.model.admission) lets the nodes into the
heavy states in waves; it reads the rollout's pending and active nodes.

A node whose state last changed before the rollout was created has not been
handed over yet (the start is still allocating): it stays `pending` whatever its
state, so a ready node waiting for its reinstall is not counted as done.

The canary rule (`judge`): more than `max_failures` nodes in problem pause a
running rollout, with a reason naming them; a rollout whose every node is
ready, problem or cancelled is done. Resuming acknowledges the failures so far
(`resumed_max_failures`): the next one pauses it again.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bootd.errors import InvalidInput
from bootd.model.names import short_text
from bootd.model.records import NodeRecord
from bootd.model.states import NodeState as S


class RolloutState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"        # admission holds its nodes back; nodes installing go on
    CANCELLED = "cancelled"  # nodes not yet admitted were given back
    DONE = "done"


LIVE = frozenset({RolloutState.RUNNING, RolloutState.PAUSED})


class Outcome(enum.StrEnum):
    PENDING = "pending"      # handed over (or about to be), not yet in a heavy state
    ACTIVE = "active"        # installing
    READY = "ready"
    PROBLEM = "problem"
    CANCELLED = "cancelled"  # skipped, given back, or left the rollout


TERMINAL = frozenset({Outcome.READY, Outcome.PROBLEM, Outcome.CANCELLED})
IN_PROGRESS = frozenset({Outcome.PENDING, Outcome.ACTIVE})


class Slot(enum.StrEnum):
    """A node's place in admission (the admissions table), as a rollout sees it."""

    NONE = "none"          # it has not asked (not booted into a heavy state yet)
    WAITING = "waiting"    # it asked and waits for a slot
    ADMITTED = "admitted"  # it holds a slot


# -- what the operator selected ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RolloutSelector:
    """Nodes by racks and/or names, or all of them (`--rack R` repeatable, NAME..., --all)."""

    racks: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    all: bool = False

    @classmethod
    def parse(cls, names: Sequence[str] = (), racks: Sequence[str] = (),
              all: bool = False) -> RolloutSelector:
        if all and (names or racks):
            raise InvalidInput("--all selects every node: give no racks or names with it")
        if not (all or names or racks):
            raise InvalidInput("select nodes by --rack, by name, or --all")
        racks = tuple(dict.fromkeys(short_text(r, "rack", 64) for r in racks))
        names = tuple(dict.fromkeys(short_text(n, "name", 63).lower() for n in names))
        return cls(racks, names, all)

    def pick(self, nodes: Iterable[NodeRecord]) -> list[NodeRecord]:
        """The selected nodes in rack, then name order; InvalidInput for a name no node has."""
        nodes = list(nodes)
        known = {n.name for n in nodes}
        missing = [name for name in self.names if name not in known]
        if missing:
            raise InvalidInput(f"no node named {', '.join(missing)}")
        chosen = [n for n in nodes if self.all or n.name in self.names or (n.rack or "") in self.racks]
        return sorted(chosen, key=lambda n: (n.rack or "", n.name))

    def to_json(self) -> dict[str, Any]:
        return {"racks": list(self.racks), "names": list(self.names), "all": self.all}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RolloutSelector:
        return cls(tuple(data.get("racks") or ()), tuple(data.get("names") or ()), bool(data.get("all")))

    def describe(self) -> str:
        if self.all:
            return "all nodes"
        parts = []
        if self.racks:
            parts.append(("rack " if len(self.racks) == 1 else "racks ") + ", ".join(self.racks))
        if self.names:
            parts.append(", ".join(self.names))
        return "; ".join(parts)


# -- how each node is handed over -------------------------------------------------------------


class Step(enum.StrEnum):
    ALLOCATE = "allocate"    # discovered: allocate with the profile
    REINSTALL = "reinstall"  # ready/installed: set the profile, reinstall
    SKIP = "skip"            # anything else: recorded as cancelled, with the reason


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    rack: str | None
    step: Step
    reason: str = ""


REINSTALLABLE = frozenset({S.READY, S.INSTALLED})


def plan(node: NodeRecord) -> Plan:
    if node.state is S.DISCOVERED:
        return Plan(node.name, node.rack, Step.ALLOCATE)
    if node.state in REINSTALLABLE:
        return Plan(node.name, node.rack, Step.REINSTALL)
    return Plan(node.name, node.rack, Step.SKIP,
                f"skipped: {node.state.value} (a rollout takes discovered, installed and ready nodes)")


# -- what each node's state means for the rollout --------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeSeen:
    """A rollout node as the driver reads it; state None: the node is gone."""

    state: S | None
    changed_at: datetime | None = None
    slot: Slot = Slot.NONE
    problem: str = ""  # the message of its move to problem


BACK_TO_DISCOVERY = frozenset({S.DISCOVERING, S.DISCOVERED, S.RESET})


def outcome_of(seen: NodeSeen, since: datetime, heavy: Collection[S]) -> tuple[Outcome, str]:
    """(outcome, detail) of a node of a rollout created at `since`."""
    if seen.state is None:
        return Outcome.CANCELLED, "left the rollout: node deleted"
    if seen.changed_at is not None and seen.changed_at <= since:
        return Outcome.PENDING, "not handed over yet"
    state = seen.state
    if state is S.READY:
        return Outcome.READY, ""
    if state is S.PROBLEM:
        return Outcome.PROBLEM, seen.problem or "problem"
    if state in BACK_TO_DISCOVERY:
        return Outcome.CANCELLED, f"left the rollout: node is {state.value}"
    if state in heavy:
        if seen.slot is Slot.WAITING:
            return Outcome.ACTIVE, f"{state.value}, waiting for a slot"
        return Outcome.ACTIVE, state.value
    if state is S.REINSTALL:
        return Outcome.PENDING, state.value
    return Outcome.ACTIVE, state.value  # between heavy states, or past them (installed, readying)


def give_back(seen: NodeSeen, heavy: Collection[S]) -> bool:
    """On cancel: is this node not yet admitted (reset it) rather than in progress (let it finish)?
    A node in a heavy state that never asked for a slot has not booted into it yet."""
    if seen.state is S.REINSTALL:
        return True
    return seen.state in heavy and seen.slot is not Slot.ADMITTED


# -- progress and the canary ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RolloutNodeRecord:
    name: str
    rack: str | None
    outcome: Outcome
    detail: str
    updated_at: datetime
    waiting: bool = False  # asked for a slot and waits


@dataclass(frozen=True, slots=True)
class Progress:
    counts: Mapping[Outcome, int]
    waiting: int = 0

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def failures(self) -> int:
        return self.counts.get(Outcome.PROBLEM, 0)

    @property
    def finished(self) -> bool:
        return all(self.counts.get(o, 0) == 0 for o in IN_PROGRESS)

    def as_dict(self) -> dict[str, int]:
        return {o.value: self.counts.get(o, 0) for o in Outcome}


def progress(nodes: Iterable[RolloutNodeRecord]) -> Progress:
    counts = {o: 0 for o in Outcome}
    waiting = 0
    for n in nodes:
        counts[n.outcome] += 1
        waiting += n.waiting
    return Progress(counts, waiting)


def by_rack(nodes: Iterable[RolloutNodeRecord]) -> list[tuple[str, Progress]]:
    racks: dict[str, list[RolloutNodeRecord]] = {}
    for n in nodes:
        racks.setdefault(n.rack or "-", []).append(n)
    return [(rack, progress(rows)) for rack, rows in sorted(racks.items())]


@dataclass(frozen=True, slots=True)
class RolloutRecord:
    id: int
    profile: str
    selector: RolloutSelector
    max_parallel: int | None
    max_failures: int
    state: RolloutState
    reason: str
    actor: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RolloutView:
    rollout: RolloutRecord
    nodes: tuple[RolloutNodeRecord, ...] = field(default_factory=tuple)

    @property
    def progress(self) -> Progress:
        return progress(self.nodes)


@dataclass(frozen=True, slots=True)
class Verdict:
    state: RolloutState
    reason: str


SHOWN = 5  # failed nodes named in a reason


def canary_reason(failed: Sequence[tuple[str, str]], max_failures: int) -> str:
    named = ", ".join(f"{name}: {why}" if why else name for name, why in failed[:SHOWN])
    more = f", and {len(failed) - SHOWN} more" if len(failed) > SHOWN else ""
    noun = "node" if len(failed) == 1 else "nodes"
    return f"{len(failed)} {noun} in problem ({named}{more}), more than --max-failures {max_failures}: paused"


def judge(state: RolloutState, max_failures: int, nodes: Sequence[RolloutNodeRecord]) -> Verdict | None:
    """What a live rollout becomes now, if anything: done once every node is settled,
    paused (running only) past its failure budget."""
    if state not in LIVE:
        return None
    p = progress(nodes)
    if p.finished:
        c = p.counts
        return Verdict(RolloutState.DONE, f"{c[Outcome.READY]} ready, {c[Outcome.PROBLEM]} in problem, "
                                          f"{c[Outcome.CANCELLED]} cancelled")
    if state is RolloutState.RUNNING and p.failures > max_failures:
        failed = [(n.name, n.detail) for n in nodes if n.outcome is Outcome.PROBLEM]
        return Verdict(RolloutState.PAUSED, canary_reason(failed, max_failures))
    return None


def resumed_max_failures(max_failures: int, failures: int) -> int:
    """Resuming acknowledges the failures so far: one more pauses the rollout again."""
    return max(max_failures, failures)


def check_limits(max_parallel: int | None, max_failures: int) -> None:
    if max_parallel is not None and not 1 <= max_parallel <= 100_000:
        raise InvalidInput("--max-parallel must be at least 1")
    if not 0 <= max_failures <= 100_000:
        raise InvalidInput("--max-failures must be 0 or more")
