"""The error hierarchy.

Every error bootd raises on purpose is a BootdError; each edge (CLI, HTTP, later
TFTP and DHCP) translates these into its own form: an exit code and one line, an
HTTP status with a message, a TFTP error code. Anything else escaping to an edge
is a bug.
"""

from __future__ import annotations


class BootdError(Exception):
    """Base of every deliberate error; str() is a complete one-line message."""


class ConfigError(BootdError):
    """A configuration file that cannot be used; names the file and the key."""

    def __init__(self, source: str, key: str, problem: str) -> None:
        self.source = source
        self.key = key
        self.problem = problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class InvalidInput(BootdError):
    """A value from outside (CLI argument, API body) that is not acceptable."""


class NotFound(BootdError):
    """The named object does not exist."""


class Conflict(BootdError):
    """The request collides with existing state (a name, MAC or address in use)."""


class DatabaseUnavailable(BootdError):
    """The inventory database cannot be opened or migrated."""
