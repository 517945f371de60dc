"""`bootd init | images | leases | power`: the commands around the inventory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bootd import privileges
from bootd.backend import open_backend
from bootd.bmc.controller import PowerOp
from bootd.cli.output import print_json, table
from bootd.cli.parser import selector
from bootd.config import Config
from bootd.http.api import lease_json, result_json

ACTOR = "cli"


async def leases(args: argparse.Namespace, config: Config) -> int:
    async with open_backend(config) as b:
        found = await b.inventory.list_leases()
    if args.json:
        print_json({"leases": [lease_json(lease) for lease in found]})
    elif found:
        print(table([[str(x.ip), x.mac, x.state.value, x.expires_at.isoformat(timespec="seconds"),
                      x.hostname or "-"] for x in found], ["IP", "MAC", "STATE", "EXPIRES", "HOSTNAME"]))
    else:
        print("no leases")
    return 0


async def power(args: argparse.Namespace, config: Config) -> int:
    async with open_backend(config) as b:
        names = await b.lifecycle.select(selector(args))
        for name in args.names:
            await b.lifecycle.node(name)  # a typo is an error, not a BMC failure
        results = await b.power.run(PowerOp(args.op), names, actor=ACTOR)
    if args.json:
        print_json({"results": [result_json(x) for x in results]})
        return 1 if any(not x.ok for x in results) else 0
    if not results:
        print("no nodes selected")
    for x in results:
        if x.ok:
            print(f"{x.node}: ok" + (f", power {x.power}" if x.power else "")
                  + (f" ({x.detail})" if x.detail else ""))
        else:
            print(f"{x.node}: failed ({x.kind}): {x.error}", file=sys.stderr)
    return 1 if any(not x.ok for x in results) else 0


def images(args: argparse.Namespace, config: Config) -> int:
    from bootd.images.build import build_discovery

    output = args.output or config.tftp_root / "images" / "discovery"
    cache = args.cache or config.state_dir / "cache"
    result = build_discovery(output.absolute(), cache.absolute())
    print(f"kernel {result.kernel_version}: {result.kernel} ({result.kernel.stat().st_size} bytes)")
    print(f"initramfs: {result.initrd} ({result.initrd_bytes} bytes), built in {result.seconds:.1f} s")
    return 0


def init(args: argparse.Namespace, config_path: Path) -> int:
    from bootd import initconf
    from bootd.cli import bootloaders

    output = args.output or config_path
    state_dir = args.state_dir if args.state_dir.is_absolute() else args.state_dir.absolute()
    found = initconf.detect(args.interface)
    initconf.write(output, initconf.render(found, state_dir), force=args.force)
    print(f"wrote {output}: admin address {found.address}, subnet {found.network}")
    privileges.become_state_owner(state_dir, output)  # the config stays root's; the state is the service's
    bootloaders.after_init(state_dir, args.cache)
    return 0
