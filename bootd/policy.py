"""The policy: what each machine gets when it boots. One seam, asked by every protocol.

DHCP (67 and proxy 4011), TFTP and HTTP all ask here, so they cannot drift
apart. Answers come from memory: the node directory is a copy of the
inventory's addressing facts, reloaded when the change feed says a node
changed, and by a cheap stamp poll for writes from another process (the CLI).
Writes the protocols cause (an unknown machine booted; a relay reported a new
switch port) go to the repository in the background, never in a reply path.

Boot answers by client kind:
- PXE ROM: the first-stage loader for its architecture, by TFTP (config [boot]);
- UEFI HTTP boot: the loader by HTTP, with option 60 "HTTPClient";
- iPXE: the URL of its per-node boot script, so it does not load itself again;
- anything else (an installed OS renewing its lease): no boot options.

Trust. A node's token opens its answer files (root hash) and lets it move
itself through the lifecycle, so the scripts that carry it (discovery and
install states) go only to the peer that holds bootd's lease for the node's
MAC (DHCP tells the policy who holds which address), or to the operator. MACs
are in every broadcast DISCOVER; a lease is the most PXE offers. Local-boot
scripts carry no token and go to anyone. HTTP never records a machine: only a
PXE DHCP exchange does, with the number in flight capped and a token bucket
per interface, so a spoofed-MAC flood costs a bounded amount of work.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address

from bootd import boot, neighbours
from bootd.activity import Activity
from bootd.boot import NodeView
from bootd.config import Config
from bootd.db.repository import Repository
from bootd.errors import BootdError, Conflict, DatabaseUnavailable, NotFound
from bootd.feed import ChangeFeed, NodeChanged
from bootd.fleet.admission import Admissions, wait_script
from bootd.logs import Throttle, kv
from bootd.model.admission import Limit, Wait
from bootd.model.bucket import TokenBucket
from bootd.model.clients import Arch, BootClient, Firmware
from bootd.model.lifecycle import BOOT, Boot
from bootd.model.names import mac_address
from bootd.model.records import DirectoryEntry, NodeRecord
from bootd.model.states import NodeState
from bootd.render import BootTarget, render

log = logging.getLogger("bootd.policy")
REFRESH_SECONDS = 2.0
FULL_RELOAD = 300.0  # seconds: a full re-read now and then, whatever the event log says
ACTOR = "dhcp"
# Registrations of unknown machines: queued (at most MAX_REGISTERING at once, past it
# refused, the client's DHCP retransmission asks again) and written by one task in
# batches of REGISTER_BATCH per transaction, so a storm costs one commit per batch and
# one database connection, never the pool the lease writer needs. Per interface (or
# relay) a token bucket besides: a real rack powering on is a few hundred machines
# over a minute; a spoofed-MAC flood is thousands a second. (Measured with bench/fleet:
# one transaction per machine, 8 in flight, recorded ~66 a second on SQLite and
# refused the rest of a 10,000-machine storm.)
MAX_REGISTERING = 4096
REGISTER_BATCH = 256
# How long an HTTP script request waits for the registration its DHCP exchange started.
REGISTER_WAIT = 3.0


def _mac_from(leaf: str) -> str | None:
    """pxelinux's and GRUB's "01-aa-bb-cc-dd-ee-ff" (ARP type 1, then the MAC)."""
    if not leaf.startswith("01-") or len(leaf) != 20:
        return None
    try:
        return mac_address(leaf[3:])
    except BootdError:
        return None


@dataclass(frozen=True, slots=True)
class BootAnswer:
    filename: str  # a TFTP path, or an http:// URL
    next_server: IPv4Address
    vendor_class: bytes | None = None  # echoed option 60 ("HTTPClient" for UEFI HTTP boot)

    @property
    def is_url(self) -> bool:
        return "://" in self.filename


class NotLeaseHolder(BootdError):
    """A script with a node's token was asked for by a peer that does not hold its lease."""


class Policy:
    """Also a Service: it starts with a full directory and keeps it current."""

    name = "policy"

    def __init__(self, config: Config, repo: Repository | None = None,
                 feed: ChangeFeed | None = None,
                 link_address: Callable[[IPv4Address], str | None] = neighbours.link_address,
                 admissions: Admissions | None = None) -> None:
        self.config = config
        # Install waves: a node booting into a heavy state asks here for its slot
        # (bootd.fleet.admission); None admits everyone.
        self.admissions = admissions
        self._repo = repo
        self._feed = feed
        self._link_address = link_address
        self._refreshing: asyncio.Task[None] | None = None
        self._publishing = False
        self._nodes: dict[str, DirectoryEntry] = {}
        self._macs_by_ip: dict[IPv4Address, str] = {}
        self._ips_by_mac: dict[str, IPv4Address] = {}
        self._stamp = -1
        self._full_at = float("-inf")
        self._pending: dict[str, asyncio.Event] = {}  # MACs being registered or relocated
        self._queue: dict[str, tuple[DirectoryEntry | None, str | None, str | None]] = {}  # to write
        self._registrar: asyncio.Task[None] | None = None
        self._buckets: dict[str, TokenBucket] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._dirty = asyncio.Event()
        self._say = Throttle(60.0, keys=64)
        self.activity = Activity()  # recent fetches per MAC, for the status page's timeline
        self.refused = {"registrations-busy": 0, "registrations-rate": 0, "not-lease-holder": 0}
        if feed is not None:
            feed.subscribe(self._on_change)

    # -- answers (synchronous, from memory) -----------------------------------

    def node(self, mac: str) -> DirectoryEntry | None:
        return self._nodes.get(mac)

    def census(self) -> dict[NodeState, int]:
        """Nodes (those with a MAC) per state, from the directory: no database read."""
        states = {e.name: e.state for e in self._nodes.values()}
        return dict(collections.Counter(states.values()))

    def boot(self, client: BootClient) -> BootAnswer | None:
        server = self.config.admin_address
        base = self.config.http_base
        if client.firmware is Firmware.IPXE and self.config.boot.ipxe_script:
            return BootAnswer(f"{base}/boot/ipxe?mac={client.mac}", server)
        loader = self._loader(client.arch)
        if loader is None:
            return None
        if client.firmware is Firmware.HTTP:
            return BootAnswer(f"{base}/tftp/{loader}", server, b"HTTPClient")  # the TFTP copy
        if client.firmware in (Firmware.PXE, Firmware.IPXE):
            # iPXE here only with boot.ipxe_script = false: it loads the loader
            # (pxelinux) like a PXE ROM would.
            return BootAnswer(loader, server)
        return None

    def _loader(self, arch: Arch | None) -> str | None:
        boot = self.config.boot
        return {
            Arch.BIOS: boot.bios, Arch.BIOS_HTTP: boot.bios,
            Arch.EFI_BC: boot.uefi_x64, Arch.EFI_X64: boot.uefi_x64, Arch.EFI_X64_HTTP: boot.uefi_x64,
            Arch.EFI_IA32: boot.uefi_ia32, Arch.EFI_IA32_HTTP: boot.uefi_ia32,
            Arch.EFI_ARM64: boot.uefi_arm64, Arch.EFI_ARM64_HTTP: boot.uefi_arm64,
        }.get(arch) or None if arch is not None else None  # "": no loader for that firmware

    def fetched(self, peer: IPv4Address | None, kind: str, detail: str) -> None:
        """A file went to `peer` (TFTP transfer, HTTP fetch): into its machine's recent
        activity, when bootd leased it that address."""
        mac = None if peer is None else self._macs_by_ip.get(peer)
        if mac is not None:
            self.activity.record(mac, kind, detail)

    def holds_lease(self, peer: IPv4Address | None, mac: str) -> bool:
        """`peer` holds bootd's lease for `mac`, and, on a directly attached subnet, the
        kernel's ARP entry for `peer` is `mac` too (bootd.neighbours: a spoofed DHCP
        exchange can bind an address to someone else's MAC; it cannot answer ARP as them)."""
        if peer is None or self._macs_by_ip.get(peer) != mac:
            return False
        seen = self._link_address(peer)
        if seen is not None and seen != mac:
            self._refuse("not-lease-holder", f"{peer} holds {mac}'s lease but answers ARP as {seen}")
            return False
        return True

    def lease_of(self, mac: str) -> IPv4Address | None:
        """The address bootd leased to `mac` now (DNS answers a node by it)."""
        return self._ips_by_mac.get(mac)

    def lease_holder(self, ip: IPv4Address) -> str | None:
        """The MAC holding bootd's lease of `ip` now (DNS's PTR answers)."""
        return self._macs_by_ip.get(ip)

    def view(self, mac: str, *, with_token: bool = False) -> NodeView:
        """The rendering facts of the machine with this MAC (known or not); its
        token only when asked for (the caller checked who is asking)."""
        entry = self._nodes.get(mac)
        if entry is None:
            return NodeView("-", mac, NodeState.DISCOVERING)
        token = self._open(entry) if with_token else ""
        return boot.view_of(entry, mac, token)

    def _open(self, entry: DirectoryEntry) -> str:
        if entry.token_sealed is None or self._repo is None:
            return ""
        return self._repo.open_token(entry.token_sealed)

    def target(self, mac: str) -> BootTarget:
        """What this machine boots now, by its state (bootd.boot)."""
        return boot.target(self.view(mac), self.config)

    @staticmethod
    def needs_token(state: NodeState) -> bool:
        """Discovery and install scripts carry the node's token; local boot does not."""
        return BOOT[state] is not Boot.LOCAL

    def leased(self, mac: str, ip: IPv4Address) -> None:
        """DHCP bound `ip` to `mac`: TFTP and HTTP can tell who asks by source address."""
        # An address holds one MAC; a MAC may hold several addresses (a spoofed exchange
        # binding a second address to a MAC must not take the real holder's away).
        previous = self._macs_by_ip.get(ip)
        if previous is not None and previous != mac and self._ips_by_mac.get(previous) == ip:
            del self._ips_by_mac[previous]  # the address passed to another machine
        self._macs_by_ip[ip] = mac
        self._ips_by_mac[mac] = ip

    def unleased(self, ip: IPv4Address) -> None:
        """The lease of `ip` ended (released, declined, expired): nobody holds it now."""
        mac = self._macs_by_ip.pop(ip, None)
        if mac is not None and self._ips_by_mac.get(mac) == ip:
            del self._ips_by_mac[mac]

    async def tftp_file(self, path: str, peer: IPv4Address) -> bytes | None:
        """A generated per-machine config for a TFTP path (already normalised by the
        TFTP listener: relative, '/'-separated), or None for a plain file."""
        leaf = path.rpartition("/")[2]
        if path.startswith("pxelinux.cfg/"):
            mac = _mac_from(leaf) or self._macs_by_ip.get(peer)
            if mac is None:  # "default" or a hex-IP name from a machine we never leased
                return None
            return await self._tftp_script("pxelinux", mac, peer, path)
        if leaf == "grub.cfg" or leaf.startswith("grub.cfg-"):
            mac = _mac_from(leaf.removeprefix("grub.cfg-")) or self._macs_by_ip.get(peer)
            if mac is None:
                return render("grub-common.cfg.j2").encode()
            return await self._tftp_script("grub", mac, peer, path)
        return None

    async def _tftp_script(self, kind: str, mac: str, peer: IPv4Address, path: str) -> bytes | None:
        try:
            waiting = await self._wait(kind, mac, peer, path)
            if waiting is not None:
                return waiting.encode()
            return self.script(kind, mac, peer).encode()
        except NotLeaseHolder as exc:
            # Not found, as for any name we have nothing under: pxelinux goes on to
            # its next candidate name and ends at "default".
            self._refuse("not-lease-holder", str(exc))
            return None
        except BootdError as exc:
            # A node allocated with a profile the config no longer has: say so in
            # the config it boots, which then does nothing, and in the log.
            log.warning("cannot render boot config", extra=kv(mac=mac, kind=kind, reason=str(exc)))
            return f"# bootd: {exc}\n".encode()

    def script(self, kind: str, mac: str, peer: IPv4Address | None, *, operator: bool = False) -> str:
        """The boot script of `kind` for the machine with `mac`, as asked by `peer`."""
        entry = self._nodes.get(mac)
        trusted = operator or self.holds_lease(peer, mac)
        if entry is not None and self.needs_token(entry.state) and not trusted:
            raise NotLeaseHolder(
                f"{peer or 'this peer'} does not hold bootd's lease for {mac}; a {entry.state.value} "
                "script carries the node's token and goes only to the lease holder or the operator")
        view = self.view(mac, with_token=trusted)
        if self.holds_lease(peer, mac):  # its subnet, for the installer's network (bootd.installnet)
            view = replace(view, leased=peer)
        text = boot.script(kind, view, self.config)
        if entry is not None:  # only machines bootd knows: anyone may ask for a random MAC
            self.activity.record(mac, "http" if kind == "ipxe" else "script",
                                 f"{kind} script for {entry.state.value} to {peer or '-'}")
        return text

    async def boot_script(self, kind: str, mac: str, peer: IPv4Address | None, *,
                          operator: bool = False) -> str:
        """HTTP's way in: like `script`, but waits briefly for a registration that
        this machine's own DHCP exchange started a moment ago."""
        # A committed change in this process (the feed) is applied before answering;
        # another process's within the poll. No database query per request otherwise.
        if self._dirty.is_set():
            await self.refresh(force=True)
        pending = self._pending.get(mac)
        if mac not in self._nodes and pending is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REGISTER_WAIT):  # not wait_for: 3.11's can swallow a cancel
                    await pending.wait()
        if not operator:  # the operator reads any script; only machines queue
            waiting = await self._wait(kind, mac, peer, f"grub/grub.cfg-01-{mac.replace(':', '-')}")
            if waiting is not None:
                return waiting
        return self.script(kind, mac, peer, operator=operator)

    async def _wait(self, kind: str, mac: str, peer: IPv4Address | None, path: str) -> str | None:
        """The wait script, when this machine boots into a heavy state and its install
        slot is not free (bootd.fleet.admission); None: it boots its real script. Only
        the lease holder asks (anyone else is refused its script anyway, without a
        transaction); an admitted node is answered from memory after its first ask."""
        entry = self._nodes.get(mac)
        if (self.admissions is None or entry is None or self.admissions.slot(entry.state) is None
                or not self.holds_lease(peer, mac)):
            return None
        try:
            decision = await self.admissions.ask(entry.name, entry.state)
        except NotFound:
            return None  # deleted meanwhile: its script says what it boots now
        except DatabaseUnavailable as exc:
            # No decision, no slot: waiting is safe, a slot handed out blind is not.
            if self._say(time.monotonic(), "admission"):
                log.warning("admission unavailable", extra=kv(node=entry.name, reason=str(exc)))
            decision = Wait(0, 0, Limit.GLOBAL, "admission is unavailable (inventory database)")
        if not isinstance(decision, Wait):
            return None
        self.activity.record(mac, "http" if kind == "ipxe" else "script",
                             f"{kind} wait script, place {decision.place} of {decision.of}")
        url = f"{self.config.http_base}/boot/{kind}?mac={mac}"
        return wait_script(kind, entry.name, decision, self.config.waves.wait, url=url, path=path)

    async def identity(self, mac: str, peer: IPv4Address | None) -> tuple[str, str]:
        """(name, token) of the node with `mac`, for its lease holder only: how the
        discovery agent learns its new token after an allocation rotated it."""
        if not self.holds_lease(peer, mac):
            self._refuse("not-lease-holder", f"identity of {mac} asked by {peer}")
            raise NotLeaseHolder(f"{peer} does not hold bootd's lease for {mac}")
        node = None if self._repo is None else await self._repo.find_node_by_mac(mac)
        if node is None or self._repo is None:
            raise NotFound(f"no node has MAC {mac}")
        return node.name, await self._repo.node_token(node.name)

    # -- a node speaking for itself, with its token ------------------------------

    async def own_node(self, name: str, token: str) -> NodeRecord | None:
        """The node `name` if `token` is its token (constant time), else None. Under a
        name it no longer has (allocation renamed it), its token still finds it."""
        if self._repo is None or not token:
            return None
        node = await self._repo.node_with_token(name, token)
        if node is not None:
            return node
        if await self._repo.find_node_by_name(name) is None:
            return await self._repo.node_by_token(token)
        return None

    def answer(self, kind: str, node: NodeRecord, token: str) -> str:
        """An install file of an authenticated node: kickstart, preseed, user-data,
        or cloud-init's meta-data/vendor-data."""
        if kind == "meta-data":
            return (f"instance-id: {node.name}-{int(node.state_changed_at.timestamp())}\n"
                    f"local-hostname: {node.name}\n")
        if kind == "vendor-data":
            return "#cloud-config\n{}\n"
        if kind not in boot.ANSWER_KINDS:
            raise NotFound(f"no install file {kind!r}")
        leased = None if node.boot_mac is None else self._ips_by_mac.get(node.boot_mac)
        if node.boot_mac is not None:
            self.activity.record(node.boot_mac, "http", f"install file {kind}")
        return boot.answer(kind, boot.view_of(node, token=token, leased=leased), self.config)

    async def boot_mac(self, name: str) -> str:
        """The boot MAC of node `name` (NotFound if there is no such node or it has none)."""
        if self._repo is None:
            raise NotFound(f"no node named {name!r}")
        node = await self._repo.get_node(name)
        if node.boot_mac is None:
            raise NotFound(f"node {node.name} has no boot MAC")
        return node.boot_mac

    def _refuse(self, reason: str, detail: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        if self._say(time.monotonic(), reason):  # per reason, never per attacker-chosen text
            log.warning("refused", extra=kv(reason=reason, example=detail[:200],
                                            count=self.refused[reason]))

    # -- what protocols saw (asynchronous writes) ------------------------------

    def booted(self, client: BootClient, location: str | None, via: str = "-",
               rack: str | None = None) -> None:
        """A booting machine asked for an address (on interface or relay `via`).
        Unknown: record it in discovering (in `rack`, its subnet's). Known with a new
        relay location: store it."""
        if self._repo is None or not client.booting or client.mac in self._pending:
            return
        known = self._nodes.get(client.mac)
        if known is not None and (location is None or known.location == location):
            return
        if len(self._pending) >= MAX_REGISTERING:
            self._refuse("registrations-busy", f"{client.mac} via {via}")
            return
        now, rate, burst = time.monotonic(), self.config.dhcp.register_rate, self.config.dhcp.register_burst
        bucket = self._buckets.get(via)
        if bucket is None:
            if len(self._buckets) >= 1024:  # interfaces and relays are few; bound it anyway
                self._buckets.clear()
            bucket = self._buckets[via] = TokenBucket(float(burst), now)
        if not bucket.take(now, rate, burst):
            self._refuse("registrations-rate", f"{client.mac} via {via}")
            return
        self._pending[client.mac] = asyncio.Event()
        self._queue[client.mac] = (known, location, rack)
        if self._registrar is None or self._registrar.done():
            self._registrar = asyncio.get_running_loop().create_task(self._register_queued())
            self._tasks.add(self._registrar)
            self._registrar.add_done_callback(self._tasks.discard)

    async def _register_queued(self) -> None:
        """The one writer of registrations: drains the queue in batches."""
        while self._queue:
            batch = dict(itertools.islice(self._queue.items(), REGISTER_BATCH))
            for mac in batch:
                del self._queue[mac]
            try:
                await self._record(batch)
            except BootdError as exc:
                log.warning("cannot record booted machines", extra=kv(count=len(batch), reason=str(exc),
                                                                      example=next(iter(batch))))
            finally:
                for mac in batch:
                    done = self._pending.pop(mac, None)
                    if done is not None:
                        done.set()

    async def _record(self, batch: dict[str, tuple[DirectoryEntry | None, str | None, str | None]]) -> None:
        assert self._repo is not None
        changes: list[NodeChanged] = []
        new = [(mac, location, rack) for mac, (known, location, rack) in batch.items() if known is None]
        if new:
            try:
                nodes = await self._repo.register_booted_many(new, actor=ACTOR)
            except Conflict:  # another daemon registered one of them meanwhile: one by one
                found = [await self._repo.register_booted(mac, loc, actor=ACTOR, rack=rack)
                         for mac, loc, rack in new]
                nodes = [n for n in found if n is not None]
            for node in nodes:
                log.info("new machine recorded", extra=kv(node=node.name, mac=node.boot_mac,
                                                          location=node.location))
                changes.append(NodeChanged(node, "created"))
        for mac, (known, location, _) in batch.items():
            if known is not None and location is not None:
                try:
                    node = await self._repo.set_location(known.name, location, actor=ACTOR)
                except NotFound:
                    continue  # deleted meanwhile: its next boot registers it anew
                log.info("node moved", extra=kv(node=known.name, mac=mac, location=location))
                changes.append(NodeChanged(node, "located"))
        if not changes:
            return
        if self._feed is not None:
            # The status page and DNS follow; this policy merges the nodes below instead
            # of reloading the whole directory (_on_change ignores its own news).
            self._publishing = True
            try:
                for change in changes:
                    self._feed.publish(change)
            finally:
                self._publishing = False
        # These nodes' entries only: re-reading the whole directory per registration
        # made a sustained PXE flood cost O(nodes) each (measured: 4x slower, 2x RSS).
        # Everything else is picked up by the next stamp refresh.
        for entry in await self._repo.directory(names={c.node.name for c in changes}):
            self._nodes[entry.mac] = entry

    # -- keeping the directory current ----------------------------------------

    def _on_change(self, change: NodeChanged) -> None:
        if not self._publishing:
            self._dirty.set()

    async def refresh(self, *, force: bool = False) -> None:
        """Reload the directory if the inventory changed; concurrent callers share one
        reload (a rack of iPXE clients asking at once must not read it once each)."""
        if self._repo is None:
            return
        if self._refreshing is not None and not self._refreshing.done():
            await asyncio.shield(self._refreshing)
            return
        self._dirty.clear()
        self._refreshing = asyncio.ensure_future(self._reload(force))
        await asyncio.shield(self._refreshing)

    async def _reload(self, force: bool) -> None:
        """Re-read only the nodes whose events are newer than the last stamp (a rack's
        worth of changes per second must not re-read 10,000 nodes each time); the
        whole directory at start, after a big batch, and every FULL_RELOAD seconds."""
        assert self._repo is not None
        now = time.monotonic()
        if self._stamp < 0 or now - self._full_at > FULL_RELOAD:
            stamp = await self._repo.inventory_stamp()
            entries = await self._repo.directory()
            self._nodes = {e.mac: e for e in entries}
            self._stamp, self._full_at = stamp, now
            return
        stamp, names = await self._repo.changed_since(self._stamp)
        if names is None:
            self._full_at = float("-inf")  # too many to patch: read everything
            await self._reload(force)
            return
        if names:
            fresh = await self._repo.directory(names=names)
            gone = names | {e.name for e in fresh}
            nodes = {mac: e for mac, e in self._nodes.items() if e.name not in gone}
            nodes.update((e.mac, e) for e in fresh)
            self._nodes = nodes
        self._stamp = stamp

    def load(self, entries: list[DirectoryEntry]) -> None:
        """Set the directory outright (tests, and callers that already hold it)."""
        self._nodes = {e.mac: e for e in entries}

    async def start(self) -> None:
        await self.refresh()

    async def stop(self) -> None:
        await self.close()

    def reconfigure(self, config: Config) -> None:
        self.config = config
        if self.admissions is not None:
            self.admissions.reconfigure(config)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh(force=self._dirty.is_set())
            except BootdError as exc:
                log.warning("cannot refresh the node directory", extra=kv(reason=str(exc)))
            # A committed change wakes us at once; another process's, within the poll.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REFRESH_SECONDS):  # not wait_for: 3.11's can swallow a cancel
                    await self._dirty.wait()

    async def close(self) -> None:
        # Registrations in flight are short transactions: let them finish (bounded)
        # rather than cancel one inside a database call.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._refreshing is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._refreshing), 5.0)
