"""The `bootd` command: argv -> config -> action.

Every error a user can cause ends as one line on stderr, `bootd: error: ...`,
and a non-zero exit: 2 for a bad command line or config file, 1 for anything
else (a missing node, a taken MAC, an unreachable database).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, TypeVar

from bootd import __version__, logs
from bootd.app import EXIT_CONFIG, EXIT_FAILURE, Daemon
from bootd.bmc.controller import PowerOp
from bootd.config import DEFAULT_CONFIG_PATH, DEFAULT_STATE_DIR, Config, load_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.errors import BootdError, ConfigError, Conflict, InvalidInput, NotFound
from bootd.http.api import event_json, lease_json, node_json
from bootd.keys import SecretBox
from bootd.model.lifecycle import Actor
from bootd.model.records import NewNode, NodeRecord
from bootd.model.states import NodeState

T = TypeVar("T")
ACTOR = "cli"


def _selector(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--rack", help="every node in this rack")
    cmd.add_argument("--state", dest="in_state", metavar="STATE", help="every node in this state")
    cmd.add_argument("--all", action="store_true", help="every node")


async def _selected(args: argparse.Namespace, r: Repository) -> list[str]:
    picks = [bool(args.names), args.rack is not None, args.in_state is not None, args.all]
    if sum(picks) != 1:
        raise InvalidInput("name nodes, or give exactly one of --rack, --state, --all")
    if args.names:
        return list(args.names)
    nodes = await r.list_nodes()
    if args.rack is not None:
        return [n.name for n in nodes if n.rack == args.rack]
    if args.in_state is not None:
        try:
            state = NodeState(args.in_state)
        except ValueError:
            raise InvalidInput(f"{args.in_state!r} is not a node state") from None
        return [n.name for n in nodes if n.state is state]
    return [n.name for n in nodes]


OPERATIONS = {"allocate": NodeState.HARDWARE_INSTALLING, "reinstall": NodeState.REINSTALL,
              "reset": NodeState.RESET, "delete": NodeState.DELETE}


async def _operate(args: argparse.Namespace, config: Config) -> int:
    """One lifecycle operation on selected nodes; one line per node, non-zero if any failed."""
    target = OPERATIONS[args.action]
    rename = getattr(args, "rename", None)
    profile = getattr(args, "profile", None)

    async def run(r: Repository) -> list[tuple[str, str | None]]:
        names = await _selected(args, r)
        if rename and len(names) != 1:
            raise InvalidInput("--rename needs exactly one node")
        out: list[tuple[str, str | None]] = []
        for name in names:
            if target is NodeState.DELETE and getattr(args, "power_off", False):
                from bootd.bmc.service import PowerService

                off = await PowerService(config, r).one(PowerOp.OFF, name, actor=ACTOR)
                if not off.ok:
                    print(f"{name}: power off failed ({off.kind}): {off.error}", file=sys.stderr)
            try:
                node = await r.transition(name, target, Actor.OPERATOR, actor=ACTOR,
                                          profile=profile, rename=rename)
                if target in (NodeState.REINSTALL, NodeState.RESET):
                    from bootd.bmc.service import PowerService

                    for res in await PowerService(config, r).after_move(node, actor=ACTOR):
                        if not res.ok:
                            print(f"{node.name}: power {res.kind}: {res.error}", file=sys.stderr)
                out.append((node.name, None))
            except (Conflict, NotFound, InvalidInput) as exc:
                if len(args.names) == 1:
                    raise  # one node named: its error is the command's error
                out.append((name, str(exc)))
        return out
    results = await _with_repo(config, run)
    if not results:
        print("no nodes selected")
    for name, error in results:
        if error is None and target is NodeState.DELETE:
            print(f"deleted node {name}")
        elif error is None:
            print(f"{name}: {target.value}")
        else:
            print(f"{name}: failed: {error}", file=sys.stderr)
    return 1 if any(e for _, e in results) else 0


async def _render(args: argparse.Namespace, config: Config) -> int:
    from bootd import boot

    async def fetch(r: Repository) -> tuple[NodeRecord, str]:
        node = await r.get_node(args.name)
        return node, await r.node_token(node.name)
    node, token = await _with_repo(config, fetch)
    state = NodeState(args.state) if args.state else node.state
    view = boot.NodeView(node.name, node.boot_mac or "00:00:00:00:00:00", state,
                         args.profile or node.profile, token, node.admin_ip)
    if args.kind in boot.SCRIPT_TEMPLATES:
        text = boot.script(args.kind, view, config)
    else:
        text = boot.answer(args.kind, view, config)
    sys.stdout.write(text)
    return 0


def _parser() -> argparse.ArgumentParser:
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
    delete.add_argument("names", nargs="*", metavar="NAME")
    _selector(delete)
    delete.add_argument("--power-off", action="store_true", help="power the node off through its BMC first")
    alloc = nsub.add_parser("allocate", parents=[common],
                            help="give discovered nodes a profile: on to hardware-install")
    alloc.add_argument("names", nargs="*", metavar="NAME")
    _selector(alloc)
    alloc.add_argument("--profile", help="OS profile (default: the node's own)")
    alloc.add_argument("--rename", metavar="NEW", help="new name (one node only)")
    for op, text in (("reinstall", "send nodes back to OS install"),
                     ("reset", "forget nodes' installs: back to discovery")):
        cmd = nsub.add_parser(op, parents=[common], help=text)
        cmd.add_argument("names", nargs="*", metavar="NAME")
        _selector(cmd)
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
    power.add_argument("names", nargs="*", metavar="NAME")
    _selector(power)
    power.add_argument("--json", action="store_true")

    images = sub.add_parser("images", parents=[common], help="boot images")
    isub = images.add_subparsers(dest="action", required=True, metavar="ACTION")
    bd = isub.add_parser("build-discovery", parents=[common],
                         help="build the discovery image (kernel + initramfs) from Debian packages")
    bd.add_argument("--output", type=Path, metavar="DIR",
                    help="default: <state_dir>/tftp/images/discovery")
    bd.add_argument("--cache", type=Path, metavar="DIR", help="default: <state_dir>/cache")

    leases = sub.add_parser("leases", parents=[common], help="DHCP leases")
    lsub = leases.add_subparsers(dest="action", required=True, metavar="ACTION")
    lls = lsub.add_parser("list", parents=[common], help="list leases")
    lls.add_argument("--json", action="store_true")
    return p


async def _leases(args: argparse.Namespace, config: Config) -> int:
    leases = await _with_repo(config, lambda r: r.list_leases())
    if args.json:
        _print_json({"leases": [lease_json(lease) for lease in leases]})
    elif leases:
        print(_table([[str(x.ip), x.mac, x.state.value, x.expires_at.isoformat(timespec="seconds"),
                       x.hostname or "-"] for x in leases], ["IP", "MAC", "STATE", "EXPIRES", "HOSTNAME"]))
    else:
        print("no leases")
    return 0


def _config_path(args: argparse.Namespace) -> Path:
    path: Path | None = getattr(args, "config", None)
    return path or Path(os.environ.get("BOOTD_CONFIG", str(DEFAULT_CONFIG_PATH)))


async def _with_repo(config: Config, action: Callable[[Repository], Awaitable[T]]) -> T:
    engine = await open_database(config.database_url)
    try:
        return await action(Repository(engine, SecretBox.from_file(config.secret_key_file)))
    finally:
        await engine.dispose()


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    lines = [header, *rows]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def _node_row(n: NodeRecord) -> list[str]:
    return [n.name, n.state.value, "yes" if n.allocated else "no", n.profile or "-",
            str(n.admin_ip or "-"), n.rack or "-", ",".join(i.mac for i in n.interfaces) or "-"]


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def _read_password(path: Path) -> str:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read BMC password from {path}: {exc.strerror}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise InvalidInput("the BMC password is empty")
    return password


def _admin_ip(config: Config, text: str | None) -> IPv4Address | None:
    if text is None:
        return None
    try:
        ip = IPv4Address(text)
    except ValueError:
        raise InvalidInput(f"--ip: {text!r} is not an IPv4 address") from None
    subnet = config.subnet_for(ip)
    if subnet is None or subnet.static_range is None or ip not in subnet.static_range:
        raise InvalidInput(f"--ip: {ip} is not inside the static_range of a configured subnet")
    return ip


async def _nodes(args: argparse.Namespace, config: Config) -> int:
    if args.action == "list":
        nodes = await _with_repo(config, lambda r: r.list_nodes())
        if args.json:
            _print_json({"nodes": [node_json(n) for n in nodes]})
        elif nodes:
            print(_table([_node_row(n) for n in nodes],
                         ["NAME", "STATE", "ALLOCATED", "PROFILE", "IP", "RACK", "MACS"]))
        else:
            print("no nodes")
    elif args.action == "show":
        async def show(r: Repository) -> tuple[NodeRecord, list[Any]]:
            return await r.get_node(args.name), await r.events(args.name, limit=20)
        node, events = await _with_repo(config, show)
        if args.json:
            _print_json({**node_json(node), "events": [
                {"at": e.at.isoformat(), "kind": e.kind, "from": e.from_state, "to": e.to_state,
                 "actor": e.actor, "message": e.message} for e in events]})
        else:
            _print_node(node, events)
    elif args.action == "add":
        if bool(args.bmc_address) != bool(args.bmc_user) or (
                args.bmc_address and not args.bmc_password_file):
            raise InvalidInput("--bmc-address, --bmc-user and --bmc-password-file go together")
        spec = NewNode(args.name, tuple(args.mac), args.profile, _admin_ip(config, args.ip), args.rack)
        password = _read_password(args.bmc_password_file) if args.bmc_address else None

        async def add(r: Repository) -> NodeRecord:
            node = await r.add_node(spec, actor=ACTOR)
            if password is not None:
                node = await r.set_bmc(node.name, args.bmc_address, args.bmc_user, password,
                                       actor=ACTOR)
            return node
        node = await _with_repo(config, add)
        if args.json:
            _print_json(node_json(node))
        else:
            print(f"added node {node.name} ({node.state.value})")
    elif args.action in OPERATIONS:
        return await _operate(args, config)
    elif args.action == "events":
        events = await _with_repo(config, lambda r: r.events(args.name, limit=args.limit))
        if not events:
            await _with_repo(config, lambda r: r.get_node(args.name))  # NotFound for no such node
        if args.json:
            _print_json({"events": [event_json(e) for e in events]})
        else:
            print(_table([[str(e.id), e.at.isoformat(timespec="seconds"), e.kind,
                           f"{e.from_state or '-'} -> {e.to_state or '-'}", e.actor, e.message]
                          for e in events], ["ID", "AT", "KIND", "STATE", "BY", "MESSAGE"]))
    elif args.action == "render":
        return await _render(args, config)
    return 0


def _inventory_lines(text: str | None) -> list[str]:
    """A few readable lines from the agent's inventory (the JSON has it all)."""
    if not text:
        return []
    try:
        inv = json.loads(text)
        system = inv.get("system") or {}
        lines = [" ".join(str(system.get(k) or "") for k in ("vendor", "product", "serial")).strip()
                 or "unknown system",
                 f"{inv.get('cpus', '?')} CPU ({inv.get('cpu_model') or '?'}), "
                 f"{int(inv.get('memory_kb') or 0) // 1024} MiB memory"]
        lines += [f"disk {d.get('name')} {int(d.get('size_bytes') or 0) // 2**20} MiB "
                  f"{d.get('model') or ''} {d.get('serial') or ''}".rstrip() for d in inv.get("disks") or []]
        lines += [f"nic {n.get('name')} {n.get('mac')} {n.get('driver') or '?'} "
                  f"{'link up' if n.get('link') else 'no link'}" for n in inv.get("nics") or []]
        if inv.get("bmc"):
            lines.append(f"bmc {inv['bmc'].get('ip')} {inv['bmc'].get('mac')}")
        return lines
    except (ValueError, TypeError, AttributeError):
        return ["(unreadable; see --json)"]


def _print_node(node: NodeRecord, events: Sequence[Any]) -> None:
    fields = [("name", node.name), ("state", node.state.value),
              ("allocated", "yes" if node.allocated else "no"), ("profile", node.profile or "-"),
              ("admin ip", str(node.admin_ip or "-")), ("rack", node.rack or "-"),
              ("location", node.location or "-"),
              ("bmc", f"{node.bmc.address} (user {node.bmc.username})" if node.bmc else "-"),
              ("created", node.created_at.isoformat(timespec="seconds")),
              ("state since", node.state_changed_at.isoformat(timespec="seconds"))]
    for key, value in fields:
        print(f"{key + ':':13}{value}")
    for iface in node.interfaces:
        print(f"{'interface:':13}{iface.mac}{' (boot)' if iface.is_boot else ''}")
    for line in _inventory_lines(node.inventory):
        print(f"{'inventory:':13}{line}")
    if events:
        print("events:")
        table = _table([[e.at.isoformat(timespec="seconds"), e.kind,
                         f"{e.from_state or '-'} -> {e.to_state or '-'}", e.actor, e.message]
                        for e in events], ["AT", "KIND", "STATE", "BY", "MESSAGE"])
        print("\n".join("  " + line for line in table.splitlines()))


async def _power(args: argparse.Namespace, config: Config) -> int:
    from bootd.bmc.service import PowerService

    async def run(r: Repository) -> list[Any]:
        names = await _selected(args, r)
        for name in args.names:
            await r.get_node(name)  # a typo is an error, not a BMC failure
        return await PowerService(config, r).run(PowerOp(args.op), names, actor=ACTOR)
    results = await _with_repo(config, run)
    if args.json:
        from bootd.http.api import result_json

        _print_json({"results": [result_json(x) for x in results]})
    elif not results:
        print("no nodes selected")
    for x in results if not args.json else []:
        if x.ok:
            print(f"{x.node}: ok" + (f", power {x.power}" if x.power else "") + (f" ({x.detail})" if x.detail
                                                                              else ""))
        else:
            print(f"{x.node}: failed ({x.kind}): {x.error}", file=sys.stderr)
    return 1 if any(not x.ok for x in results) else 0


def _images(args: argparse.Namespace, config: Config) -> int:
    from bootd.images.build import build_discovery

    output = args.output or config.tftp_root / "images" / "discovery"
    cache = args.cache or config.state_dir / "cache"
    result = build_discovery(output.absolute(), cache.absolute())
    print(f"kernel {result.kernel_version}: {result.kernel} ({result.kernel.stat().st_size} bytes)")
    print(f"initramfs: {result.initrd} ({result.initrd_bytes} bytes), built in {result.seconds:.1f} s")
    return 0


def _init(args: argparse.Namespace) -> int:
    from bootd import initconf

    output = args.output or _config_path(args)
    state_dir = args.state_dir if args.state_dir.is_absolute() else args.state_dir.absolute()
    found = initconf.detect(args.interface)
    initconf.write(output, initconf.render(found, state_dir), force=args.force)
    print(f"wrote {output}: admin address {found.address}, subnet {found.network}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # The database holds node tokens and the state directory the key that seals
    # BMC passwords: nothing bootd creates is for other users.
    os.umask(0o077)
    try:
        if args.command == "init":
            return _init(args)
        if args.command == "serve":
            logs.setup("info")
            return asyncio.run(Daemon(_config_path(args)).run())
        config = load_config(_config_path(args))
        if args.command == "check":
            print(f"{config.source}: ok ({len(config.subnets)} subnet(s))")
            return 0
        if args.command == "leases":
            return asyncio.run(_leases(args, config))
        if args.command == "images":
            return _images(args, config)
        if args.command == "power":
            return asyncio.run(_power(args, config))
        return asyncio.run(_nodes(args, config))
    except ConfigError as exc:
        print(f"bootd: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BootdError as exc:
        print(f"bootd: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
