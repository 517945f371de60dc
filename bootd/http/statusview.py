"""What the status page shows about nodes: pure functions over records and a clock.

No I/O here: the handlers (status.py) hand in the node records, the config's
lifecycle timeouts and `now`, and get typed rows back for the templates. The
progress bar walks PATH, the states a node passes on its way to ready; a test
checks that each step of it is a move the lifecycle table allows, so the page
cannot drift from the state machine (STYLE 5).

A node is *stalled* when it has spent longer in its state than the config's
timeout for it (the timer is about to retry it or park it in problem), or when
the timer already had to retry it in this state: its callbacks stopped coming.
Both say why, in words, on the page.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from bootd.model.records import NodeRecord
from bootd.model.states import NodeState as S

PATH: tuple[S, ...] = (S.DISCOVERING, S.DISCOVERED, S.HARDWARE_INSTALLING, S.HARDWARE_INSTALLED,
                       S.INSTALLING, S.INSTALLED, S.READYING, S.READY)
PAGE_SIZE = 200
NO_RACK = "(no rack)"


class Tone(enum.StrEnum):
    """The colour class of a state on the page."""

    OK = "ok"
    BUSY = "busy"
    BAD = "bad"
    IDLE = "idle"


def tone(state: S) -> Tone:
    if state is S.READY:
        return Tone.OK
    if state is S.PROBLEM:
        return Tone.BAD
    if state in (S.DISCOVERED,):
        return Tone.IDLE
    return Tone.BUSY


def duration(seconds: float) -> str:
    """"3d 4h", "2h 5m", "4m 10s", "9s": two units at most, for a table cell."""
    s = max(0, int(seconds))
    for unit, size, sub, subsize in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if s >= size:
            return f"{s // size}{unit} {(s % size) // subsize}{sub}"
    return f"{s}s"


@dataclass(frozen=True, slots=True)
class LastEvent:
    kind: str
    at: datetime


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    state: S
    tone: Tone
    since: datetime
    in_state: str
    profile: str
    address: str
    power: str
    rack: str
    step: int  # 1..len(PATH) along PATH, 0 off it (problem, reset, reinstall)
    last_event: str
    stall: str  # the reason, or "" when the node is moving


def rack_of(node: NodeRecord) -> str:
    """The configured rack, else the relay's option 82 location, else NO_RACK."""
    return node.rack or node.location or NO_RACK


def stall_reason(node: NodeRecord, now: datetime, timeouts: Mapping[S, int]) -> str:
    limit = timeouts.get(node.state, 0)
    if limit <= 0:
        return ""
    spent = (now - node.state_changed_at).total_seconds()
    if spent >= limit:
        return (f"in {node.state.value} for {duration(spent)}, expected at most {duration(limit)}: "
                "no callback from the node")
    if node.retries:
        return (f"no callback for {duration(limit)} in {node.state.value}: "
                f"retried {node.retries} time{'s' if node.retries > 1 else ''}")
    return ""


def row(node: NodeRecord, now: datetime, timeouts: Mapping[S, int], last: LastEvent | None) -> Row:
    event = last if last is not None and last.at >= node.state_changed_at else None
    entered = duration((now - node.state_changed_at).total_seconds())
    last_text = (f"{event.kind} {duration((now - event.at).total_seconds())} ago" if event is not None
                 else f"entered {node.state.value} {entered} ago")
    return Row(
        name=node.name, state=node.state, tone=tone(node.state), since=node.state_changed_at,
        in_state=duration((now - node.state_changed_at).total_seconds()),
        profile=node.profile or "", address="" if node.admin_ip is None else str(node.admin_ip),
        power=(node.bmc.power or "unknown") if node.bmc is not None else "no BMC",
        rack=rack_of(node), step=PATH.index(node.state) + 1 if node.state in PATH else 0,
        last_event=last_text, stall=stall_reason(node, now, timeouts))


@dataclass(frozen=True, slots=True)
class Filter:
    state: S | None = None
    rack: str | None = None
    text: str = ""  # a substring of the name
    page: int = 1

    def keeps(self, node: NodeRecord) -> bool:
        return ((self.state is None or node.state is self.state)
                and (self.rack is None or rack_of(node) == self.rack)
                and (not self.text or self.text in node.name))

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> Filter:
        """From the page's query string; anything unusable is ignored, not an error."""
        try:
            state = S(query.get("state", ""))
        except ValueError:
            state = None
        try:
            page = max(1, int(query.get("page", "1")))
        except ValueError:
            page = 1
        return cls(state, query.get("rack") or None, query.get("q", "")[:64], page)


@dataclass(frozen=True, slots=True)
class Rack:
    name: str
    rows: tuple[Row, ...]


@dataclass(frozen=True, slots=True)
class Overview:
    counts: tuple[tuple[S, int], ...]  # every state, in table order
    total: int
    racks: tuple[Rack, ...]  # this page's rows, grouped
    all_racks: tuple[str, ...]
    matched: int  # nodes the filter keeps
    page: int
    pages: int


def counts(nodes: Iterable[NodeRecord]) -> tuple[tuple[S, int], ...]:
    seen = Counter(n.state for n in nodes)
    return tuple((s, seen.get(s, 0)) for s in S if s is not S.DELETE)


def overview(nodes: Sequence[NodeRecord], flt: Filter, now: datetime, timeouts: Mapping[S, int],
             last: Mapping[str, LastEvent], page_size: int = PAGE_SIZE) -> Overview:
    """One page of the fleet: every node counted, only the page's rows built."""
    kept = sorted((n for n in nodes if flt.keeps(n)), key=lambda n: (rack_of(n), n.name))
    pages = max(1, -(-len(kept) // page_size))
    page = min(flt.page, pages)
    racks: dict[str, list[Row]] = {}
    for node in kept[(page - 1) * page_size:page * page_size]:
        racks.setdefault(rack_of(node), []).append(row(node, now, timeouts, last.get(node.name)))
    return Overview(counts(nodes), len(nodes), tuple(Rack(k, tuple(v)) for k, v in racks.items()),
                    tuple(sorted({rack_of(n) for n in nodes})), len(kept), page, pages)
