"""Rollouts in the operator API (/api/v1/rollouts), over bootd.fleet.rollout.Rollouts.

POST /api/v1/rollouts {"racks": [...], "nodes": [...], "all": true, "profile": P,
"max_parallel": N, "max_failures": K} records the rollout and answers 201 at
once; its nodes are handed to the lifecycle in the background (the power-on
throttle staggers them: a thousand take minutes). GET lists them (newest
first; ?state=running), GET /{id} shows one with its nodes, POST /{id}/pause,
/resume and /cancel act on it. Errors are the API's own (server.py): 400 for a
bad body or an unknown profile, 404 for an unknown rollout, 409 for a node in
another rollout or an operation the rollout's state does not allow.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bootd.errors import InvalidInput, NotFound
from bootd.fleet.rollout import DEFAULT_MAX_FAILURES, Rollouts
from bootd.http.api import json_body
from bootd.model.rollout import RolloutNodeRecord, RolloutSelector, RolloutState, RolloutView

ROLLOUTS = web.AppKey("rollouts", Rollouts)
ACTOR = "api"
ROUTE = "/api/v1/rollouts"


def node_json(n: RolloutNodeRecord) -> dict[str, Any]:
    return {"name": n.name, "rack": n.rack, "outcome": n.outcome.value, "detail": n.detail,
            "waiting": n.waiting, "updated_at": n.updated_at.isoformat()}


def rollout_json(view: RolloutView, *, nodes: bool = True) -> dict[str, Any]:
    r, p = view.rollout, view.progress
    out: dict[str, Any] = {
        "id": r.id, "profile": r.profile, "selector": r.selector.to_json(), "max_parallel": r.max_parallel,
        "max_failures": r.max_failures, "state": r.state.value, "reason": r.reason, "actor": r.actor,
        "created_at": r.created_at.isoformat(), "updated_at": r.updated_at.isoformat(),
        "counts": p.as_dict(), "total": p.total, "failures": p.failures, "waiting": p.waiting,
    }
    if nodes:
        out["nodes"] = [node_json(n) for n in view.nodes]
    return out


def _strings(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{key} must be a list of strings")
    return value


def _count(body: dict[str, Any], key: str, default: int | None) -> int | None:
    value = body.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise InvalidInput(f"{key} must be a whole number")
    return value


def _id(request: web.Request) -> int:
    text = request.match_info["id"]
    if not text.isdigit() or len(text) > 12:
        raise NotFound(f"no rollout {text!r}")
    return int(text)


async def start(request: web.Request) -> web.Response:
    body = await json_body(request)
    unknown = set(body) - {"racks", "nodes", "all", "profile", "max_parallel", "max_failures"}
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}")
    profile = body.get("profile")
    if not isinstance(profile, str) or not profile:
        raise InvalidInput("profile is required")
    selector = RolloutSelector.parse(_strings(body, "nodes"), _strings(body, "racks"),
                                     body.get("all") is True)
    max_failures = _count(body, "max_failures", DEFAULT_MAX_FAILURES)
    view = await request.app[ROLLOUTS].start(selector, profile, actor=ACTOR,
                                             max_parallel=_count(body, "max_parallel", None),
                                             max_failures=DEFAULT_MAX_FAILURES if max_failures is None
                                             else max_failures, wait=False)
    return web.json_response(rollout_json(view), status=201)


async def listing(request: web.Request) -> web.Response:
    states = None
    if "state" in request.query:
        try:
            states = [RolloutState(s) for s in request.query.getall("state")]
        except ValueError:
            raise InvalidInput(f"state is one of {', '.join(s.value for s in RolloutState)}") from None
    views = await request.app[ROLLOUTS].list(states)
    return web.json_response({"rollouts": [rollout_json(v, nodes=False) for v in views]})


async def show(request: web.Request) -> web.Response:
    return web.json_response(rollout_json(await request.app[ROLLOUTS].view(_id(request))))


async def act(request: web.Request) -> web.Response:
    rollouts, rid, op = request.app[ROLLOUTS], _id(request), request.match_info["op"]
    if op == "pause":
        view = await rollouts.pause(rid, actor=ACTOR)
    elif op == "resume":
        view = await rollouts.resume(rid, actor=ACTOR)
    elif op == "cancel":
        view = await rollouts.cancel(rid, actor=ACTOR)
    else:
        raise NotFound(f"no rollout operation {op!r} (one of pause, resume, cancel)")
    return web.json_response(rollout_json(view))


def install(app: web.Application, rollouts: Rollouts) -> None:
    """Before the API's own routes: POST /api/v1/{op} would take /api/v1/rollouts."""
    app[ROLLOUTS] = rollouts
    app.add_routes([
        web.post(ROUTE, start),
        web.get(ROUTE, listing),
        web.get(ROUTE + "/{id}", show),
        web.post(ROUTE + "/{id}/{op}", act),
    ])
