"""The `bootd` command: argv -> config -> action.

Every error a user can cause ends as one line on stderr, `bootd: error: ...`,
and a non-zero exit: 2 for a bad command line or config file, 1 for anything
else (a missing node, a taken MAC, an unknown profile, an unreachable database).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from bootd import logs, privileges
from bootd.app import EXIT_CONFIG, EXIT_FAILURE, Daemon
from bootd.cli import admin, bootloaders, dhcp, media, nodes, rollout
from bootd.cli.parser import parser
from bootd.config import DEFAULT_CONFIG_PATH, load_config
from bootd.errors import BootdError, ConfigError


def config_path(path: Path | None) -> Path:
    return path or Path(os.environ.get("BOOTD_CONFIG", str(DEFAULT_CONFIG_PATH)))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # The database holds node tokens and the state directory the key that seals
    # BMC passwords: nothing bootd creates is for other users.
    os.umask(0o077)
    path = config_path(getattr(args, "config", None))
    try:
        if args.command == "init":
            return admin.init(args, path)
        if args.command == "serve":
            logs.setup("info")
            if os.geteuid() == 0:
                # Root serves as the state directory's owner with the unit's capabilities
                # (privileges.py); a bad config is left to the daemon to report.
                with contextlib.suppress(ConfigError):
                    state_dir = load_config(path).state_dir
                    privileges.become_state_owner(state_dir, path, privileges.SERVE_CAPABILITIES)
            return asyncio.run(Daemon(path).run())
        config = load_config(path)
        # Root works in the state directory as its owner, the service user (privileges.py).
        privileges.become_state_owner(config.state_dir, path)
        if args.command == "check":
            print(f"{config.source}: ok ({len(config.subnets)} subnet(s))")
            return 0
        if args.command == "dhcp":
            return asyncio.run(dhcp.run(args, config))
        if args.command == "leases":
            return asyncio.run(admin.leases(args, config))
        if args.command == "images" and args.action == "import":
            return media.run(args, config)
        if args.command == "images" and args.action == "bootloaders":
            return bootloaders.run(args, config)
        if args.command == "images":
            return admin.images(args, config)
        if args.command == "rollout":
            return asyncio.run(rollout.run(args, config))
        if args.command == "power":
            return asyncio.run(admin.power(args, config))
        return asyncio.run(nodes.run(args, config))
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
