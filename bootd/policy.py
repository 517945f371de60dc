"""The policy: what each machine gets when it boots. One seam, asked by every protocol.

DHCP (67 and proxy 4011), TFTP and HTTP all ask here, so they cannot drift
apart. Answers come from memory: the node directory is a copy of the
inventory's addressing facts, refreshed when the inventory changes (the CLI
writes the database from another process, so the daemon polls a cheap stamp
rather than trusting only its own writes). Writes the protocols cause (an
unknown machine booted; a relay reported a new switch port) go to the
repository in the background, never in a reply path.

Boot answers by client kind:
- PXE ROM: the first-stage loader for its architecture, by TFTP (config [boot]);
- UEFI HTTP boot: the loader by HTTP, with option 60 "HTTPClient";
- iPXE: the URL of its per-node boot script, so it does not load itself again;
- anything else (an installed OS renewing its lease): no boot options.
What the script says depends on the node's state: that is the HTTP side's
business, behind the URL.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from ipaddress import IPv4Address

from bootd import boot
from bootd.boot import NodeView
from bootd.config import Config
from bootd.db.repository import Repository
from bootd.errors import BootdError
from bootd.logs import kv
from bootd.model.clients import Arch, BootClient, Firmware
from bootd.model.names import mac_address
from bootd.model.records import DirectoryEntry
from bootd.model.states import NodeState
from bootd.render import BootTarget, render

log = logging.getLogger("bootd.policy")
REFRESH_SECONDS = 2.0
ACTOR = "dhcp"


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


class Policy:
    """Also a Service: it starts with a full directory and keeps it current."""

    name = "policy"

    def __init__(self, config: Config, repo: Repository | None = None) -> None:
        self.config = config
        self._repo = repo
        self._nodes: dict[str, DirectoryEntry] = {}
        self._macs_by_ip: dict[IPv4Address, str] = {}
        self._stamp = -1
        self._pending: set[str] = set()  # MACs being registered or relocated
        self._tasks: set[asyncio.Task[None]] = set()

    # -- answers (synchronous, from memory) -----------------------------------

    def node(self, mac: str) -> DirectoryEntry | None:
        return self._nodes.get(mac)

    def boot(self, client: BootClient) -> BootAnswer | None:
        server = self.config.admin_address
        base = self.config.http_base
        if client.firmware is Firmware.IPXE and self.config.boot.ipxe_script:
            return BootAnswer(f"{base}/boot/ipxe?mac={client.mac}", server)
        loader = self._loader(client.arch)
        if loader is None:
            return None
        if client.firmware is Firmware.HTTP:
            return BootAnswer(f"{base}/images/{loader}", server, b"HTTPClient")
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
        }.get(arch) if arch is not None else None

    def view(self, mac: str) -> NodeView:
        """The rendering facts of the machine with this MAC (known or not)."""
        node = self._nodes.get(mac)
        if node is None:
            return NodeView("-", mac, NodeState.DISCOVERING)
        return NodeView(node.name, mac, node.state, node.profile, node.token, node.admin_ip)

    def target(self, mac: str) -> BootTarget:
        """What this machine boots now, by its state (bootd.boot)."""
        return boot.target(self.view(mac), self.config)

    def leased(self, mac: str, ip: IPv4Address) -> None:
        """DHCP bound `ip` to `mac`: TFTP and HTTP can tell who asks by source address."""
        self._macs_by_ip[ip] = mac

    def unleased(self, ip: IPv4Address) -> None:
        """The lease of `ip` ended (released, declined, expired): nobody holds it now."""
        self._macs_by_ip.pop(ip, None)

    def tftp_file(self, name: str, peer: IPv4Address) -> bytes | None:
        """A generated per-machine config for a TFTP name, or None for a plain file."""
        path = name.replace("\\", "/").lstrip("/")
        leaf = path.rpartition("/")[2]
        if path.startswith("pxelinux.cfg/"):
            mac = _mac_from(leaf) or self._macs_by_ip.get(peer)
            if mac is None:  # "default" or a hex-IP name from a machine we never leased
                return None
            return self._script("pxelinux", mac)
        if leaf == "grub.cfg" or leaf.startswith("grub.cfg-"):
            mac = _mac_from(leaf.removeprefix("grub.cfg-")) or self._macs_by_ip.get(peer)
            if mac is None:
                return render("grub-common.cfg.j2").encode()
            return self._script("grub", mac)
        return None

    def _script(self, kind: str, mac: str) -> bytes:
        try:
            return boot.script(kind, self.view(mac), self.config).encode()
        except BootdError as exc:
            # A node allocated with a profile the config no longer has: say so in
            # the config it boots, which then does nothing, and in the log.
            log.warning("cannot render boot config", extra=kv(mac=mac, kind=kind, reason=str(exc)))
            return f"# bootd: {exc}\n".encode()

    # -- what protocols saw (asynchronous writes) ------------------------------

    def booted(self, client: BootClient, location: str | None) -> None:
        """A booting machine asked for an address. Unknown: record it in discovering.
        Known with a new relay location: store the location."""
        if self._repo is None or not client.booting or client.mac in self._pending:
            return
        known = self._nodes.get(client.mac)
        if known is not None and (location is None or known.location == location):
            return
        self._pending.add(client.mac)
        task = asyncio.get_running_loop().create_task(self._record(client.mac, known, location))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record(self, mac: str, known: DirectoryEntry | None, location: str | None) -> None:
        assert self._repo is not None
        try:
            if known is None:
                node = await self._repo.register_booted(mac, location, actor=ACTOR)
                if node is not None:
                    log.info("new machine recorded", extra=kv(node=node.name, mac=mac, location=location))
            elif location is not None:
                await self._repo.set_location(known.name, location, actor=ACTOR)
                log.info("node moved", extra=kv(node=known.name, mac=mac, location=location))
            await self.refresh()
        except BootdError as exc:
            log.warning("cannot record booted machine", extra=kv(mac=mac, reason=str(exc)))
        finally:
            self._pending.discard(mac)

    # -- keeping the directory current ----------------------------------------

    async def refresh(self) -> None:
        if self._repo is None:
            return
        stamp = await self._repo.inventory_stamp()
        if stamp == self._stamp:
            return
        entries = await self._repo.directory()
        self._nodes = {e.mac: e for e in entries}
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

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except BootdError as exc:
                log.warning("cannot refresh the node directory", extra=kv(reason=str(exc)))
            await asyncio.sleep(REFRESH_SECONDS)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
