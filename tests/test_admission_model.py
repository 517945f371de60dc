"""bootd.model.admission: the wave decision, pure (no database, no clock)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bootd.model.admission import (
    Admit,
    Entry,
    Limit,
    Limits,
    RolloutGate,
    Wait,
    decide,
    forgotten,
    holds,
    places,
    queue,
    queue_key,
    requeued,
    slot_for,
)
from bootd.model.states import NodeState as S

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FORGET = 120.0
HEAVY = frozenset({S.HARDWARE_INSTALLING, S.INSTALLING})


def node(i: int, rack: str | None = "r1", *, at: int | None = None, daemon: str = "a",
         rollout: int | None = None, asked: int = 0) -> Entry:
    """Node i, allocated at T0 + `at` seconds (default: i), last asked at T0 + asked."""
    return Entry(i, f"n{i}", rack, daemon, T0 + timedelta(seconds=i if at is None else at), rollout,
                 T0 + timedelta(seconds=asked))


def ask(asker: Entry, admitted: list[Entry], waiting: list[Entry], limits: Limits,
        rollouts: dict[int, RolloutGate] | None = None, now: int = 0) -> Admit | Wait:
    return decide(asker, admitted, waiting, limits, rollouts or {}, T0 + timedelta(seconds=now), FORGET)


# -- which boot asks for which slot ----------------------------------------------------


def test_slot_table() -> None:
    assert slot_for(S.HARDWARE_INSTALLING, HEAVY) is S.HARDWARE_INSTALLING
    # The installer boots while the node is hardware-installed (or reinstall) and only
    # then reports installing: that boot asks for the installing slot.
    assert slot_for(S.HARDWARE_INSTALLED, HEAVY) is S.INSTALLING
    assert slot_for(S.REINSTALL, HEAVY) is S.INSTALLING
    assert slot_for(S.INSTALLING, HEAVY) is S.INSTALLING
    assert slot_for(S.INSTALLED, HEAVY) is None  # readying is not heavy here
    assert slot_for(S.INSTALLED, HEAVY | {S.READYING}) is S.READYING
    for light in (S.DISCOVERING, S.DISCOVERED, S.READY, S.PROBLEM, S.RESET):
        assert slot_for(light, HEAVY | {S.READYING}) is None
    assert slot_for(S.HARDWARE_INSTALLED, {S.HARDWARE_INSTALLING}) is None


def test_a_slot_is_held_through_the_states_that_lead_to_it() -> None:
    assert holds(S.INSTALLING, S.HARDWARE_INSTALLED)
    assert holds(S.INSTALLING, S.INSTALLING)
    assert not holds(S.INSTALLING, S.INSTALLED)
    assert not holds(S.HARDWARE_INSTALLING, S.HARDWARE_INSTALLED)  # then it asks for installing
    assert not holds(S.INSTALLING, S.PROBLEM)
    assert not holds(S.HARDWARE_INSTALLING, S.RESET)


# -- limits ------------------------------------------------------------------------------


def test_no_limits_admit_everyone() -> None:
    admitted = [node(i) for i in range(50)]
    assert ask(node(99), admitted, [], Limits()) == Admit()


def test_global_limit() -> None:
    limits = Limits(max_global=2)
    assert ask(node(1), [node(0)], [], limits) == Admit()
    decision = ask(node(2, "r2"), [node(0), node(1)], [], limits)
    assert decision == Wait(1, 1, Limit.GLOBAL, "all 2 install slots are taken")


def test_rack_limit_applies_per_rack() -> None:
    limits = Limits(max_per_rack=1)
    assert isinstance(ask(node(1, "r1"), [node(0, "r1")], [], limits), Wait)
    decision = ask(node(1, "r1"), [node(0, "r1")], [], limits)
    assert isinstance(decision, Wait) and decision.limit is Limit.RACK
    assert "rack r1 has 1 slots" in decision.reason
    assert ask(node(2, "r2"), [node(0, "r1")], [], limits) == Admit()


def test_nodes_without_a_rack_share_no_rack_limit_and_queue_last() -> None:
    limits = Limits(max_per_rack=1)
    assert ask(node(1, None), [node(0, None)], [], limits) == Admit()
    order = queue([node(1, None, at=0), node(2, "r9", at=50), node(3, "r1", at=99)], None, T0, FORGET)
    assert [e.rack for e in order] == ["r1", "r9", None]


def test_daemon_limit() -> None:
    limits = Limits(max_per_daemon=1)
    decision = ask(node(1, "r2", daemon="a"), [node(0, "r1", daemon="a")], [], limits)
    assert isinstance(decision, Wait) and decision.limit is Limit.DAEMON
    assert "admin node a" in decision.reason
    assert ask(node(1, "r2", daemon="b"), [node(0, "r1", daemon="a")], [], limits) == Admit()


def test_rollout_max_parallel_and_pause() -> None:
    gates = {3: RolloutGate(3, max_parallel=1), 4: RolloutGate(4, paused=True)}
    decision = ask(node(1, rollout=3), [node(0, "r2", rollout=3)], [], Limits(), gates)
    assert isinstance(decision, Wait) and decision.limit is Limit.ROLLOUT
    assert "rollout 3 runs 1" in decision.reason
    decision = ask(node(1, rollout=4), [], [], Limits(), gates)
    assert decision == Wait(1, 1, Limit.PAUSED, "rollout 4 paused")
    # Another rollout, or none, is not held by either.
    assert ask(node(2), [node(0, "r2", rollout=3)], [node(1, rollout=4)], Limits(), gates) == Admit()
    # A rollout unknown to the gates (ended) has no limit of its own.
    assert ask(node(5, rollout=7), [node(0, rollout=7)], [], Limits(), gates) == Admit()


def test_max_parallel_zero_is_no_limit() -> None:
    gates = {3: RolloutGate(3, max_parallel=0)}
    assert ask(node(1, rollout=3), [node(0, rollout=3)], [], Limits(), gates) == Admit()


def test_an_admitted_node_asking_again_keeps_its_slot() -> None:
    limits = Limits(max_global=1)
    assert ask(node(0), [node(0)], [node(1, at=-5)], limits) == Admit()


# -- order and fairness ---------------------------------------------------------------------


def test_queue_order_rack_then_allocation_then_id() -> None:
    entries = [node(5, "r2", at=1), node(4, "r1", at=9), node(3, "r1", at=2), node(2, "r1", at=2),
               node(1, None, at=0), node(6, "r10", at=0)]
    assert [e.node_id for e in sorted(entries, key=queue_key)] == [2, 3, 4, 6, 5, 1]


def test_place_of_in_the_whole_queue() -> None:
    limits = Limits(max_global=1)
    waiting = [node(1, "r1"), node(2, "r2"), node(3, None)]
    decision = ask(node(4, "r1", at=50), [node(0)], waiting, limits)
    assert isinstance(decision, Wait) and (decision.place, decision.of) == (2, 4)
    decision = ask(node(3, None), [node(0)], waiting, limits)
    assert isinstance(decision, Wait) and (decision.place, decision.of) == (3, 3)


def test_no_overtaking_the_free_slot_goes_to_the_head() -> None:
    """One global slot free; the head of the queue is waiting (asleep between asks):
    a node behind it asking first does not take the slot."""
    limits = Limits(max_global=2)
    head, behind = node(1, "r1"), node(2, "r2")
    decision = ask(behind, [node(0)], [head], limits)
    assert isinstance(decision, Wait) and decision.limit is Limit.GLOBAL
    assert decision.reason == "all 2 install slots are taken (1 promised to nodes ahead in the queue)"
    assert (decision.place, decision.of) == (2, 2)
    assert ask(head, [node(0)], [behind], limits) == Admit()


def test_same_rack_no_overtaking_within_the_rack() -> None:
    limits = Limits(max_per_rack=2)
    first, second = node(1, "r1", at=1), node(2, "r1", at=2)
    decision = ask(second, [node(0, "r1")], [first], limits)
    assert isinstance(decision, Wait) and decision.limit is Limit.RACK
    assert "1 taken" not in decision.reason and "2 taken or promised" in decision.reason
    assert ask(first, [node(0, "r1")], [second], limits) == Admit()


def test_a_full_rack_does_not_hold_back_other_racks() -> None:
    """The head waits only for its own rack: it reserves nothing, nodes of other racks
    behind it go (globally there is room)."""
    limits = Limits(max_global=4, max_per_rack=1)
    admitted = [node(0, "r1")]
    waiting = [node(1, "r1"), node(2, "r1")]
    assert ask(node(3, "r2", at=99), admitted, waiting, limits) == Admit()


def test_a_paused_rollout_does_not_hold_back_other_rollouts() -> None:
    gates = {1: RolloutGate(1, paused=True), 2: RolloutGate(2)}
    limits = Limits(max_global=1)
    waiting = [node(1, "r1", rollout=1)]
    assert ask(node(2, "r1", at=50, rollout=2), [], waiting, limits, gates) == Admit()


def test_global_full_stops_everyone_behind_even_other_racks() -> None:
    """Racks r1 (head) and r2: r1's head can go, so it takes the one global slot and
    r2 behind it waits, whatever r2's own room."""
    limits = Limits(max_global=1, max_per_rack=3)
    decision = ask(node(2, "r2"), [], [node(1, "r1")], limits)
    assert isinstance(decision, Wait) and decision.limit is Limit.GLOBAL


def test_forgotten_nodes_leave_the_queue() -> None:
    limits = Limits(max_global=1)
    silent = node(1, "r1", asked=0)
    assert forgotten(silent, T0 + timedelta(seconds=121), FORGET)
    assert not forgotten(silent, T0 + timedelta(seconds=120), FORGET)
    # The silent head no longer holds the slot it would have been promised.
    assert ask(node(2, "r2"), [], [silent], limits, now=121) == Admit()
    assert isinstance(ask(node(2, "r2"), [], [silent], limits, now=100), Wait)


def test_a_forgotten_node_asking_again_queues_behind_its_rack() -> None:
    now = T0 + timedelta(seconds=500)
    back = requeued(node(1, "r1", at=0), now)
    others = [node(2, "r1", at=300, asked=490), node(3, "r2", at=400, asked=490)]
    order = queue(others, back, now, FORGET)
    assert [e.node_id for e in order] == [2, 1, 3]
    assert back.asked_at == now and back.allocated_at == now


def test_places_match_decide() -> None:
    limits = Limits(max_global=3, max_per_rack=1)
    gates = {9: RolloutGate(9, paused=True)}
    admitted = [node(0, "r1")]
    waiting = [node(1, "r1"), node(2, "r2", rollout=9), node(3, "r2"), node(4, "r3"), node(5, "r4"),
               node(6, None)]
    listed = places(admitted, waiting, limits, gates, T0, FORGET)
    assert [e.node_id for e, _ in listed] == [1, 2, 3, 4, 5, 6]
    for e, expected in listed:
        others = [w for w in waiting if w.node_id != e.node_id]
        assert decide(e, admitted, others, limits, gates, T0, FORGET) == expected
    kinds = [d.limit if isinstance(d, Wait) else "go" for _, d in listed]
    assert kinds == [Limit.RACK, Limit.PAUSED, "go", "go", Limit.GLOBAL, Limit.GLOBAL]


# -- over random sequences: the limits are never exceeded ----------------------------------

RACKS = ("r1", "r2", "r3", None)


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[Entry], Limits, dict[int, RolloutGate]]:
    n = draw(st.integers(1, 14))
    gates = {1: RolloutGate(1, draw(st.integers(0, 3)), draw(st.booleans())),
             2: RolloutGate(2, draw(st.integers(0, 3)), False)}
    entries = [Entry(i, f"n{i}", draw(st.sampled_from(RACKS)), draw(st.sampled_from(("a", "b"))),
                     T0 + timedelta(seconds=draw(st.integers(0, 5))), draw(st.sampled_from((None, 1, 2))))
               for i in range(n)]
    limits = Limits(draw(st.integers(0, 5)), draw(st.integers(0, 3)), draw(st.integers(0, 4)))
    return entries, limits, gates


def _within(admitted: list[Entry], limits: Limits, gates: dict[int, RolloutGate]) -> None:
    if limits.max_global:
        assert len(admitted) <= limits.max_global
    if limits.max_per_rack:
        racks = Counter(e.rack for e in admitted if e.rack is not None)
        assert max(racks.values(), default=0) <= limits.max_per_rack
    if limits.max_per_daemon:
        assert max(Counter(e.daemon for e in admitted).values(), default=0) <= limits.max_per_daemon
    for gate in gates.values():
        if gate.max_parallel:
            assert sum(e.rollout == gate.id for e in admitted) <= gate.max_parallel


@settings(max_examples=300, deadline=None)
@given(fleets(), st.lists(st.tuples(st.sampled_from(("ask", "leave", "sleep")), st.integers(0, 13)),
                          max_size=60))
def test_limits_hold_over_random_asks_and_leaves(
        fleet: tuple[list[Entry], Limits, dict[int, RolloutGate]],
        ops: list[tuple[str, int]]) -> None:
    entries, limits, gates = fleet
    admitted: dict[int, Entry] = {}
    waiting: dict[int, Entry] = {}
    now = T0
    for op, i in ops:
        e = entries[i % len(entries)]
        if op == "sleep":
            now += timedelta(seconds=40 * (i % 5))
        elif op == "leave":
            admitted.pop(e.node_id, None)
        else:
            row = waiting.get(e.node_id)
            me = e if row is None else row
            if row is not None and forgotten(row, now, FORGET):
                me = requeued(row, now)
            me = Entry(me.node_id, me.name, me.rack, me.daemon, me.allocated_at, me.rollout, now)
            others = [w for w in waiting.values() if w.node_id != e.node_id]
            decision = decide(me, list(admitted.values()), others, limits, gates, now, FORGET)
            # decide agrees with the whole queue's one-pass listing
            listed = dict((x.node_id, d) for x, d in places(list(admitted.values()), [*others, me], limits,
                                                            gates, now, FORGET))
            if e.node_id not in admitted:
                assert listed[e.node_id] == decision
            if isinstance(decision, Admit):
                waiting.pop(e.node_id, None)
                if e.node_id not in admitted:
                    # No node ahead of it that could go alone in its place is left
                    # waiting in its own rack, daemon and rollout.
                    for w in others:
                        if forgotten(w, now, FORGET) or queue_key(w) > queue_key(me):
                            continue
                        same = (w.rack, w.daemon, w.rollout) == (me.rack, me.daemon, me.rollout)
                        assert not same, f"{me.name} overtook {w.name}"
                admitted[e.node_id] = me
            else:
                assert 1 <= decision.place <= decision.of
                waiting[e.node_id] = me
            _within(list(admitted.values()), limits, gates)


@pytest.mark.parametrize("limit", [1, 2, 5])
def test_a_fleet_drains_in_queue_order(limit: int) -> None:
    """Everyone asks every round, the back of the queue first; the oldest admitted node
    finishes each round. Each node that goes is one of the first free-slots of the queue."""
    limits = Limits(max_global=limit)
    nodes = [node(i, f"r{i % 3}", at=100 - i) for i in range(12)]
    admitted: list[Entry] = []
    waiting = sorted(nodes, key=queue_key)
    went = 0
    while waiting:
        for e in sorted(waiting, key=queue_key, reverse=True):
            others = [w for w in waiting if w.node_id != e.node_id]
            if ask(e, admitted, others, limits) == Admit():
                free = limit - len(admitted)
                assert e in sorted(waiting, key=queue_key)[:free]
                waiting.remove(e)
                admitted.append(e)
                went += 1
        admitted = admitted[1:]
    assert went == len(nodes)
