"""The lifecycle service: the one path for every node change.

The CLI, the operator API, the node's own callbacks and the timer all call
here. Each change is the same three steps:

1. read the node (its record carries a version);
2. `model.lifecycle.apply(node, event, now, rules)` decides, purely, what
   changes and what follows (event-log rows, a new token, a power cycle);
3. the repository writes the changes, the rows and the token in ONE
   transaction, bumping the node's version only if it is still the one read
   (`UPDATE .. WHERE version = :v`): of two changes made from one reading,
   exactly one commits and the other is a Conflict ("changed meanwhile, try
   again"). Only after the commit: the power cycle (a BMC can take seconds,
   never inside a transaction) and the change feed.

Operations validate what they are given: allocate and reinstall refuse a
profile the config does not define, naming the ones it does; a profile that
leaves the config (`reconcile_profiles`, at start and on reload) moves the
nodes that still need it to problem with the reason, instead of serving an
error to a booting machine.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from bootd.bmc.controller import PowerOp
from bootd.bmc.service import PowerService, Result
from bootd.config import Config
from bootd.db.admissions import AdmissionRows
from bootd.db.repository import Repository, utcnow
from bootd.errors import Conflict, InvalidInput, NotFound
from bootd.feed import ChangeFeed, NodeChanged
from bootd.logs import Throttle, kv
from bootd.metrics import Metrics
from bootd.model.admission import clock_starts
from bootd.model.bootfail import KIND as BOOT_FAILED
from bootd.model.bootfail import BootFailure, Outcome, ReportLimiter
from bootd.model.events import (
    Allocate,
    Decision,
    Delete,
    Emit,
    Event,
    MarkProblem,
    NodeReport,
    Reinstall,
    Reset,
    Rules,
    Timeout,
)
from bootd.model.lifecycle import (
    Actor,
    IllegalTransition,
    apply,
    event_for,
    known_profile,
    overdue,
    profile_gone,
)
from bootd.model.records import BmcCredentials, EventRecord, NewNode, NodeRecord
from bootd.model.selector import Selector
from bootd.model.states import NodeState

log = logging.getLogger("bootd.lifecycle")
Clock = Callable[[], datetime]


class Operation(enum.StrEnum):
    """The operator's operations, as the CLI and the API name them."""

    ALLOCATE = "allocate"
    REINSTALL = "reinstall"
    RESET = "reset"
    DELETE = "delete"


@dataclass(frozen=True)
class OpResult:
    """One node's outcome in an operation on many: the record after, or the error;
    and the power operations that followed (failures included)."""

    name: str
    node: NodeRecord | None = None
    error: str | None = None
    power: tuple[Result, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.error is None


class Lifecycle:
    def __init__(self, config: Config, repo: Repository, *, power: PowerService | None = None,
                 feed: ChangeFeed | None = None, clock: Clock = utcnow,
                 metrics: Metrics | None = None) -> None:
        self._repo, self._power, self._feed, self._clock = repo, power, feed, clock
        self._metrics = metrics
        self._boot_reports, self._say = ReportLimiter(), Throttle(60.0, keys=8)
        self.boot_report_counts = {o: 0 for o in Outcome}
        self.reconfigure(config)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: its profiles and power setting apply to the next event.
        Call `reconcile_profiles` after it (the timer service does)."""
        self.config = config
        self.rules = Rules(frozenset(config.profiles), config.bmc.lifecycle_power)

    # -- reads ---------------------------------------------------------------------

    async def node(self, name: str) -> NodeRecord:
        return await self._repo.get_node(name)

    async def nodes(self) -> list[NodeRecord]:
        return await self._repo.list_nodes()

    async def events(self, name: str, limit: int = 1000) -> list[EventRecord]:
        """A node's log; NotFound for a name that never had one."""
        events = await self._repo.events(name, limit=limit)
        if not events:
            await self._repo.get_node(name)
        return events

    async def select(self, selector: Selector) -> list[str]:
        return selector.pick([] if selector.by_name else await self._repo.list_nodes())

    # -- operator operations ---------------------------------------------------------

    async def add(self, spec: NewNode, *, actor: str, bmc: BmcCredentials | None = None) -> NodeRecord:
        """A node registered before it boots (with its BMC, if given)."""
        if spec.profile is not None:
            self._known_profile(spec.profile)
        node = await self._repo.add_node(spec, actor=actor)
        if bmc is not None:
            node = await self._repo.set_bmc(node.name, bmc.address, bmc.username, bmc.password, actor=actor)
        self._publish(NodeChanged(node, "created"))
        return node

    async def update(self, name: str, *, actor: str, rack: str | None = None,
                     profile: str | None = None) -> NodeRecord:
        """Edits that do not move the node: its rack, its profile ("" clears either)."""
        if profile:
            self._known_profile(profile)
        node = await self._repo.update_node(name, rack=rack, profile=profile, actor=actor)
        self._publish(NodeChanged(node, "updated"))
        return node

    async def allocate(self, name: str, *, actor: str, profile: str | None = None,
                       rename: str | None = None, message: str = "") -> NodeRecord:
        return (await self._change(name, Allocate(profile, rename, message), actor=actor))[0]

    async def reinstall(self, name: str, *, actor: str, message: str = "") -> NodeRecord:
        return (await self._change(name, Reinstall(message), actor=actor))[0]

    async def reset(self, name: str, *, actor: str, message: str = "") -> NodeRecord:
        return (await self._change(name, Reset(message), actor=actor))[0]

    async def delete(self, name: str, *, actor: str, power_off: bool = False,
                     message: str = "") -> NodeRecord:
        """Returns the node's last record (state DELETE); with power_off, its BMC
        powers it off first (the outcome is in its events; a failure does not stop
        the delete)."""
        return (await self._operate(Operation.DELETE, name, actor=actor, power_off=power_off,
                                    message=message))[0]

    async def mark_problem(self, name: str, reason: str, *, actor: str) -> NodeRecord:
        return (await self._change(name, MarkProblem(reason), actor=actor))[0]

    async def operate(self, op: Operation, name: str, *, actor: str, profile: str | None = None,
                      rename: str | None = None, power_off: bool = False, message: str = "") -> OpResult:
        """One operation on one node; errors raise (Conflict, NotFound, InvalidInput)."""
        node, power = await self._operate(op, name, actor=actor, profile=profile, rename=rename,
                                          power_off=power_off, message=message)
        return OpResult(node.name, node, None, power)

    async def _operate(self, op: Operation, name: str, *, actor: str, profile: str | None = None,
                       rename: str | None = None, power_off: bool = False,
                       message: str = "") -> tuple[NodeRecord, tuple[Result, ...]]:
        off: tuple[Result, ...] = ()
        if op is Operation.DELETE and power_off and self._power is not None:
            await self._repo.get_node(name)  # no such node: NotFound before any BMC traffic
            off = (await self._power.one(PowerOp.OFF, name, actor=actor),)
        event: Event
        match op:
            case Operation.ALLOCATE:
                event = Allocate(profile, rename, message)
            case Operation.REINSTALL:
                event = Reinstall(message)
            case Operation.RESET:
                event = Reset(message)
            case Operation.DELETE:
                event = Delete(message)
        node, power = await self._change(name, event, actor=actor)
        return node, off + power

    async def operate_many(self, op: Operation, selector: Selector, *, actor: str,
                           profile: str | None = None, rename: str | None = None, power_off: bool = False,
                           message: str = "") -> list[OpResult]:
        """One operation on the selected nodes, one after another; one node's failure
        is its result and does not stop the rest. A new name needs exactly one node."""
        names = await self.select(selector)
        if rename is not None and len(names) != 1:
            raise InvalidInput("a new name needs exactly one node")
        out = []
        for name in names:
            try:
                out.append(await self.operate(op, name, actor=actor, profile=profile, rename=rename,
                                              power_off=power_off, message=message))
            except (Conflict, NotFound, InvalidInput) as exc:
                out.append(OpResult(name, error=str(exc)))
        return out

    async def move(self, name: str, target: NodeState, who: Actor, *, actor: str,
                   expect: NodeState | None = None, profile: str | None = None, rename: str | None = None,
                   inventory: str | None = None, message: str = "") -> NodeRecord:
        """A move named the old way, by target state and kind of actor (tests walking
        the table, scripts): the typed event it means (model.lifecycle.event_for),
        then the one path like every other change."""
        event = event_for(target, who, expect=expect, profile=profile, rename=rename,
                          inventory=inventory, message=message)
        if isinstance(event, Allocate) and event.profile:
            self._known_profile(event.profile)
        return (await self._change(name, event, actor=actor))[0]

    # -- the node's own reports --------------------------------------------------------

    async def report(self, name: str, target: NodeState, *, expect: NodeState | None = None,
                     inventory: str | None = None, message: str = "",
                     read: NodeRecord | None = None) -> NodeRecord:
        """A node (authenticated by its token by the caller) reports it reached `target`;
        `expect` refuses a stale or replayed report; `inventory` is the agent's JSON.
        `read`: the record the caller authenticated it with (saves a read; its version
        still guards the write, so a node that moved since gets a Conflict)."""
        event = NodeReport(target, expect, inventory, message)
        try:
            node = None
            if read is not None and read.name == name:
                with contextlib.suppress(Conflict):  # moved since it was read: read it again
                    node = (await self._decide(read, event, actor=f"node:{name}"))[0]
            if node is None:
                node = (await self._change(name, event, actor=f"node:{name}"))[0]
        except Conflict:
            if self._metrics is not None:
                self._metrics.callback(target, accepted=False)
            raise
        if self._metrics is not None:
            self._metrics.callback(target, accepted=True)
        return node

    async def boot_failed(self, report: BootFailure, now: float | None = None) -> Outcome:
        """A booting machine's script gave up on a fetch (bootd.model.bootfail): one
        event in the log of the node with that MAC. Unauthenticated, so it never
        creates a node, and it is rate-limited before any database read."""
        outcome = Outcome.LIMITED
        if self._boot_reports.allow(report.mac, time.monotonic() if now is None else now):
            node = await self._repo.find_node_by_mac(report.mac)
            outcome = Outcome.UNKNOWN
            if node is not None:
                try:
                    await self._repo.record_event(node.name, BOOT_FAILED, report.message, actor="boot-script")
                    outcome = Outcome.RECORDED
                except NotFound:
                    pass  # deleted meanwhile: its next boot is a new discovery
        self.boot_report_counts[outcome] += 1
        if self._say(time.monotonic(), outcome.value):  # per reason, never per sender
            log.warning("boot failure reported", extra=kv(
                outcome=outcome.value, count=self.boot_report_counts[outcome], mac=report.mac,
                step=report.step.value, url=report.url, errno=report.errno))
        return outcome

    # -- bootd's own: the timer and the config -------------------------------------------

    async def tick(self) -> list[NodeRecord]:
        """Act on every node past its state's timeout: retry (a fresh network boot),
        problem once the budget is spent, or expiry for a booted machine that never
        reported. Returns the records after (an expired node's with state DELETE)."""
        lc = self.config.lifecycle
        changed = []
        now = self._clock()
        # Install waves: a node waiting for its slot is not late; an admitted one's clock
        # starts at its admission (bootd.model.admission.clock_starts).
        clocks = clock_starts(await AdmissionRows(self._repo).admission_rows(), now,
                              self.config.waves.forget_after)
        for node, limit in overdue(await self._repo.list_nodes(), now, lc.timeouts, clocks):
            if self._metrics is not None:
                self._metrics.stall(node.state)
            try:
                # The listed record's version: a node that moved since is left alone.
                after, _ = await self._decide(node, Timeout(limit, lc.retries), actor="timer")
            except (Conflict, NotFound):
                continue
            changed.append(after)
            log.log(logging.INFO if after.state is node.state else logging.WARNING, "node timed out",
                    extra=kv(node=node.name, state=node.state.value, now=after.state.value,
                             retry=after.retries, budget=lc.retries))
        return changed

    async def reconcile_profiles(self) -> list[NodeRecord]:
        """Nodes that still need a profile the config no longer has go to problem,
        with the reason. At daemon start and after every config reload."""
        changed = []
        for node in await self._repo.list_nodes():
            event = profile_gone(node, self.rules.profiles)
            if event is None:
                continue
            try:
                after, _ = await self._decide(node, event, actor="config")
            except (Conflict, NotFound):
                continue  # it moved meanwhile; the next reconcile looks again
            log.warning("node's profile left the config", extra=kv(node=node.name, profile=node.profile,
                                                                 now=after.state.value))
            changed.append(after)
        return changed

    # -- the one path ---------------------------------------------------------------------

    async def _change(self, name: str, event: Event, *, actor: str) -> tuple[NodeRecord, tuple[Result, ...]]:
        return await self._decide(await self._repo.get_node(name), event, actor=actor)

    async def _decide(self, node: NodeRecord, event: Event, *,
                      actor: str) -> tuple[NodeRecord, tuple[Result, ...]]:
        try:
            decision = apply(node, event, self._clock(), self.rules)
        except IllegalTransition as exc:  # edges map errors by exact type: Conflict is the 409
            raise Conflict(str(exc)) from None
        after = await self._repo.commit(node.name, node.version, decision.changes, decision.effects,
                                        actor=actor)
        self._publish(_change_of(node, after, decision))
        if self._metrics is not None:
            for emit in decision.emits:
                if emit.from_state is not None and emit.from_state is not emit.to_state:
                    self._metrics.transition(emit.from_state, emit.to_state)
        power: tuple[Result, ...] = ()
        if decision.power_cycles and self._power is not None:
            power = tuple(await self._power.boot_from_network(after.name, actor=actor))
            for res in power:
                if not res.ok:
                    log.warning("lifecycle power cycle failed", extra=kv(node=after.name, kind=res.kind,
                                                                         reason=res.error))
        return after, power

    def _publish(self, change: NodeChanged) -> None:
        if self._feed is not None:
            self._feed.publish(change)

    def _known_profile(self, profile: str) -> None:
        known_profile(profile, self.rules.profiles)


def _change_of(before: NodeRecord, after: NodeRecord, decision: Decision) -> NodeChanged:
    emits: Sequence[Emit] = decision.emits
    return NodeChanged(after, emits[-1].kind if emits else "changed", deleted=decision.changes.delete,
                       old_name=before.name if after.name != before.name else None)
