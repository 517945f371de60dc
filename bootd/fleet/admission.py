"""Admission at boot time: the install waves, as a service the policy asks.

A node that boots into a heavy state (config [waves] states; which boot asks for
which slot: bootd.model.admission.SLOT_FOR) asks `ask` before it gets its real
script; a Wait answer becomes a wait script that sleeps and asks again. Each ask
that goes to the database is one short transaction under the admission lock
(bootd.db.admissions), so the limits hold across daemons sharing one PostgreSQL:
the lock and the counts are in the database, not here.

What is kept in memory is only a shortcut: nodes this daemon admitted, by slot,
so that the second and later fetches of an admitted node (its script again, a
pxelinux config after the iPXE one) cost no transaction. The first decision
always goes to the database; a cached admission is dropped when the change feed
reports the node changed (a move, a retry: a retry's fresh boot must queue
again), and after CACHE_SECONDS anyway, for changes made by another daemon.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from bootd.config import Config
from bootd.db.admissions import AdmissionFacts, AdmissionRows
from bootd.db.store import Store, utcnow
from bootd.feed import ChangeFeed, NodeChanged
from bootd.model.admission import (
    Admit,
    Decision,
    Limit,
    Limits,
    Wait,
    decide,
    forgotten,
    places,
    slot_for,
)
from bootd.model.states import NodeState
from bootd.render import render

WAIT_TEMPLATES = {"ipxe": "ipxe-wait.j2", "pxelinux": "pxelinux-wait.cfg.j2", "grub": "grub-wait.cfg.j2"}
CACHE_SECONDS = 60.0  # a cached admission is checked against the database again after this
CACHE_MAX = 100_000   # nodes; far above any limit's worth of admitted nodes


@dataclass(frozen=True, slots=True)
class WaitingNode:
    """One node in the queue, as the status page and a rollout show it."""

    name: str
    rack: str | None
    daemon: str
    rollout: int | None
    slot: NodeState
    place: int
    of: int
    limit: Limit | None  # None: a slot is promised to it, it goes at its next ask
    reason: str
    queued_at: datetime
    asked_at: datetime | None


@dataclass(frozen=True)
class AdmissionSnapshot:
    limits: Limits
    admitted: int
    admitted_per_rack: dict[str | None, int]
    admitted_per_daemon: dict[str, int]
    admitted_per_rollout: dict[int, int]
    waiting: list[WaitingNode] = field(default_factory=list)  # in queue order
    forgotten: int = 0  # waiting rows of nodes that stopped asking (they lost their place)


class Admissions:
    """Give it the daemon's repository (any Store over the inventory) and its feed."""

    def __init__(self, config: Config, repo: Store, *, feed: ChangeFeed | None = None,
                 clock: Callable[[], datetime] = utcnow,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._rows = AdmissionRows(repo)
        self._clock, self._monotonic = clock, monotonic
        self._admitted: dict[str, tuple[NodeState, float]] = {}  # name -> (slot, cached until)
        self.asks = 0  # transactions made (tests and the bench read it)
        if feed is not None:
            feed.subscribe(self._on_change)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._admitted.clear()  # new limits or states: decide again

    @property
    def limits(self) -> Limits:
        w = self.config.waves
        return Limits(w.max_global, w.max_per_rack, w.max_per_daemon)

    def slot(self, state: NodeState) -> NodeState | None:
        """The slot a node in `state` needs before it boots its image (None: none)."""
        return slot_for(state, self.config.waves.states)

    def holds(self, name: str, state: NodeState) -> bool:
        """From memory only: node `name` in `state` was admitted by this daemon lately."""
        cached = self._admitted.get(name)
        return (cached is not None and cached[0] is self.slot(state)
                and self._monotonic() < cached[1])

    async def ask(self, name: str, state: NodeState | None = None, *, daemon: str | None = None,
                  now: datetime | None = None) -> Decision:
        """Node `name` (believed to be in `state`) boots: may it go on? A node this daemon
        admitted lately is answered from memory; every other ask is one transaction."""
        if state is not None and self.holds(name, state):
            return Admit()
        w, limits = self.config.waves, self.limits
        when = now if now is not None else self._clock()

        def choose(facts: AdmissionFacts) -> Decision:
            return decide(facts.asker, facts.admitted, facts.waiting, limits, facts.gates, when,
                          w.forget_after)

        self.asks += 1
        _, decision = await self._rows.admit(name, daemon or self.config.daemon_id, w.states,
                                             w.forget_after, choose, when)
        if isinstance(decision, Admit) and state is not None and self.slot(state) is not None:
            if len(self._admitted) >= CACHE_MAX:
                self._admitted.clear()
            slot = self.slot(state)
            assert slot is not None
            self._admitted[name] = (slot, self._monotonic() + CACHE_SECONDS)
        return decision

    def _on_change(self, change: NodeChanged) -> None:
        self._admitted.pop(change.node.name, None)
        if change.old_name is not None:
            self._admitted.pop(change.old_name, None)

    async def snapshot(self, now: datetime | None = None) -> AdmissionSnapshot:
        """Slots taken per rack, daemon and rollout; the queue with each node's place and
        what holds it. Two reads, no lock: a view, not a decision."""
        now = now if now is not None else self._clock()
        forget_after = self.config.waves.forget_after
        records = [r for r in await self._rows.admission_rows() if r.live]
        admitted = [r.entry for r in records if r.admitted]
        waiting = [r for r in records if not r.admitted]
        gates = await self._rows.rollout_gates({r.entry.rollout for r in records})
        by_id = {r.entry.node_id: r for r in waiting}
        listed = places(admitted, [r.entry for r in waiting], self.limits, gates, now, forget_after)
        queue: list[WaitingNode] = []
        for place, (entry, decision) in enumerate(listed, 1):
            r = by_id[entry.node_id]
            limit, reason = ((decision.limit, decision.reason) if isinstance(decision, Wait)
                             else (None, "a slot is free: it goes at its next ask"))
            queue.append(WaitingNode(entry.name, entry.rack, entry.daemon, entry.rollout, r.slot, place,
                                     len(listed), limit, reason, r.queued_at, entry.asked_at))
        return AdmissionSnapshot(
            self.limits, len(admitted), dict(Counter(e.rack for e in admitted)),
            dict(Counter(e.daemon for e in admitted)),
            dict(Counter(e.rollout for e in admitted if e.rollout is not None)), queue,
            sum(forgotten(r.entry, now, forget_after) for r in waiting))


def _console(text: str) -> str:
    """Text every boot language prints as it is: no quotes, $, backslashes, # or ||
    (iPXE, GRUB and pxelinux each give some of them a meaning); rack names are free text."""
    safe = "".join(c if c.isalnum() or c in " .,:;()/_+-=" else "?" for c in text)
    return safe[:200]


def wait_script(kind: str, name: str, wait: Wait, seconds: int, *, url: str, path: str) -> str:
    """The script that makes a waiting machine sleep `seconds` and ask again: iPXE
    chains `url` (the script's own, without a token); GRUB reads its config `path`
    again; pxelinux reboots into PXE."""
    return render(WAIT_TEMPLATES[kind], name=_console(name), place=wait.place, of=wait.of,
                  reason=_console(wait.reason), seconds=seconds, url=url, path=path)
