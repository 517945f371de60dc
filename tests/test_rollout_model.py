"""The pure rollout rules: selection, plans, outcomes from node states, progress, the canary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bootd.errors import InvalidInput
from bootd.model.records import NodeRecord
from bootd.model.rollout import (
    NodeSeen,
    Outcome,
    RolloutNodeRecord,
    RolloutSelector,
    RolloutState,
    Slot,
    Step,
    by_rack,
    canary_reason,
    give_back,
    judge,
    outcome_of,
    plan,
    progress,
    resumed_max_failures,
)
from bootd.model.states import NodeState as S

T0 = datetime(2026, 1, 1, tzinfo=UTC)
LATER = T0 + timedelta(seconds=5)
HEAVY = frozenset({S.HARDWARE_INSTALLING, S.INSTALLING})


def node(name: str, state: S = S.DISCOVERED, rack: str | None = "r1") -> NodeRecord:
    return NodeRecord(name=name, state=state, allocated=False, profile=None, admin_ip=None, rack=rack,
                      location=None, interfaces=(), bmc=None, created_at=T0, updated_at=T0,
                      state_changed_at=T0)


def row(name: str, outcome: Outcome, detail: str = "", rack: str = "r1",
        waiting: bool = False) -> RolloutNodeRecord:
    return RolloutNodeRecord(name, rack, outcome, detail, T0, waiting)


def test_selector_parse_and_pick() -> None:
    nodes = [node("b", rack="r2"), node("a", rack="r2"), node("c", rack="r1"), node("d", rack=None)]
    sel = RolloutSelector.parse(racks=["r2", "r2"])
    assert sel.racks == ("r2",)
    assert [n.name for n in sel.pick(nodes)] == ["a", "b"]
    both = RolloutSelector.parse(["D"], racks=["r1"])
    assert [n.name for n in both.pick(nodes)] == ["d", "c"]  # rack order: no rack sorts first
    assert [n.name for n in RolloutSelector.parse(all=True).pick(nodes)] == ["d", "c", "a", "b"]
    assert RolloutSelector.from_json(both.to_json()) == both
    assert both.describe() == "rack r1; d"
    with pytest.raises(InvalidInput, match="no node named ghost"):
        RolloutSelector.parse(["ghost"]).pick(nodes)
    with pytest.raises(InvalidInput, match="--rack, by name, or --all"):
        RolloutSelector.parse()
    with pytest.raises(InvalidInput, match="--all selects every node"):
        RolloutSelector.parse(["a"], all=True)


@pytest.mark.parametrize(("state", "step"), [
    (S.DISCOVERED, Step.ALLOCATE), (S.READY, Step.REINSTALL), (S.INSTALLED, Step.REINSTALL),
    (S.DISCOVERING, Step.SKIP), (S.PROBLEM, Step.SKIP), (S.INSTALLING, Step.SKIP), (S.RESET, Step.SKIP),
])
def test_plan_by_state(state: S, step: Step) -> None:
    p = plan(node("n", state))
    assert p.step is step
    assert (p.reason != "") is (step is Step.SKIP)
    if step is Step.SKIP:
        assert state.value in p.reason


@pytest.mark.parametrize(("seen", "expected"), [
    (NodeSeen(S.READY, T0), Outcome.PENDING),                 # not handed over yet: not done
    (NodeSeen(S.READY, LATER), Outcome.READY),
    (NodeSeen(S.PROBLEM, LATER, problem="disk"), Outcome.PROBLEM),
    (NodeSeen(S.HARDWARE_INSTALLING, LATER), Outcome.ACTIVE),
    (NodeSeen(S.INSTALLING, LATER, Slot.WAITING), Outcome.ACTIVE),
    (NodeSeen(S.HARDWARE_INSTALLED, LATER), Outcome.ACTIVE),
    (NodeSeen(S.READYING, LATER), Outcome.ACTIVE),
    (NodeSeen(S.REINSTALL, LATER), Outcome.PENDING),
    (NodeSeen(S.DISCOVERED, LATER), Outcome.CANCELLED),       # reset meanwhile: left the rollout
    (NodeSeen(None), Outcome.CANCELLED),                       # deleted
])
def test_outcome_of(seen: NodeSeen, expected: Outcome) -> None:
    outcome, detail = outcome_of(seen, T0, HEAVY)
    assert outcome is expected
    if expected is Outcome.PROBLEM:
        assert detail == "disk"
    if seen.slot is Slot.WAITING:
        assert "waiting for a slot" in detail


def test_give_back_only_what_was_not_admitted() -> None:
    assert give_back(NodeSeen(S.REINSTALL, LATER), HEAVY)
    assert give_back(NodeSeen(S.HARDWARE_INSTALLING, LATER, Slot.NONE), HEAVY)
    assert give_back(NodeSeen(S.HARDWARE_INSTALLING, LATER, Slot.WAITING), HEAVY)
    assert not give_back(NodeSeen(S.HARDWARE_INSTALLING, LATER, Slot.ADMITTED), HEAVY)
    assert not give_back(NodeSeen(S.HARDWARE_INSTALLED, LATER), HEAVY)  # past its first wave
    assert not give_back(NodeSeen(S.READY, LATER), HEAVY)


def test_progress_and_racks() -> None:
    rows = [row("a", Outcome.READY), row("b", Outcome.ACTIVE, waiting=True),
            row("c", Outcome.PROBLEM, rack="r2"), row("d", Outcome.PENDING, rack="r2")]
    p = progress(rows)
    assert p.as_dict() == {"pending": 1, "active": 1, "ready": 1, "problem": 1, "cancelled": 0}
    assert (p.total, p.failures, p.waiting, p.finished) == (4, 1, 1, False)
    assert [(rack, q.total) for rack, q in by_rack(rows)] == [("r1", 2), ("r2", 2)]
    assert progress([row("a", Outcome.READY), row("b", Outcome.CANCELLED)]).finished


def test_canary_pauses_past_max_failures_with_the_reason() -> None:
    rows = [row("n1", Outcome.PROBLEM, "no progress in installing for 600 s"),
            row("n2", Outcome.PROBLEM, "disk"), row("n3", Outcome.ACTIVE)]
    assert judge(RolloutState.RUNNING, 2, rows) is None  # 2 failures: not more than 2
    rows.append(row("n4", Outcome.PROBLEM, "kickstart error"))
    verdict = judge(RolloutState.RUNNING, 2, rows)
    assert verdict is not None and verdict.state is RolloutState.PAUSED
    assert verdict.reason == ("3 nodes in problem (n1: no progress in installing for 600 s, n2: disk, "
                              "n4: kickstart error), more than --max-failures 2: paused")
    assert judge(RolloutState.PAUSED, 2, rows) is None  # already paused: nothing more
    assert judge(RolloutState.CANCELLED, 2, rows) is None


def test_done_when_every_node_settled() -> None:
    rows = [row("a", Outcome.READY), row("b", Outcome.PROBLEM, "x"), row("c", Outcome.CANCELLED)]
    for state in (RolloutState.RUNNING, RolloutState.PAUSED):
        verdict = judge(state, 0, rows)
        assert verdict is not None and verdict.state is RolloutState.DONE
        assert verdict.reason == "1 ready, 1 in problem, 1 cancelled"


def test_reason_names_at_most_five() -> None:
    failed = [(f"n{i}", "x") for i in range(8)]
    assert canary_reason(failed, 0).startswith(
        "8 nodes in problem (n0: x, n1: x, n2: x, n3: x, n4: x, and 3 more)")
    assert canary_reason([("n1", "")], 0) == "1 node in problem (n1), more than --max-failures 0: paused"


def test_resume_acknowledges_failures() -> None:
    assert resumed_max_failures(2, 3) == 3
    assert resumed_max_failures(5, 3) == 5
