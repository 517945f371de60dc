"""Admission at boot time: the install waves, as a service the policy asks.

A node that boots into a heavy state (config [waves] states; which boot asks for
which slot: bootd.model.admission.SLOT_FOR) asks `ask` before it gets its real
script; a Wait answer becomes a wait script that sleeps and asks again. Each ask
that goes to the database is one short transaction under the admission lock
(bootd.db.admissions), so the limits hold across daemons sharing one PostgreSQL:
the lock and the counts are in the database, not here.

What is kept in memory are shortcuts that never hand out a slot:
- nodes this daemon admitted, by slot, so that the second and later fetches of an
  admitted node (its script again, a pxelinux config after the iPXE one) cost no
  transaction. The first decision always goes to the database; a cached admission
  is dropped when the change feed reports the node changed (a move, a retry: a
  retry's fresh boot must queue again), and after CACHE_SECONDS anyway, for
  changes made by another daemon;
- the board: every place, read at most once a second (BOARD_SECONDS) and dropped
  on a change of a node on it. A waiting node asking again is told to wait from
  it when it still has to; when the board says it may go, the locked transaction
  decides. Its stored ask is refreshed every forget_after/2 s by a one-row update.
  Measured on SQLite with 1,000 waiting nodes: a locked ask reads every place
  (~30 ms of CPU); an answer from the board costs well under a millisecond.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from bootd.config import Config
from bootd.db.admissions import AdmissionFacts, AdmissionRows
from bootd.db.store import Store, utcnow
from bootd.feed import ChangeFeed, NodeChanged
from bootd.model.admission import (
    AdmissionRecord,
    Admit,
    Decision,
    Entry,
    Limit,
    Limits,
    RolloutGate,
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
# A waiting node's repeated ask is answered from a board of every place read at most
# this often: 1,000 waiting nodes asking every 15 s would otherwise read 1,000 rows
# 66 times a second. Staler by this much at most: a slot freed meanwhile waits one ask.
BOARD_SECONDS = 1.0


@dataclass
class _Board:
    waiting: dict[str, AdmissionRecord]  # by node name
    answers: dict[str, Decision] | None  # what each waiting node is answered; None: work it out again
    names: set[str]  # every node on it, admitted or waiting
    admitted: list[Entry]
    gates: dict[int, RolloutGate]
    until: float  # monotonic


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
        self._board_cache: _Board | None = None
        self._loading: asyncio.Future[_Board] | None = None
        self._generation = 0  # bumped by every change seen: a board read before it is stale
        # Counters (tests and the bench read them): locked transactions, stored asks, board reads.
        self.asks = self.touches = self.board_reads = self.enqueued = 0
        if feed is not None:
            feed.subscribe(self._on_change)

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._admitted.clear()  # new limits or states: decide again
        self._generation += 1
        self._board_cache = None

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
        admitted lately is answered from memory; a waiting node asking again, from the
        board when it still has to wait; anything else is one locked transaction."""
        if state is not None and self.holds(name, state):
            return Admit()
        w, limits = self.config.waves, self.limits
        when = now if now is not None else self._clock()
        slot = None if state is None else self.slot(state)
        if slot is not None and daemon is None:
            waiting = await self._from_board(name, slot, when) or await self._newcomer(name, slot, when)
            if waiting is not None:
                return waiting

        def choose(facts: AdmissionFacts) -> Decision:
            return decide(facts.asker, facts.admitted, facts.waiting, limits, facts.gates, when,
                          w.forget_after)

        self.asks += 1
        self._generation += 1  # this ask writes: the board is stale
        self._board_cache = None
        _, decision = await self._rows.admit(name, daemon or self.config.daemon_id, w.states,
                                             w.forget_after, choose, when)
        if isinstance(decision, Admit) and slot is not None:
            if len(self._admitted) >= CACHE_MAX:
                self._admitted.clear()
            self._admitted[name] = (slot, self._monotonic() + CACHE_SECONDS)
        return decision

    async def _from_board(self, name: str, slot: NodeState, now: datetime) -> Wait | None:
        """A waiting node's next ask, answered from the board when it still waits; its
        stored ask is refreshed every forget_after/2 s (the config keeps forget_after
        above twice the wait, so a node that keeps asking is never forgotten). None:
        the locked path decides (no place yet, a lost place, a slot it may take)."""
        board = await self._board()
        mine = board.waiting.get(name)
        forget_after = self.config.waves.forget_after
        if mine is None or mine.slot is not slot or forgotten(mine.entry, now, forget_after):
            return None
        decision = self._answers(board, now).get(name)
        if not isinstance(decision, Wait):
            return None
        stored = mine.entry.asked_at
        if stored is None or now - stored >= timedelta(seconds=forget_after / 2):
            self.touches += 1
            await self._rows.touch(mine.entry.node_id, slot, now)
            board.waiting[name] = replace(mine, entry=replace(mine.entry, asked_at=now))
        return decision

    async def _newcomer(self, name: str, slot: NodeState, now: datetime) -> Wait | None:
        """A node's first ask, when the board says it would wait: its place is written
        without the lock and without reading every place (a rack powering on asks all
        at once). None: the locked path decides (it may go, or it has a row already)."""
        board = await self._board()
        if name in board.names:
            return None
        w = self.config.waves
        found = await self._rows.newcomer(name, self.config.daemon_id, w.states, now)
        if found is None or found[1] is not slot:
            return None
        entry, _, gate = found
        gates = board.gates if gate is None else {**board.gates, gate.id: gate}
        decision = decide(entry, board.admitted, [r.entry for r in board.waiting.values()], self.limits,
                          gates, now, w.forget_after)
        if not isinstance(decision, Wait) or not await self._rows.enqueue(entry, slot, now):
            return None
        self.enqueued += 1
        # On the board at once: the next newcomer's place counts this one.
        board.waiting[name] = AdmissionRecord(entry, slot, slot, now, None)  # live: a slot holds itself
        board.names.add(name)
        board.gates = gates
        board.answers = None
        return decision

    def _answers(self, board: _Board, now: datetime) -> dict[str, Decision]:
        """Every waiting node's answer in one pass (what `decide` answers each of them)."""
        if board.answers is None:
            board.answers = {e.name: d for e, d in places(
                board.admitted, [r.entry for r in board.waiting.values()], self.limits, board.gates, now,
                self.config.waves.forget_after)}
        return board.answers

    async def _board(self) -> _Board:
        """Every place, read at most once per BOARD_SECONDS (concurrent asks share one
        read) and dropped on every change this daemon sees."""
        board = self._board_cache
        if board is not None and self._monotonic() < board.until:
            return board
        if self._loading is None or self._loading.done():
            self._loading = asyncio.ensure_future(self._load_board(self._generation))
        return await asyncio.shield(self._loading)

    async def _load_board(self, generation: int) -> _Board:
        records, gates = await self._rows.board()
        live = [r for r in records if r.live]
        admitted = [r.entry for r in live if r.admitted]
        waiting = {r.entry.name: r for r in live if not r.admitted}
        names = set(waiting) | {e.name for e in admitted}
        board = _Board(waiting, None, names, admitted, gates, self._monotonic() + BOARD_SECONDS)
        if generation == self._generation:  # else a change came in meanwhile: use it once only
            self._board_cache = board
        self.board_reads += 1
        return board

    def _on_change(self, change: NodeChanged) -> None:
        self._generation += 1  # a board being read now is used once, not kept
        board = self._board_cache
        # Only a change of a node on the board changes an answer (a slot freed, a place left).
        if board is not None and (change.node.name in board.names or change.old_name in board.names):
            self._board_cache = None
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
