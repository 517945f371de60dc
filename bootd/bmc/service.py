"""Power operations on many nodes: credentials from the inventory, limits from the throttle.

One PowerService per process (daemon or CLI). Each node's operation runs with
its own BMC credentials (decrypted only here, never logged), one at a time per
BMC address (two nodes may share a BMC, or an operator may repeat a command; a
BMC's tiny CPU and pyghmi's sessions handle one at a time), through the
throttle, and its outcome (reachable, power state, last error) is written to
the node's BMC record; results come back per node, so one dead BMC does not
hide the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from bootd.bmc.controller import (
    BmcError,
    ErrorKind,
    IpmiController,
    PowerController,
    PowerOp,
    parse_address,
)
from bootd.bmc.throttle import KeyedLocks, Throttle
from bootd.config import Config
from bootd.db.repository import Repository
from bootd.errors import BootdError, NotFound
from bootd.logs import kv
from bootd.metrics import Metrics, Stopwatch
from bootd.model.records import NodeRecord

log = logging.getLogger("bootd.bmc")
POWERS_ON = {PowerOp.ON, PowerOp.CYCLE, PowerOp.RESET}
ControllerFactory = Callable[[str, str, str, Config], PowerController]


def ipmi_factory(address: str, user: str, password: str, config: Config) -> PowerController:
    return IpmiController(address, user, password, cycle_pause=config.bmc.cycle_pause)


@dataclass(frozen=True)
class Result:
    node: str
    ok: bool
    power: str | None = None
    detail: str = ""
    error: str | None = None
    kind: str | None = None  # ErrorKind value when not ok


class PowerService:
    def __init__(self, config: Config, repo: Repository, factory: ControllerFactory = ipmi_factory,
                 throttle: Throttle | None = None, metrics: Metrics | None = None) -> None:
        self.config, self._repo, self._factory = config, repo, factory
        self._metrics = metrics
        self.throttle = throttle or Throttle(config.bmc.max_sessions, config.bmc.power_on_rate)
        self.locks: KeyedLocks[tuple[str, int]] = KeyedLocks()

    async def run(self, op: PowerOp, names: Sequence[str], *, actor: str) -> list[Result]:
        return list(await asyncio.gather(*(self.one(op, n, actor=actor) for n in names)))

    async def one(self, op: PowerOp, name: str, *, actor: str) -> Result:
        """Never raises: every failure is this node's result, so no node hides another."""
        if self._metrics is None:
            return await self._guarded(op, name, actor=actor)
        watch = Stopwatch()  # queueing for the BMC's lock and a session slot included
        result = await self._guarded(op, name, actor=actor)
        self._metrics.bmc_operation(op.value, "ok" if result.ok else result.kind or "error", watch.seconds)
        return result

    async def _guarded(self, op: PowerOp, name: str, *, actor: str) -> Result:
        try:
            return await self._one(op, name, actor=actor)
        except BootdError as exc:
            return Result(name, False, error=str(exc), kind="error")
        except (OSError, ValueError) as exc:
            log.error("BMC operation failed", extra=kv(node=name, op=op.value, reason=str(exc)))
            return Result(name, False, error=f"{type(exc).__name__}: {exc}", kind="error")

    async def _one(self, op: PowerOp, name: str, *, actor: str) -> Result:
        try:
            creds = await self._repo.bmc_credentials(name)
        except NotFound as exc:
            return Result(name, False, error=str(exc), kind="no-bmc")
        if creds.address == "dhcp":
            return Result(name, False, error="the BMC's address is not known yet (it takes one by DHCP)",
                          kind="no-bmc")
        controller = self._factory(creds.address, creds.username, creds.password, self.config)
        try:
            # The BMC's lock before a session slot: queued operations on one BMC
            # must not hold slots that operations on other BMCs could use.
            async with self.locks.hold(parse_address(creds.address)), \
                    self.throttle.session(powers_on=op in POWERS_ON):
                outcome = await controller.run(op)
        except BmcError as exc:
            reachable = exc.kind in (ErrorKind.AUTH, ErrorKind.ERROR)
            await self._record(name, reachable, None, str(exc), op, actor)
            log.warning("BMC operation failed", extra=kv(node=name, op=op.value, reason=str(exc)))
            return Result(name, False, error=str(exc), kind=exc.kind.value)
        await self._record(name, True, outcome.power, None, op, actor)
        log.info("BMC operation", extra=kv(node=name, op=op.value, power=outcome.power))
        return Result(name, True, outcome.power, outcome.detail)

    async def _record(self, name: str, reachable: bool, power: str | None, error: str | None,
                      op: PowerOp, actor: str) -> None:
        try:
            await self._repo.set_bmc_state(name, reachable=reachable, power=power, error=error,
                                           operation=op.value, actor=actor)
        except BootdError as exc:  # the node went away meanwhile: the result still stands
            log.info("BMC state not recorded", extra=kv(node=name, reason=str(exc)))

    async def after_move(self, node: NodeRecord, *, actor: str) -> list[Result]:
        """The lifecycle hook, decided in one place: a node moved to reinstall or reset,
        or retrying a timed-out state, boots from the network again when bootd has its
        BMC and the config lets it (bmc.lifecycle_power)."""
        if node.bmc is None or not self.config.bmc.lifecycle_power:
            return []
        return await self.boot_from_network(node.name, actor=actor)

    async def boot_from_network(self, name: str, *, actor: str) -> list[Result]:
        """The lifecycle hook: next boot from PXE, then a power cycle (reinstall, reset, retries)."""
        first = await self.one(PowerOp.PXE, name, actor=actor)
        if not first.ok:
            return [first]
        return [first, await self.one(PowerOp.CYCLE, name, actor=actor)]
