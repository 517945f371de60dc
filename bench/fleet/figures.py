"""The fleet's figures from its machines' marks (pure): who reached what, how fast.

A machine marks the first time it saw each milestone: "first-discover" (its
first DISCOVER, the start of `discovering`), then each node state its own
reports or polls confirmed. Time in a state is the next reached state's mark
minus this one's, over the machines that reached both.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence

from bench.fleet.machine import Machine
from bootd.model.states import NodeState

LIFECYCLE = ("discovering", "discovered", "hardware-installing", "hardware-installed", "installing",
             "installed", "readying", "ready")


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def entries(m: Machine) -> dict[str, float]:
    marks = dict(m.marks)
    if "first-discover" in marks:
        marks["discovering"] = marks["first-discover"]
    return {s: marks[s] for s in LIFECYCLE if s in marks}


def summary(machines: Sequence[Machine], until: NodeState) -> dict[str, object]:
    reached: dict[str, int] = {}
    spent: dict[str, list[float]] = {s: [] for s in LIFECYCLE}
    counts: dict[str, int] = {}
    for m in machines:
        e = entries(m)
        for s in e:
            reached[s] = reached.get(s, 0) + 1
        seen = [s for s in LIFECYCLE if s in e]
        for a, b in itertools.pairwise(seen):
            spent[a].append(e[b] - e[a])
        for k, v in m.counts.items():
            counts[k] = counts.get(k, 0) + v
    firsts = [m.marks["first-discover"] for m in machines if "first-discover" in m.marks]
    goal = [m.marks[until.value] for m in machines if until.value in m.marks]
    to_goal = [m.marks[until.value] - m.marks["first-discover"] for m in machines if until.value in m.marks]
    return {
        "machines": len(machines),
        "until": until.value,
        "reached": reached,
        "all_reached": len(goal) == len(machines),
        # None unless every machine got there; then the last one that did, for a partial run.
        "first_discover_to_all": round(max(goal) - min(firsts), 2) if goal and firsts
        and len(goal) == len(machines) else None,
        "first_discover_to_last": round(max(goal) - min(firsts), 2) if goal and firsts else None,
        "to_goal_p50": round(percentile(to_goal, 0.5), 3) if to_goal else None,
        "to_goal_p99": round(percentile(to_goal, 0.99), 3) if to_goal else None,
        "per_state": {s: {"n": len(v), "p50": round(percentile(v, 0.5), 3),
                          "p99": round(percentile(v, 0.99), 3), "mean": round(statistics.fmean(v), 3)}
                      for s, v in spent.items() if v},
        "counts": dict(sorted(counts.items())),
        "outcomes": {o: sum(1 for m in machines if m.outcome is not None and m.outcome.value == o)
                     for o in ("reached", "gave-up")},
        "unfinished": sum(1 for m in machines if m.outcome is None),
    }
