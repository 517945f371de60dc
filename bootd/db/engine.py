"""Opening the inventory: the async engine, backend quirks, and migrations at start.

SQLite (default) runs in WAL mode so the daemon's readers never wait for a
writer, with synchronous=FULL because a lease acknowledged on the wire must
survive a power cut (RFC 2131 section 4.3.1: the server must not reuse an
address it has given). Writers start with BEGIN IMMEDIATE: a deferred
transaction that reads then writes gets SQLITE_BUSY immediately, without
waiting out busy_timeout, when another process (the CLI) holds the write lock.

Migrations (Alembic) are applied every time the database is opened, under a
lock on PostgreSQL so that several admin nodes starting together do not race.
On SQLite they run with foreign keys off: a batch migration rebuilds a table by
copy, drop and rename, and dropping `nodes` with foreign keys on deletes every
interface and BMC by ON DELETE CASCADE (seen on 0002 -> 0001). SQLite ignores
the pragma inside a transaction, so it is set on the connection before BEGIN
and restored after; `PRAGMA foreign_key_check` runs before the commit, and a
migration that left orphans is rolled back (SQLite's DDL is transactional), as
SQLite's own procedure for schema changes prescribes (lang_altertable.html,
section 7). PostgreSQL alters tables in place and keeps checking its keys.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bootd.errors import DatabaseUnavailable

MIGRATIONS = "migrations"  # package data of bootd.db, found with importlib.resources
WRITE = "bootd_write"  # execution option: this connection will write
_PG_MIGRATION_LOCK = 0x626F6F7464  # "bootd"; any constant shared by all admin nodes


class MigrationBroke(DatabaseUnavailable):
    """A migration would have committed rows that reference missing parents."""


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and url != prefix + ":memory:":
        return Path(url[len(prefix):])
    return None


def _ensure_wal(path: Path) -> None:
    """Switch the file to WAL once, before the engine's connections open it (the mode
    is stored in the file). Two connections switching a fresh file at once deadlock
    in SQLite's locking, and one of them gets "database is locked" at once, without
    waiting out busy_timeout (seen with three concurrent starts): so one short
    connection per try, and a few tries."""
    for attempt in range(100):
        raw = sqlite3.connect(path, timeout=30, isolation_level=None)
        try:
            raw.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
        finally:
            raw.close()
        time.sleep(0.01)


def create_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        path = _sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        _sqlite_events(engine)
        return engine
    return create_async_engine(url, pool_pre_ping=True)


def _sqlite_events(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the DB-API driver (it would issue
        # its own deferred BEGIN); the "begin" hook below issues ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        # journal_mode: WAL is already stored in the file (_ensure_wal, at migrate)
        # and a no-op then; it stays here for an engine used before migrating.
        for pragma in ("busy_timeout=30000", "journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        writes = conn.get_execution_options().get(WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _alembic_config(conn: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    # Alembic wants a directory on disk; bootd is installed unzipped (wheel), so
    # the package's resources are one.
    cfg.set_main_option("script_location", str(resources.files("bootd.db").joinpath(MIGRATIONS)))
    cfg.attributes["connection"] = conn
    return cfg


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})


def _upgrade(conn: Connection) -> None:
    _lock(conn)
    command.upgrade(_alembic_config(conn), "head")


def _downgrade(conn: Connection, revision: str) -> None:
    _lock(conn)
    command.downgrade(_alembic_config(conn), revision)


def _sqlite_foreign_keys(conn: Connection, on: bool) -> None:
    """Outside any transaction (SQLite ignores the pragma inside one): straight on the
    DB-API connection, so that SQLAlchemy does not begin one to execute it."""
    if conn.dialect.name != "sqlite":
        return
    assert not conn.in_transaction()
    cur = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cur.execute(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    finally:
        cur.close()


def _check_foreign_keys(conn: Connection) -> None:
    """Orphans a migration left behind: fail (and roll back) rather than commit them."""
    rows = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if rows:
        counts: dict[str, int] = {}
        for table, *_ in rows:
            counts[table] = counts.get(table, 0) + 1
        found = ", ".join(f"{n} in {t}" for t, n in sorted(counts.items()))
        raise MigrationBroke(f"foreign_key_check after the migration: rows whose parent is gone ({found}); "
                             "rolled back")


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    script = ScriptDirectory.from_config(_alembic_config(None))  # type: ignore[arg-type]
    head = script.get_current_head()
    assert head is not None
    return head


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision; a no-op when it is there."""
    await _migrating(engine, _upgrade)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the schema back to `revision`, for an operator rolling back a release
    (and the tests that check a round trip keeps the data)."""
    await _migrating(engine, lambda conn: _downgrade(conn, revision))


async def _migrating(engine: AsyncEngine, step: Callable[[Connection], None]) -> None:
    try:
        path = _sqlite_path(engine.url.render_as_string(hide_password=False))
        if path is not None:
            await asyncio.to_thread(_ensure_wal, path)
        async with engine.connect() as conn:
            conn = await conn.execution_options(**{WRITE: True})
            await conn.run_sync(_sqlite_foreign_keys, False)
            try:
                async with conn.begin():
                    sqlite = conn.dialect.name == "sqlite"
                    before = await conn.run_sync(_current) if sqlite else None
                    await conn.run_sync(step)
                    # Only after a real change: the check reads every child table
                    # (events grow without bound), and most starts migrate nothing.
                    if sqlite and await conn.run_sync(_current) != before:
                        await conn.run_sync(_check_foreign_keys)
            finally:
                # The connection goes back to the pool: the daemon's sessions rely on
                # foreign keys (ON DELETE CASCADE of a node's interfaces and BMC).
                if not conn.closed and not conn.invalidated:
                    await conn.run_sync(_sqlite_foreign_keys, True)
    except MigrationBroke:
        raise
    except (SQLAlchemyError, OSError, sqlite3.Error) as exc:
        raise DatabaseUnavailable(f"cannot open or migrate the database: {_reason(exc)}") from None


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}".strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def open_database(url: str) -> AsyncEngine:
    engine = create_engine(url)
    try:
        await migrate(engine)
    except BaseException:
        await engine.dispose()
        raise
    return engine
