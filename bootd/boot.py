"""What a node boots and what its installer reads, by its state: pure functions.

The policy (DHCP/TFTP side) and the HTTP handlers both come here, so an iPXE
script, a pxelinux config and a GRUB config for the same node in the same
state always say the same thing. `bootd nodes render` prints these too.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from types import SimpleNamespace

from bootd.config import Config
from bootd.errors import InvalidInput
from bootd.installnet import install_network
from bootd.model.lifecycle import BOOT, Boot
from bootd.model.profiles import ANSWER_FILE, Family, Profile
from bootd.model.records import DirectoryEntry, NodeRecord
from bootd.model.states import NodeState
from bootd.render import BootTarget, render

DISCOVERY_KERNEL = "images/discovery/vmlinuz"
DISCOVERY_INITRD = "images/discovery/initrd.img"
SCRIPT_TEMPLATES = {"ipxe": "ipxe.j2", "pxelinux": "pxelinux.cfg.j2", "grub": "grub.cfg.j2"}
ANSWER_KINDS = ("kickstart", "preseed", "user-data")


@dataclass(frozen=True, slots=True)
class NodeView:
    """The facts rendering needs about one node (or a machine not yet known)."""

    name: str  # "-" for a machine bootd has not recorded
    mac: str
    state: NodeState
    profile: str | None = None
    token: str = ""
    admin_ip: IPv4Address | None = None
    leased: IPv4Address | None = None  # the address bootd leased it, where known: its subnet


def view_of(node: NodeRecord | DirectoryEntry, mac: str | None = None, token: str = "",
            leased: IPv4Address | None = None) -> NodeView:
    """The one way to make a NodeView from what the inventory holds."""
    boot_mac = node.mac if isinstance(node, DirectoryEntry) else node.boot_mac or "00:00:00:00:00:00"
    return NodeView(node.name, mac or boot_mac, node.state, node.profile, token, node.admin_ip, leased)


def profile_of(view: NodeView, config: Config, override: str | None = None) -> Profile | None:
    name = override or view.profile
    if name is None:
        return None
    profile = config.profiles.get(name)
    if profile is None:
        raise InvalidInput(f"no profile named {name!r} (known: {', '.join(sorted(config.profiles))})")
    return profile


def install_urls(view: NodeView, config: Config) -> dict[str, str]:
    base = config.http_base
    node = f"{base}/install/{view.name}"
    return {
        "kickstart": f"{node}/kickstart?token={view.token}",
        "preseed": f"{node}/preseed?token={view.token}",
        # cloud-init's nocloud-net appends "user-data"/"meta-data" to the seed URL,
        # so the token rides in the path, not the query.
        "seed": f"{node}/{view.token}/",
        "callback": f"{base}/api/v1/nodes/{view.name}/transition?token={view.token}&state=",
    }


def target(view: NodeView, config: Config, profile_name: str | None = None) -> BootTarget:
    describe = f"{view.name} ({view.mac}) in {view.state.value}"
    mode = BOOT[view.state]
    profile = profile_of(view, config, profile_name) if mode is Boot.INSTALL else None
    if mode is Boot.LOCAL:
        return BootTarget("local", view.mac, describe)
    if mode is Boot.INSTALL and profile is not None:
        return BootTarget("install", view.mac, describe, profile.kernel, profile.initrd,
                          installer_args(view, profile, config))
    args: tuple[str, ...] = (f"bootd.url={config.http_base}", f"bootd.node={view.name}",
            f"bootd.state={view.state.value}")
    if view.token:
        args += (f"bootd.token={view.token}",)
    return BootTarget("discovery", view.mac, describe, DISCOVERY_KERNEL, DISCOVERY_INITRD,
                      (*args, "console=tty0", "console=ttyS0,115200n8"))


def installer_args(view: NodeView, profile: Profile, config: Config) -> tuple[str, ...]:
    """The installer's kernel command line. It carries what the installer must know
    before it can fetch its answer file, so that nothing stops it on an isolated
    admin network (bootd.installnet): no router, no name server, the domain."""
    urls = install_urls(view, config)
    tree = profile.tree_url(config.http_base)
    net = install_network(config, view.admin_ip, view.leased)
    if profile.family is Family.PRESEED:
        # d-i reads foo/bar=value into debconf as answered, empty values too (env2debconf).
        args: tuple[str, ...] = ("auto=true", "priority=critical", f"url={urls['preseed']}",
                                 "netcfg/choose_interface=auto", f"hostname={view.name}",
                                 f"domain={net.domain}", "interface=auto")
        if net.known:
            if net.router is None:
                args += ("netcfg/no_default_route=true",)
            # Asked only when DHCP gave no name server; one fits without quoting, which
            # iPXE, pxelinux and GRUB would each treat differently.
            first = str(net.name_servers[0]) if net.name_servers else ""
            args += (f"netcfg/get_nameservers={first}",)
    elif profile.family is Family.AUTOINSTALL:
        # casper's ip=dhcp asks nothing; subiquity's network comes from the user-data.
        args = ("ip=dhcp", f"url={tree}", "autoinstall", f"ds=nocloud-net;s={urls['seed']}",
                "cloud-config-url=/dev/null")
    elif profile.family is Family.KICKSTART_RHEL5:
        # RHEL 5's loader takes DHCP's answer as it is (no router is no question);
        # dns= is its own spelling, comma-separated.
        args = (f"ks={urls['kickstart']}", "ksdevice=bootif", f"method={tree}")
        if net.name_servers:
            args += ("dns=" + ",".join(map(str, net.name_servers)),)
    else:
        # dracut: ip=dhcp uses the lease as it is, without a gateway when there is none.
        args = (f"inst.ks={urls['kickstart']}", f"inst.repo={tree}", "ip=dhcp",
                *(f"nameserver={a}" for a in net.name_servers))
    return (*args, *profile.extra_args.split(), "console=tty0", "console=ttyS0,115200n8")


def script(kind: str, view: NodeView, config: Config, profile_name: str | None = None) -> str:
    """The boot script (ipxe, pxelinux or grub) this node gets in its state."""
    template = SCRIPT_TEMPLATES.get(kind)
    if template is None:
        raise InvalidInput(f"no boot script kind {kind!r} (one of {', '.join(SCRIPT_TEMPLATES)})")
    return render(template, target=target(view, config, profile_name), base=config.http_base)


FIRSTBOOT = "firstboot.sh.j2"


def answer(kind: str, view: NodeView, config: Config, profile_name: str | None = None) -> str:
    """The kickstart, preseed or user-data of this node's profile."""
    profile = profile_of(view, config, profile_name)
    if profile is None:
        raise InvalidInput(f"node {view.name} has no profile; allocate it with one")
    if ANSWER_FILE[profile.family] != kind:
        raise InvalidInput(f"profile {profile.name} ({profile.family.value}) uses a "
                           f"{ANSWER_FILE[profile.family]}, not a {kind}")
    urls = install_urls(view, config)
    net = install_network(config, view.admin_ip, view.leased)
    netmask = net.netmask_of(view.admin_ip)
    node = SimpleNamespace(
        name=view.name, mac=view.mac,
        admin_ip=None if view.admin_ip is None else str(view.admin_ip),
        netmask=None if netmask is None else str(netmask),
        gateway=None if net.router is None else str(net.router),
        name_servers=[str(a) for a in net.name_servers],
        domain=net.domain)
    install = SimpleNamespace(root_password_hash=config.install.root_password_hash,
                              ssh_keys=list(config.install.ssh_keys), disk=config.install.disk,
                              timezone=config.install.timezone)
    firstboot = render(FIRSTBOOT, callback=urls["callback"], node=node)
    return render(profile.template, node=node, install=install,
                  profile=SimpleNamespace(name=profile.name, tree=profile.tree_url(config.http_base)),
                  callback=urls["callback"], firstboot=firstboot)
