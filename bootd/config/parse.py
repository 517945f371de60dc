"""Parsing and validating the configuration file into a `Config`.

Theory of operation: `parse_config` turns the text into a `Config` or raises a
`ConfigError` that names the file, the dotted key and what is wrong. It is pure
(no sockets, no filesystem besides reading the file in `load_config`), so every
rule is tested from strings. One function per TOML table; the reader and the
value parsers they share are in table.py. Profiles come from three places, in
order: the built-ins, the files `bootd images import` wrote under
<state_dir>/profiles/ (read by `load_config` and handed in, so parsing stays
pure), and the config file's [profiles.NAME] tables.
"""

from __future__ import annotations

import platform
import re
import tomllib
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path, PurePath
from typing import Any

from bootd.config.defaults import (
    DEFAULT_HTTP_PORT,
    DEFAULT_LEASE_TIME,
    DEFAULT_STATE_DIR,
    IMPORTED_PROFILES,
    LOG_LEVELS,
    MAX_LEASE_TIME,
    MIN_LEASE_TIME,
)
from bootd.config.sections import (
    AddressRange,
    BmcConfig,
    BootConfig,
    Config,
    DhcpConfig,
    DhcpMode,
    DnsConfig,
    HttpConfig,
    InstallConfig,
    LifecycleConfig,
    RaConfig,
    RogueConfig,
    Services,
    Subnet,
    TftpConfig,
    WavesConfig,
)
from bootd.config.table import (
    Table,
    address_range,
    database_url,
    ipv4,
    kind_of,
    listen,
    loader_path,
    network,
    number,
)
from bootd.errors import ConfigError, InvalidInput
from bootd.model.lifecycle import DEFAULT_TIMEOUTS
from bootd.model.names import dns_domain, short_text
from bootd.model.profiles import BUILTIN, Family, Profile, valid_name
from bootd.model.states import NodeState
from bootd.render import check as render_check

# States whose nodes load the admin node (image, installer downloads) and so may wait for a place.
HEAVY_CHOICES = frozenset({NodeState.HARDWARE_INSTALLING, NodeState.INSTALLING, NodeState.READYING})


def _subnet(table: Table, admin: IPv4Address) -> Subnet:
    cidr: IPv4Network = table.parse("cidr", network, required=True)
    if cidr.prefixlen > 29:
        raise table.error("cidr", f"{cidr} is too small to serve (at most /29)")
    router = table.parse("router", ipv4)
    if router is not None and router not in cidr:
        raise table.error("router", f"{router} is outside subnet {cidr}")
    dns_list = table.get("dns_servers", list, [])
    dns: list[IPv4Address] = []
    for i, item in enumerate(dns_list):
        if not isinstance(item, str):
            raise table.error(f"dns_servers[{i}]", f"must be a string, not {kind_of(item)}")
        try:
            dns.append(ipv4(item))
        except ValueError as exc:
            raise table.error(f"dns_servers[{i}]", str(exc)) from None
    domain = table.parse("domain", dns_domain)
    lease_time = table.get("lease_time", int, DEFAULT_LEASE_TIME)
    if not MIN_LEASE_TIME <= lease_time <= MAX_LEASE_TIME:
        raise table.error("lease_time", f"must be between {MIN_LEASE_TIME} and {MAX_LEASE_TIME} seconds")
    ranges: dict[str, AddressRange | None] = {}
    for name in ("dynamic_pool", "static_range", "bmc_range"):
        rng: AddressRange | None = table.parse(name, address_range)
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
    rack = table.parse("rack", lambda v: short_text(v, "rack", 64))
    table.finish()
    return Subnet(cidr, router, tuple(dns), domain, lease_time, ranges["dynamic_pool"],
                  ranges["static_range"], ranges["bmc_range"], rack)


ProfileFiles = Callable[[Path], Sequence[tuple[str, str]]]
"""Given the state directory: (source name, text) of each imported profile file."""


def parse_config(text: str, source: str = "<config>", imported: ProfileFiles | None = None) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    root = Table(source, "", data)

    server = root.table("server")
    admin: IPv4Address = server.parse("admin_address", ipv4, required=True)
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
    db_url = server.parse("database_url", database_url) or f"sqlite+aiosqlite:///{state_dir / 'bootd.db'}"
    daemon_id = server.get("daemon_id", str, _host_name())
    if not _DAEMON_ID.fullmatch(daemon_id):
        raise server.error("daemon_id", f"{daemon_id!r} is not a name of 1-64 letters, digits, '.', '_', '-'")
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
        host, port = listen(http_t.get("listen", str, f"{admin}:{DEFAULT_HTTP_PORT}"), str(admin))
    except ValueError as exc:
        raise http_t.error("listen", str(exc)) from None
    token_text = http_t.get("api_token_file", str, str(state_dir / "api-token"))
    if not Path(token_text).is_absolute():
        raise http_t.error("api_token_file", f"{token_text!r} must be an absolute path")
    status_public = http_t.get("status_public", bool, False)
    http_t.finish()

    dhcp = _dhcp(root.table("dhcp"))
    dns = _dns(root.table("dns"), admin)
    boot = _boot(root.table("boot"))
    tftp = _tftp(root.table("tftp"))
    install = _install(root.table("install"))
    lifecycle = _lifecycle(root.table("lifecycle"))
    profiles = _profiles(root.table("profiles"), _imported(imported(state_dir) if imported else ()))
    bmc = _bmc(root.table("bmc"))
    waves = _waves(root.table("waves"))
    rogue = _rogue(root.table("rogue"))
    ra = _ra(root.table("ra"))

    subnets_raw = root.get("subnets", list, [])
    subnets = [_subnet(Table(source, f"subnets[{i}]", item), admin) for i, item in enumerate(subnets_raw)]
    _check_subnets_disjoint(source, subnets)
    root.finish()
    return Config(source, admin, tuple(interfaces), state_dir, db_url, log_level, services,
                  HttpConfig(host, port, Path(token_text), status_public), tuple(subnets), dhcp, boot, tftp,
                  install, lifecycle, profiles, bmc, dns, waves, rogue, ra, daemon_id)


_DAEMON_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _host_name() -> str:
    name = platform.node().split(".")[0]
    return name if _DAEMON_ID.fullmatch(name) else "bootd"


def _waves(t: Table) -> WavesConfig:
    d = WavesConfig()
    states: set[NodeState] = set()
    for i, item in enumerate(t.get("states", list, sorted(d.states))):
        try:
            state = NodeState(item) if isinstance(item, str) else None
        except ValueError:
            state = None
        if state is None or state not in HEAVY_CHOICES:
            raise t.error(f"states[{i}]", f"{item!r} is not one of {', '.join(sorted(HEAVY_CHOICES))}")
        states.add(state)
    values = {}
    for name, low, high in (("max_global", 0, 100_000), ("max_per_rack", 0, 100_000),
                            ("max_per_daemon", 0, 100_000), ("wait", 1, 3600), ("forget_after", 10, 86400)):
        value = t.get(name, int, getattr(d, name))
        if not low <= value <= high:
            raise t.error(name, f"must be between {low} and {high}")
        values[name] = value
    if values["forget_after"] <= 2 * values["wait"]:
        raise t.error("forget_after", f"must be more than twice wait ({values['wait']} s): a machine "
                      "asks again every wait seconds and would lose its place between asks")
    t.finish()
    return WavesConfig(frozenset(states), **values)


def _rogue(t: Table) -> RogueConfig:
    d = RogueConfig()
    interval = t.get("probe_interval", int, d.probe_interval)
    if interval != 0 and not 10 <= interval <= 86400:
        raise t.error("probe_interval", "must be 0 (never) or between 10 and 86400 seconds")
    allowed: list[IPv4Address] = []
    for i, item in enumerate(t.get("allowed", list, [])):
        if not isinstance(item, str):
            raise t.error(f"allowed[{i}]", f"must be a string, not {kind_of(item)}")
        try:
            allowed.append(ipv4(item))
        except ValueError as exc:
            raise t.error(f"allowed[{i}]", str(exc)) from None
    config = RogueConfig(t.get("watch", bool, d.watch), interval,
                         number(t, "probe_wait", d.probe_wait, 0.5, 30), tuple(allowed))
    t.finish()
    return config


def _ra(t: Table) -> RaConfig:
    d = RaConfig()
    interval = t.get("interval", int, d.interval)
    if not 4 <= interval <= 1800:  # RFC 4861 section 6.2.1: MaxRtrAdvInterval 4..1800
        raise t.error("interval", "must be between 4 and 1800 seconds")
    config = RaConfig(t.get("enabled", bool, d.enabled), interval)
    t.finish()
    return config


def _dhcp(t: Table) -> DhcpConfig:
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
    burst = t.get("register_burst", int, d.register_burst)
    if not 1 <= burst <= 1_000_000:
        raise t.error("register_burst", "must be between 1 and 1000000")
    config = DhcpConfig(mode, t.get("authoritative", bool, d.authoritative),
                        t.get("conflict_check", bool, d.conflict_check), quarantine, hold,
                        number(t, "register_rate", d.register_rate, 0.1, 100_000), burst)
    t.finish()
    return config


def _dns(t: Table, admin: IPv4Address) -> DnsConfig:
    d = DnsConfig()
    port, ttl = t.get("port", int, d.port), t.get("ttl", int, d.ttl)
    if not 1 <= port <= 65535:
        raise t.error("port", "must be between 1 and 65535")
    if not 0 <= ttl <= 86400:
        raise t.error("ttl", "must be between 0 and 86400 seconds")
    upstreams: list[tuple[IPv4Address, int]] = []
    for i, item in enumerate(t.get("upstreams", list, [])):
        if not isinstance(item, str):
            raise t.error(f"upstreams[{i}]", f"must be a string, not {kind_of(item)}")
        host, sep, port_text = item.rpartition(":")
        try:
            upstream = (ipv4(host if sep else item), int(port_text) if sep and port_text.isdigit() else 53)
        except ValueError as exc:
            raise t.error(f"upstreams[{i}]", str(exc)) from None
        if sep and not (port_text.isdigit() and 0 < int(port_text) < 65536):
            raise t.error(f"upstreams[{i}]", f"{port_text!r} is not a port")
        if upstream == (admin, port):
            raise t.error(f"upstreams[{i}]", "is bootd's own DNS service: queries would loop")
        upstreams.append(upstream)
    t.finish()
    return DnsConfig(tuple(upstreams), port, ttl)


def _tftp(t: Table) -> TftpConfig:
    d = TftpConfig()
    ranges = {"port": (1, 65535), "max_blksize": (512, 65464), "max_windowsize": (1, 65535),
              "retries": (1, 100), "cache_mb": (1, 1 << 20),
              "max_transfers": (1, 100_000), "max_per_client": (1, 100_000), "max_timeout": (1, 255)}
    values: dict[str, Any] = {}
    for name, (low, high) in ranges.items():
        value = t.get(name, int, getattr(d, name))
        if not low <= value <= high:
            raise t.error(name, f"must be between {low} and {high}")
        values[name] = value
    t.used.add("timeout")
    timeout = t.data.get("timeout", d.timeout)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise t.error("timeout", f"must be a number of seconds, not {kind_of(timeout)}")
    if not 0.1 <= timeout <= 255:
        raise t.error("timeout", "must be between 0.1 and 255 seconds")
    t.finish()
    return TftpConfig(timeout=float(timeout), **values)


def _bmc(t: Table) -> BmcConfig:
    d = BmcConfig()
    sessions = t.get("max_sessions", int, d.max_sessions)
    if not 1 <= sessions <= 1024:
        raise t.error("max_sessions", "must be between 1 and 1024")
    config = BmcConfig(sessions, number(t, "power_on_rate", d.power_on_rate, 0.01, 1000),
                       number(t, "cycle_pause", d.cycle_pause, 0, 120),
                       t.get("lifecycle_power", bool, d.lifecycle_power))
    t.finish()
    return config


def _install(t: Table) -> InstallConfig:
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


def _lifecycle(t: Table) -> LifecycleConfig:
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


def _profile(t: Table, name: str, base: Profile | None) -> Profile:
    """One [profiles.NAME] table over its base (a built-in or an imported profile)."""
    pt = t.table(name)
    if not valid_name(name):
        raise t.error(name, "a profile name is lower-case letters, digits, '-', '_' and '.'")
    family_text = pt.get("family", str, base.family.value if base else "")
    try:
        family = Family(family_text)
    except ValueError:
        raise pt.error("family", f"{family_text!r} is not one of "
                       f"{', '.join(f.value for f in Family)}") from None
    kernel = pt.parse("kernel", loader_path) or (base.kernel if base else f"images/{name}/vmlinuz")
    initrd = pt.parse("initrd", loader_path) or (base.initrd if base else f"images/{name}/initrd.img")
    tree = pt.get("tree", str, base.tree if base else "")
    if tree and not tree.startswith(("http://", "https://", "ftp://", "nfs:")):
        try:
            if ":" in tree:  # file://, tftp://: a URL of a kind installers cannot fetch a tree by
                raise ValueError(tree)
            loader_path(tree)
        except ValueError:
            raise pt.error("tree", f"{tree!r} is not an http://, https://, ftp:// or nfs: URL, "
                           "nor a relative path under the TFTP root") from None
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
    return Profile(name, family, kernel, initrd, tree, template, extra)


def profile_file(source: str, text: str) -> Profile:
    """One profile file written by `bootd images import`: named after its profile, holding
    only its [profiles.NAME] table (the same keys as in the config file)."""
    name = PurePath(source).stem
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    root = Table(source, "", data)
    table = root.table("profiles")
    if list(table.data) != [name]:
        raise table.error(name, f"an imported profile file holds exactly [profiles.{name}]")
    profile = _profile(table, name, BUILTIN.get(name))
    root.finish()
    return profile


def _imported(files: Sequence[tuple[str, str]]) -> dict[str, Profile]:
    return {p.name: p for p in (profile_file(source, text) for source, text in files)}


def _profiles(t: Table, imported: dict[str, Profile]) -> dict[str, Profile]:
    # Built-ins, then imported media, then the config file's own tables (which may
    # change a key or two of either: extra_args, template).
    profiles = {**BUILTIN, **imported}
    for name in list(t.data):
        profiles[name] = _profile(t, name, profiles.get(name))
    return profiles


def _boot(t: Table) -> BootConfig:
    d = BootConfig()
    values = {}
    for name in ("bios", "uefi_x64", "uefi_ia32", "uefi_arm64"):
        values[name] = t.parse(name, loader_path) or getattr(d, name)
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


def imported_profile_files(state_dir: Path) -> list[tuple[str, str]]:
    """The profile files `bootd images import` wrote under <state_dir>/profiles/, by name."""
    found = []
    for path in sorted((state_dir / IMPORTED_PROFILES).glob("*.toml")):
        try:
            found.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), "", f"cannot read: {exc}") from None
    return found


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "", "no such file (create one with `bootd init`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), "", f"cannot read: {exc}") from None
    return parse_config(text, str(path), imported_profile_files)
