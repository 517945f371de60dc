"""State timeouts: the daemon's timer over the lifecycle service.

Every state with a timeout (config [lifecycle.timeouts], 0 = never) gives a
node that long; then the timer spends one retry from the node's budget
(restarting the state's clock; with BMC control, the node is power-cycled
too) or, with the budget spent, moves it to problem with the reason; a machine
bootd recorded from a PXE boot that never reported is deleted instead
(model.lifecycle.apply decides which). The timer also reconciles nodes with
the config's profiles: once at start, and after every reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

from bootd.bmc.service import PowerService
from bootd.config import Config
from bootd.db.repository import Repository, utcnow
from bootd.errors import BootdError
from bootd.feed import ChangeFeed
from bootd.lifecycle.service import Lifecycle
from bootd.logs import kv
from bootd.model.lifecycle import overdue
from bootd.model.records import NodeRecord

__all__ = ["LifecycleService", "overdue"]
log = logging.getLogger("bootd.lifecycle")


class LifecycleService:
    """The daemon's lifecycle task. Give it the daemon's `lifecycle` (shared with the
    HTTP service); without one it makes its own over `repo` (tests)."""

    name = "lifecycle"

    def __init__(self, config: Config, repo: Repository, clock: Callable[[], datetime] = utcnow,
                 power: PowerService | None = None, *, feed: ChangeFeed | None = None,
                 lifecycle: Lifecycle | None = None) -> None:
        self.config = config
        self.lifecycle = lifecycle or Lifecycle(config, repo, power=power, feed=feed, clock=clock)
        self._reconcile = asyncio.Event()

    async def start(self) -> None:
        # Before anything serves: a node whose profile left the config goes to problem
        # now, not when it asks for its installer.
        await self.lifecycle.reconcile_profiles()

    async def run(self) -> None:
        while True:
            try:
                if self._reconcile.is_set():
                    self._reconcile.clear()
                    await self.lifecycle.reconcile_profiles()
                await self.tick()
            except BootdError as exc:  # database away: try again next round
                log.warning("timeout check failed", extra=kv(reason=str(exc)))
            with contextlib.suppress(TimeoutError):  # woken early by a reload
                await asyncio.wait_for(self._reconcile.wait(), self.config.lifecycle.check_interval)

    async def tick(self) -> list[NodeRecord]:
        """One pass: act on every overdue node; returns the nodes it changed."""
        return await self.lifecycle.tick()

    async def stop(self) -> None:
        pass

    def reconfigure(self, config: Config) -> None:
        """The new config's profiles and timeouts apply at once; its profiles are
        reconciled on the run loop's next turn (woken now)."""
        self.config = config
        self.lifecycle.reconfigure(config)
        self._reconcile.set()
