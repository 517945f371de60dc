"""Subnet claims: one DHCP server per subnet among daemons sharing a database.

The plan (pure), its rows on both backends (claims, refusals, stale take-over,
release; two daemons racing on PostgreSQL), the heartbeat losing a claim, and
the daemon itself refusing to start beside a live one on the same SQLite file.
"""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from bootd.app import EXIT_FAILURE, EXIT_OK, Daemon
from bootd.config import Config
from bootd.db.claims import ClaimRows
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.fleet.claims import ClaimLost, SubnetClaims, SubnetHeld
from bootd.model.claims import STALE_AFTER, SubnetClaim, plan
from bootd.sdnotify import Notifier
from bootd.service import Service

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
NET1, NET2 = IPv4Network("198.19.1.0/24"), IPv4Network("198.19.2.0/24")
A1, A2 = IPv4Address("198.18.0.1"), IPv4Address("198.18.1.1")


def claim(cidr: IPv4Network, daemon: str, beat: datetime, address: IPv4Address = A1) -> SubnetClaim:
    return SubnetClaim(cidr, daemon, address, T0, beat)


# -- the plan ------------------------------------------------------------------------------------------

def test_live_claim_of_another_daemon_is_refused_with_the_reason() -> None:
    p = plan("admin-2", [NET1, NET2], [claim(NET1, "admin-1", T0)], T0 + timedelta(seconds=4))
    assert not p.ok
    assert [r.reason() for r in p.refused] == [
        "subnet 198.19.1.0/24 is served by daemon admin-1 (198.18.0.1), heartbeat 4 s ago; "
        "two DHCP servers on one subnet would hand out the same addresses"]


def test_overlapping_subnet_is_refused_too() -> None:
    p = plan("admin-2", [IPv4Network("198.19.0.0/16")], [claim(NET1, "admin-1", T0)], T0)
    assert not p.ok
    assert "(which holds 198.19.1.0/24)" in p.refused[0].reason()


def test_stale_claim_is_taken_over_own_renewed_and_unserved_released() -> None:
    existing = [claim(NET1, "admin-1", T0), claim(NET2, "admin-2", T0),
                claim(IPv4Network("198.19.3.0/24"), "admin-2", T0)]
    p = plan("admin-2", [NET1, NET2], existing, T0 + STALE_AFTER + timedelta(seconds=1))
    assert p.ok
    assert [c.daemon for c in p.taken_over] == ["admin-1"]
    assert p.take == (NET1,)
    assert p.renew == (NET2,)
    assert p.release == (IPv4Network("198.19.3.0/24"),)


# -- the rows, on both backends ------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def rows(db_url: str) -> AsyncIterator[tuple[ClaimRows, Clock]]:
    engine = await open_database(db_url)
    clock = Clock()
    try:
        yield ClaimRows(engine, clock), clock
    finally:
        await engine.dispose()


async def test_claim_refuse_take_over_and_release(rows: tuple[ClaimRows, Clock]) -> None:
    store, clock = rows
    first = await store.sync("admin-1", A1, [NET1])
    assert first.ok and first.take == (NET1,)
    clock.now += timedelta(seconds=4)
    second = await store.sync("admin-2", A2, [NET1, NET2])
    assert not second.ok
    # All or nothing: the refused daemon claimed nothing, not even its free subnet.
    assert [(c.cidr, c.daemon) for c in await store.claims()] == [(NET1, "admin-1")]
    # admin-1 restarts (same id): it renews its own claim.
    clock.now += timedelta(seconds=4)
    again = await store.sync("admin-1", A1, [NET1])
    assert again.ok and again.renew == (NET1,) and again.take == ()
    # admin-1 dies: once its heartbeat is stale, admin-2 takes the subnet over.
    clock.now += STALE_AFTER + timedelta(seconds=1)
    taken = await store.sync("admin-2", A2, [NET1, NET2])
    assert taken.ok and [c.daemon for c in taken.taken_over] == ["admin-1"]
    assert {(c.cidr, c.daemon, c.heartbeat_at) for c in await store.claims()} == {
        (NET1, "admin-2", clock.now), (NET2, "admin-2", clock.now)}
    assert sorted(await store.release("admin-2")) == [NET1, NET2]
    assert await store.claims() == []


@pytest.mark.postgres
async def test_two_daemons_racing_for_one_subnet_on_postgres(postgres_server: str) -> None:
    import uuid

    from conftest import _pg_admin

    name = f"t_{uuid.uuid4().hex[:12]}"
    await _pg_admin(postgres_server, f"CREATE DATABASE {name}")
    engines = [await open_database(f"{postgres_server}/{name}") for _ in range(2)]
    try:
        for _ in range(5):
            a, b = ClaimRows(engines[0]), ClaimRows(engines[1])
            results = await asyncio.gather(a.sync("admin-1", A1, [NET1]), b.sync("admin-2", A2, [NET1]))
            assert sorted(r.ok for r in results) == [False, True]  # the lock: never both
            claims = await a.claims()
            assert len(claims) == 1
            await a.release(claims[0].daemon)
    finally:
        for engine in engines:
            await engine.dispose()
        await _pg_admin(postgres_server, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# -- the service ---------------------------------------------------------------------------------------

def _config(tmp: Path, daemon_id: str, db: str, address: str = "198.18.0.1",
            subnets: tuple[str, ...] = ("198.19.1.0/24",)) -> Path:
    path = tmp / f"{daemon_id}.toml"
    nets = "".join(f'[[subnets]]\ncidr = "{c}"\n' for c in subnets)
    path.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "{address}"
        interfaces = ["eth0"]
        state_dir = "{tmp / daemon_id}"
        database_url = "{db}"
        daemon_id = "{daemon_id}"
        [services]
        tftp = false
        dns = false
        http = false
        """) + nets)
    return path


async def test_heartbeat_that_finds_its_claim_taken_stops_the_daemon(tmp_path: Path,
                                                                    rows: tuple[ClaimRows, Clock]) -> None:
    from bootd.config import load_config

    store, clock = rows
    service = SubnetClaims(load_config(_config(tmp_path, "admin-1", "sqlite+aiosqlite:///unused.db")), store)
    await service.start()
    assert service.held == {NET1}
    await service.beat()  # a normal heartbeat
    # admin-1 stalls past the stale limit; admin-2 takes the subnet over.
    clock.now += STALE_AFTER + timedelta(seconds=1)
    assert (await store.sync("admin-2", A2, [NET1])).ok
    with pytest.raises(ClaimLost, match=r"lost the claim on subnet 198\.19\.1\.0/24 to daemon admin-2"):
        await service.beat()


async def test_a_reload_claims_added_subnets_and_releases_dropped_ones(tmp_path: Path,
                                                                      rows: tuple[ClaimRows, Clock]) -> None:
    from bootd.config import load_config

    store, _ = rows
    db = "sqlite+aiosqlite:///unused.db"
    service = SubnetClaims(load_config(_config(tmp_path, "admin-1", db)), store)
    await service.start()
    # admin-2 holds 198.19.3.0/24; the reload asks for it too: refused (logged), the rest done.
    assert (await store.sync("admin-2", A2, [IPv4Network("198.19.3.0/24")])).ok
    service.reconfigure(load_config(_config(tmp_path, "admin-1", db,
                                            subnets=("198.19.2.0/24", "198.19.3.0/24"))))
    await service.beat()
    assert service.held == {NET2}
    assert {(c.cidr, c.daemon) for c in await store.claims()} == {
        (NET2, "admin-1"), (IPv4Network("198.19.3.0/24"), "admin-2")}
    await service.stop()
    assert [c.daemon for c in await store.claims()] == ["admin-2"]


class _Idle:
    name = "idle"

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        pass

    def reconfigure(self, config: Config) -> None:
        pass


def _daemon(path: Path) -> Daemon:
    factory: Callable[[Config, Repository], list[Service]] = lambda c, r: [_Idle()]  # noqa: E731
    return Daemon(path, notifier=Notifier({}), interfaces=lambda: ["eth0"], services=factory)


async def test_second_daemon_on_the_same_sqlite_file_refuses_to_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    first = _daemon(_config(tmp_path, "admin-1", db))
    running = asyncio.create_task(first.run())
    engine = await open_database(db)
    store = ClaimRows(engine)
    try:
        for _ in range(300):  # bounded: until admin-1 holds its subnet
            if await store.claims():
                break
            await asyncio.sleep(0.05)
        second = _daemon(_config(tmp_path, "admin-2", db, "198.18.1.1", ("198.19.1.0/24", "198.19.2.0/24")))
        assert await second.run() == EXIT_FAILURE
        assert ("cannot start: subnet 198.19.1.0/24 is served by daemon admin-1 (198.18.0.1), "
                "heartbeat 0 s ago;" in caplog.text)
        assert [(c.cidr, c.daemon) for c in await store.claims()] == [(NET1, "admin-1")]
        # A clean stop releases the claim: admin-2 starts at once.
        first.stop()
        assert await running == EXIT_OK
        assert await store.claims() == []
        third = _daemon(_config(tmp_path, "admin-2", db, "198.18.1.1"))
        started = asyncio.create_task(third.run())
        for _ in range(300):
            if await store.claims():
                break
            await asyncio.sleep(0.05)
        assert [(c.cidr, c.daemon) for c in await store.claims()] == [(NET1, "admin-2")]
        third.stop()
        assert await started == EXIT_OK
    finally:
        if not running.done():
            first.stop()
            await running
        await engine.dispose()


def test_subnet_held_is_a_conflict_naming_every_subnet() -> None:
    p = plan("admin-2", [NET1, NET2], [claim(NET1, "admin-1", T0), claim(NET2, "admin-3", T0, A2)], T0)
    err = SubnetHeld(p.refused)
    assert "daemon admin-1 (198.18.0.1)" in str(err) and "daemon admin-3 (198.18.1.1)" in str(err)
