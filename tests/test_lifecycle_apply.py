"""model.lifecycle.apply walked over the table: every event from every state.

Allowed events give the right changes and effects; every other one raises
IllegalTransition (a Conflict) naming what is allowed from the node's state.
Pure: no database, a fixed clock."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from bootd.errors import Conflict, InvalidInput
from bootd.model.events import (
    Allocate,
    Changes,
    Delete,
    Emit,
    Event,
    MarkProblem,
    NodeReport,
    PowerCycle,
    Reinstall,
    Reset,
    RotateToken,
    Rules,
    Timeout,
)
from bootd.model.lifecycle import (
    NEEDS_PROFILE,
    OPERATOR_TARGET,
    Actor,
    IllegalTransition,
    allowed,
    apply,
    event_for,
    profile_gone,
)
from bootd.model.records import BmcRecord, InterfaceRecord, NodeRecord
from bootd.model.states import NodeState as S

NOW = datetime(2026, 1, 1, tzinfo=UTC)
RULES = Rules(frozenset({"rocky-9", "ubuntu-24.04"}), power=True)
BMC = BmcRecord("10.0.0.1", "bootd")


def rec(state: S, **kw: Any) -> NodeRecord:
    fields: dict[str, Any] = dict(
        name="n1", state=state, allocated=False, profile="rocky-9", admin_ip=None, rack=None, location=None,
        interfaces=(InterfaceRecord("52:54:00:00:00:01", True),), bmc=BMC, created_at=NOW, updated_at=NOW,
        state_changed_at=NOW, retries=0, inventory=None, origin="operator", version=3)
    fields.update(kw)
    return NodeRecord(**fields)


def events() -> list[Event]:
    return [Allocate("rocky-9"), Reinstall(), Reset(), Delete(), MarkProblem("broken disk"),
            Timeout(60, 1), *(NodeReport(t) for t in S)]


def allowed_for(state: S, event: Event) -> bool:
    if isinstance(event, NodeReport):
        return state is not event.target and allowed(state, event.target, Actor.NODE)
    if isinstance(event, Timeout):
        return allowed(state, S.PROBLEM, Actor.TIMER)
    target = OPERATOR_TARGET[type(event)]
    return state is not target and allowed(state, target, Actor.OPERATOR)


STATES = [s for s in S if s is not S.DELETE]  # delete is never stored


@pytest.mark.parametrize("state", STATES, ids=[s.value for s in STATES])
def test_every_event_from_every_state(state: S) -> None:
    node = rec(state)
    for event in events():
        if not allowed_for(state, event):
            with pytest.raises(IllegalTransition) as info:
                apply(node, event, NOW, RULES)
            assert isinstance(info.value, Conflict)
            assert "already" in str(info.value) or f"(allowed from {state.value}: " in str(info.value)
            continue
        changes, effects = apply(node, event, NOW, RULES)
        emits = [e for e in effects if isinstance(e, Emit)]
        assert emits and emits[-1].from_state is state, event
        rotates = RotateToken() in effects
        powers = PowerCycle() in effects
        match event:
            case Allocate():
                assert changes == Changes(NOW, S.HARDWARE_INSTALLING, 0, "rocky-9", True)
                assert rotates and not powers
                assert emits[-1].message == "allocated profile=rocky-9"
            case Reinstall():
                assert changes == Changes(NOW, S.REINSTALL, 0)
                assert rotates and powers
            case Reset():
                assert changes == Changes(NOW, S.RESET, 0, allocated=False)
                assert rotates and powers
            case Delete():
                assert changes == Changes(NOW, delete=True) and emits == [Emit("deleted", "", state, None)]
                assert not rotates and not powers
            case MarkProblem():
                assert changes == Changes(NOW, S.PROBLEM, 0)
                assert emits == [Emit("transition", "broken disk", state, S.PROBLEM)]
            case Timeout():  # budget 1, none spent: a retry in the same state, a fresh network boot
                assert changes == Changes(NOW, retries=1)
                assert emits == [Emit("timeout", f"no progress in {state.value} for 60 s; retry 1 of 1",
                                      state, state)]
                assert powers and not rotates
            case NodeReport(target=target):
                assert changes == Changes(NOW, target, 0)
                assert emits == [Emit("transition", "", state, target)]
                assert not rotates and not powers


def test_the_wording_names_what_is_allowed() -> None:
    with pytest.raises(IllegalTransition, match=r"node cannot move node n1 from discovering to ready "
                                                r"\(allowed from discovering: discovered, problem\)"):
        apply(rec(S.DISCOVERING), NodeReport(S.READY), NOW, RULES)
    with pytest.raises(IllegalTransition, match="already discovered"):
        apply(rec(S.DISCOVERED), NodeReport(S.DISCOVERED), NOW, RULES)
    with pytest.raises(IllegalTransition, match="stale or replayed"):
        apply(rec(S.DISCOVERED), NodeReport(S.PROBLEM, expect=S.DISCOVERING), NOW, RULES)
    with pytest.raises(IllegalTransition, match="timer cannot move node n1 from ready"):
        apply(rec(S.READY), Timeout(60, 1), NOW, RULES)


def test_allocate_profile_rename_and_refusals() -> None:
    node = rec(S.DISCOVERED, profile=None)
    with pytest.raises(InvalidInput, match="needs a profile"):
        apply(node, Allocate(), NOW, RULES)
    with pytest.raises(InvalidInput, match=r"no profile named 'nosuch' \(known: rocky-9, ubuntu-24.04\)"):
        apply(node, Allocate("nosuch"), NOW, RULES)
    with pytest.raises(InvalidInput, match="invalid node name"):
        apply(node, Allocate("rocky-9", rename="bad_name"), NOW, RULES)
    changes, effects = apply(node, Allocate("ubuntu-24.04", rename="R1-N07", message="go"), NOW, RULES)
    assert (changes.name, changes.profile, changes.allocated) == ("r1-n07", "ubuntu-24.04", True)
    assert effects[0] == Emit("renamed", "new name r1-n07")
    assert effects[1] == Emit("transition", "go allocated profile=ubuntu-24.04", S.DISCOVERED,
                              S.HARDWARE_INSTALLING)
    same_name, _ = apply(node, Allocate("rocky-9", rename="n1"), NOW, RULES)
    assert same_name.name is None
    # The node's own profile, when none is given; refused once the config lost it.
    assert apply(rec(S.DISCOVERED), Allocate(), NOW, RULES).changes.profile == "rocky-9"
    with pytest.raises(InvalidInput, match="no profile named 'rocky-9'"):
        apply(rec(S.DISCOVERED), Allocate(), NOW, Rules(frozenset({"ubuntu-24.04"})))


def test_reinstall_needs_a_known_profile() -> None:
    with pytest.raises(InvalidInput, match="needs a profile"):
        apply(rec(S.READY, profile=None), Reinstall(), NOW, RULES)
    with pytest.raises(InvalidInput, match=r"reinstalling node n1: no profile named 'gone' \(known: "):
        apply(rec(S.READY, profile="gone"), Reinstall(), NOW, RULES)


def test_power_cycle_only_with_a_bmc_and_the_config_allowing_it() -> None:
    assert PowerCycle() in apply(rec(S.READY), Reinstall(), NOW, RULES).effects
    assert PowerCycle() not in apply(rec(S.READY, bmc=None), Reinstall(), NOW, RULES).effects
    no_power = Rules(RULES.profiles, power=False)
    assert PowerCycle() not in apply(rec(S.READY), Reset(), NOW, no_power).effects
    assert PowerCycle() not in apply(rec(S.INSTALLING), Timeout(60, 1), NOW, no_power).effects


def test_timeout_budget_then_problem() -> None:
    changes, effects = apply(rec(S.INSTALLING, retries=1), Timeout(600, 1), NOW, RULES)
    assert changes == Changes(NOW, S.PROBLEM, 0)
    assert effects == (Emit("transition", "no progress in installing for 600 s; no retries left",
                            S.INSTALLING, S.PROBLEM),)


def test_a_booted_machine_that_never_reported_expires() -> None:
    booted = rec(S.DISCOVERING, origin="booted", profile=None, bmc=None)
    changes, effects = apply(booted, Timeout(1800, 2), NOW, RULES)
    assert changes == Changes(NOW, delete=True)
    assert effects == (Emit("expired", "expired: never reported after 1800 s", S.DISCOVERING, None),)
    # One that reported its inventory, or one the operator added, is retried instead.
    for node in (rec(S.DISCOVERING, origin="booted", inventory="{}"), rec(S.DISCOVERING)):
        assert apply(node, Timeout(1800, 2), NOW, RULES).changes == Changes(NOW, retries=1)


def test_profile_gone_only_where_the_profile_is_still_needed() -> None:
    known = frozenset({"ubuntu-24.04"})
    for state in S:
        event = profile_gone(rec(state, allocated=True), known)
        if state in NEEDS_PROFILE:
            assert event == MarkProblem("profile rocky-9 no longer in the config")
        else:
            assert event is None
    assert profile_gone(rec(S.INSTALLING), frozenset({"rocky-9"})) is None


def test_old_style_moves_map_to_events() -> None:
    assert event_for(S.INSTALLED, Actor.NODE) == NodeReport(S.INSTALLED)
    assert event_for(S.HARDWARE_INSTALLING, Actor.OPERATOR, profile="p", rename="r") == Allocate("p", "r")
    assert event_for(S.RESET, Actor.OPERATOR) == Reset()
    with pytest.raises(InvalidInput):
        event_for(S.PROBLEM, Actor.TIMER)
