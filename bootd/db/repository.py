"""The repository: every read and write of the inventory goes through here.

Persistence only: what a node's state becomes is decided by the lifecycle
(model.lifecycle.apply); `commit` writes that decision. Each public method is
one transaction (store.py). Every change to a node appends a row to its event
log in the same transaction, so the log and the state can never disagree.
Nodes and tokens are here; BMC rows in bmcs.py, lease rows in leases.py.

Uniqueness (name, MAC, admin IP, lease IP) is checked inside the transaction
for a clear message, and the database's unique constraints catch the races;
both end as `Conflict`.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection, Sequence
from dataclasses import replace
from ipaddress import IPv4Address

from sqlalchemy import func, select, update

from bootd.db import schema as t
from bootd.db.admissions import end_admission
from bootd.db.bmcs import BmcRows
from bootd.db.leases import LeaseRows
from bootd.db.store import Clock, _event_record, _node_record, _reason, token_hash, utcnow
from bootd.errors import Conflict, NotFound
from bootd.keys import new_node_token
from bootd.model.events import Changes, Effect, Emit, RotateToken
from bootd.model.names import mac_address, node_name, short_text
from bootd.model.records import DirectoryEntry, EventRecord, NewNode, NodeRecord
from bootd.model.states import NodeState

__all__ = ["Clock", "Repository", "_reason", "token_hash", "utcnow"]


# Event ids re-read behind the last stamp (see `changed_since`).
REREAD = 64


class Repository(BmcRows, LeaseRows):
    """Nodes, their tokens and events; BMCs (bmcs.py) and leases (leases.py) by inheritance."""

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

    async def nodes_named(self, names: Collection[str]) -> list[NodeRecord]:
        """The nodes with these names that exist (a deleted one is simply absent)."""
        async with self._tx(write=False) as s:
            rows = await s.scalars(select(t.Node).where(t.Node.name.in_(sorted(names))))
            return [_node_record(n) for n in rows]

    async def directory(self, name: str | None = None, *,
                        names: Collection[str] | None = None) -> list[DirectoryEntry]:
        """Every interface with its node's addressing facts, for the in-memory directory
        (or only node `name`'s, or `names`', to update a few without reading them all)."""
        query = (select(t.Interface.mac, t.Node.name, t.Node.admin_ip, t.Node.location, t.Node.state,
                        t.Node.profile, t.Node.token_sealed)
                 .join(t.Node, t.Interface.node_id == t.Node.id))
        if name is not None:
            query = query.where(t.Node.name == name.lower())
        if names is not None:
            query = query.where(t.Node.name.in_(sorted(names)))
        async with self._tx(write=False) as s:
            rows = await s.execute(query)
            return [DirectoryEntry(mac, name, None if ip is None else IPv4Address(ip), loc,
                                   NodeState(state), profile, sealed)
                    for mac, name, ip, loc, state, profile, sealed in rows]

    async def changed_since(self, stamp: int, *, limit: int = 500) -> tuple[int, set[str] | None]:
        """(the stamp now, the names of nodes with events after `stamp`), or None for the
        names when more than `limit` changed (reading everything is then cheaper).
        Every change appends an event in its own transaction, so the event log says
        which nodes to re-read. On PostgreSQL ids come from a sequence and a transaction
        that took a lower id can commit after a higher one is visible: the window
        reaches back REREAD ids so such a late commit is still seen."""
        async with self._tx(write=False) as s:
            now = int(await s.scalar(select(func.coalesce(func.max(t.Event.id), 0))) or 0)
            if now == stamp:
                return now, set()
            # SQLite has one writer at a time: its ids commit in order.
            back = REREAD if self._dialect == "postgresql" else 0
            rows = await s.scalars(select(t.Event.node_name).distinct()
                                   .where(t.Event.id > max(0, stamp - back)).limit(limit + 1))
            names = set(rows)
            return now, None if len(names) > limit else names

    async def inventory_stamp(self) -> int:
        """Changes whenever any node changes: every change appends an event in its transaction."""
        async with self._tx(write=False) as s:
            return int(await s.scalar(select(func.coalesce(func.max(t.Event.id), 0))) or 0)

    async def register_booted(self, mac: str, location: str | None, *, actor: str,
                              rack: str | None = None) -> NodeRecord | None:
        """A machine nobody registered network-booted: record it in discovering (in
        `rack`, its subnet's). None if its MAC belongs to a node already (another
        process was faster)."""
        mac = mac_address(mac)
        try:
            spec = NewNode(f"node-{mac.replace(':', '')}", (mac,), rack=rack, origin="booted")
            node = await self.add_node(spec, actor=actor)
        except Conflict:
            return None
        if location is not None:
            node = await self.set_location(node.name, location, actor=actor)
        return node

    async def register_booted_many(self, booted: Sequence[tuple[str, str | None, str | None]], *,
                                   actor: str) -> list[NodeRecord]:
        """Many machines nobody registered, each (MAC, relay location, rack), in one
        transaction: a rack powering on at once costs one commit, not one per machine.
        The same events as `register_booted` (created, then located). A MAC that belongs
        to a node already, or whose name is taken, is skipped. A unique-constraint race
        with another daemon raises Conflict for the whole batch (the caller retries one
        by one)."""
        wanted: dict[str, tuple[str | None, str | None]] = {}
        for mac, location, rack in booted:
            wanted.setdefault(mac_address(mac), (
                None if location is None else short_text(location, "location", 255),
                None if rack is None else short_text(rack, "rack", 64)))
        if not wanted:
            return []
        now = self._clock()
        async with self._tx(write=True) as s:
            taken = set(await s.scalars(select(t.Interface.mac).where(t.Interface.mac.in_(list(wanted)))))
            names = {mac: f"node-{mac.replace(':', '')}" for mac in wanted if mac not in taken}
            used = set(await s.scalars(select(t.Node.name).where(t.Node.name.in_(list(names.values())))))
            nodes = []
            for mac, name in names.items():
                if name in used:
                    continue
                node = t.Node(
                    name=name, state=NodeState.DISCOVERING.value, allocated=False, profile=None,
                    admin_ip=None, rack=wanted[mac][1], location=wanted[mac][0], created_at=now,
                    updated_at=now,
                    origin="booted", state_changed_at=now, bmc=None,
                    interfaces=[t.Interface(mac=mac, is_boot=True)])
                self.rotate_token(node)
                s.add(node)
                nodes.append((mac, node))
            await s.flush()
            for mac, node in nodes:
                self._event(s, node, "created", None, NodeState.DISCOVERING, actor, f"macs={mac}")
                if node.location is not None:
                    self._event(s, node, "located", None, None, actor, f"location={node.location}")
            return [_node_record(node) for _, node in nodes]

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

    async def node_with_token(self, name: str, token: str) -> NodeRecord | None:
        """Node `name` if `token` is its token (constant-time compare), in one read:
        every node callback asks this first (verify, then read, was two)."""
        async with self._tx(write=False) as s:
            node = await s.scalar(select(t.Node).where(t.Node.name == name.lower()))
            if node is None or node.token is None or not hmac.compare_digest(node.token, token_hash(token)):
                return None
            return _node_record(node)

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
            if changes.state is not None or changes.retries is not None:
                # Install waves (bootd.model.admission): the node's slot ends here, in the
                # move's own transaction, unless its new state still holds it; a timeout
                # retry's fresh boot asks again.
                await end_admission(s, node.id, NodeState(node.state), retry=changes.state is None)
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

