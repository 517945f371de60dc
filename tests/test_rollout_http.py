"""The rollout API: start (201, nodes handed over in the background), list, show,
pause/resume/cancel, and every error as a JSON 4xx with a message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import loopback_config
from test_lifecycle import CONFIG_EXTRA

from bootd.app import http_app
from bootd.config import parse_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository
from bootd.http.rollouts import ROLLOUTS
from bootd.keys import SecretBox
from bootd.model.records import NewNode
from bootd.model.states import NodeState as S

TOKEN = "operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = parse_config(loopback_config(Path("/nonexistent/state"), 8080, CONFIG_EXTRA))


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    yield Repository(engine, SecretBox.from_file(tmp_path / "key"))
    await engine.dispose()


@pytest.fixture
async def client(repo: Repository) -> AsyncIterator[TestClient]:
    for name, rack in (("a1", "r1"), ("a2", "r1"), ("b1", "r2")):
        await repo.add_node(NewNode(name, (), rack=rack, state=S.DISCOVERED), actor="t")
    async with TestClient(TestServer(http_app(repo, TOKEN, CONFIG))) as c:
        yield c


async def handed_over(repo: Repository, *names: str) -> None:
    for _ in range(200):  # bounded: the hand-over runs in the background
        if all(s is S.HARDWARE_INSTALLING for s in [(await repo.get_node(n)).state for n in names]):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("nodes not handed over")


async def test_start_list_show_and_act(client: TestClient, repo: Repository) -> None:
    resp = await client.post("/api/v1/rollouts", headers=AUTH,
                             json={"racks": ["r1"], "profile": "rocky-9", "max_parallel": 1,
                                   "max_failures": 0})
    assert resp.status == 201
    body = await resp.json()
    rid = body["id"]
    assert (body["state"], body["profile"], body["max_parallel"], body["max_failures"]) == (
        "running", "rocky-9", 1, 0)
    assert body["selector"] == {"racks": ["r1"], "names": [], "all": False}
    assert [n["name"] for n in body["nodes"]] == ["a1", "a2"]
    await handed_over(repo, "a1", "a2")
    resp = await client.get("/api/v1/rollouts", headers=AUTH)
    listed = (await resp.json())["rollouts"]
    assert [r["id"] for r in listed] == [rid] and "nodes" not in listed[0]
    assert listed[0]["total"] == 2
    resp = await client.post(f"/api/v1/rollouts/{rid}/pause", headers=AUTH)
    assert (await resp.json())["state"] == "paused"
    resp = await client.get("/api/v1/rollouts?state=running", headers=AUTH)
    assert (await resp.json())["rollouts"] == []
    resp = await client.post(f"/api/v1/rollouts/{rid}/resume", headers=AUTH)
    assert (await resp.json())["state"] == "running"
    resp = await client.post(f"/api/v1/rollouts/{rid}/cancel", headers=AUTH)
    shown = await resp.json()
    assert shown["state"] == "cancelled" and shown["counts"]["cancelled"] == 2
    assert (await repo.get_node("a1")).state is S.RESET
    resp = await client.get(f"/api/v1/rollouts/{rid}", headers=AUTH)
    assert (await resp.json())["reason"] == "cancelled by api"


@pytest.mark.parametrize(("method", "path", "body", "status", "error"), [
    ("post", "/api/v1/rollouts", {"racks": ["r1"]}, 400, "profile is required"),
    ("post", "/api/v1/rollouts", {"racks": ["r1"], "profile": "nope"}, 400, "no profile named 'nope'"),
    ("post", "/api/v1/rollouts", {"profile": "rocky-9"}, 400, "select nodes"),
    ("post", "/api/v1/rollouts", {"racks": ["r9"], "profile": "rocky-9"}, 400, "no nodes in rack r9"),
    ("post", "/api/v1/rollouts", {"racks": "r1", "profile": "rocky-9"}, 400, "racks must be a list"),
    ("post", "/api/v1/rollouts", {"all": True, "profile": "rocky-9", "max_failures": "2"}, 400,
     "max_failures must be a whole number"),
    ("post", "/api/v1/rollouts", {"all": True, "profile": "rocky-9", "colour": 1}, 400,
     "unknown fields: colour"),
    ("get", "/api/v1/rollouts/42", None, 404, "no rollout 42"),
    ("get", "/api/v1/rollouts/x", None, 404, "no rollout 'x'"),
    ("get", "/api/v1/rollouts?state=sleeping", None, 400, "state is one of"),
    ("post", "/api/v1/rollouts/42/pause", None, 404, "no rollout 42"),
])
async def test_errors(client: TestClient, method: str, path: str, body: object, status: int,
                      error: str) -> None:
    resp = await getattr(client, method)(path, headers=AUTH, json=body)
    assert resp.status == status
    assert error in (await resp.json())["error"]


async def test_conflicts_and_auth(client: TestClient, repo: Repository) -> None:
    resp = await client.get("/api/v1/rollouts")
    assert resp.status == 401
    resp = await client.post("/api/v1/rollouts", headers=AUTH, json={"nodes": ["b1"], "profile": "rocky-9"})
    rid = (await resp.json())["id"]
    await handed_over(repo, "b1")
    resp = await client.post("/api/v1/rollouts", headers=AUTH, json={"all": True, "profile": "rocky-9"})
    assert resp.status == 409
    assert f"b1 (rollout {rid}, running)" in (await resp.json())["error"]
    resp = await client.post(f"/api/v1/rollouts/{rid}/resume", headers=AUTH)
    assert resp.status == 409 and "not paused" in (await resp.json())["error"]
    resp = await client.post(f"/api/v1/rollouts/{rid}/explode", headers=AUTH)
    assert resp.status == 404


def test_metrics_gauge_of_rollout_nodes() -> None:
    from bootd.metrics import Metrics

    metrics = Metrics()
    metrics.watch_rollouts(lambda: {"ready": 3, "active": 1})
    text = metrics.exposition().decode()
    assert 'bootd_rollout_nodes{outcome="ready"} 3.0' in text
    assert 'bootd_rollout_nodes{outcome="active"} 1.0' in text


async def test_status_page_shows_live_rollouts(client: TestClient, repo: Repository) -> None:
    resp = await client.post("/login", data={"token": TOKEN, "next": "/"})
    assert resp.status == 200
    assert "Rollouts" not in await (await client.get("/")).text()  # none: no section
    resp = await client.post("/api/v1/rollouts", headers=AUTH,
                             json={"racks": ["r1"], "profile": "rocky-9", "max_failures": 0})
    rid = (await resp.json())["id"]
    await handed_over(repo, "a1", "a2")
    from bootd.lifecycle import Lifecycle

    await Lifecycle(CONFIG, repo).report("a1", S.PROBLEM, message="no <disk>")
    await client.post(f"/api/v1/rollouts/{rid}/resume", headers=AUTH)  # not paused yet: 409
    page = await (await client.get("/")).text()
    assert f'data-rollout="{rid}"' in page and "<td>running</td>" in page
    await client.app[ROLLOUTS].drive(rid)
    page = await (await client.get("/")).text()
    assert "<td>paused</td>" in page and "<td>1/0</td>" in page
    assert "1 node in problem (a1: no &lt;disk&gt;), more than --max-failures 0: paused" in page
    assert '<progress value="1" max="2"></progress>' in page
