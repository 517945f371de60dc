"""The status page through aiohttp's test client: rendering, escaping, login, CSRF,
actions through the lifecycle service, the batched event stream, shutdown with a
stream open, and the server time of a 10,000-node page (printed, never asserted)."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from conftest import free_port, loopback_config
from sqlalchemy import insert

from bootd.app import http_app
from bootd.config import parse_config
from bootd.db.engine import open_database
from bootd.db.repository import Repository, utcnow
from bootd.db.schema import Interface, Node
from bootd.feed import ChangeFeed, NodeChanged
from bootd.http import api
from bootd.http.server import HttpService
from bootd.http.sessions import COOKIE, Sessions
from bootd.http.status import PAGES
from bootd.http.statusfeed import StatusHub
from bootd.http.statusview import PATH, stall_reason
from bootd.keys import SecretBox
from bootd.model.lifecycle import Actor, allowed
from bootd.model.records import NewNode, NodeRecord
from bootd.model.states import NodeState

TOKEN = "operator-token-for-the-status-tests"
HOSTILE = "<script>alert(1)</script>"


def config_for(port: int = 8080, extra: str = "") -> object:
    return parse_config(loopback_config(Path("/nonexistent/state"), port, extra))


@pytest.fixture
async def repo(tmp_path: Path) -> AsyncIterator[Repository]:
    engine = await open_database(f"sqlite+aiosqlite:///{tmp_path / 'db'}")
    yield Repository(engine, SecretBox.from_file(tmp_path / "key"))
    await engine.dispose()


@pytest.fixture
async def client(repo: Repository) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(http_app(repo, TOKEN, config_for(), feed=ChangeFeed()))) as c:
        yield c


async def log_in(client: TestClient) -> str:
    """Logs in; returns the session's CSRF token (read from a page's hidden field)."""
    resp = await client.post("/login", data={"token": TOKEN, "next": "/"}, allow_redirects=False)
    assert resp.status == 303
    page = await (await client.get("/")).text()
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match is not None
    return match.group(1)


async def discovered(client: TestClient, name: str, **kw: object) -> None:
    lc = client.app[api.LIFECYCLE]
    await lc.add(NewNode(name, (f"52:54:00:00:{len(name):02x}:{sum(map(ord, name)) % 256:02x}",), **kw),
                 actor="test")  # type: ignore[arg-type]
    inventory = json.dumps({"cpu": f"<img src=x onerror={HOSTILE}>"})
    await lc.report(name, NodeState.DISCOVERED, inventory=inventory)


def test_progress_path_follows_the_state_table() -> None:
    # The progress bar cannot drift from the lifecycle: every step is an allowed move.
    for source, target in itertools.pairwise(PATH):
        assert allowed(source, target, Actor.NODE) or allowed(source, target, Actor.OPERATOR), source


def test_sessions_are_bounded_and_expire() -> None:
    now = [0.0]
    sessions = Sessions(limit=3, ttl=10.0, clock=lambda: now[0])
    ids = [sessions.create()[0] for _ in range(5)]
    assert len(sessions) == 3 and sessions.get(ids[0]) is None and sessions.get(ids[4]) is not None
    now[0] = 10.0
    assert sessions.get(ids[4]) is None


async def test_pages_need_a_login_by_default(client: TestClient) -> None:
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/login?next=")
    assert (await client.get("/events")).status == 403
    assert (await client.get("/login")).status == 200


async def test_public_pages_when_the_config_says_so(repo: Repository) -> None:
    app = http_app(repo, TOKEN, config_for(extra="status_public = true\n"), feed=ChangeFeed())
    async with TestClient(TestServer(app)) as c:
        resp = await c.get("/")
        assert resp.status == 200 and "log in" in await resp.text()
        assert (await c.post("/nodes/x/action", data={"op": "reset"})).status == 403


async def test_login_checks_the_token_and_sets_a_strict_cookie(client: TestClient) -> None:
    bad = await client.post("/login", data={"token": TOKEN + "x"}, allow_redirects=False)
    assert bad.status == 403 and COOKIE not in bad.cookies
    good = await client.post("/login", data={"token": TOKEN, "next": "//evil.example/"},
                             allow_redirects=False)
    assert good.status == 303 and good.headers["Location"] == "/"  # never an open redirect
    cookie = good.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie


async def test_render_escapes_hostile_text_and_shows_no_token(client: TestClient, repo: Repository) -> None:
    await discovered(client, "n1", rack=HOSTILE)
    await log_in(client)
    page = await (await client.get("/")).text()
    assert HOSTILE not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'data-count="discovered">1<' in page and 'data-node="n1"' in page
    node = await client.get("/nodes/n1")
    text = await node.text()
    assert node.status == 200 and "Content-Security-Policy" in node.headers
    assert "<img" not in text and "&lt;img src=x" in text  # inventory escaped
    assert "transition" in text and "Boots next" in text
    assert await repo.node_token("n1") not in text


async def test_action_without_login_is_403(client: TestClient) -> None:
    await discovered(client, "n1")
    resp = await client.post("/nodes/n1/action", data={"op": "allocate", "profile": "debian-12"})
    assert resp.status == 403
    assert (await client.app[api.LIFECYCLE].node("n1")).state is NodeState.DISCOVERED


async def test_action_with_a_wrong_csrf_token_is_403(client: TestClient) -> None:
    await discovered(client, "n1")
    csrf = await log_in(client)
    for form in ({"op": "reset"}, {"op": "reset", "csrf": csrf + "x"}, {"op": "reset", "csrf": ""}):
        resp = await client.post("/nodes/n1/action", data=form)
        assert resp.status == 403 and "CSRF" in await resp.text()
    assert (await client.app[api.LIFECYCLE].node("n1")).state is NodeState.DISCOVERED


async def test_actions_go_through_the_lifecycle(client: TestClient) -> None:
    await discovered(client, "n1")
    csrf = await log_in(client)
    profile = sorted(client.app[api.LIFECYCLE].config.profiles)[0]
    resp = await client.post("/nodes/n1/action", data={"csrf": csrf, "op": "allocate", "profile": profile},
                             allow_redirects=False)
    assert resp.status == 303, await resp.text()
    node = await client.app[api.LIFECYCLE].node("n1")
    assert node.state is NodeState.HARDWARE_INSTALLING and node.profile == profile
    events = await client.app[api.LIFECYCLE].events("n1")
    assert events[-1].actor == "web" and events[-1].to_state is NodeState.HARDWARE_INSTALLING
    again = await client.post("/nodes/n1/action", data={"csrf": csrf, "op": "allocate", "profile": profile})
    assert again.status == 409 and "already hardware-installing" in await again.text()


async def read_event(resp: aiohttp.ClientResponse) -> dict[str, object]:
    """The next `event: nodes` message of an SSE stream (comments and retry skipped)."""
    while True:
        block = (await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 10)).decode()
        if block.startswith("event: nodes"):
            data: dict[str, object] = json.loads(block.split("data: ", 1)[1])
            return data


async def test_stream_delivers_changes_batched(client: TestClient) -> None:
    for i in range(30):
        await client.app[api.LIFECYCLE].add(NewNode(f"n{i}", (f"52:54:00:00:01:{i:02x}",)), actor="test")
    await log_in(client)
    async with client.get("/events") as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert (await resp.content.readuntil(b"\n\n")) == b"retry: 3000\n\n"
        await client.app[api.LIFECYCLE].report("n0", NodeState.DISCOVERED)
        first = await read_event(resp)
        assert list(first["rows"]) == ["n0"]  # type: ignore[call-overload]
        assert 'class="state">discovered<' in first["rows"]["n0"]  # type: ignore[index]
        assert first["counts"]["discovered"] == 1  # type: ignore[index]
        # Thirty changes committed together are one message, not thirty.
        feed_nodes = await client.app[api.LIFECYCLE].nodes()
        hub = client.app[PAGES].hub
        for node in feed_nodes:
            hub.on_change(NodeChanged(replace(node, retries=1), "timeout"))
        batch = await read_event(resp)
        assert sorted(batch["rows"]) == sorted(n.name for n in feed_nodes)  # type: ignore[call-overload]
        assert "stalled" in batch["rows"]["n5"]  # type: ignore[index]


def test_stall_reasons() -> None:
    now = utcnow()
    node = NodeRecord("n", NodeState.INSTALLING, True, "p", None, None, None, (), None, now, now,
                      now - timedelta(hours=3))
    assert "expected at most 2h 0m" in stall_reason(node, now, {NodeState.INSTALLING: 7200})
    assert stall_reason(replace(node, state_changed_at=now), now, {NodeState.INSTALLING: 7200}) == ""
    assert "retried 1 time" in stall_reason(replace(node, state_changed_at=now, retries=1), now,
                                            {NodeState.INSTALLING: 7200})
    assert stall_reason(replace(node, state=NodeState.READY), now, {NodeState.INSTALLING: 7200}) == ""


async def test_shutdown_is_fast_with_a_stream_open(repo: Repository) -> None:
    config = config_for(free_port())
    app = http_app(repo, TOKEN, config, feed=ChangeFeed())  # type: ignore[arg-type]
    service = HttpService(app, config)  # type: ignore[arg-type]
    await service.start()
    base = f"http://{service.address}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        await session.post(f"{base}/login", data={"token": TOKEN}, allow_redirects=False)
        async with session.get(f"{base}/events") as resp:
            assert resp.status == 200
            await resp.content.readuntil(b"\n\n")
            assert app[PAGES].hub.streams == 1
            started = time.monotonic()
            # Bounded below the 2 x 10 s an open stream would otherwise hold the cleanup.
            await asyncio.wait_for(service.stop(), 8)
            print(f"\nshutdown with an open event stream: {time.monotonic() - started:.3f} s")
            assert await resp.content.read() == b""  # the stream ended
            assert app[PAGES].hub.streams == 0


async def insert_nodes(path: Path, count: int) -> None:
    """`count` nodes (with a boot NIC each) straight into the database: the page's
    cold start reads them like any inventory, and adding them one API call at a
    time would take the test minutes."""
    engine = await open_database(f"sqlite+aiosqlite:///{path}")
    states = [s.value for s in NodeState if s is not NodeState.DELETE]
    now = utcnow()
    try:
        async with engine.begin() as conn:
            await conn.execute(insert(Node), [
                {"id": i + 1, "name": f"node{i:05d}", "state": states[i % len(states)], "allocated": False,
                 "rack": f"rack{i % 40:02d}", "token": f"{i:064x}", "created_at": now, "updated_at": now,
                 "state_changed_at": now - timedelta(seconds=i)} for i in range(count)])
            await conn.execute(insert(Interface), [
                {"node_id": i + 1, "mac": f"52:54:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                 "is_boot": True} for i in range(count)])
    finally:
        await engine.dispose()


async def test_ten_thousand_nodes_page_time(repo: Repository, tmp_path: Path) -> None:
    await insert_nodes(tmp_path / "db", 10_000)
    started = time.perf_counter()
    async with TestClient(TestServer(http_app(repo, TOKEN, config_for(), feed=ChangeFeed()))) as client:
        # The snapshot's first load starts with the app; the first view waits for it.
        await client.post("/login", data={"token": TOKEN}, allow_redirects=False)
        first = await client.get("/")
        assert first.status == 200 and 'data-count="total">10000<' in await first.text()
        print(f"\nstartup + login + first GET / with 10,000 nodes (the snapshot read from SQLite): "
              f"{(time.perf_counter() - started) * 1000:.1f} ms")
        for query in ("/", "/?page=25", "/?state=installing", "/?rack=rack07&q=node01"):
            started = time.perf_counter()
            resp = await client.get(query)
            body = await resp.text()
            elapsed = time.perf_counter() - started
            assert resp.status == 200 and body.count("<tr data-node=") <= 200
            print(f"GET {query} with 10,000 nodes: {elapsed * 1000:.1f} ms (request to last byte), "
                  f"{len(body)} bytes")


async def test_snapshot_follows_other_processes_by_the_stamp() -> None:
    # Writes the feed never sees (the CLI's) reach the page by a reload when the
    # inventory's stamp moved; an unchanged stamp costs no reload.
    now = utcnow()
    base = NodeRecord("a", NodeState.DISCOVERING, False, None, None, None, None, (), None, now, now, now)
    db = {"nodes": [base], "stamp": 1, "loads": 0}
    clock = [0.0]

    async def load() -> list[NodeRecord]:
        db["loads"] += 1  # type: ignore[operator]
        return list(db["nodes"])  # type: ignore[call-overload]

    async def stamp() -> int:
        return db["stamp"]  # type: ignore[return-value]

    hub = StatusHub(load, stamp=stamp, refresh=60.0, clock=lambda: clock[0])
    assert [n.name for n in await hub.nodes()] == ["a"]
    stream = hub.open()
    clock[0] = 61.0
    await hub.nodes()
    await asyncio.sleep(0.01)
    assert db["loads"] == 1 and stream.take() == (set(), False)  # stamp unchanged: no reload
    db["nodes"], db["stamp"] = [replace(base, state=NodeState.DISCOVERED)], 2
    clock[0] = 122.0
    await hub.nodes()
    await asyncio.sleep(0.01)
    assert db["loads"] == 2 and stream.take() == ({"a"}, False)
    assert hub.node("a").state is NodeState.DISCOVERED  # type: ignore[union-attr]


def test_activity_is_bounded_per_machine_and_in_machines() -> None:
    from bootd.activity import Activity

    clock = iter(range(10_000))
    log = Activity(clock=lambda: float(next(clock)), per_mac=3, macs=2)
    for i in range(5):
        log.record("aa", "tftp", f"file {i}\x1b[31m")
    log.record("bb", "http", "x")
    log.record("cc", "http", "y")  # pushes out aa, the machine seen least recently
    assert log.of(["aa"]) == []
    assert [f.detail for f in log.of(["bb", "cc"])] == ["x", "y"]
    log.record("cc", "http", "z")
    assert all(f.detail.isprintable() for f in log.of(["cc"]))


async def test_node_page_shows_the_machines_recent_fetches(client: TestClient) -> None:
    """TFTP and HTTP fetches join the timeline: the lease holder fetches its script and
    an image; the policy records them (in memory, bounded) and the node page shows them."""
    from ipaddress import IPv4Address

    from bootd.http.boot import POLICY

    await discovered(client, "n1")
    node = await client.app[api.LIFECYCLE].node("n1")
    policy = client.app[POLICY]
    assert node.boot_mac is not None
    policy.leased(node.boot_mac, IPv4Address("127.0.0.1"))
    assert (await client.get(f"/boot/ipxe?mac={node.boot_mac}")).status == 200
    policy.fetched(IPv4Address("127.0.0.1"), "tftp", "undionly.kpxe: complete, 70001 bytes")
    policy.fetched(IPv4Address("127.0.0.9"), "tftp", "from an address nobody leased")  # not recorded
    await log_in(client)
    text = await (await client.get("/nodes/n1")).text()
    assert "ipxe script for discovered to 127.0.0.1" in text
    assert "undionly.kpxe: complete, 70001 bytes" in text
    assert "nobody leased" not in text
