"""The command line of `bootd`: subcommands, their options and help."""

from __future__ import annotations

import argparse
from pathlib import Path

from bootd import __version__
from bootd.bmc.controller import PowerOp
from bootd.cli import dhcp, media, rollout
from bootd.config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR
from bootd.lifecycle import Selector
from bootd.model.states import NodeState


def _selector(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("names", nargs="*", metavar="NAME")
    cmd.add_argument("--rack", help="every node in this rack")
    cmd.add_argument("--state", dest="in_state", metavar="STATE", help="every node in this state")
    cmd.add_argument("--all", action="store_true", help="every node")


def selector(args: argparse.Namespace) -> Selector:
    """The nodes a command is for (the service's one definition of selection)."""
    return Selector.parse(args.names, rack=args.rack, state=args.in_state, all=args.all)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, metavar="PATH",
                        help=f"config file (default: $BOOTD_CONFIG or {DEFAULT_CONFIG_PATH})")
    p = argparse.ArgumentParser(prog="bootd", parents=[common],
                                description="Network-boot appliance daemon.")
    p.add_argument("--version", action="version", version=f"bootd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", parents=[common], help="write a config for an interface's subnet")
    init.add_argument("--interface", required=True, metavar="IF")
    init.add_argument("--output", type=Path, metavar="PATH",
                      help="where to write (default: --config, else the default config path)")
    init.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.add_argument("--cache", type=Path, metavar="DIR",
                      help="downloaded loader packages (default: <state_dir>/cache)")

    sub.add_parser("serve", parents=[common], help="run the daemon")
    sub.add_parser("check", parents=[common], help="validate the config file and exit")

    nodes = sub.add_parser("nodes", parents=[common], help="the node inventory")
    nsub = nodes.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = nsub.add_parser("list", parents=[common], help="list nodes")
    ls.add_argument("--json", action="store_true")
    show = nsub.add_parser("show", parents=[common], help="one node and its recent events")
    show.add_argument("name")
    show.add_argument("--json", action="store_true")
    add = nsub.add_parser("add", parents=[common], help="register a node before it boots")
    add.add_argument("name")
    add.add_argument("--mac", action="append", default=[], help="NIC MAC (repeat; first boots)")
    add.add_argument("--ip", type=str, help="admin address, inside a subnet's static_range")
    add.add_argument("--rack")
    add.add_argument("--profile", help="OS profile to install")
    add.add_argument("--bmc-address")
    add.add_argument("--bmc-user")
    add.add_argument("--bmc-password-file", type=Path, metavar="FILE",
                     help="file holding the BMC password ('-' for stdin)")
    add.add_argument("--json", action="store_true")
    delete = nsub.add_parser("delete", parents=[common],
                             help="remove nodes (events stay; the next boot is a new discovery)")
    _selector(delete)
    delete.add_argument("--power-off", action="store_true", help="power the node off through its BMC first")
    alloc = nsub.add_parser("allocate", parents=[common],
                            help="give discovered nodes a profile: on to hardware-install")
    _selector(alloc)
    alloc.add_argument("--profile", help="OS profile (default: the node's own)")
    alloc.add_argument("--rename", metavar="NEW", help="new name (one node only)")
    for op, text in (("reinstall", "send nodes back to OS install"),
                     ("reset", "forget nodes' installs: back to discovery")):
        _selector(nsub.add_parser(op, parents=[common], help=text))
    ev = nsub.add_parser("events", parents=[common], help="a node's event log")
    ev.add_argument("name")
    ev.add_argument("--limit", type=int, default=1000)
    ev.add_argument("--json", action="store_true")
    rend = nsub.add_parser("render", parents=[common],
                           help="print what a node gets (or would get in a state / with a profile)")
    rend.add_argument("name")
    rend.add_argument("kind", choices=["ipxe", "pxelinux", "grub", "kickstart", "preseed", "user-data"])
    rend.add_argument("--state", choices=[s.value for s in NodeState if s is not NodeState.DELETE])
    rend.add_argument("--profile")

    power = sub.add_parser("power", parents=[common], help="BMC power and boot control")
    power.add_argument("op", choices=[o.value for o in PowerOp])
    _selector(power)
    power.add_argument("--json", action="store_true")

    images = sub.add_parser("images", parents=[common], help="boot images")
    isub = images.add_subparsers(dest="action", required=True, metavar="ACTION")
    bd = isub.add_parser("build-discovery", parents=[common],
                         help="build the discovery image (kernel + initramfs) from Debian packages")
    bd.add_argument("--output", type=Path, metavar="DIR",
                    help="default: <state_dir>/tftp/images/discovery")
    bd.add_argument("--cache", type=Path, metavar="DIR", help="default: <state_dir>/cache")
    media.add_parser(isub, common)
    bl = isub.add_parser("bootloaders", parents=[common],
                         help="install or refresh the first-stage loaders from Debian packages")
    bl.add_argument("--cache", type=Path, metavar="DIR", help="default: <state_dir>/cache")

    rollout.add_parser(sub, common)

    dhcp.add_parser(sub, common)
    leases = sub.add_parser("leases", parents=[common], help="DHCP leases")
    lsub = leases.add_subparsers(dest="action", required=True, metavar="ACTION")
    lls = lsub.add_parser("list", parents=[common], help="list leases")
    lls.add_argument("--json", action="store_true")
    return p
