"""Rogue DHCP findings: the rows on both backends, and the findings service (merging
sightings, one warning per server, the feed) over those rows."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from conftest import loopback_config

from bootd.config import Config, parse_config
from bootd.db.claims import ClaimRows
from bootd.db.engine import open_database
from bootd.db.findings import FindingRows, FindingUpdate
from bootd.db.repository import Repository
from bootd.feed import ChangeFeed, DhcpServerSeen
from bootd.fleet import findings as service
from bootd.fleet.findings import Findings
from bootd.keys import SecretBox
from bootd.model.findings import Method, Offered, ReplyKind, Sighting

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
ROGUE = IPv4Address("198.18.0.3")
MAC = "52:54:00:00:00:03"
OFFER = Offered(ReplyKind.OFFER, IPv4Address("198.18.0.150"), ROGUE, IPv4Address("198.18.0.254"), 600)


class Clock:
    def __init__(self) -> None:
        self.now = T0
        self.mono = 1000.0

    def __call__(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


@pytest.fixture
async def rows(db_url: str, tmp_path: Path) -> AsyncIterator[FindingRows]:
    engine = await open_database(db_url)
    try:
        yield FindingRows(Repository(engine, SecretBox.from_file(tmp_path / "key")))
    finally:
        await engine.dispose()


def update(count: int = 1, at: datetime = T0, *, daemon_ip: IPv4Address = ROGUE, mac: str = MAC,
           method: Method = Method.PASSIVE, offered: str = "198.18.0.150") -> FindingUpdate:
    return FindingUpdate("eth0", daemon_ip, mac, method, offered, count, at, at)


async def test_rows_upsert_by_server_counting_and_keeping_first_seen(rows: FindingRows) -> None:
    (first,) = await rows.record("admin-1", [update(3)])
    assert (first.count, first.first_seen, first.last_seen, first.method) == (3, T0, T0, Method.PASSIVE)
    later = T0 + timedelta(minutes=5)
    (again,) = await rows.record("admin-1", [update(2, later, method=Method.ACTIVE, offered="198.18.0.151")])
    assert (again.count, again.first_seen, again.last_seen) == (5, T0, later)
    assert (again.method, again.offered) == (Method.ACTIVE, "198.18.0.151")
    # Another MAC behind the same address, and another daemon: rows of their own.
    await rows.record("admin-1", [update(mac="52:54:00:00:00:04")])
    await rows.record("admin-2", [update(at=later + timedelta(seconds=1))])
    everything = await rows.list_findings()
    assert [(f.daemon, f.server_mac, f.count) for f in everything] == [
        ("admin-2", MAC, 1), ("admin-1", MAC, 5), ("admin-1", "52:54:00:00:00:04", 1)]
    assert {f.daemon for f in await rows.list_findings("admin-1")} == {"admin-1"}


async def test_one_batch_writes_many_servers(rows: FindingRows) -> None:
    batch = [update(1, mac=f"52:54:00:00:01:{i:02x}") for i in range(20)]
    assert [f.count for f in await rows.record("admin-1", batch)] == [1] * 20
    assert len(await rows.list_findings("admin-1")) == 20


# -- the service, over the real rows ----------------------------------------------------------


def config(tmp_path: Path) -> Config:
    return parse_config(loopback_config(tmp_path / "state", 8080))


def sighting(method: Method = Method.PASSIVE, ip: IPv4Address = ROGUE, mac: str = MAC) -> Sighting:
    return Sighting("eth0", ip, mac, method, OFFER)


async def test_sightings_are_merged_written_and_published(rows: FindingRows, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    clock, feed = Clock(), ChangeFeed()
    seen: list[DhcpServerSeen] = []
    feed.subscribe_findings(seen.append)
    f = Findings(config(tmp_path), rows, feed, clock=clock, monotonic=clock.monotonic)
    await f.start()
    with caplog.at_level(logging.WARNING, logger="bootd.rogue"):
        for _ in range(500):  # a rogue server answering a booting rack
            f.sighted(sighting())
            clock.advance(0.01)
        f.sighted(sighting(Method.ACTIVE))
        await f.flush()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per new server, never per packet
    assert warnings[0].getMessage() == "another DHCP server answers on an admin interface"
    assert [(e.new, e.finding.count, e.finding.method) for e in seen] == [(True, 501, Method.ACTIVE)]
    assert (f.answers, f.servers()) == (501, 1)
    (stored,) = await rows.list_findings()
    assert (stored.daemon, stored.count, stored.first_seen, stored.offered) == \
        (f.config.daemon_id, 501, T0, "198.18.0.150, router 198.18.0.254, lease 600 s")
    # An hour later it still answers: one more line, and the feed says it is not new.
    caplog.clear()
    clock.advance(service.REWARN)
    with caplog.at_level(logging.WARNING, logger="bootd.rogue"):
        f.sighted(sighting())
        f.sighted(sighting())
        await f.flush()
    assert [r.getMessage() for r in caplog.records] == ["another DHCP server still answers"]
    assert (seen[-1].new, seen[-1].finding.count) == (False, 503)


async def test_a_restart_remembers_findings_and_shows_current_ones(rows: FindingRows, tmp_path: Path) -> None:
    clock = Clock()
    first = Findings(config(tmp_path), rows, clock=clock, monotonic=clock.monotonic)
    await first.start()
    first.sighted(sighting())
    await first.stop()
    clock.advance(60)
    feed = ChangeFeed()
    seen: list[DhcpServerSeen] = []
    feed.subscribe_findings(seen.append)
    second = Findings(config(tmp_path), rows, feed, clock=clock, monotonic=clock.monotonic)
    await second.start()
    assert [(e.new, e.finding.server_ip) for e in seen] == [(False, ROGUE)]
    assert second.servers() == 1
    clock.advance(service.RECENT.total_seconds() + 1)
    assert second.current() == []  # not seen for a day: no longer on the banner or the gauge


async def test_servers_beyond_the_limit_are_counted_not_recorded(rows: FindingRows, tmp_path: Path) -> None:
    clock = Clock()
    f = Findings(config(tmp_path), rows, clock=clock, monotonic=clock.monotonic, limit=3)
    for i in range(10):
        f.sighted(sighting(ip=IPv4Address(f"198.18.0.{10 + i}")))
    await f.flush()
    assert f.overflow == 7
    assert len(await rows.list_findings()) == 3


async def test_peer_daemons_sharing_the_database_are_not_rogues(db_url: str, tmp_path: Path) -> None:
    engine = await open_database(db_url)
    try:
        peer = IPv4Address("198.18.0.2")
        await ClaimRows(engine).sync("admin-2", peer, [IPv4Network("198.19.2.0/24")])
        rows = FindingRows(Repository(engine, SecretBox.from_file(tmp_path / "key")))
        cfg = config(tmp_path)
        assert await rows.peer_addresses(cfg.daemon_id) == {peer}
        assert await rows.peer_addresses("admin-2") == set()
        f = Findings(cfg, rows)
        await f.start()
        f.sighted(sighting(ip=peer))
        f.sighted(sighting())
        await f.flush()
        assert (f.peer_answers, f.answers) == (1, 1)
        assert [x.server_ip for x in await rows.list_findings()] == [ROGUE]
    finally:
        await engine.dispose()
