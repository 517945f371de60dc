"""BMC rows: addresses, encrypted credentials, what bootd last saw of each BMC,
and credentials handed to a node's bmc task that wait, as a reservation under a
unique address, until the node reports them applied.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, text

from bootd.db import schema as t
from bootd.db.store import Store, _node_record
from bootd.errors import InvalidInput, NotFound
from bootd.model.names import short_text
from bootd.model.records import BmcCredentials, BmcRecord, NodeRecord

_PG_BMC_LOCK = 0x626D6331  # "bmc1": advisory lock key for BMC address reservations


class BmcRows(Store):
    async def set_bmc(self, name: str, address: str, username: str, password: str, *,
                      actor: str) -> NodeRecord:
        address = short_text(address, "BMC address", 255)
        username = short_text(username, "BMC user", 64)
        if not password or len(password) > 256:
            raise InvalidInput("invalid BMC password: 1-256 characters")
        sealed = self._secrets.seal(password)
        now = self._clock()
        async with self._tx(write=True) as s:
            node = await self._load(s, name)
            if node.bmc is None:
                node.bmc = t.Bmc(address=address, username=username,
                                 password_encrypted=sealed, updated_at=now)
            else:
                node.bmc.address, node.bmc.username = address, username
                node.bmc.password_encrypted, node.bmc.updated_at = sealed, now
            node.updated_at = now
            # The event names the BMC, never the password.
            self._event(s, node, "bmc-set", None, None, actor, f"address={address} user={username}")
            await s.flush()
            return _node_record(node)

    async def set_bmc_state(self, name: str, *, reachable: bool, power: str | None,
                            error: str | None, operation: str, actor: str) -> None:
        """What an operation on the node's BMC found; an event for anything but a status read."""
        async with self._tx(write=True) as s:
            node = await self._load(s, name)
            if node.bmc is None:
                raise NotFound(f"node {name} has no BMC")
            node.bmc.reachable, node.bmc.checked_at = reachable, self._clock()
            node.bmc.last_error = None if error is None else error[:1000]
            if power is not None:
                node.bmc.power = power
            if operation != "status" or error is not None:
                text = f"{operation}: " + (f"failed: {error}" if error else f"ok, power {power or '?'}")
                self._event(s, node, "power", None, None, actor, text)

    async def reserve_bmc(self, name: str, candidates: Sequence[str], username: str, password: str, *,
                          actor: str) -> str | None:
        """New BMC credentials for node `name`, pending until the node reports them
        applied (`apply_pending_bmc`). The address: the node's recorded BMC address,
        else the first of `candidates` that no BMC and no other reservation holds,
        chosen and written in ONE transaction under a unique index (two nodes asking
        at once cannot both get it). None when the node has no address and none is
        free. A second call replaces the node's earlier reservation."""
        sealed = self._secrets.seal(password)
        async with self._tx(write=True) as s:
            if self._dialect == "postgresql":
                # READ COMMITTED: serialise reservations (SQLite's BEGIN IMMEDIATE does);
                # the unique index stays the backstop.
                await s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_BMC_LOCK})
            node = await self._load(s, name)
            old = await s.scalar(select(t.BmcPending).where(t.BmcPending.node_id == node.id))
            if old is not None:
                await s.delete(old)
                await s.flush()
            address = node.bmc.address if node.bmc is not None and node.bmc.address != "dhcp" else None
            if address is None and candidates:
                taken = set(await s.scalars(select(t.Bmc.address)))
                taken |= {a for a in await s.scalars(select(t.BmcPending.address)) if a is not None}
                address = next((a for a in candidates if a not in taken), None)
            s.add(t.BmcPending(node_id=node.id, address=address, username=username,
                               password_encrypted=sealed, created_at=self._clock()))
            self._event(s, node, "bmc-pending", None, None, actor,
                        f"address={address or 'unchanged'} user={username}")
            await s.flush()
            return address

    async def apply_pending_bmc(self, name: str, *, actor: str) -> BmcRecord | None:
        """The node reported its bmc task succeeded: its pending credentials become
        its BMC's. None when nothing was pending (the task found no BMC)."""
        now = self._clock()
        async with self._tx(write=True) as s:
            node = await self._load(s, name)
            pending = await s.scalar(select(t.BmcPending).where(t.BmcPending.node_id == node.id))
            if pending is None:
                return None
            address = pending.address or (node.bmc.address if node.bmc is not None else "dhcp")
            if node.bmc is None:
                node.bmc = t.Bmc(address=address, username=pending.username,
                                 password_encrypted=pending.password_encrypted, updated_at=now)
            else:
                node.bmc.address, node.bmc.username = address, pending.username
                node.bmc.password_encrypted, node.bmc.updated_at = pending.password_encrypted, now
            await s.delete(pending)
            node.updated_at = now
            self._event(s, node, "bmc-set", None, None, actor, f"address={address} user={pending.username}")
            await s.flush()
            return _node_record(node).bmc

    async def drop_pending_bmc(self, name: str) -> None:
        """The bmc task failed or found no BMC: forget the credentials it was handed."""
        async with self._tx(write=True) as s:
            node = await self._load(s, name)
            pending = await s.scalar(select(t.BmcPending).where(t.BmcPending.node_id == node.id))
            if pending is not None:
                await s.delete(pending)

    async def bmc_credentials(self, name: str) -> BmcCredentials:
        async with self._tx(write=False) as s:
            node = await self._load(s, name)
            if node.bmc is None:
                raise NotFound(f"node {name} has no BMC")
            return BmcCredentials(node.bmc.address, node.bmc.username,
                                  self._secrets.open(node.bmc.password_encrypted))

