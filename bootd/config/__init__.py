"""Configuration: one TOML file, parsed once into frozen dataclasses.

Theory of operation: `parse_config` (parse.py) turns the text into a `Config`
(sections.py) or raises a `ConfigError` that names the file, the dotted key and
what is wrong. It is pure (no sockets, no filesystem besides reading the file in
`load_config`), so every rule is tested from strings. Facts about the host
(which interfaces exist) are checked separately by `check_host` (host.py), which
`bootd serve` calls and the offline CLI commands do not need. The table reader
and value parsers are in table.py, defaults and bounds in defaults.py.

Unknown keys are errors, not warnings: a misspelt `dynamic_pool` silently
ignored would leave a rack without addresses.
"""

from bootd.config.defaults import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_HTTP_PORT,
    DEFAULT_LEASE_TIME,
    DEFAULT_STATE_DIR,
    LOG_LEVELS,
    MAX_LEASE_TIME,
    MIN_LEASE_TIME,
)
from bootd.config.host import check_host
from bootd.config.parse import load_config, parse_config
from bootd.config.sections import (
    AddressRange,
    BmcConfig,
    BootConfig,
    Config,
    DhcpConfig,
    DhcpMode,
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

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_HTTP_PORT",
    "DEFAULT_LEASE_TIME",
    "DEFAULT_STATE_DIR",
    "LOG_LEVELS",
    "MAX_LEASE_TIME",
    "MIN_LEASE_TIME",
    "AddressRange",
    "BmcConfig",
    "BootConfig",
    "Config",
    "DhcpConfig",
    "DhcpMode",
    "HttpConfig",
    "InstallConfig",
    "LifecycleConfig",
    "RaConfig",
    "RogueConfig",
    "Services",
    "Subnet",
    "TftpConfig",
    "WavesConfig",
    "check_host",
    "load_config",
    "parse_config",
]
