"""JSON API, /api/v1 (operator-facing; bearer-token protected by server.py).

Handlers are thin: parse the request, ask the lifecycle service (every node
read and change; the same operations the CLI runs) or the power service,
render JSON. Node records never carry secrets (node tokens, BMC passwords);
see model/records.py.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from bootd import __version__
from bootd.bmc.controller import PowerOp
from bootd.bmc.service import PowerService, Result
from bootd.errors import BootdError, InvalidInput, NotFound
from bootd.inventory import Inventory
from bootd.lifecycle import Lifecycle, Operation, Selector
from bootd.model.records import EventRecord, LeaseRecord, NodeRecord

REPO = web.AppKey("repository", Inventory)  # health and leases; nodes go through LIFECYCLE
POWER = web.AppKey("power", PowerService)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
ACTOR = "api"


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


def lifecycle(request: web.Request) -> Lifecycle:
    return request.app[LIFECYCLE]


async def list_nodes(request: web.Request) -> web.Response:
    nodes = await lifecycle(request).nodes()
    return web.json_response({"nodes": [node_json(n) for n in nodes]})


async def show_node(request: web.Request) -> web.Response:
    node = await lifecycle(request).node(request.match_info["name"])
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
    events = await lifecycle(request).events(request.match_info["name"])
    return web.json_response({"events": [event_json(e) for e in events]})


async def update_node(request: web.Request) -> web.Response:
    body = await json_body(request)
    unknown = set(body) - {"rack", "profile"}
    if unknown:
        raise InvalidInput(f"cannot update {', '.join(sorted(unknown))} (only rack, profile)")
    node = await lifecycle(request).update(request.match_info["name"], actor=ACTOR,
                                           rack=_opt_str(body, "rack"), profile=_opt_str(body, "profile"))
    return web.json_response(node_json(node))


def _selector(body: dict[str, Any]) -> Selector:
    """{"nodes": [...]}, {"rack": R}, {"state": S} or {"all": true}."""
    names = body.get("nodes", [])
    if "nodes" in body and (not isinstance(names, list) or not names
                            or not all(isinstance(n, str) for n in names)):
        raise InvalidInput("nodes must be a non-empty list of names")
    return Selector.parse(names, rack=_opt_str(body, "rack"), state=_opt_str(body, "state"),
                          all=body.get("all") is True)


def _operation(request: web.Request) -> Operation:
    try:
        return Operation(request.match_info["op"])
    except ValueError:
        raise NotFound(f"no operation {request.match_info['op']!r} "
                       f"(one of {', '.join(o.value for o in Operation)})") from None


async def operate_one(request: web.Request) -> web.Response:
    op, body = _operation(request), await json_body(request)
    allocating = op is Operation.ALLOCATE
    result = await lifecycle(request).operate(
        op, request.match_info["name"], actor=ACTOR, message=_opt_str(body, "message") or "",
        profile=_opt_str(body, "profile") if allocating else None,
        rename=_opt_str(body, "name") if allocating else None)
    return web.json_response(node_json(result.node) if result.node is not None else {})


async def operate_many(request: web.Request) -> web.Response:
    """One operation on many nodes; per-node results, one failure does not stop the rest."""
    op, body = _operation(request), await json_body(request)
    allocating = op is Operation.ALLOCATE
    results = await lifecycle(request).operate_many(
        op, _selector(body), actor=ACTOR, message=_opt_str(body, "message") or "",
        profile=_opt_str(body, "profile") if allocating else None,
        rename=_opt_str(body, "name") if allocating else None)
    return web.json_response({"results": [
        {"node": r.name, "ok": True, "state": r.node.state.value} if r.node is not None
        else {"node": r.name, "ok": False, "error": r.error} for r in results]})


async def delete_node(request: web.Request) -> web.Response:
    """DELETE /api/v1/nodes/NAME[?power_off=1]: power the node off first when asked
    (its outcome is in the node's events; a failure does not stop the delete)."""
    node = await lifecycle(request).delete(request.match_info["name"], actor=ACTOR,
                                           power_off=request.query.get("power_off") in ("1", "true"))
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
    await lifecycle(request).node(request.match_info["name"])  # 404 before any BMC traffic
    (result,) = await power.run(op, [request.match_info["name"]], actor="api")
    return web.json_response(result_json(result), status=200 if result.ok else 502)


async def power_many(request: web.Request) -> web.Response:
    op, power = _power_op(request), _power_service(request)
    names = await lifecycle(request).select(_selector(await json_body(request)))
    results = await power.run(op, names, actor="api")
    return web.json_response({"results": [result_json(r) for r in results]})


OPS = "|".join(op.value for op in Operation)


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
        # Only the operations' own names: a catch-all {op} would shadow later fixed
        # routes (/api/v1/rollouts) depending on aiohttp's matching order.
        web.post(f"/api/v1/nodes/{{name}}/{{op:{OPS}}}", operate_one),
        web.post(f"/api/v1/{{op:{OPS}}}", operate_many),
        web.get("/api/v1/leases", list_leases),
    ]
