"""The HTTP edge: auth, JSON errors for every failure, and no secrets in node JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import loopback_config

from bootd.app import http_app
from bootd.config import parse_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.errors import DatabaseUnavailable
from bootd.keys import SecretBox
from bootd.model.records import NewNode

TOKEN = "operator-token"
CONFIG = parse_config(loopback_config(Path("/nonexistent/state"), 8080))
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    yield Repository(engine, SecretBox.from_file(tmp_path / "key"))
    await engine.dispose()


@pytest.fixture
async def client(repo: Repository) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(http_app(repo, TOKEN, CONFIG))) as c:
        yield c


async def test_healthz_needs_no_token(client: TestClient) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic b3BlcmF0b3ItdG9rZW4=",
                                    f"Bearer {TOKEN}x", "Bearer"])
async def test_api_refuses_missing_or_wrong_tokens(client: TestClient, header: str | None) -> None:
    resp = await client.get("/api/v1/nodes", headers={"Authorization": header} if header else {})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="bootd"'
    assert "API token" in (await resp.json())["error"]


async def test_nodes_json_has_no_secrets(client: TestClient, repo: Repository) -> None:
    await repo.add_node(NewNode("n1", ("52:54:00:00:00:01",), rack="r1"), actor="t")
    await repo.set_bmc("n1", "198.18.0.200", "admin", "pw-secret", actor="t")
    token = await repo.node_token("n1")
    resp = await client.get("/api/v1/nodes", headers=AUTH)
    assert resp.status == 200
    text = await resp.text()
    assert token not in text
    assert "pw-secret" not in text
    (node,) = (await resp.json())["nodes"]
    assert node["name"] == "n1"
    assert node["interfaces"] == [{"mac": "52:54:00:00:00:01", "boot": True}]
    assert node["bmc"] == {"address": "198.18.0.200", "username": "admin", "reachable": None,
                           "power": None, "last_error": None, "checked_at": None}
    assert set(node) == {"name", "state", "allocated", "profile", "admin_ip", "rack", "location",
                         "interfaces", "bmc", "created_at", "updated_at", "state_changed_at",
                         "retries", "inventory"}
    one = await client.get("/api/v1/nodes/N1", headers=AUTH)
    assert (await one.json())["name"] == "n1"


async def test_leases_json(client: TestClient, repo: Repository) -> None:
    from datetime import UTC, datetime
    from ipaddress import IPv4Address

    from bootd.model.records import LeaseRecord, LeaseState

    expiry = datetime(2030, 1, 1, tzinfo=UTC)
    await repo.put_lease(LeaseRecord(IPv4Address("198.18.0.100"), "52:54:00:00:00:01",
                                     LeaseState.BOUND, expiry, "01525400000001", "n1"))
    assert (await client.get("/api/v1/leases")).status == 401
    resp = await client.get("/api/v1/leases", headers=AUTH)
    assert await resp.json() == {"leases": [{
        "ip": "198.18.0.100", "mac": "52:54:00:00:00:01", "state": "bound",
        "expires_at": "2030-01-01T00:00:00+00:00", "client_id": "01525400000001", "hostname": "n1"}]}


@pytest.mark.parametrize(("method", "path", "status", "message"), [
    ("GET", "/api/v1/nodes/ghost", 404, "no node named 'ghost'"),
    ("GET", "/nope", 404, "Not Found"),
    ("DELETE", "/healthz", 405, "Method Not Allowed"),
])
async def test_errors_are_json(client: TestClient, method: str, path: str, status: int,
                               message: str) -> None:
    resp = await client.request(method, path, headers=AUTH)
    assert resp.status == status
    assert await resp.json() == {"error": message}


class _BrokenRepository:
    async def ping(self) -> None:
        raise DatabaseUnavailable("inventory database error: disk I/O error")

    async def list_nodes(self) -> None:
        raise DatabaseUnavailable("inventory database error: disk I/O error")


async def test_database_failure_is_503_with_reason() -> None:
    app = http_app(_BrokenRepository(), TOKEN, CONFIG)  # type: ignore[arg-type]
    async with TestClient(TestServer(app)) as c:
        health = await c.get("/healthz")
        assert health.status == 503
        assert await health.json() == {"status": "error",
                                       "database": "inventory database error: disk I/O error"}
        nodes = await c.get("/api/v1/nodes", headers=AUTH)
        assert nodes.status == 503
        assert await nodes.json() == {"error": "inventory database error: disk I/O error"}
