"""Configuration: one TOML file, parsed once into frozen dataclasses.

Theory of operation: `parse_config` turns the text into a `Config` or raises a
`ConfigError` that names the file, the dotted key and what is wrong. It is pure
(no sockets, no filesystem besides reading the file in `load_config`), so every
rule is tested from strings. Facts about the host (which interfaces exist) are
checked separately by `check_host`, which `bootd serve` calls and the offline
CLI commands do not need.

Unknown keys are errors, not warnings: a misspelt `dynamic_pool` silently
ignored would leave a rack without addresses.
"""

from __future__ import annotations

import enum
import ipaddress
import tomllib
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any, TypeVar

from bootd.errors import ConfigError, InvalidInput
from bootd.model.lifecycle import DEFAULT_RETRIES, DEFAULT_TIMEOUTS
from bootd.model.names import dns_domain, node_name
from bootd.model.profiles import BUILTIN, Family, Profile
from bootd.model.states import NodeState
from bootd.render import check as render_check

DEFAULT_CONFIG_PATH = Path("/etc/bootd/bootd.toml")
DEFAULT_STATE_DIR = Path("/var/lib/bootd")
DEFAULT_HTTP_PORT = 8080
DEFAULT_LEASE_TIME = 3600
# RFC 2131 does not bound lease times, but a lease longer than a week on a
# provisioning network only delays the reuse of addresses of removed nodes.
MIN_LEASE_TIME, MAX_LEASE_TIME = 60, 7 * 24 * 3600
LOG_LEVELS = ("debug", "info", "warning", "error")

T = TypeVar("T")


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


@dataclass(frozen=True)
class BootConfig:
    """First-stage loaders by firmware, paths under the TFTP root."""

    bios: str = "undionly.kpxe"
    uefi_x64: str = "ipxe.efi"
    uefi_ia32: str = "ipxe-ia32.efi"
    uefi_arm64: str = "ipxe-arm64.efi"
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


@dataclass(frozen=True)
class HttpConfig:
    host: str
    port: int
    api_token_file: Path


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
        """Boot files (loaders, images) served by TFTP, and by HTTP under /images/."""
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
        if (new.http.host, new.http.port) != (self.http.host, self.http.port):
            keys.append("http.listen")
        return keys


class _Table:
    """A TOML table read key by key, remembering the dotted path for errors."""

    def __init__(self, source: str, path: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ConfigError(source, path, f"must be a table, not {_kind(data)}")
        self.source, self.path, self.data = source, path, data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def get(self, name: str, kind: type[T], default: T) -> T:
        value = self.opt(name, kind)
        return default if value is None else value

    def opt(self, name: str, kind: type[T], *, required: bool = False) -> T | None:
        self.used.add(name)
        if name not in self.data:
            if required:
                raise self.error(name, "is required")
            return None
        value = self.data[name]
        # bool is a subclass of int; `lease_time = true` must not pass as 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(name, f"must be {_kind_name(kind)}, not {_kind(value)}")
        return value

    def parse(self, name: str, parser: Any, *, required: bool = False) -> Any:
        text = self.opt(name, str, required=required)
        if text is None:
            return None
        try:
            return parser(text)
        except (ValueError, InvalidInput) as exc:
            raise self.error(name, str(exc)) from None

    def table(self, name: str) -> _Table:
        self.used.add(name)
        return _Table(self.source, self.key(name), self.data.get(name, {}))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _kind(value: object) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a float"}.get(type(value), type(value).__name__)


def _kind_name(kind: type) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean (true/false)",
            int: "an integer"}.get(kind, kind.__name__)


def _ipv4(text: str) -> IPv4Address:
    try:
        return IPv4Address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def _network(text: str) -> IPv4Network:
    try:
        return IPv4Network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IPv4 network in CIDR form ({exc})") from None


def _range(text: str) -> AddressRange:
    first, sep, last = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not a range; write it as first-last, e.g. 198.18.0.100-198.18.0.199")
    start, end = _ipv4(first), _ipv4(last)
    if start > end:
        raise ValueError(f"range {text!r} ends before it starts")
    return AddressRange(start, end)


def _listen(text: str, default_host: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(DEFAULT_HTTP_PORT)
    host = host.strip("[]") or default_host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a TCP port")
    return host, int(port_text)


def _database_url(text: str) -> str:
    if not text.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    return text


def _subnet(table: _Table, admin: IPv4Address) -> Subnet:
    cidr: IPv4Network = table.parse("cidr", _network, required=True)
    if cidr.prefixlen > 29:
        raise table.error("cidr", f"{cidr} is too small to serve (at most /29)")
    router = table.parse("router", _ipv4)
    if router is not None and router not in cidr:
        raise table.error("router", f"{router} is outside subnet {cidr}")
    dns_list = table.get("dns_servers", list, [])
    dns: list[IPv4Address] = []
    for i, item in enumerate(dns_list):
        if not isinstance(item, str):
            raise table.error(f"dns_servers[{i}]", f"must be a string, not {_kind(item)}")
        try:
            dns.append(_ipv4(item))
        except ValueError as exc:
            raise table.error(f"dns_servers[{i}]", str(exc)) from None
    domain = table.parse("domain", dns_domain)
    lease_time = table.get("lease_time", int, DEFAULT_LEASE_TIME)
    if not MIN_LEASE_TIME <= lease_time <= MAX_LEASE_TIME:
        raise table.error("lease_time", f"must be between {MIN_LEASE_TIME} and {MAX_LEASE_TIME} seconds")
    ranges: dict[str, AddressRange | None] = {}
    for name in ("dynamic_pool", "static_range", "bmc_range"):
        rng: AddressRange | None = table.parse(name, _range)
        ranges[name] = rng
        if rng is None:
            continue
        # RFC 950: the all-zeros and all-ones host numbers are not host addresses.
        usable_first, usable_last = cidr.network_address + 1, cidr.broadcast_address - 1
        if rng.first not in cidr or rng.last not in cidr:
            raise table.error(name, f"{rng} is outside subnet {cidr}")
        if rng.first < usable_first or rng.last > usable_last:
            raise table.error(name, f"{rng} includes the network or broadcast address of {cidr}")
        for what, addr in (("admin address", admin), ("router", router)):
            if addr is not None and addr in rng:
                raise table.error(name, f"{rng} contains the {what} {addr}")
    present = [(n, r) for n, r in ranges.items() if r is not None]
    for i, (a, ra) in enumerate(present):
        for b, rb in present[i + 1 :]:
            if ra.overlaps(rb):
                raise table.error(b, f"{rb} overlaps {a} {ra}")
    table.finish()
    return Subnet(cidr, router, tuple(dns), domain, lease_time, ranges["dynamic_pool"],
                  ranges["static_range"], ranges["bmc_range"])


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    root = _Table(source, "", data)

    server = root.table("server")
    admin: IPv4Address = server.parse("admin_address", _ipv4, required=True)
    interfaces_raw = server.get("interfaces", list, [])
    interfaces: list[str] = []
    for i, name in enumerate(interfaces_raw):
        if not isinstance(name, str) or not name or len(name) > 15 or "/" in name or name.strip() != name:
            raise server.error(f"interfaces[{i}]", f"{name!r} is not an interface name")
        if name in interfaces:
            raise server.error(f"interfaces[{i}]", f"{name} is listed twice")
        interfaces.append(name)
    state_dir_text = server.get("state_dir", str, str(DEFAULT_STATE_DIR))
    state_dir = Path(state_dir_text)
    if not state_dir.is_absolute():
        raise server.error("state_dir", f"{state_dir_text!r} must be an absolute path")
    db_url = server.parse("database_url", _database_url) or f"sqlite+aiosqlite:///{state_dir / 'bootd.db'}"
    log_level = server.get("log_level", str, "info")
    if log_level not in LOG_LEVELS:
        raise server.error("log_level", f"{log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    server.finish()

    services_t = root.table("services")
    services = Services(**{n: services_t.get(n, bool, True) for n in ("dhcp", "tftp", "http", "dns")})
    services_t.finish()
    if services.needs_interfaces and not interfaces:
        raise server.error("interfaces", "is required when dhcp, tftp or dns is enabled")

    http_t = root.table("http")
    try:
        host, port = _listen(http_t.get("listen", str, f"{admin}:{DEFAULT_HTTP_PORT}"), str(admin))
    except ValueError as exc:
        raise http_t.error("listen", str(exc)) from None
    token_text = http_t.get("api_token_file", str, str(state_dir / "api-token"))
    if not Path(token_text).is_absolute():
        raise http_t.error("api_token_file", f"{token_text!r} must be an absolute path")
    http_t.finish()

    dhcp = _dhcp(root.table("dhcp"))
    boot = _boot(root.table("boot"))
    tftp = _tftp(root.table("tftp"))
    install = _install(root.table("install"))
    lifecycle = _lifecycle(root.table("lifecycle"))
    profiles = _profiles(root.table("profiles"))
    bmc = _bmc(root.table("bmc"))

    subnets_raw = root.get("subnets", list, [])
    subnets = [_subnet(_Table(source, f"subnets[{i}]", item), admin) for i, item in enumerate(subnets_raw)]
    _check_subnets_disjoint(source, subnets)
    root.finish()
    return Config(source, admin, tuple(interfaces), state_dir, db_url, log_level, services,
                  HttpConfig(host, port, Path(token_text)), tuple(subnets), dhcp, boot, tftp,
                  install, lifecycle, profiles, bmc)


def _dhcp(t: _Table) -> DhcpConfig:
    mode_text = t.get("mode", str, DhcpMode.SERVER.value)
    try:
        mode = DhcpMode(mode_text)
    except ValueError:
        raise t.error("mode", f"{mode_text!r} is not one of server, proxy") from None
    d = DhcpConfig()
    quarantine = t.get("decline_quarantine", int, d.decline_quarantine)
    hold = t.get("offer_hold", int, d.offer_hold)
    if not 0 <= quarantine <= MAX_LEASE_TIME:
        raise t.error("decline_quarantine", f"must be between 0 and {MAX_LEASE_TIME} seconds")
    if not 1 <= hold <= 600:
        raise t.error("offer_hold", "must be between 1 and 600 seconds")
    config = DhcpConfig(mode, t.get("authoritative", bool, d.authoritative),
                        t.get("conflict_check", bool, d.conflict_check), quarantine, hold)
    t.finish()
    return config


def _tftp(t: _Table) -> TftpConfig:
    d = TftpConfig()
    ranges = {"port": (1, 65535), "max_blksize": (512, 65464), "max_windowsize": (1, 65535),
              "retries": (1, 100), "cache_mb": (1, 1 << 20),
              "max_transfers": (1, 100_000)}
    values: dict[str, Any] = {}
    for name, (low, high) in ranges.items():
        value = t.get(name, int, getattr(d, name))
        if not low <= value <= high:
            raise t.error(name, f"must be between {low} and {high}")
        values[name] = value
    t.used.add("timeout")
    timeout = t.data.get("timeout", d.timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise t.error("timeout", f"must be a number of seconds, not {_kind(timeout)}")
    if not 0.1 <= timeout <= 255:
        raise t.error("timeout", "must be between 0.1 and 255 seconds")
    t.finish()
    return TftpConfig(timeout=float(timeout), **values)


def _number(t: _Table, name: str, default: float, low: float, high: float) -> float:
    t.used.add(name)
    value = t.data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise t.error(name, f"must be a number, not {_kind(value)}")
    if not low <= value <= high:
        raise t.error(name, f"must be between {low:g} and {high:g}")
    return float(value)


def _bmc(t: _Table) -> BmcConfig:
    d = BmcConfig()
    sessions = t.get("max_sessions", int, d.max_sessions)
    if not 1 <= sessions <= 1024:
        raise t.error("max_sessions", "must be between 1 and 1024")
    config = BmcConfig(sessions, _number(t, "power_on_rate", d.power_on_rate, 0.01, 1000),
                       _number(t, "cycle_pause", d.cycle_pause, 0, 120),
                       t.get("lifecycle_power", bool, d.lifecycle_power))
    t.finish()
    return config


def _install(t: _Table) -> InstallConfig:
    d = InstallConfig()
    hash_ = t.get("root_password_hash", str, d.root_password_hash)
    if hash_ != "!" and not (hash_.startswith("$") and hash_.count("$") >= 3 and hash_.isprintable()
                             and " " not in hash_):
        raise t.error("root_password_hash", "must be a crypt(3) hash such as $6$salt$hash "
                      "(mkpasswd -m sha-512), or \"!\" to lock the password")
    keys = t.get("ssh_keys", list, [])
    for i, key in enumerate(keys):
        if not isinstance(key, str) or not key.startswith(("ssh-", "ecdsa-", "sk-")) \
                or not key.isprintable() or len(key.split()) < 2:
            raise t.error(f"ssh_keys[{i}]", "is not an OpenSSH public key line")
    disk = t.get("disk", str, d.disk)
    if disk and not (disk.replace("/", "").replace("-", "").replace("_", "").isalnum()
                     and len(disk) <= 64):
        raise t.error("disk", f"{disk!r} is not a disk name such as sda or nvme0n1")
    tz = t.get("timezone", str, d.timezone)
    if not tz or not all(c.isalnum() or c in "/_+-" for c in tz):
        raise t.error("timezone", f"{tz!r} is not a time zone name such as UTC or Europe/Berlin")
    t.finish()
    return InstallConfig(hash_, tuple(keys), disk, tz)


def _lifecycle(t: _Table) -> LifecycleConfig:
    d = LifecycleConfig()
    retries = t.get("retries", int, d.retries)
    if not 0 <= retries <= 100:
        raise t.error("retries", "must be between 0 and 100")
    timeouts = dict(d.timeouts)
    tt = t.table("timeouts")
    for key in list(tt.data):
        try:
            state = NodeState(key)
        except ValueError:
            raise tt.error(key, "is not a node state") from None
        value = tt.get(key, int, 0)
        if state not in DEFAULT_TIMEOUTS:
            raise tt.error(key, f"{key} has no timeout (only {', '.join(DEFAULT_TIMEOUTS)})")
        if not 0 <= value <= 30 * 86400:
            raise tt.error(key, "must be between 0 (never) and 2592000 seconds")
        timeouts[state] = value
    tt.finish()
    interval = t.get("check_interval", int, 10)
    if not 1 <= interval <= 3600:
        raise t.error("check_interval", "must be between 1 and 3600 seconds")
    t.finish()
    return LifecycleConfig(timeouts, retries, float(interval))


def _profiles(t: _Table) -> dict[str, Profile]:
    profiles = dict(BUILTIN)
    for name in list(t.data):
        pt = t.table(name)
        try:
            node_name(name)
        except InvalidInput:
            raise t.error(name, "a profile name is letters, digits, '-' and '.'") from None
        base = BUILTIN.get(name)
        family_text = pt.get("family", str, base.family.value if base else "")
        try:
            family = Family(family_text)
        except ValueError:
            raise pt.error("family", f"{family_text!r} is not one of "
                           f"{', '.join(f.value for f in Family)}") from None
        kernel = pt.parse("kernel", _loader_path) or (base.kernel if base else f"images/{name}/vmlinuz")
        initrd = pt.parse("initrd", _loader_path) or (base.initrd if base else f"images/{name}/initrd.img")
        tree = pt.get("tree", str, base.tree if base else "")
        if tree and not tree.startswith(("http://", "https://", "ftp://", "nfs:")):
            raise pt.error("tree", f"{tree!r} is not an http://, https://, ftp:// or nfs: URL")
        template = pt.get("template", str, base.template if base else "")
        if not template:
            raise pt.error("template", "is required for a profile that is not built in")
        try:
            render_check(template)
        except InvalidInput as exc:
            raise pt.error("template", str(exc)) from None
        extra = pt.get("extra_args", str, base.extra_args if base else "")
        if not extra.isprintable():
            raise pt.error("extra_args", "must be printable text")
        pt.finish()
        profiles[name] = Profile(name, family, kernel, initrd, tree, template, extra)
    return profiles


def _loader_path(text: str) -> str:
    # Goes into the 128-octet BOOTP `file` field and is resolved under the TFTP root.
    parts = text.split("/")
    if (not text or len(text.encode()) > 127 or text.startswith("/") or ".." in parts
            or not text.isprintable() or " " in text):
        raise ValueError(f"{text!r} is not a relative path under the TFTP root (at most 127 bytes)")
    return text


def _boot(t: _Table) -> BootConfig:
    d = BootConfig()
    values = {}
    for name in ("bios", "uefi_x64", "uefi_ia32", "uefi_arm64"):
        values[name] = t.parse(name, _loader_path) or getattr(d, name)
    ipxe_script = t.get("ipxe_script", bool, d.ipxe_script)
    if not ipxe_script and ("ipxe" in values["bios"].lower() or values["bios"].endswith(".kpxe")):
        raise t.error("ipxe_script", f"false would make iPXE load {values['bios']} (iPXE) again "
                      "and again; set bios to a loader such as pxelinux.0")
    t.finish()
    return BootConfig(**values, ipxe_script=ipxe_script)


def _check_subnets_disjoint(source: str, subnets: list[Subnet]) -> None:
    for i, a in enumerate(subnets):
        for j in range(i + 1, len(subnets)):
            if a.cidr.overlaps(subnets[j].cidr):
                raise ConfigError(source, f"subnets[{j}].cidr",
                                  f"{subnets[j].cidr} overlaps subnets[{i}] {a.cidr}")


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "no such file (create one with `bootd init`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc}") from None
    return parse_config(text, str(path))


def check_host(config: Config, interfaces: Collection[str]) -> None:
    """Host facts that a config cannot know: the interfaces it names must exist."""
    for i, name in enumerate(config.interfaces):
        if name not in interfaces:
            raise ConfigError(config.source, f"server.interfaces[{i}]",
                              f"no interface named {name!r} on this host")
