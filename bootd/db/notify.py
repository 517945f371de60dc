"""Change notices between daemons sharing one PostgreSQL: LISTEN/NOTIFY on `bootd_changes`.

Each daemon holds one dedicated asyncpg connection (outside the engine's pool:
a LISTEN lives on its connection for as long as it is open). It LISTENs on
CHANNEL and sends its own notices on the same connection; PostgreSQL delivers
a notification to every listener, the sender included, so notices whose
sending backend is our own are skipped by pid.

A notice says only which node changed ("<name> <kind> [<old name>]": node names
hold no spaces, bootd.model.names); the receiver reads the node itself, after
the sender's commit (the sender publishes after commit, bootd/feed.py), so a
payload never carries inventory or secrets and stays far below PostgreSQL's
8000-byte limit. Notifications are not durable: one sent while a listener
was disconnected is lost, and the stamp polls (policy, DNS, status page) catch
up, as they do for the CLI's writes on SQLite.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]  # no stubs; used through four calls
from sqlalchemy.engine import make_url

from bootd.errors import DatabaseUnavailable

CHANNEL = "bootd_changes"
APPLICATION_NAME = "bootd-notices"  # how these connections show in pg_stat_activity


@dataclass(frozen=True, slots=True)
class Notice:
    name: str
    kind: str
    old_name: str | None = None

    def payload(self) -> str:
        return " ".join((self.name, self.kind) + ((self.old_name,) if self.old_name else ()))

    @classmethod
    def parse(cls, payload: str) -> Notice | None:
        words = payload.split()
        if len(words) == 2:
            return cls(words[0], words[1])
        if len(words) == 3:
            return cls(words[0], words[1], words[2])
        return None  # not ours (someone else NOTIFYing on the channel): ignored


def asyncpg_dsn(database_url: str) -> str:
    """The SQLAlchemy URL (postgresql+asyncpg://...) as asyncpg's own DSN."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class NoticeChannel:
    """One LISTENing connection; `on_notice` runs on the event loop for each notice of another backend."""

    def __init__(self, database_url: str, on_notice: Callable[[Notice], None] | None) -> None:
        """`on_notice` None: send only (a CLI process has nobody to tell)."""
        self._dsn = asyncpg_dsn(database_url)
        self._on_notice = on_notice
        self._conn: Any = None  # asyncpg.Connection
        self._pid: int | None = None

    @property
    def open(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def connect(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn, timeout=10,
                                         server_settings={"application_name": APPLICATION_NAME})
            if self._on_notice is not None:
                await conn.add_listener(CHANNEL, self._received)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise DatabaseUnavailable(f"cannot listen for change notices: {type(exc).__name__}: {exc}"
                                      ) from None
        self._conn, self._pid = conn, conn.get_server_pid()

    def _received(self, _conn: Any, pid: int, _channel: str, payload: str) -> None:
        if pid == self._pid:
            return  # our own notice, already published here
        notice = Notice.parse(payload)
        if notice is not None and self._on_notice is not None:
            self._on_notice(notice)

    async def send(self, notices: Sequence[Notice]) -> None:
        if self._conn is None:
            raise DatabaseUnavailable("change notices: not connected")
        try:
            await self._conn.executemany("SELECT pg_notify($1, $2)",
                                         [(CHANNEL, n.payload()) for n in notices])
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise DatabaseUnavailable(f"cannot send change notices: {type(exc).__name__}: {exc}") from None

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=5)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
                conn.terminate()
