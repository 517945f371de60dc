"""`bootd nodes ...`: the inventory and its lifecycle operations, over the lifecycle service.

Every change goes through bootd.lifecycle.Lifecycle, exactly as the API's do:
the same validation, the same event rows, the same power hooks. One node named
on the command line: its error is the command's error; several: one line per
node, and a non-zero exit if any failed.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

from bootd import boot
from bootd.backend import open_backend
from bootd.cli.output import NODE_HEADER, event_rows, node_row, print_json, print_node, table
from bootd.cli.parser import selector
from bootd.config import Config
from bootd.errors import InvalidInput
from bootd.http.api import event_json, node_json
from bootd.lifecycle import Operation
from bootd.model.records import BmcCredentials, NewNode
from bootd.model.states import NodeState

ACTOR = "cli"


async def run(args: argparse.Namespace, config: Config) -> int:
    if args.action in tuple(Operation):
        return await _operate(args, config)
    if args.action == "add":
        return await _add(args, config)
    if args.action == "render":
        return await _render(args, config)
    async with open_backend(config) as b:
        if args.action == "list":
            nodes = await b.lifecycle.nodes()
            if args.json:
                print_json({"nodes": [node_json(n) for n in nodes]})
            else:
                print(table([node_row(n) for n in nodes], NODE_HEADER) if nodes else "no nodes")
        elif args.action == "show":
            node, events = await b.lifecycle.node(args.name), await b.lifecycle.events(args.name, limit=20)
            if args.json:
                print_json({**node_json(node), "events": [
                    {"at": e.at.isoformat(), "kind": e.kind, "from": e.from_state, "to": e.to_state,
                     "actor": e.actor, "message": e.message} for e in events]})
            else:
                print_node(node, events)
        elif args.action == "events":
            events = await b.lifecycle.events(args.name, limit=args.limit)
            if args.json:
                print_json({"events": [event_json(e) for e in events]})
            else:
                print(table(event_rows(events, with_id=True), ["ID", "AT", "KIND", "STATE", "BY", "MESSAGE"]))
    return 0


async def _operate(args: argparse.Namespace, config: Config) -> int:
    """One lifecycle operation on the selected nodes; one line per node."""
    op = Operation(args.action)
    pick = selector(args)
    profile: str | None = getattr(args, "profile", None)
    rename: str | None = getattr(args, "rename", None)
    power_off: bool = getattr(args, "power_off", False)
    async with open_backend(config) as b:
        if len(pick.names) == 1:  # one node named: its error is the command's error
            results = [await b.lifecycle.operate(op, pick.names[0], actor=ACTOR, profile=profile,
                                                 rename=rename, power_off=power_off)]
        else:
            results = await b.lifecycle.operate_many(op, pick, actor=ACTOR, profile=profile, rename=rename,
                                                     power_off=power_off)
    if not results:
        print("no nodes selected")
    for r in results:
        for p in r.power:
            if not p.ok:
                print(f"{r.name}: power failed ({p.kind}): {p.error}", file=sys.stderr)
        if r.node is not None and op is Operation.DELETE:
            print(f"deleted node {r.name}")
        elif r.node is not None:
            print(f"{r.name}: {r.node.state.value}")
        else:
            print(f"{r.name}: failed: {r.error}", file=sys.stderr)
    return 1 if any(not r.ok for r in results) else 0


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


async def _add(args: argparse.Namespace, config: Config) -> int:
    if bool(args.bmc_address) != bool(args.bmc_user) or (args.bmc_address and not args.bmc_password_file):
        raise InvalidInput("--bmc-address, --bmc-user and --bmc-password-file go together")
    spec = NewNode(args.name, tuple(args.mac), args.profile, _admin_ip(config, args.ip), args.rack)
    bmc = (BmcCredentials(args.bmc_address, args.bmc_user, _read_password(args.bmc_password_file))
           if args.bmc_address else None)
    async with open_backend(config) as b:
        node = await b.lifecycle.add(spec, actor=ACTOR, bmc=bmc)
    if args.json:
        print_json(node_json(node))
    else:
        print(f"added node {node.name} ({node.state.value})")
    return 0


async def _render(args: argparse.Namespace, config: Config) -> int:
    """What the node gets (its token included: this is the operator's own terminal)."""
    async with open_backend(config) as b:
        node = await b.lifecycle.node(args.name)
        token = await b.inventory.node_token(node.name)
    view = replace(boot.view_of(node, token=token), state=NodeState(args.state) if args.state else node.state,
                   profile=args.profile or node.profile)
    if args.kind in boot.SCRIPT_TEMPLATES:
        text = boot.script(args.kind, view, config)
    else:
        text = boot.answer(args.kind, view, config)
    sys.stdout.write(text)
    return 0
