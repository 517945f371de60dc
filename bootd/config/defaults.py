"""Defaults and bounds of the configuration that other modules print or test against.

One place for each default (STYLE.md habit 8: no duplicated defaults); the
dataclasses in sections.py carry the rest as field defaults.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/bootd/bootd.toml")
DEFAULT_STATE_DIR = Path("/var/lib/bootd")
DEFAULT_HTTP_PORT = 8080
# Under the state directory: one NAME.toml per profile `bootd images import` registered.
IMPORTED_PROFILES = "profiles"
DEFAULT_LEASE_TIME = 3600
# RFC 2131 does not bound lease times, but a lease longer than a week on a
# provisioning network only delays the reuse of addresses of removed nodes.
MIN_LEASE_TIME, MAX_LEASE_TIME = 60, 7 * 24 * 3600
LOG_LEVELS = ("debug", "info", "warning", "error")
