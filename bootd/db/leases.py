"""Lease rows: the durable copy of the DHCP lease table, written in group commits."""

from __future__ import annotations

from collections.abc import Sequence
from ipaddress import IPv4Address

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bootd.db import schema as t
from bootd.db.store import Store, _lease_record
from bootd.errors import NotFound
from bootd.model.names import mac_address
from bootd.model.records import LeaseRecord


class LeaseRows(Store):
    async def put_lease(self, lease: LeaseRecord) -> None:
        """Insert or replace the lease of lease.ip (durable when this returns)."""
        await self.put_leases([LeaseRecord(lease.ip, mac_address(lease.mac), lease.state,
                                           lease.expires_at, lease.client_id, lease.hostname)])

    async def put_leases(self, leases: Sequence[LeaseRecord]) -> None:
        """Many leases in one transaction: one commit (one fsync) for a batch of ACKs.
        One INSERT .. ON CONFLICT (ip) DO UPDATE for all of them: the DHCP hot path
        cannot afford the ORM's per-row bookkeeping."""
        latest = {lease.ip: lease for lease in leases}
        now = self._clock()
        rows = [{"ip": str(ip), "mac": x.mac, "client_id": x.client_id, "state": x.state.value,
                 "expires_at": x.expires_at, "hostname": x.hostname, "updated_at": now}
                for ip, x in latest.items()]
        async with self._tx(write=True) as s:
            insert = pg_insert if self._dialect == "postgresql" else sqlite_insert
            stmt = insert(t.Lease)
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.Lease.ip],
                set_={c: getattr(stmt.excluded, c) for c in
                      ("mac", "client_id", "state", "expires_at", "hostname", "updated_at")})
            await s.execute(stmt, rows)

    async def get_lease(self, ip: IPv4Address) -> LeaseRecord | None:
        async with self._tx(write=False) as s:
            row = await s.scalar(select(t.Lease).where(t.Lease.ip == str(ip)))
            return None if row is None else _lease_record(row)

    async def list_leases(self) -> list[LeaseRecord]:
        async with self._tx(write=False) as s:
            rows = await s.scalars(select(t.Lease).order_by(t.Lease.id))
            return sorted((_lease_record(r) for r in rows), key=lambda r: int(r.ip))

    async def delete_lease(self, ip: IPv4Address) -> None:
        async with self._tx(write=True) as s:
            row = await s.scalar(select(t.Lease).where(t.Lease.ip == str(ip)))
            if row is None:
                raise NotFound(f"no lease for {ip}")
            await s.delete(row)

