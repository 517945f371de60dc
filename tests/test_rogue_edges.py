"""Rogue DHCP findings at the edges: GET /api/v1/dhcp/findings, the status page's banner
(escaped, never on the login form), /metrics, and `bootd dhcp findings`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import loopback_config

from bootd.app import http_app
from bootd.cli import main
from bootd.config import Config, load_config, parse_config
from bootd.db.engine import open_database
from bootd.db.findings import FindingRows
from bootd.db.repository import Repository
from bootd.feed import ChangeFeed
from bootd.fleet.findings import Findings
from bootd.keys import SecretBox
from bootd.metrics import Metrics
from bootd.model.findings import Method, Offered, ReplyKind, Sighting

TOKEN = "t" * 32
ROGUE = IPv4Address("198.18.0.3")
HOSTILE = "<script>alert(1)</script>"


def sighting(boot_file: str = "") -> Sighting:
    offer = Offered(ReplyKind.OFFER, IPv4Address("198.18.0.150"), ROGUE, IPv4Address("198.18.0.254"), 600,
                    boot_file=boot_file)
    return Sighting("eth0", ROGUE, "52:54:00:00:00:03", Method.ACTIVE, offer)


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    yield Repository(engine, SecretBox.from_file(tmp_path / "key"))
    await engine.dispose()


def config(extra: str = "") -> Config:
    return parse_config(loopback_config(Path("/nonexistent/state"), 8080, extra))


async def test_api_banner_and_metrics_show_a_finding(repo: Repository) -> None:
    feed, metrics = ChangeFeed(), Metrics()
    cfg = config("status_public = true\n")
    findings = Findings(cfg, FindingRows(repo), feed)
    metrics.watch_rogue(findings)
    app = http_app(repo, TOKEN, cfg, feed=feed, metrics=metrics)
    async with TestClient(TestServer(app)) as c:
        page = await (await c.get("/")).text()
        assert "Another DHCP server" not in page
        assert (await c.get("/api/v1/dhcp/findings")).status == 401
        await findings.start()
        findings.sighted(sighting(boot_file=HOSTILE))
        findings.sighted(sighting(boot_file=HOSTILE))
        await findings.flush()
        resp = await c.get("/api/v1/dhcp/findings", headers={"Authorization": f"Bearer {TOKEN}"})
        (found,) = (await resp.json())["findings"]
        assert (found["server_ip"], found["server_mac"], found["method"], found["count"]) == \
            (str(ROGUE), "52:54:00:00:00:03", "active", 2)
        assert found["daemon"] == cfg.daemon_id and found["offered"].endswith(f"boot file {HOSTILE}")
        page = await (await c.get("/")).text()
        assert "Another DHCP server answers on eth0: 198.18.0.3 (52:54:00:00:00:03) offered " \
               "198.18.0.150, router 198.18.0.254, lease 600 s, boot file &lt;script&gt;" in page
        assert HOSTILE not in page and "2 replies, active" in page
        text = await (await c.get("/metrics")).text()
        assert "bootd_rogue_dhcp_servers 1.0" in text and "bootd_rogue_dhcp_answers_total 2.0" in text


async def test_the_banner_is_for_readers_only(repo: Repository) -> None:
    feed = ChangeFeed()
    findings = Findings(config(), FindingRows(repo), feed)
    app = http_app(repo, TOKEN, config(), feed=feed)
    async with TestClient(TestServer(app)) as c:
        findings.sighted(sighting())
        await findings.flush()
        login = await (await c.get("/login")).text()
        assert "Another DHCP server" not in login and "198.18.0.3" not in login
        await c.post("/login", data={"token": TOKEN})
        assert "Another DHCP server answers on eth0" in await (await c.get("/")).text()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(list(argv))
    out, _ = capsys.readouterr()
    return rc, out


async def record(cfg: Config) -> None:
    engine = await open_database(cfg.database_url)
    try:
        findings = Findings(cfg, FindingRows(Repository(engine, SecretBox.from_file(cfg.secret_key_file))))
        findings.sighted(sighting())
        await findings.flush()
    finally:
        await engine.dispose()


def test_cli_lists_findings(capsys: pytest.CaptureFixture[str], write_config: Any) -> None:
    path = str(write_config())
    assert run(capsys, "dhcp", "findings", "--config", path) == (0, "no other DHCP servers seen\n")
    asyncio.run(record(load_config(Path(path))))
    rc, out = run(capsys, "dhcp", "findings", "--json", "--config", path)
    (found,) = json.loads(out)["findings"]
    assert (rc, found["server_ip"], found["count"]) == (0, str(ROGUE), 1)
    rc, out = run(capsys, "dhcp", "findings", "--config", path)
    header, row = out.splitlines()
    assert header.split()[:5] == ["DAEMON", "IFACE", "SERVER", "MAC", "METHOD"]
    assert row.split()[1:5] == ["eth0", str(ROGUE), "52:54:00:00:00:03", "active"]
