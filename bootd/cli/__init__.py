"""The `bootd` command (console entry point `bootd.cli:main`).

- main.py: argv -> config -> the command; every error one line on stderr;
- parser.py: the command line;
- nodes.py: the inventory and lifecycle operations, over the lifecycle service;
- admin.py: init, check, images, leases, power;
- output.py: tables and JSON for a terminal.
"""

from bootd.cli.main import main

__all__ = ["main"]
