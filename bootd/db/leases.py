"""Lease rows: the durable copy of the DHCP lease table, written in group commits."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC
from ipaddress import IPv4Address

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert

from bootd.db import schema as t
from bootd.db.store import Store, _lease_record
from bootd.errors import NotFound
from bootd.model.names import mac_address
from bootd.model.records import LeaseRecord

# SQLAlchemy's storage format for DateTime on SQLite (naive UTC; UtcDateTime reads it back aware).
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"
SQLITE_UPSERT = text(
    "INSERT INTO leases (ip, mac, client_id, state, expires_at, hostname, updated_at) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
    "json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]'), "
    "json_extract(value, '$[6]') FROM json_each(:rows) WHERE true "
    "ON CONFLICT (ip) DO UPDATE SET mac = excluded.mac, client_id = excluded.client_id, "
    "state = excluded.state, expires_at = excluded.expires_at, hostname = excluded.hostname, "
    "updated_at = excluded.updated_at")


class LeaseRows(Store):
    async def put_lease(self, lease: LeaseRecord) -> None:
        """Insert or replace the lease of lease.ip (durable when this returns)."""
        await self.put_leases([LeaseRecord(lease.ip, mac_address(lease.mac), lease.state,
                                           lease.expires_at, lease.client_id, lease.hostname)])

    async def put_leases(self, leases: Sequence[LeaseRecord]) -> None:
        """Many leases in one transaction: one commit (one fsync) for a batch of ACKs.
        PostgreSQL: one INSERT .. ON CONFLICT (ip) DO UPDATE, executemany. SQLite: the
        same upsert over json_each of ONE parameter: its driver runs in a thread and
        gives up the GIL around every statement it steps, and with the event loop busy
        answering packets each hand-back waits for the interpreter's switch interval
        (measured: ACKs 250 ms late under overload with an executemany; a multi-row
        VALUES costs SQLAlchemy a fresh compile per batch). Never the ORM's bookkeeping."""
        latest = {lease.ip: lease for lease in leases}
        now = self._clock()
        async with self._tx(write=True) as s:
            if self._dialect != "postgresql":
                stamp = now.astimezone(UTC).strftime(SQLITE_TIME)
                rows = [[str(ip), x.mac, x.client_id, x.state.value,
                         x.expires_at.astimezone(UTC).strftime(SQLITE_TIME), x.hostname, stamp]
                        for ip, x in latest.items()]
                await s.execute(SQLITE_UPSERT, {"rows": json.dumps(rows)})
                return
            stmt = pg_insert(t.Lease)
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.Lease.ip],
                set_={c: getattr(stmt.excluded, c) for c in
                      ("mac", "client_id", "state", "expires_at", "hostname", "updated_at")})
            await s.execute(stmt, [{"ip": str(ip), "mac": x.mac, "client_id": x.client_id,
                                    "state": x.state.value, "expires_at": x.expires_at,
                                    "hostname": x.hostname, "updated_at": now}
                                   for ip, x in latest.items()])

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

