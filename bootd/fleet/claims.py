"""The subnet claim service: one DHCP server per subnet among daemons sharing a database.

`start` runs before any other service binds (app.py puts it first): it claims
every subnet of the config in one transaction (bootd/db/claims.py) and raises
`SubnetHeld`, naming the subnet, the other daemon and its address, when a live
daemon serves one of them; the daemon then exits non-zero with that line.
Stale claims of dead daemons are taken over with a warning; this daemon's own
claims on subnets it no longer serves are released.

`run` refreshes the heartbeat every HEARTBEAT seconds. A claim found taken by
another daemon (this one stalled past STALE_AFTER and was declared dead) ends
the daemon: two servers would now answer on that subnet. Subnets added by a
reload are claimed at the next heartbeat, or logged as refused. `stop`
releases every claim, so a clean restart elsewhere needs no wait.

With DHCP off the daemon serves no subnet and claims nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncEngine

from bootd.config import Config
from bootd.db.claims import ClaimRows
from bootd.errors import BootdError, Conflict
from bootd.logs import kv
from bootd.model.claims import HEARTBEAT, STALE_AFTER, ClaimPlan, Refusal
from bootd.service import Service

log = logging.getLogger("bootd.claims")


class SubnetHeld(Conflict):
    """Another live daemon serves one of our subnets."""

    def __init__(self, refused: Sequence[Refusal]) -> None:
        self.refused = tuple(refused)
        super().__init__("; ".join(r.reason() for r in self.refused))


class ClaimLost(BootdError):
    """A subnet this daemon served was taken over by another daemon."""


class ClaimStore(Protocol):
    async def sync(self, daemon: str, address: IPv4Address, subnets: Sequence[IPv4Network], *,
                   stale_after: timedelta = STALE_AFTER, all_or_nothing: bool = True) -> ClaimPlan: ...

    async def release(self, daemon: str) -> list[IPv4Network]: ...


def served(config: Config) -> tuple[IPv4Network, ...]:
    return tuple(s.cidr for s in config.subnets) if config.services.dhcp else ()


class SubnetClaims:
    name = "claims"

    def __init__(self, config: Config, store: ClaimStore, *, heartbeat: timedelta = HEARTBEAT,
                 stale_after: timedelta = STALE_AFTER) -> None:
        self.config = config
        self._store = store
        self._heartbeat, self._stale_after = heartbeat, stale_after
        self.held: set[IPv4Network] = set()
        self._refused: set[IPv4Network] = set()  # logged once per subnet, not per heartbeat

    async def start(self) -> None:
        done = await self._store.sync(self.config.daemon_id, self.config.admin_address, served(self.config),
                                      stale_after=self._stale_after)
        if not done.ok:
            raise SubnetHeld(done.refused)
        for claim in done.taken_over:
            log.warning("took over a stale subnet claim", extra=kv(
                subnet=str(claim.cidr), daemon=claim.daemon, address=str(claim.address),
                heartbeat=claim.heartbeat_at.isoformat(timespec="seconds")))
        for subnet in done.release:
            log.info("released a subnet no longer served", extra=kv(subnet=str(subnet)))
        self.held = set(done.take) | set(done.renew)
        if self.held:
            log.info("subnets claimed", extra=kv(daemon=self.config.daemon_id,
                                                 subnets=",".join(sorted(map(str, self.held)))))

    async def beat(self) -> None:
        """One heartbeat: refresh, claim what a reload added, release what it removed."""
        done = await self._store.sync(self.config.daemon_id, self.config.admin_address, served(self.config),
                                      stale_after=self._stale_after, all_or_nothing=False)
        lost = [r for r in done.refused if r.subnet in self.held]
        if lost:
            raise ClaimLost("; ".join(f"lost the claim on subnet {r.subnet} to daemon {r.held.daemon} "
                                      f"({r.held.address}); stopping so that one server answers there"
                                      for r in lost))
        for r in done.refused:
            if r.subnet not in self._refused:
                log.error("subnet not claimed, not served safely", extra=kv(reason=r.reason()))
        self._refused = {r.subnet for r in done.refused}
        for claim in done.taken_over:
            log.warning("took over a stale subnet claim",
                        extra=kv(subnet=str(claim.cidr), daemon=claim.daemon))
        self.held = (set(done.take) | set(done.renew)) - self._refused

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._heartbeat.total_seconds())
            try:
                await self.beat()
            except ClaimLost:
                raise
            except BootdError as exc:
                # A database hiccup: the claim stays ours until STALE_AFTER; try again next beat.
                log.warning("subnet heartbeat failed", extra=kv(reason=str(exc)))

    async def stop(self) -> None:
        if not self.held:
            return
        try:
            released = await self._store.release(self.config.daemon_id)
        except BootdError as exc:
            log.warning("could not release subnet claims; they go stale", extra=kv(reason=str(exc)))
            return
        self.held = set()
        log.info("subnets released", extra=kv(subnets=",".join(map(str, released)) or "-"))

    def reconfigure(self, config: Config) -> None:
        self.config = config  # the next heartbeat claims and releases to match


def subnet_claims(config: Config, engine: AsyncEngine) -> list[Service]:
    """The claim service for the daemon (app.py), first of its services."""
    return [SubnetClaims(config, ClaimRows(engine))] if served(config) else []
