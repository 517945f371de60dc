"""JSON API, /api/v1 (operator-facing; bearer-token protected by server.py).

Handlers are thin: parse the request, ask the repository, render JSON. Node
records never carry secrets (node tokens, BMC passwords); see db/records.py.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bootd import __version__
from bootd.db.records import LeaseRecord, NodeRecord
from bootd.db.repository import Repository
from bootd.errors import BootdError

REPO = web.AppKey("repository", Repository)


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
        "bmc": None if node.bmc is None else {"address": node.bmc.address,
                                              "username": node.bmc.username},
        "created_at": node.created_at.isoformat(),
        "updated_at": node.updated_at.isoformat(),
        "state_changed_at": node.state_changed_at.isoformat(),
    }


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


def routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz),
        web.get("/api/v1/nodes", list_nodes),
        web.get("/api/v1/nodes/{name}", show_node),
        web.get("/api/v1/leases", list_leases),
    ]
