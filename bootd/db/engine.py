"""Opening the inventory: the async engine, backend quirks, and migrations at start.

SQLite (default) runs in WAL mode so the daemon's readers never wait for a
writer, with synchronous=FULL because a lease acknowledged on the wire must
survive a power cut (RFC 2131 section 4.3.1: the server must not reuse an
address it has given). Writers start with BEGIN IMMEDIATE: a deferred
transaction that reads then writes gets SQLITE_BUSY immediately, without
waiting out busy_timeout, when another process (the CLI) holds the write lock.

Migrations (Alembic) are applied every time the database is opened, under a
lock on PostgreSQL so that several admin nodes starting together do not race.
"""

from __future__ import annotations

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

MIGRATIONS = Path(__file__).with_name("migrations")
WRITE = "bootd_write"  # execution option: this connection will write
_PG_MIGRATION_LOCK = 0x626F6F7464  # "bootd"; any constant shared by all admin nodes


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite+aiosqlite:///"
    if url.startswith(prefix) and url != prefix + ":memory:":
        return Path(url[len(prefix):])
    return None


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
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON",
                       "busy_timeout=30000"):
            cur.execute(f"PRAGMA {pragma}")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        writes = conn.get_execution_options().get(WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def _alembic_config(conn: Connection) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


def _upgrade(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    command.upgrade(_alembic_config(conn), "head")


def _current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    script = ScriptDirectory.from_config(_alembic_config(None))  # type: ignore[arg-type]
    head = script.get_current_head()
    assert head is not None
    return head


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision; a no-op when it is there."""
    try:
        async with engine.connect() as conn:
            conn = await conn.execution_options(**{WRITE: True})
            async with conn.begin():
                await conn.run_sync(_upgrade)
    except (SQLAlchemyError, OSError) as exc:
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
