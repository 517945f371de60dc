"""Host facts a config file cannot know, checked by `bootd serve` only.

The offline CLI commands (render, nodes, leases) run on machines without the
admin interfaces, so these checks are kept apart from parsing.
"""

from __future__ import annotations

from collections.abc import Collection

from bootd.config.sections import Config
from bootd.errors import ConfigError


def check_host(config: Config, interfaces: Collection[str]) -> None:
    """Host facts that a config cannot know: the interfaces it names must exist."""
    for i, name in enumerate(config.interfaces):
        if name not in interfaces:
            raise ConfigError(config.source, f"server.interfaces[{i}]",
                              f"no interface named {name!r} on this host")
