"""The repository: every read and write of the inventory goes through here.

It is the only writer of node state. Each public method is one transaction;
writes open theirs with the WRITE option (BEGIN IMMEDIATE on SQLite, see
engine.py). Every change to a node appends a row to its event log in the same
transaction, so the log and the state can never disagree.

Uniqueness (name, MAC, admin IP, lease IP) is checked inside the transaction
for a clear message, and the database's unique constraints catch the races;
both end as `Conflict`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from ipaddress import IPv4Address

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from bootd.db import schema as t
from bootd.db.engine import WRITE
from bootd.errors import Conflict, DatabaseUnavailable, InvalidInput, NotFound
from bootd.keys import SecretBox, new_node_token
from bootd.model.events import Changes, Effect, Emit, RotateToken
from bootd.model.names import mac_address, node_name, short_text
from bootd.model.records import (
    BmcCredentials,
    BmcRecord,
    DirectoryEntry,
    EventRecord,
    InterfaceRecord,
    LeaseRecord,
    LeaseState,
    NewNode,
    NodeRecord,
)
from bootd.model.states import NodeState

Clock = Callable[[], datetime]
_PG_BMC_LOCK = 0x626D6331  # "bmc1": advisory lock key for BMC address reservations


def utcnow() -> datetime:
    return datetime.now(UTC)


class Repository:
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

    # -- nodes -------------------------------------------------------------

    async def add_node(self, spec: NewNode, *, actor: str) -> NodeRecord:
        name = node_name(spec.name)
        macs = [mac_address(m) for m in spec.macs]
        rack = None if spec.rack is None else short_text(spec.rack, "rack", 64)
        profile = None if spec.profile is None else short_text(spec.profile, "profile", 64)
        if len(set(macs)) != len(macs):
            raise Conflict(f"node {name}: a MAC address is listed twice")
        now = self._clock()
        async with self._tx(write=True) as s:
            if await s.scalar(select(t.Node.id).where(t.Node.name == name)) is not None:
                raise Conflict(f"a node named {name} already exists")
            for mac in macs:
                owner = await s.scalar(
                    select(t.Node.name).join(t.Interface).where(t.Interface.mac == mac))
                if owner is not None:
                    raise Conflict(f"MAC {mac} already belongs to node {owner}")
            if spec.admin_ip is not None:
                owner = await s.scalar(select(t.Node.name).where(t.Node.admin_ip == str(spec.admin_ip)))
                if owner is not None:
                    raise Conflict(f"address {spec.admin_ip} is already reserved for node {owner}")
            node = t.Node(
                name=name, state=spec.state.value, allocated=False, profile=profile,
                admin_ip=None if spec.admin_ip is None else str(spec.admin_ip), rack=rack,
                location=None, created_at=now, updated_at=now, origin=spec.origin,
                state_changed_at=now, bmc=None,
                interfaces=[t.Interface(mac=m, is_boot=(i == 0)) for i, m in enumerate(macs)],
            )
            self.rotate_token(node)
            s.add(node)
            await s.flush()
            self._event(s, node, "created", None, spec.state, actor, f"macs={','.join(macs) or '-'}")
            return _node_record(node)

    async def get_node(self, name: str) -> NodeRecord:
        async with self._tx(write=False) as s:
            return _node_record(await self._load(s, name))

    async def find_node_by_mac(self, mac: str) -> NodeRecord | None:
        mac = mac_address(mac)
        async with self._tx(write=False) as s:
            node = await s.scalar(select(t.Node).join(t.Interface).where(t.Interface.mac == mac))
            return None if node is None else _node_record(node)

    async def list_nodes(self) -> list[NodeRecord]:
        async with self._tx(write=False) as s:
            rows = await s.scalars(select(t.Node).order_by(t.Node.name))
            return [_node_record(n) for n in rows]

    async def directory(self) -> list[DirectoryEntry]:
        """Every interface with its node's addressing facts, for the in-memory directory."""
        async with self._tx(write=False) as s:
            rows = await s.execute(
                select(t.Interface.mac, t.Node.name, t.Node.admin_ip, t.Node.location, t.Node.state,
                       t.Node.profile, t.Node.token_sealed)
                .join(t.Node, t.Interface.node_id == t.Node.id))
            return [DirectoryEntry(mac, name, None if ip is None else IPv4Address(ip), loc,
                                   NodeState(state), profile, sealed)
                    for mac, name, ip, loc, state, profile, sealed in rows]

    async def inventory_stamp(self) -> int:
        """Changes whenever any node changes: every change appends an event in its transaction."""
        async with self._tx(write=False) as s:
            return int(await s.scalar(select(func.coalesce(func.max(t.Event.id), 0))) or 0)

    async def register_booted(self, mac: str, location: str | None, *, actor: str) -> NodeRecord | None:
        """A machine nobody registered network-booted: record it in discovering.
        None if its MAC belongs to a node already (another process was faster)."""
        mac = mac_address(mac)
        try:
            spec = NewNode(f"node-{mac.replace(':', '')}", (mac,), origin="booted")
            node = await self.add_node(spec, actor=actor)
        except Conflict:
            return None
        if location is not None:
            node = await self.set_location(node.name, location, actor=actor)
        return node

    async def set_location(self, name: str, location: str, *, actor: str) -> NodeRecord:
        location = short_text(location, "location", 255)
        async with self._tx(write=True) as s:
            node = await self._load(s, name)
            if node.location != location:
                self._event(s, node, "located", None, None, actor, f"location={location}")
                node.location, node.updated_at = location, self._clock()
            await s.flush()
            return _node_record(node)

    async def verify_token(self, name: str, token: str) -> bool:
        """Constant-time check of a node's own callback token (against its stored hash)."""
        async with self._tx(write=False) as s:
            stored = await s.scalar(select(t.Node.token).where(t.Node.name == name.lower()))
        return stored is not None and hmac.compare_digest(stored, token_hash(token))

    async def find_node_by_name(self, name: str) -> NodeRecord | None:
        async with self._tx(write=False) as s:
            node = await s.scalar(select(t.Node).where(t.Node.name == name.lower()))
            return None if node is None else _node_record(node)

    async def node_by_token(self, token: str) -> NodeRecord | None:
        """The node a (256-bit, random) token belongs to: how an agent finds its
        node again after the operator renamed it."""
        if len(token) < 32:
            return None
        async with self._tx(write=False) as s:
            node = await s.scalar(select(t.Node).where(t.Node.token == token_hash(token)))
            return None if node is None else _node_record(node)

    async def node_token(self, name: str) -> str:
        """For rendering the node's own boot script only; never for listings."""
        async with self._tx(write=False) as s:
            node = await self._load(s, name)
            if node.token_sealed is None:
                raise NotFound(f"node {node.name} has no sealed token yet (start bootd once)")
            return self._secrets.open(node.token_sealed)

    def open_token(self, sealed: bytes) -> str:
        """A token from a directory entry's sealed copy (no database access)."""
        return self._secrets.open(sealed)

    def rotate_token(self, node: t.Node) -> str:
        """A new token for `node` (in its caller's transaction): the hash for
        verification, the sealed copy for its boot script. Returns the token."""
        token = new_node_token()
        node.token, node.token_sealed = token_hash(token), self._secrets.seal(token)
        return token

    async def seal_tokens(self) -> int:
        """Rows written before migration 0004 hold a plain token and no sealed copy:
        seal and hash them (the key is only here, not in the migration). Idempotent."""
        async with self._tx(write=True) as s:
            rows = list(await s.scalars(select(t.Node).where(t.Node.token_sealed.is_(None))))
            for node in rows:
                plain = node.token
                node.token, node.token_sealed = token_hash(plain), self._secrets.seal(plain)
            return len(rows)

    async def events(self, name: str, limit: int = 1000) -> list[EventRecord]:
        """A node's log: by its id while it exists (so it spans renames), else by name."""
        async with self._tx(write=False) as s:
            node_id = await s.scalar(select(t.Node.id).where(t.Node.name == name.lower()))
            which = t.Event.node_id == node_id if node_id is not None else t.Event.node_name == name
            rows = await s.scalars(select(t.Event).where(which).order_by(t.Event.id.desc()).limit(limit))
            return [_event_record(e) for e in reversed(list(rows))]

    # -- lifecycle -----------------------------------------------------------

    async def commit(self, name: str, version: int, changes: Changes, effects: Sequence[Effect], *,
                     actor: str) -> NodeRecord:
        """Write one lifecycle decision (model.lifecycle.apply) about node `name` as it
        was read at `version`, in one transaction: its fields, its event rows, a new
        token. The version is bumped with UPDATE .. WHERE version = :v first, which
        also takes the row's write lock (PostgreSQL) or runs under BEGIN IMMEDIATE
        (SQLite): of two decisions made from the same reading exactly one commits,
        the other gets Conflict. Returns the record after the change; for a deleted
        node, its last record with state DELETE. Persistence only: what changes was
        decided by the caller."""
        async with self._tx(write=True) as s:
            bumped = await s.scalar(
                update(t.Node).where(t.Node.name == name.lower(), t.Node.version == version)
                .values(version=version + 1).returning(t.Node.id))
            if bumped is None:
                if await s.scalar(select(t.Node.id).where(t.Node.name == name.lower())) is None:
                    raise NotFound(f"no node named {name!r}")
                raise Conflict(f"node {name} changed meanwhile, try again")
            node = await self._load(s, name)
            if changes.name is not None and changes.name != node.name:
                if await s.scalar(select(t.Node.id).where(t.Node.name == changes.name)) is not None:
                    raise Conflict(f"a node named {changes.name} already exists")
                node.name = changes.name
            if changes.profile is not None:
                node.profile = changes.profile
            if changes.allocated is not None:
                node.allocated = changes.allocated
            if changes.inventory is not None:
                node.inventory = changes.inventory
            if changes.state is not None:
                node.state, node.state_changed_at = changes.state.value, changes.at
            if changes.retries is not None:
                node.retries, node.state_changed_at = changes.retries, changes.at
            node.updated_at = changes.at
            for effect in effects:
                if isinstance(effect, Emit):
                    self._event(s, node, effect.kind, effect.from_state, effect.to_state, actor,
                                effect.message)
                elif isinstance(effect, RotateToken):
                    self.rotate_token(node)
            await s.flush()
            record = _node_record(node)
            if changes.delete:
                await s.delete(node)
                return replace(record, state=NodeState.DELETE)
            return record

    async def record_event(self, name: str, kind: str, message: str, *, actor: str) -> None:
        """A note in a node's log that changes nothing else (a task's result, say)."""
        async with self._tx(write=True) as s:
            node = await self._load(s, name)
            self._event(s, node, kind, None, None, actor, message)

    async def update_node(self, name: str, *, rack: str | None = None, profile: str | None = None,
                          actor: str) -> NodeRecord:
        """Operator edits that do not move the node (its state has its own writer)."""
        async with self._tx(write=True) as s:
            node = await self._load(s, name)
            changes = []
            if rack is not None:
                node.rack = short_text(rack, "rack", 64) if rack else None
                changes.append(f"rack={rack or '-'}")
            if profile is not None:
                node.profile = short_text(profile, "profile", 64) if profile else None
                changes.append(f"profile={profile or '-'}")
            if changes:
                node.updated_at, node.version = self._clock(), (node.version or 0) + 1
                self._event(s, node, "updated", None, None, actor, " ".join(changes))
            await s.flush()
            return _node_record(node)

    # -- BMCs ----------------------------------------------------------------

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

    # -- leases --------------------------------------------------------------

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
