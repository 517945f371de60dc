"""The event-log replay that lab tests use to check wave limits."""

from __future__ import annotations

from waves_check import most_at_once, slot_intervals


def ev(i: int, at: str, kind: str, frm: str | None = None, to: str | None = None,
       message: str = "") -> dict[str, object]:
    return {"id": i, "at": at, "kind": kind, "from": frm, "to": to, "message": message}


def test_slots_start_at_admission_and_end_when_the_node_leaves_the_state() -> None:
    a = [ev(1, "t01", "transition", "discovered", "hardware-installing"),
         ev(2, "t02", "admitted", message="slot=hardware-installing"),
         ev(3, "t05", "transition", "hardware-installing", "hardware-installed"),
         ev(4, "t06", "transition", "hardware-installed", "installing"),
         ev(5, "t07", "admitted", message="slot=installing"),
         ev(6, "t09", "transition", "installing", "installed")]
    b = [ev(7, "t01", "transition", "discovered", "hardware-installing"),
         ev(8, "t05", "admitted", message="slot=hardware-installing"),
         ev(9, "t08", "transition", "hardware-installing", "hardware-installed")]
    ia, ib = slot_intervals(a), slot_intervals(b)
    assert ia == [("t02", "t05"), ("t07", "t09")] and ib == [("t05", "t08")]
    assert most_at_once(ia + ib) == 2  # t07..t08
    assert most_at_once(ia[:1] + ib) == 1  # one ends at t05 as the other starts


def test_a_slot_still_held_stays_open() -> None:
    assert slot_intervals([ev(1, "t1", "admitted", message="slot=installing")]) == [("t1", None)]
    assert most_at_once([("t1", None), ("t2", None)]) == 2


def test_a_timeout_retry_ends_the_slot() -> None:
    events = [ev(1, "t1", "admitted", message="slot=installing"),
              ev(2, "t3", "timeout", "installing", "installing"),
              ev(3, "t4", "admitted", message="slot=installing"),
              ev(4, "t6", "transition", "installing", "installed")]
    assert slot_intervals(events) == [("t1", "t3"), ("t4", "t6")]
