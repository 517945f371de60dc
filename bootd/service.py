"""The shape every network service of the daemon has.

`start` binds sockets and nothing else that can wait on a peer, so that the
daemon binds every socket before it serves anything (a port clash is reported
before the first client is answered). `run` serves until cancelled; a return or
an exception from it is fatal for the whole daemon. `stop` releases the sockets
after letting in-flight work finish, bounded in time.
"""

from __future__ import annotations

from typing import Protocol

from bootd.config import Config
from bootd.errors import BootdError


class BindError(BootdError):
    """A service could not take its socket (address in use, not on this host, no permission)."""


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded config; keys that need a restart were filtered by the caller."""
        ...
