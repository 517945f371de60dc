"""State timeouts: the timer that notices nodes stuck in a state.

Every state with a timeout (config [lifecycle.timeouts], 0 = never) gives a
node that long; then the timer spends one retry from the node's budget
(restarting the state's clock; with BMC control, the node is power-cycled
too) or, with the budget spent, moves it to problem with the reason. `overdue`
is pure and tested with a fake clock; the service only polls the repository.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from bootd.bmc.service import PowerService
from bootd.config import Config
from bootd.db.repository import Repository, utcnow
from bootd.errors import BootdError
from bootd.logs import kv
from bootd.model.records import NodeRecord
from bootd.model.states import NodeState

log = logging.getLogger("bootd.lifecycle")


def overdue(nodes: Sequence[NodeRecord], now: datetime,
            timeouts: dict[NodeState, int]) -> list[tuple[NodeRecord, int]]:
    """Nodes past their state's timeout, each with that timeout in seconds."""
    out = []
    for node in nodes:
        limit = timeouts.get(node.state, 0)
        if limit > 0 and now - node.state_changed_at >= timedelta(seconds=limit):
            out.append((node, limit))
    return out


class LifecycleService:
    name = "lifecycle"

    def __init__(self, config: Config, repo: Repository,
                 clock: Callable[[], datetime] = utcnow, power: PowerService | None = None) -> None:
        self.config, self._repo, self._clock, self._power = config, repo, clock, power

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except BootdError as exc:  # database away: try again next round
                log.warning("timeout check failed", extra=kv(reason=str(exc)))
            await asyncio.sleep(self.config.lifecycle.check_interval)

    async def tick(self) -> list[NodeRecord]:
        """One pass: act on every overdue node; returns the nodes it changed."""
        lc = self.config.lifecycle
        changed = []
        for node, limit in overdue(await self._repo.list_nodes(), self._clock(), lc.timeouts):
            reason = f"no progress in {node.state.value} for {limit} s"
            after = await self._repo.retry_state(node.name, node.state, node.state_changed_at,
                                                 lc.retries, reason=reason)
            if after is None:
                continue  # it moved meanwhile
            changed.append(after)
            if after.state is NodeState.PROBLEM:
                log.warning("node timed out", extra=kv(node=node.name, state=node.state.value,
                                                       reason=reason, now="problem"))
            else:
                log.info("node timed out, retrying", extra=kv(node=node.name, state=node.state.value,
                                                              retry=after.retries, budget=lc.retries))
                if self._power is not None:  # a retry is a fresh network boot of the state's image
                    await self._power.after_move(after, actor="timer")
        return changed

    async def stop(self) -> None:
        pass

    def reconfigure(self, config: Config) -> None:
        self.config = config
