"""The database session and the pieces every part of the repository shares.

Each public method of the repository is one transaction (`_tx`); writes open
theirs with the WRITE option (BEGIN IMMEDIATE on SQLite, see engine.py).
Errors leave here as Conflict or DatabaseUnavailable carrying the driver's
reason only: SQLAlchemy's own text holds the statement and its bound
parameters (tokens, sealed passwords).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from ipaddress import IPv4Address

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bootd.db import schema as t
from bootd.db.engine import WRITE
from bootd.errors import Conflict, DatabaseUnavailable, NotFound
from bootd.keys import SecretBox
from bootd.model.records import (
    BmcRecord,
    EventRecord,
    InterfaceRecord,
    LeaseRecord,
    LeaseState,
    NodeRecord,
)
from bootd.model.states import NodeState

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    def __init__(self, engine: AsyncEngine, secrets: SecretBox, clock: Clock = utcnow) -> None:
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._dialect = engine.dialect.name
        self._secrets = secrets
        self._clock = clock

    @asynccontextmanager
    async def _tx(self, *, write: bool) -> AsyncIterator[AsyncSession]:
        try:
            async with self._sessions() as session, session.begin():
                if write:  # procure the connection with WRITE before its BEGIN is sent
                    await session.connection(execution_options={WRITE: True})
                yield session
        except IntegrityError as exc:
            raise Conflict(f"conflicts with existing inventory: {_reason(exc)}") from None
        except SQLAlchemyError as exc:
            raise DatabaseUnavailable(f"inventory database error: {_reason(exc)}") from None

    # -- health --------------------------------------------------------------

    async def ping(self) -> None:
        async with self._tx(write=False) as s:
            await s.execute(text("SELECT 1"))

    # -- helpers -------------------------------------------------------------

    async def _load(self, s: AsyncSession, name: str) -> t.Node:
        node = await s.scalar(select(t.Node).where(t.Node.name == name.lower()))
        if node is None:
            raise NotFound(f"no node named {name!r}")
        return node

    def _event(self, s: AsyncSession, node: t.Node, kind: str, from_state: NodeState | None,
               to_state: NodeState | None, actor: str, message: str) -> None:
        s.add(t.Event(node_id=node.id, node_name=node.name, at=self._clock(), kind=kind,
                      from_state=None if from_state is None else from_state.value,
                      to_state=None if to_state is None else to_state.value,
                      actor=actor, message=message))




def _reason(exc: SQLAlchemyError) -> str:
    """The driver's reason, never SQLAlchemy's str(): that carries the statement and
    its bound parameters (a new node's token, a sealed password) into 503 bodies,
    logs and /healthz."""
    orig = getattr(exc, "orig", None)
    if orig is not None:
        first = (str(orig).splitlines() or [""])[0].strip()
        return f"{type(orig).__name__}: {first[:200]}" if first else type(orig).__name__
    return type(exc).__name__


def token_hash(token: str) -> str:
    """SHA-256 hex of a node token; hostile bytes (not UTF-8) are just a wrong token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _node_record(n: t.Node) -> NodeRecord:
    ifaces: Sequence[t.Interface] = n.interfaces
    return NodeRecord(
        name=n.name, state=NodeState(n.state), allocated=n.allocated, profile=n.profile,
        admin_ip=None if n.admin_ip is None else IPv4Address(n.admin_ip), rack=n.rack,
        location=n.location,
        interfaces=tuple(InterfaceRecord(i.mac, i.is_boot) for i in ifaces),
        bmc=None if n.bmc is None else BmcRecord(n.bmc.address, n.bmc.username, n.bmc.reachable,
                                                 n.bmc.power, n.bmc.last_error, n.bmc.checked_at),
        created_at=n.created_at, updated_at=n.updated_at, state_changed_at=n.state_changed_at,
        retries=n.retries or 0, inventory=n.inventory, origin=n.origin, version=n.version or 0,
    )


def _event_record(e: t.Event) -> EventRecord:
    return EventRecord(
        id=e.id, node_name=e.node_name, at=e.at, kind=e.kind,
        from_state=None if e.from_state is None else NodeState(e.from_state),
        to_state=None if e.to_state is None else NodeState(e.to_state),
        actor=e.actor, message=e.message)


def _lease_record(r: t.Lease) -> LeaseRecord:
    return LeaseRecord(ip=IPv4Address(r.ip), mac=r.mac, state=LeaseState(r.state),
                       expires_at=r.expires_at, client_id=r.client_id, hostname=r.hostname)
