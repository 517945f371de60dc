"""The parsed configuration: frozen dataclasses, one per TOML table.

Built only by `bootd.config.parse` after every value is checked, so code that
holds a `Config` never re-validates. Field defaults are the documented defaults.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from bootd.model.lifecycle import DEFAULT_RETRIES, DEFAULT_TIMEOUTS
from bootd.model.profiles import BUILTIN, Profile
from bootd.model.states import NodeState


@dataclass(frozen=True)
class AddressRange:
    """An inclusive range of IPv4 addresses, written "first-last" in the file."""

    first: IPv4Address
    last: IPv4Address

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPv4Address) and self.first <= address <= self.last

    def __iter__(self) -> Iterator[IPv4Address]:
        for n in range(int(self.first), int(self.last) + 1):
            yield IPv4Address(n)

    def __len__(self) -> int:
        return int(self.last) - int(self.first) + 1

    def overlaps(self, other: AddressRange) -> bool:
        return self.first <= other.last and other.first <= self.last

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


@dataclass(frozen=True)
class Subnet:
    cidr: IPv4Network
    router: IPv4Address | None
    dns_servers: tuple[IPv4Address, ...]
    domain: str | None
    lease_time: int
    dynamic_pool: AddressRange | None
    static_range: AddressRange | None
    bmc_range: AddressRange | None
    # The rack a machine first seen on this subnet is recorded in (relayed racks: one
    # subnet each), so per-rack wave limits and `rollout --rack` need no hand work.
    rack: str | None = None

    def ranges(self) -> Iterator[tuple[str, AddressRange]]:
        for name in ("dynamic_pool", "static_range", "bmc_range"):
            value = getattr(self, name)
            if value is not None:
                yield name, value


@dataclass(frozen=True)
class Services:
    dhcp: bool = True
    tftp: bool = True
    http: bool = True
    dns: bool = True

    @property
    def needs_interfaces(self) -> bool:
        return self.dhcp or self.tftp or self.dns


class DhcpMode(enum.StrEnum):
    SERVER = "server"  # hands out addresses and boot options
    PROXY = "proxy"    # another server hands out addresses; we add boot options (PXE 2.1)


@dataclass(frozen=True)
class DhcpConfig:
    mode: DhcpMode = DhcpMode.SERVER
    # RFC 2131 section 4.3.2: an authoritative server NAKs requests for addresses
    # that are wrong for the client's network, instead of staying silent.
    authoritative: bool = True
    # Probe a dynamic address (ARP on-link, ICMP through relays) before its first offer.
    conflict_check: bool = True
    decline_quarantine: int = 3600
    offer_hold: int = 30
    # Machines recorded from a PXE boot, per interface or relay: a token bucket (per
    # second, burst). A rack powering on is a few hundred machines a minute; a
    # spoofed-MAC flood is thousands a second.
    register_rate: float = 20.0
    register_burst: int = 200


@dataclass(frozen=True)
class BootConfig:
    """First-stage loaders by firmware, paths under the TFTP root."""

    bios: str = "undionly.kpxe"
    # iPXE on the firmware's own network driver (SNP), which UEFI network boot
    # always has: ipxe.efi first binds its native drivers to every NIC, ~4 s
    # more before its DHCP under OVMF (tests/test_vm_lab.py timelines).
    uefi_x64: str = "snponly.efi"
    # "": none. Debian packages iPXE for x86-64 and BIOS only, so bootd cannot
    # install these; set them to a loader you put under the TFTP root.
    uefi_ia32: str = ""
    uefi_arm64: str = ""
    # iPXE (a NIC's iPXE ROM, or iPXE loaded by TFTP) gets the URL of its per-node
    # script over HTTP. false: iPXE is served the loader like any PXE ROM, for
    # setups that boot pxelinux (bios = "pxelinux.0") from an iPXE ROM.
    ipxe_script: bool = True


@dataclass(frozen=True)
class BmcConfig:
    max_sessions: int = 16       # IPMI sessions at once, across all nodes
    power_on_rate: float = 2.0   # power-ons per second, rack-wide
    cycle_pause: float = 5.0     # seconds off in a power cycle
    # Lifecycle hooks: reinstall/reset set the next boot to PXE and power-cycle;
    # a timed-out state's retry power-cycles too.
    lifecycle_power: bool = True


@dataclass(frozen=True)
class TftpConfig:
    port: int = 69
    # Upper bounds on what clients may negotiate (RFC 2348, RFC 7440); blksize is
    # further clamped per transfer to the path MTU.
    max_blksize: int = 65464
    max_windowsize: int = 64
    timeout: float = 1.0  # seconds before a retransmission, unless the client asks (RFC 2349)
    retries: int = 5
    # Files are served from memory, read once in a worker thread and shared by
    # every transfer; bigger files are refused with a message saying so.
    cache_mb: int = 1024
    max_transfers: int = 1000  # at once; more requests get "server busy"
    # Per client address, at once: firmware, iPXE, shim and GRUB fetch one file at a
    # time (UEFI's tsize probe then the download), so 8 is generous for a machine
    # and keeps one host from taking every slot. More get "too many transfers".
    max_per_client: int = 8
    # The longest RFC 2349 timeout option accepted; a longer one is left out of the
    # OACK (the RFC lets the server only echo or omit it). A transfer with no
    # progress ends after (retries + 1) x max(timeout, max_timeout) seconds.
    max_timeout: int = 5


@dataclass(frozen=True)
class DnsConfig:
    """[dns]: names of the subnets' domains and reverse zones (bootd.dns)."""

    # Where queries for other names go ("addr" or "addr:port"); none: REFUSED.
    upstreams: tuple[tuple[IPv4Address, int], ...] = ()
    port: int = 53  # a test-only knob: resolvers ask port 53
    ttl: int = 30   # seconds, for answers and (as the SOA minimum) for negative answers


@dataclass(frozen=True)
class InstallConfig:
    """What every rendered kickstart/preseed/user-data puts on the node."""

    # crypt(3) hash for root; "!" locks the password (log in with the SSH keys).
    root_password_hash: str = "!"  # noqa: S105 - not a password: the locked-account marker
    ssh_keys: tuple[str, ...] = ()
    disk: str = ""  # e.g. "sda"; "" = the installer's first disk
    timezone: str = "UTC"


@dataclass(frozen=True)
class LifecycleConfig:
    timeouts: dict[NodeState, int] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    retries: int = DEFAULT_RETRIES
    check_interval: float = 10.0


HEAVY_STATES = frozenset({NodeState.HARDWARE_INSTALLING, NodeState.INSTALLING})


@dataclass(frozen=True)
class WavesConfig:
    """[waves]: how many nodes may be in the heavy states at once (admission at boot
    time, bootd.model.admission). 0 = no limit at that level. The defaults keep a
    2-core admin node serving installers' kernels, initrds and packages comfortably."""

    states: frozenset[NodeState] = HEAVY_STATES
    max_global: int = 8
    max_per_rack: int = 4
    max_per_daemon: int = 8
    wait: int = 15           # seconds a waiting machine sleeps before it asks again
    forget_after: int = 120  # a waiting machine that stops asking this long loses its place


@dataclass(frozen=True)
class RogueConfig:
    """[rogue]: noticing other DHCP servers on the admin interfaces (bootd.dhcp.rogue)."""

    watch: bool = True          # passively: OFFERs/ACKs from other servers seen on the wire
    probe_interval: int = 300   # actively: a DISCOVER of our own every N seconds; 0 = never
    # Seconds to collect answers to a probe: dnsmasq pings an address ~3 s before offering it.
    probe_wait: float = 5.0
    allowed: tuple[IPv4Address, ...] = ()  # servers that are expected (proxy mode's real one)

    @property
    def active(self) -> bool:
        return self.watch or self.probe_interval > 0


@dataclass(frozen=True)
class RaConfig:
    """[ra]: IPv6 router advertisements with router lifetime 0 on the admin interfaces
    (RFC 4861 section 4.2: "not a default router"), so firmware stops waiting for
    IPv6 autoconfiguration (iPXE waits ~13 s on a link with none)."""

    enabled: bool = True
    interval: int = 30


@dataclass(frozen=True)
class HttpConfig:
    host: str
    port: int
    api_token_file: Path
    # The status page (/ and /nodes/NAME) without logging in. Off by default: node
    # names, addresses and inventories are the operator's; actions always need it.
    status_public: bool = False


@dataclass(frozen=True)
class Config:
    source: str
    admin_address: IPv4Address
    interfaces: tuple[str, ...]
    state_dir: Path
    database_url: str
    log_level: str
    services: Services
    http: HttpConfig
    subnets: tuple[Subnet, ...] = field(default_factory=tuple)
    dhcp: DhcpConfig = field(default_factory=DhcpConfig)
    boot: BootConfig = field(default_factory=BootConfig)
    tftp: TftpConfig = field(default_factory=TftpConfig)
    install: InstallConfig = field(default_factory=InstallConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    profiles: dict[str, Profile] = field(default_factory=lambda: dict(BUILTIN))
    bmc: BmcConfig = field(default_factory=BmcConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    waves: WavesConfig = field(default_factory=WavesConfig)
    rogue: RogueConfig = field(default_factory=RogueConfig)
    ra: RaConfig = field(default_factory=RaConfig)
    # This daemon's name among several sharing one database (subnet claims,
    # per-daemon wave limits); the host name unless [server] daemon_id says.
    daemon_id: str = "bootd"

    @property
    def http_base(self) -> str:
        """The URL prefix clients use for our HTTP service."""
        host = self.http.host if self.http.host not in ("0.0.0.0", "::") else str(self.admin_address)
        return f"http://{host}:{self.http.port}"

    @property
    def secret_key_file(self) -> Path:
        return self.state_dir / "secret.key"

    @property
    def tftp_root(self) -> Path:
        """Boot files: loaders and images, served by TFTP; HTTP serves the same files under
        /tftp/ (loaders, for UEFI HTTP boot) and /images/ (kernels, initrds, install media)."""
        return self.state_dir / "tftp"

    def subnet_for(self, address: IPv4Address) -> Subnet | None:
        return next((s for s in self.subnets if address in s.cidr), None)

    def restart_needed_for(self, new: Config) -> list[str]:
        """Keys whose change takes effect only after a restart (sockets, database)."""
        keys = []
        if new.interfaces != self.interfaces:
            keys.append("server.interfaces")
        if new.admin_address != self.admin_address:
            keys.append("server.admin_address")
        if new.state_dir != self.state_dir:
            keys.append("server.state_dir")
        if new.database_url != self.database_url:
            keys.append("server.database_url")
        if new.services != self.services:
            keys.append("services")
        if new.dhcp.mode != self.dhcp.mode:
            keys.append("dhcp.mode")
        if new.tftp.port != self.tftp.port:
            keys.append("tftp.port")
        if new.dns.port != self.dns.port:
            keys.append("dns.port")
        if new.dns.upstreams != self.dns.upstreams:
            keys.append("dns.upstreams")
        if new.daemon_id != self.daemon_id:
            keys.append("server.daemon_id")
        if new.ra != self.ra:
            keys.append("ra")
        if new.rogue.active != self.rogue.active:
            keys.append("rogue")  # the watcher's sockets open only at start
        if (new.http.host, new.http.port) != (self.http.host, self.http.port):
            keys.append("http.listen")
        return keys
