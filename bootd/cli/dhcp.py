"""`bootd dhcp findings`: other DHCP servers seen on the admin interfaces, by every daemon.

The same list as GET /api/v1/dhcp/findings, read through the findings service
(bootd.fleet.findings) the daemon reports to; most recently seen first.
"""

from __future__ import annotations

import argparse
from typing import Any

from bootd.backend import open_backend
from bootd.cli.output import print_json, table
from bootd.config import Config
from bootd.http.findings import finding_json


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    dhcp = sub.add_parser("dhcp", parents=[common], help="DHCP on the admin network")
    dsub = dhcp.add_subparsers(dest="action", required=True, metavar="ACTION")
    found = dsub.add_parser("findings", parents=[common], help="other DHCP servers seen (rogue DHCP)")
    found.add_argument("--json", action="store_true")


async def run(args: argparse.Namespace, config: Config) -> int:
    async with open_backend(config) as b:
        found = await b.findings.all()
    if args.json:
        print_json({"findings": [finding_json(f) for f in found]})
    elif found:
        print(table([[f.daemon, f.interface, str(f.server_ip), f.server_mac or "-", f.method.value,
                      f.first_seen.isoformat(timespec="seconds"), f.last_seen.isoformat(timespec="seconds"),
                      str(f.count), f.offered] for f in found],
                    ["DAEMON", "IFACE", "SERVER", "MAC", "METHOD", "FIRST SEEN", "LAST SEEN", "REPLIES",
                     "OFFERED"]))
    else:
        print("no other DHCP servers seen")
    return 0
