"""JSON API, /api/v1 (operator-facing; bearer-token protected by server.py).

Handlers are thin: parse the request, ask the repository, render JSON. Node
records never carry secrets (node tokens, BMC passwords); see model/records.py.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bootd import __version__
from bootd.bmc.controller import PowerOp
from bootd.bmc.service import PowerService, Result
from bootd.db.repository import Repository
from bootd.errors import BootdError, Conflict, InvalidInput, NotFound
from bootd.model.lifecycle import Actor
from bootd.model.records import EventRecord, LeaseRecord, NodeRecord
from bootd.model.states import NodeState

REPO = web.AppKey("repository", Repository)
POWER = web.AppKey("power", PowerService)


def node_json(node: NodeRecord) -> dict[str, Any]:
    return {
        "name": node.name,
        "state": node.state.value,
        "allocated": node.allocated,
        "profile": node.profile,
        "admin_ip": None if node.admin_ip is None else str(node.admin_ip),
        "rack": node.rack,
        "location": node.location,
        "interfaces": [{"mac": i.mac, "boot": i.is_boot} for i in node.interfaces],
        "bmc": None if node.bmc is None else {
            "address": node.bmc.address, "username": node.bmc.username,
            "reachable": node.bmc.reachable, "power": node.bmc.power,
            "last_error": node.bmc.last_error,
            "checked_at": None if node.bmc.checked_at is None else node.bmc.checked_at.isoformat()},
        "created_at": node.created_at.isoformat(),
        "updated_at": node.updated_at.isoformat(),
        "state_changed_at": node.state_changed_at.isoformat(),
        "retries": node.retries,
        "inventory": None if node.inventory is None else json.loads(node.inventory),
    }


def event_json(e: EventRecord) -> dict[str, Any]:
    return {"id": e.id, "node": e.node_name, "at": e.at.isoformat(), "kind": e.kind,
            "from": None if e.from_state is None else e.from_state.value,
            "to": None if e.to_state is None else e.to_state.value, "actor": e.actor,
            "message": e.message}


def lease_json(lease: LeaseRecord) -> dict[str, Any]:
    return {"ip": str(lease.ip), "mac": lease.mac, "state": lease.state.value,
            "expires_at": lease.expires_at.isoformat(), "client_id": lease.client_id,
            "hostname": lease.hostname}


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[REPO].ping()
    except BootdError as exc:
        return web.json_response({"status": "error", "database": str(exc)}, status=503)
    return web.json_response({"status": "ok", "version": __version__})


async def list_nodes(request: web.Request) -> web.Response:
    nodes = await request.app[REPO].list_nodes()
    return web.json_response({"nodes": [node_json(n) for n in nodes]})


async def show_node(request: web.Request) -> web.Response:
    node = await request.app[REPO].get_node(request.match_info["name"])
    return web.json_response(node_json(node))


async def list_leases(request: web.Request) -> web.Response:
    leases = await request.app[REPO].list_leases()
    return web.json_response({"leases": [lease_json(lease) for lease in leases]})


async def json_body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidInput("body must be a JSON object")
    return body


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{key} must be a string")
    return value


async def node_events(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    events = await request.app[REPO].events(name)
    if not events:
        await request.app[REPO].get_node(name)  # 404 for a node that never existed
    return web.json_response({"events": [event_json(e) for e in events]})


async def update_node(request: web.Request) -> web.Response:
    body = await json_body(request)
    unknown = set(body) - {"rack", "profile"}
    if unknown:
        raise InvalidInput(f"cannot update {', '.join(sorted(unknown))} (only rack, profile)")
    node = await request.app[REPO].update_node(
        request.match_info["name"], rack=_opt_str(body, "rack"), profile=_opt_str(body, "profile"),
        actor="api")
    return web.json_response(node_json(node))


async def _select(repo: Repository, body: dict[str, Any]) -> list[str]:
    """Node names by selector: {"nodes": [...]}, {"rack": R}, {"state": S} or {"all": true}."""
    if "nodes" in body:
        names = body["nodes"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not names:
            raise InvalidInput("nodes must be a non-empty list of names")
        return names
    nodes = await repo.list_nodes()
    if "rack" in body:
        return [n.name for n in nodes if n.rack == body["rack"]]
    if "state" in body:
        try:
            state = NodeState(str(body["state"]))
        except ValueError:
            raise InvalidInput(f"{body['state']!r} is not a node state") from None
        return [n.name for n in nodes if n.state is state]
    if body.get("all") is True:
        return [n.name for n in nodes]
    raise InvalidInput('select nodes with "nodes", "rack", "state" or "all": true')


OPERATIONS = {"allocate": NodeState.HARDWARE_INSTALLING, "reinstall": NodeState.REINSTALL,
              "reset": NodeState.RESET, "delete": NodeState.DELETE}


async def _operate(repo: Repository, op: str, name: str, body: dict[str, Any]) -> NodeRecord:
    return await repo.transition(
        name, OPERATIONS[op], Actor.OPERATOR, actor="api", message=_opt_str(body, "message") or "",
        profile=_opt_str(body, "profile") if op == "allocate" else None,
        rename=_opt_str(body, "name") if op == "allocate" else None)


async def _power_hook(request: web.Request, op: str, node: NodeRecord) -> None:
    """reinstall/reset: next boot from the network, then a power cycle, when bootd has the BMC."""
    power = request.app.get(POWER)
    if power is not None and op in ("reinstall", "reset"):
        await power.after_move(node, actor="api")


async def operate_one(request: web.Request) -> web.Response:
    op = request.match_info["op"]
    if op not in OPERATIONS:
        raise NotFound(f"no operation {op!r} (one of {', '.join(OPERATIONS)})")
    node = await _operate(request.app[REPO], op, request.match_info["name"], await json_body(request))
    await _power_hook(request, op, node)
    return web.json_response(node_json(node))


def result_json(r: Result) -> dict[str, Any]:
    out: dict[str, Any] = {"node": r.node, "ok": r.ok, "power": r.power}
    if r.detail:
        out["detail"] = r.detail
    if not r.ok:
        out["error"], out["kind"] = r.error, r.kind
    return out


def _power_op(request: web.Request) -> PowerOp:
    try:
        return PowerOp(request.match_info["op"])
    except ValueError:
        raise NotFound(f"no power operation {request.match_info['op']!r} "
                       f"(one of {', '.join(o.value for o in PowerOp)})") from None


def _power_service(request: web.Request) -> PowerService:
    power = request.app.get(POWER)
    if power is None:
        raise NotFound("power control is not part of this server")
    return power


async def power_one(request: web.Request) -> web.Response:
    op, power = _power_op(request), _power_service(request)
    await request.app[REPO].get_node(request.match_info["name"])  # 404 before any BMC traffic
    (result,) = await power.run(op, [request.match_info["name"]], actor="api")
    return web.json_response(result_json(result), status=200 if result.ok else 502)


async def power_many(request: web.Request) -> web.Response:
    op, power = _power_op(request), _power_service(request)
    names = await _select(request.app[REPO], await json_body(request))
    results = await power.run(op, names, actor="api")
    return web.json_response({"results": [result_json(r) for r in results]})


async def delete_node(request: web.Request) -> web.Response:
    """DELETE /api/v1/nodes/NAME[?power_off=1]: power the node off first when asked."""
    name = request.match_info["name"]
    power = request.app.get(POWER)
    if request.query.get("power_off") in ("1", "true") and power is not None:
        await request.app[REPO].get_node(name)
        await power.one(PowerOp.OFF, name, actor="api")  # its outcome is in the node's events
    node = await _operate(request.app[REPO], "delete", name, {})
    return web.json_response(node_json(node))


async def operate_many(request: web.Request) -> web.Response:
    """One operation on many nodes; per-node results, one failure does not stop the rest."""
    op = request.match_info["op"]
    if op not in OPERATIONS:
        raise NotFound(f"no operation {op!r} (one of {', '.join(OPERATIONS)})")
    body = await json_body(request)
    if op == "allocate" and "name" in body:
        raise InvalidInput("a new name only makes sense for one node")
    results = []
    for name in await _select(request.app[REPO], body):
        try:
            node = await _operate(request.app[REPO], op, name, body)
            await _power_hook(request, op, node)
            results.append({"node": name, "ok": True, "state": node.state.value})
        except (Conflict, NotFound, InvalidInput) as exc:
            results.append({"node": name, "ok": False, "error": str(exc)})
    return web.json_response({"results": results})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz),
        web.get("/api/v1/nodes", list_nodes),
        web.get("/api/v1/nodes/{name}", show_node),
        web.patch("/api/v1/nodes/{name}", update_node),
        web.delete("/api/v1/nodes/{name}", delete_node),
        web.get("/api/v1/nodes/{name}/events", node_events),
        web.post("/api/v1/nodes/{name}/power/{op}", power_one),
        web.post("/api/v1/power/{op}", power_many),
        web.post("/api/v1/nodes/{name}/{op}", operate_one),
        web.post("/api/v1/{op}", operate_many),
        web.get("/api/v1/leases", list_leases),
    ]
