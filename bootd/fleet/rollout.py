"""Rollouts: one operator command that installs many nodes, and its driver.

`Rollouts.start` checks the profile and the selection, records the rollout and
its nodes (bootd.db.rollouts; a node pending or active in another live rollout
is refused), then hands each node to the lifecycle service, the one path for
node changes: a discovered node is allocated with the profile, a ready or
installed one gets the profile and is reinstalled (model.rollout.plan). The
lifecycle's effects power-cycle through the power service, whose throttle
(`[bmc] power_on_rate`) staggers the power-ons; a few hand-overs run at once
(`[bmc] max_sessions`), never more than the throttle lets power on. At boot
time admission (bootd.fleet.admission) lets the nodes into the heavy states in
waves, reading this rollout's `max_parallel` and holding back the nodes of a
paused one.

`Rollouts.drive` is one pass of the driver: read each node's state, write the
outcomes that changed (conditional on the outcome read, so several daemons
driving one rollout at once write each change once), then judge the rollout
(model.rollout.judge): past `max_failures` nodes in problem it pauses itself
with the reason; once every node is settled it is done. The daemon runs the
driver as `RolloutService`, woken by the change feed and by a slow poll (changes
made by another daemon); `bootd rollout watch` drives too, so a rollout moves
on with only the CLI (every pass is idempotent).

Pause stops admission of the rollout's nodes (those installing go on); resume
acknowledges the failures so far; cancel gives back the nodes not yet admitted
(reset through the lifecycle, outcome cancelled) and lets those in progress
finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence

from bootd.config import Config
from bootd.db.rollouts import RolloutRows, Settle
from bootd.errors import BootdError, Conflict, InvalidInput, NotFound
from bootd.feed import ChangeFeed, NodeChanged
from bootd.lifecycle.service import Lifecycle, Operation
from bootd.logs import kv
from bootd.model.lifecycle import known_profile
from bootd.model.rollout import (
    IN_PROGRESS,
    LIVE,
    Outcome,
    Plan,
    RolloutSelector,
    RolloutState,
    RolloutView,
    Step,
    check_limits,
    give_back,
    judge,
    outcome_of,
    plan,
    resumed_max_failures,
)

log = logging.getLogger("bootd.rollout")
DEFAULT_MAX_FAILURES = 2
POLL = 10.0      # seconds between passes when nothing is published here (another daemon's changes)
SETTLE = 0.5     # a change wakes the driver this long later: a burst of changes is one pass


class Rollouts:
    """The application service: start, read, pause, resume, cancel, drive."""

    def __init__(self, config: Config, rows: RolloutRows, lifecycle: Lifecycle) -> None:
        self.config, self._rows, self._lifecycle = config, rows, lifecycle
        self._handing: set[asyncio.Task[None]] = set()
        self.outcome_counts: Mapping[Outcome, int] = {o: 0 for o in Outcome}  # of the last pass

    def reconfigure(self, config: Config) -> None:
        self.config = config

    # -- the operator's operations ------------------------------------------------------

    async def start(self, selector: RolloutSelector, profile: str, *, actor: str,
                    max_parallel: int | None = None, max_failures: int = DEFAULT_MAX_FAILURES,
                    wait: bool = True) -> RolloutView:
        """Record the rollout and hand its nodes to the lifecycle (in the background
        when not `wait`: a thousand staggered power-ons take minutes)."""
        check_limits(max_parallel, max_failures)
        profile = known_profile(profile, self._lifecycle.rules.profiles, "rollout: ")
        nodes = selector.pick(await self._lifecycle.nodes())
        if not nodes:
            raise InvalidInput(f"no nodes in {selector.describe()}")
        plans = [plan(n) for n in nodes]
        if all(p.step is Step.SKIP for p in plans):
            shown = "; ".join(f"{p.name} {p.reason}" for p in plans[:5])
            raise InvalidInput(f"nothing to roll out in {selector.describe()}: {shown}")
        rollout = await self._rows.create(profile, selector, max_parallel, max_failures, plans, actor=actor)
        log.info("rollout started", extra=kv(rollout=rollout.id, profile=profile, nodes=len(plans),
                                             selected=selector.describe(), actor=actor))
        work = self._hand_over(rollout.id, profile, plans, actor)
        if wait:
            await work
        else:
            task = asyncio.create_task(work, name=f"rollout-{rollout.id}-hand-over")
            self._handing.add(task)
            task.add_done_callback(self._handing.discard)
        return await self._rows.view(rollout.id)

    async def view(self, rollout_id: int) -> RolloutView:
        return await self._rows.view(rollout_id)

    async def list(self, states: Sequence[RolloutState] | None = None) -> list[RolloutView]:
        return await self._rows.views(states)

    async def pause(self, rollout_id: int, *, actor: str) -> RolloutView:
        if not await self._rows.set_state(rollout_id, {RolloutState.RUNNING}, RolloutState.PAUSED,
                                          f"paused by {actor}"):
            raise Conflict(f"rollout {rollout_id} is {(await self._rows.get(rollout_id)).state}, not running")
        log.info("rollout paused", extra=kv(rollout=rollout_id, actor=actor))
        return await self._rows.view(rollout_id)

    async def resume(self, rollout_id: int, *, actor: str) -> RolloutView:
        """Running again; the failures so far are acknowledged (the next one pauses it)."""
        view = await self._rows.view(rollout_id)
        r, failures = view.rollout, view.progress.failures
        budget = resumed_max_failures(r.max_failures, failures)
        why = f"resumed by {actor}"
        if budget > r.max_failures:
            why += f"; {failures} failures acknowledged"
        if not await self._rows.set_state(rollout_id, {RolloutState.PAUSED}, RolloutState.RUNNING, why,
                                          max_failures=budget):
            raise Conflict(f"rollout {rollout_id} is {(await self._rows.get(rollout_id)).state}, not paused")
        log.info("rollout resumed", extra=kv(rollout=rollout_id, actor=actor, max_failures=budget))
        return await self.drive(rollout_id)

    async def cancel(self, rollout_id: int, *, actor: str) -> RolloutView:
        """Nodes not yet admitted are given back (reset), those installing finish."""
        if not await self._rows.set_state(rollout_id, LIVE, RolloutState.CANCELLED, f"cancelled by {actor}"):
            raise Conflict(f"rollout {rollout_id} is {(await self._rows.get(rollout_id)).state}, "
                           f"not running or paused")
        rollout, observed = await self._rows.observe(rollout_id)
        heavy = self.config.waves.states
        given: list[Settle] = []
        for o in observed:
            if o.outcome not in IN_PROGRESS:
                continue
            handed = o.seen.changed_at is None or o.seen.changed_at > rollout.created_at
            if handed and not give_back(o.seen, heavy):
                continue  # in progress: it finishes
            if handed:
                try:
                    await self._lifecycle.reset(o.name, actor=actor,
                                                message=f"rollout {rollout_id} cancelled")
                except (Conflict, NotFound) as exc:
                    log.info("rollout node not given back", extra=kv(rollout=rollout_id, node=o.name,
                                                                     reason=str(exc)))
                    continue
            given.append(Settle(o.row_id, o.outcome, Outcome.CANCELLED,
                                f"given back: rollout cancelled by {actor}"))
        await self._rows.settle(given)
        log.info("rollout cancelled", extra=kv(rollout=rollout_id, actor=actor, given_back=len(given)))
        return await self.drive(rollout_id)

    # -- the driver -------------------------------------------------------------------------

    async def drive(self, rollout_id: int) -> RolloutView:
        """One pass over one rollout: outcomes from node states, then the canary and done."""
        rollout, observed = await self._rows.observe(rollout_id)
        if rollout.state is RolloutState.DONE:
            return await self._rows.view(rollout_id)  # its record stays as it ended
        heavy = self.config.waves.states
        changes = []
        for o in observed:
            if o.outcome is Outcome.CANCELLED:
                continue  # final: skipped, given back, or left
            outcome, detail = outcome_of(o.seen, rollout.created_at, heavy)
            if (outcome, detail) != (o.outcome, o.detail):
                changes.append(Settle(o.row_id, o.outcome, outcome, detail))
        await self._rows.settle(changes)
        view = await self._rows.view(rollout_id)
        verdict = judge(view.rollout.state, view.rollout.max_failures, view.nodes)
        if verdict is not None and await self._rows.set_state(rollout_id, {view.rollout.state}, verdict.state,
                                                               verdict.reason):
            level = logging.WARNING if verdict.state is RolloutState.PAUSED else logging.INFO
            log.log(level, f"rollout {verdict.state.value}",
                    extra=kv(rollout=rollout_id, reason=verdict.reason))
            view = await self._rows.view(rollout_id)
        return view

    async def drive_all(self) -> None:
        for rollout_id in await self._rows.to_drive():
            try:
                await self.drive(rollout_id)
            except NotFound:
                continue
        self.outcome_counts = await self._rows.outcome_counts()

    async def close(self) -> None:
        """Stop hand-overs still running (their nodes stay pending; cancel gives them back)."""
        for task in list(self._handing):
            task.cancel()
        for task in list(self._handing):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- handing nodes to the lifecycle -------------------------------------------------------

    async def _hand_over(self, rollout_id: int, profile: str, plans: Sequence[Plan], actor: str) -> None:
        # The power service's throttle staggers the power-ons; this only bounds how
        # many hand-overs wait on it at once.
        gate = asyncio.Semaphore(max(1, self.config.bmc.max_sessions))

        async def one(p: Plan) -> None:
            async with gate:
                await self._hand_over_one(rollout_id, profile, p, actor)

        await asyncio.gather(*(one(p) for p in plans if p.step is not Step.SKIP))

    async def _hand_over_one(self, rollout_id: int, profile: str, p: Plan, actor: str) -> None:
        try:
            if (await self._rows.get(rollout_id)).state not in LIVE:
                await self._rows.refuse(rollout_id, p.name, "not handed over: the rollout ended")
                return
            message = f"rollout {rollout_id}"
            if p.step is Step.ALLOCATE:
                result = await self._lifecycle.operate(Operation.ALLOCATE, p.name, actor=actor,
                                                       profile=profile, message=message)
            else:
                await self._lifecycle.update(p.name, actor=actor, profile=profile)
                result = await self._lifecycle.operate(Operation.REINSTALL, p.name, actor=actor,
                                                       message=message)
        except (Conflict, NotFound, InvalidInput) as exc:
            await self._rows.refuse(rollout_id, p.name, f"not handed over: {exc}")
            log.info("rollout node refused", extra=kv(rollout=rollout_id, node=p.name, reason=str(exc)))
            return
        failed = [r.error for r in result.power if not r.ok]
        detail = p.step.value
        if failed:
            detail += "; power cycle failed: " + "; ".join(str(e) for e in failed)
        await self._rows.handed_over(rollout_id, p.name, detail)


class RolloutService:
    """The daemon's driver: a pass over every rollout still moving whenever a node
    changes (the change feed) and every POLL seconds."""

    name = "rollouts"

    def __init__(self, rollouts: Rollouts, feed: ChangeFeed | None = None, *, poll: float = POLL) -> None:
        self.rollouts, self._feed, self._poll = rollouts, feed, poll
        self._wake = asyncio.Event()
        self._unsubscribe = None if feed is None else feed.subscribe(self._on_change)

    def _on_change(self, _: NodeChanged) -> None:
        self._wake.set()

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        while True:
            try:
                await self.rollouts.drive_all()
            except BootdError as exc:  # the database away: the next pass tries again
                log.warning("rollout pass failed", extra=kv(reason=str(exc)))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
                await asyncio.sleep(SETTLE)
            self._wake.clear()

    async def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        await self.rollouts.close()

    def reconfigure(self, config: Config) -> None:
        self.rollouts.reconfigure(config)


__all__ = ["DEFAULT_MAX_FAILURES", "RolloutSelector", "RolloutService", "Rollouts"]
