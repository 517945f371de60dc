"""Subnet claim rows: the plan of bootd/model/claims.py carried out in one transaction.

Every claim, heartbeat and release reads the whole (small) table and writes in
one transaction under a lock: `pg_advisory_xact_lock` on PostgreSQL (two
daemons starting together must not both see a subnet free), BEGIN IMMEDIATE
on SQLite (the write lock is taken before the read). Deletes, updates and
inserts are Core statements run in that order, so a stale claim deleted and
the same cidr inserted again never meet the unique constraint (the ORM's unit
of work would flush the insert first).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import timedelta
from ipaddress import IPv4Address, IPv4Network

from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bootd.db import schema as t
from bootd.db.engine import WRITE
from bootd.db.store import Clock, _reason, utcnow
from bootd.errors import DatabaseUnavailable
from bootd.model.claims import STALE_AFTER, ClaimPlan, SubnetClaim, plan

_PG_CLAIM_LOCK = 0x626F6F7463  # "bootc": shared by every daemon on the database


def _claim(row: t.SubnetClaim) -> SubnetClaim:
    return SubnetClaim(IPv4Network(row.cidr), row.daemon, IPv4Address(row.address), row.claimed_at,
                       row.heartbeat_at)


class ClaimRows:
    def __init__(self, engine: AsyncEngine, clock: Clock = utcnow) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._dialect = engine.dialect.name
        self._clock = clock

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[AsyncSession]:
        try:
            async with self._sessions() as session, session.begin():
                await session.connection(execution_options={WRITE: True})  # BEGIN IMMEDIATE on SQLite
                if self._dialect == "postgresql":
                    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_CLAIM_LOCK})
                yield session
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"subnet claims: {_reason(exc)}") from None

    async def claims(self) -> list[SubnetClaim]:
        async with self._locked() as s:
            return [_claim(r) for r in await s.scalars(select(t.SubnetClaim).order_by(t.SubnetClaim.cidr))]

    async def sync(self, daemon: str, address: IPv4Address, subnets: Sequence[IPv4Network], *,
                   stale_after: timedelta = STALE_AFTER, all_or_nothing: bool = True) -> ClaimPlan:
        """Claim `subnets` for `daemon` (renewing its own, taking over stale ones, releasing
        its others) and return the plan carried out. With `all_or_nothing` a refusal
        writes nothing (the start of a daemon); without, the refused subnets are left
        and the rest is done (a heartbeat after a reload added a subnet)."""
        async with self._locked() as s:
            now = self._clock()
            existing = [_claim(r) for r in await s.scalars(select(t.SubnetClaim))]
            decided = plan(daemon, subnets, existing, now, stale_after)
            if decided.refused and all_or_nothing:
                return decided
            blocked = {r.subnet for r in decided.refused}
            gone = [str(c.cidr) for c in decided.taken_over] + [str(n) for n in decided.release]
            if gone:
                await s.execute(delete(t.SubnetClaim).where(t.SubnetClaim.cidr.in_(gone)))
            if decided.renew:
                await s.execute(update(t.SubnetClaim)
                                .where(t.SubnetClaim.daemon == daemon,
                                       t.SubnetClaim.cidr.in_([str(n) for n in decided.renew]))
                                .values(heartbeat_at=now, address=str(address)))
            fresh = [n for n in decided.take if n not in blocked]
            if fresh:
                await s.execute(insert(t.SubnetClaim), [
                    {"cidr": str(n), "daemon": daemon, "address": str(address), "claimed_at": now,
                     "heartbeat_at": now} for n in fresh])
            return decided

    async def release(self, daemon: str) -> list[IPv4Network]:
        """Every claim of `daemon` (a clean shutdown)."""
        async with self._locked() as s:
            rows = [IPv4Network(c) for c in await s.scalars(
                select(t.SubnetClaim.cidr).where(t.SubnetClaim.daemon == daemon))]
            await s.execute(delete(t.SubnetClaim).where(t.SubnetClaim.daemon == daemon))
            return rows
