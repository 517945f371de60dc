"""Rogue DHCP findings (table dhcp_findings): persistence only.

One row per (daemon, interface, server address, server MAC). `record` adds a
batch of sightings in one transaction with INSERT .. ON CONFLICT DO UPDATE
(count += n, last_seen, how and what it last offered), so a server answering
hundreds of clients costs one row write per flush, not one per packet, and two
writers of the same key (a restart racing a flush) cannot insert it twice.
What a sighting means and when to write is bootd.fleet.findings' business.
The peer daemons' addresses come from their subnet claims (table subnet_claims).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bootd.db import schema as t
from bootd.db.store import Store
from bootd.model.findings import FindingRecord, Method


@dataclass(frozen=True, slots=True)
class FindingUpdate:
    """Sightings of one server since the last write."""

    interface: str
    server_ip: IPv4Address
    server_mac: str
    method: Method
    offered: str
    count: int
    first_seen: datetime
    last_seen: datetime


def _record(row: t.DhcpFinding) -> FindingRecord:
    return FindingRecord(daemon=row.daemon, interface=row.interface, server_ip=IPv4Address(row.server_ip),
                         server_mac=row.server_mac, method=Method(row.method), offered=row.offered,
                         first_seen=row.first_seen, last_seen=row.last_seen, count=row.count)


class FindingRows(Store):
    def __init__(self, store: Store) -> None:
        # The repository's sessions, dialect and clock: one engine, one pool.
        self._sessions, self._dialect = store._sessions, store._dialect
        self._secrets, self._clock = store._secrets, store._clock

    async def record(self, daemon: str, updates: Sequence[FindingUpdate]) -> list[FindingRecord]:
        """Upsert each update under `daemon`; the rows as they are after it, in order."""
        if not updates:
            return []
        insert = pg_insert if self._dialect == "postgresql" else sqlite_insert
        out = []
        async with self._tx(write=True) as s:
            for u in updates:
                stmt = insert(t.DhcpFinding).values(
                    daemon=daemon, interface=u.interface[:16], server_ip=str(u.server_ip),
                    server_mac=u.server_mac[:17], method=u.method.value, offered=u.offered[:2000],
                    first_seen=u.first_seen, last_seen=u.last_seen, count=u.count)
                stmt = stmt.on_conflict_do_update(
                    index_elements=[t.DhcpFinding.daemon, t.DhcpFinding.interface, t.DhcpFinding.server_ip,
                                    t.DhcpFinding.server_mac],
                    set_={"count": t.DhcpFinding.count + stmt.excluded.count,
                          "last_seen": stmt.excluded.last_seen, "method": stmt.excluded.method,
                          "offered": stmt.excluded.offered})
                row = (await s.execute(stmt.returning(t.DhcpFinding))).scalar_one()
                out.append(_record(row))
        return out

    async def peer_addresses(self, daemon: str) -> set[IPv4Address]:
        """Admin addresses of the other daemons sharing this database (their subnet claims):
        bootd peers serving their own subnets, expected on a shared admin link."""
        query = select(t.SubnetClaim.address).where(t.SubnetClaim.daemon != daemon).distinct()
        async with self._tx(write=False) as s:
            return {IPv4Address(a) for a in await s.scalars(query)}

    async def list_findings(self, daemon: str | None = None) -> list[FindingRecord]:
        """Every finding (of one daemon, when given), the most recently seen first."""
        query = select(t.DhcpFinding).order_by(t.DhcpFinding.last_seen.desc(), t.DhcpFinding.id)
        if daemon is not None:
            query = query.where(t.DhcpFinding.daemon == daemon)
        async with self._tx(write=False) as s:
            return [_record(row) for row in await s.scalars(query)]
