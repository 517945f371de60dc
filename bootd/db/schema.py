"""Tables of the inventory (SQLAlchemy 2 declarative).

The same schema runs on SQLite and PostgreSQL, so types stay portable: MACs and
IPs are canonical strings, times are timezone-aware UTC, enums are stored as
their string values with CHECK-free columns (a new state must not need a table
rewrite on SQLite). Alembic migrations in migrations/versions must match this
module; a test compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so migrations can address them on both backends.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both backends (SQLite keeps no zone; it comes back naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime stored in the inventory")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    state: Mapped[str] = mapped_column(String(32))
    allocated: Mapped[bool] = mapped_column(Boolean, default=False)
    profile: Mapped[str | None] = mapped_column(String(64))
    admin_ip: Mapped[str | None] = mapped_column(String(15), unique=True)
    rack: Mapped[str | None] = mapped_column(String(64))
    location: Mapped[str | None] = mapped_column(String(255))
    # Per-node secret that authenticates the node's own callbacks (random, 256
    # bits): stored as its SHA-256 (hex) for lookup and verification, and sealed
    # under the state directory's key for the node's own boot script, so a copy
    # of the database alone hands out no token.
    token: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    token_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Optimistic concurrency: every write of a node bumps it, and a write that
    # finds another version lost a race (two moves at once: exactly one wins).
    version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # "booted" (recorded from a PXE boot) or "operator" (added by API/CLI):
    # booted machines that never report expire.
    origin: Mapped[str] = mapped_column(String(16), default="operator", server_default="operator")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    state_changed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # Timeouts spent in the current state (the timer's retry budget); 0 on every move.
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # What the discovery agent reported (JSON text), shown by `nodes show`.
    inventory: Mapped[str | None] = mapped_column(Text)

    interfaces: Mapped[list[Interface]] = relationship(
        back_populates="node", cascade="all, delete-orphan", lazy="selectin",
        order_by="Interface.id")
    bmc: Mapped[Bmc | None] = relationship(
        back_populates="node", cascade="all, delete-orphan", lazy="selectin")


class Interface(Base):
    __tablename__ = "interfaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), index=True)
    mac: Mapped[str] = mapped_column(String(17), unique=True)
    is_boot: Mapped[bool] = mapped_column(Boolean, default=False)

    node: Mapped[Node] = relationship(back_populates="interfaces")


class Lease(Base):
    __tablename__ = "leases"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ip: Mapped[str] = mapped_column(String(15), unique=True)
    mac: Mapped[str] = mapped_column(String(17), index=True)
    client_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime())
    hostname: Mapped[str | None] = mapped_column(String(255))
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Bmc(Base):
    __tablename__ = "bmcs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), unique=True)
    address: Mapped[str] = mapped_column(String(255))
    username: Mapped[str] = mapped_column(String(64))
    # Fernet token (AES-128-CBC + HMAC-SHA256) under the key in the state directory.
    password_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())
    # What bootd last saw of the BMC: reachable, power state, the last error.
    reachable: Mapped[bool | None] = mapped_column(Boolean)
    power: Mapped[str | None] = mapped_column(String(16))
    last_error: Mapped[str | None] = mapped_column(Text)
    checked_at: Mapped[datetime | None] = mapped_column(UtcDateTime())

    node: Mapped[Node] = relationship(back_populates="bmc")


class BmcPending(Base):
    """New BMC credentials handed to a node's bmc task, not yet reported applied.
    The unique address is the reservation: two nodes cannot be handed one address."""

    __tablename__ = "bmc_pending"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), unique=True)
    address: Mapped[str | None] = mapped_column(String(255), unique=True)
    username: Mapped[str] = mapped_column(String(64))
    password_encrypted: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())


class Event(Base):
    """Append-only: rows are inserted, never updated. They outlive their node
    (node_id is set NULL on delete; node_name keeps the history readable)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_node_name_id", "node_name", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"))
    node_name: Mapped[str] = mapped_column(String(63))
    at: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(32))
    to_state: Mapped[str | None] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text, default="")


class Admission(Base):
    """A node's place in the install waves (bootd.model.admission): one row per node
    that booted into a heavy state. Waiting rows are the queue (ordered by rack,
    then allocated_at); admitted rows hold a slot until the node leaves `state`.
    Rows live in the database so the queue survives a restart and the limits hold
    across several daemons (counted under a lock)."""

    __tablename__ = "admissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id", ondelete="CASCADE"), unique=True)
    state: Mapped[str] = mapped_column(String(32))          # the heavy state this place is for
    rack: Mapped[str | None] = mapped_column(String(64))
    daemon: Mapped[str] = mapped_column(String(64))         # the daemon whose subnet it boots from
    rollout_id: Mapped[int | None] = mapped_column(ForeignKey("rollouts.id", ondelete="SET NULL"))
    allocated_at: Mapped[datetime] = mapped_column(UtcDateTime())  # when it entered `state`: queue order
    queued_at: Mapped[datetime] = mapped_column(UtcDateTime())     # its first ask
    asked_at: Mapped[datetime] = mapped_column(UtcDateTime())      # its last ask (a silent one is forgotten)
    admitted_at: Mapped[datetime | None] = mapped_column(UtcDateTime())


class Rollout(Base):
    """One operator command installing many nodes: `bootd rollout start`."""

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    profile: Mapped[str] = mapped_column(String(64))
    selector: Mapped[str] = mapped_column(Text)              # JSON: what the operator selected
    max_parallel: Mapped[int | None] = mapped_column(Integer)  # this rollout's own wave limit
    max_failures: Mapped[int] = mapped_column(Integer)         # past it, the rollout pauses itself
    state: Mapped[str] = mapped_column(String(16))             # running, paused, cancelled, done
    reason: Mapped[str] = mapped_column(Text, default="")      # why it paused/ended
    actor: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime())
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class RolloutNode(Base):
    __tablename__ = "rollout_nodes"
    __table_args__ = (UniqueConstraint("rollout_id", "node_name", name="uq_rollout_nodes_rollout_node"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id", ondelete="CASCADE"), index=True)
    node_id: Mapped[int | None] = mapped_column(ForeignKey("nodes.id", ondelete="SET NULL"), index=True)
    node_name: Mapped[str] = mapped_column(String(63))
    rack: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))   # pending, active, ready, problem, cancelled
    detail: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime())


class SubnetClaim(Base):
    """Which daemon serves a subnet, when several share one database: a second daemon
    claiming a served subnet refuses to start. heartbeat_at lets a dead daemon's
    claim be taken over."""

    __tablename__ = "subnet_claims"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cidr: Mapped[str] = mapped_column(String(18), unique=True)
    daemon: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(15))   # the claiming daemon's admin address
    claimed_at: Mapped[datetime] = mapped_column(UtcDateTime())
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime())


class DhcpFinding(Base):
    """Another DHCP server seen on an admin interface (bootd.dhcp.rogue)."""

    __tablename__ = "dhcp_findings"
    __table_args__ = (UniqueConstraint("daemon", "interface", "server_ip", "server_mac",
                                       name="uq_dhcp_findings_server"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    daemon: Mapped[str] = mapped_column(String(64))
    interface: Mapped[str] = mapped_column(String(16))
    server_ip: Mapped[str] = mapped_column(String(15))
    server_mac: Mapped[str] = mapped_column(String(17))
    method: Mapped[str] = mapped_column(String(8))     # passive, active
    offered: Mapped[str] = mapped_column(Text, default="")  # what it offered (address, boot file, router)
    first_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime())
    count: Mapped[int] = mapped_column(Integer, default=1)
