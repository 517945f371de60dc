"""The status page: server-rendered HTML at /, a node page, live updates, operator actions.

Pages are Jinja2 templates (bootd/templates/status/, package data) in their
own Environment with autoescape on: node racks, relay locations, inventories
and event messages come from the wire and are shown escaped. The JavaScript
is a few lines served by bootd itself (/static/status.js; the admin network
has no internet) and a Content-Security-Policy of 'self' keeps any injected
inline script from running even if escaping were ever missed.

Live updates are server-sent events (/events; the WHATWG HTML "server-sent
events" section): the hub (statusfeed.py) follows the change feed, and each
stream sends at most one message per BATCH seconds with the re-rendered rows
of every node that changed and the new counts.

Reading needs a login unless `[http] status_public = true`; actions always
do. Logging in checks the operator token (the API's bearer token) and keeps
a server-side session (sessions.py); every POST carries the session's CSRF
token. Actions go through the lifecycle service and the power service, the
same operations the CLI and the API run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web

from bootd import boot as boot_scripts
from bootd.bmc.controller import PowerOp
from bootd.errors import BootdError, Conflict, InvalidInput, NotFound
from bootd.feed import ChangeFeed
from bootd.http import api, findings
from bootd.http.boot import OPERATOR, POLICY, SETTINGS, same_token
from bootd.http.rollouts import ROLLOUTS
from bootd.http.sessions import COOKIE, Session, Sessions
from bootd.http.statusfeed import BATCH, Stamped, StatusHub, Stream, utc_now
from bootd.http.statusview import PATH, Filter, counts, overview, rack_of, row, tone
from bootd.lifecycle import Operation
from bootd.logs import kv
from bootd.model.records import NodeRecord
from bootd.model.rollout import LIVE
from bootd.model.states import NodeState

log = logging.getLogger("bootd.http.status")
ACTOR = "web"
HEARTBEAT = 15.0  # an SSE comment this often finds dead clients and keeps proxies open
CSP = "default-src 'self'; frame-ancestors 'none'; form-action 'self'"
ASSETS = {"status.js": "application/javascript", "status.css": "text/css"}
LIFECYCLE_OPS = {"allocate": Operation.ALLOCATE, "reinstall": Operation.REINSTALL, "reset": Operation.RESET}
POWER_OPS = {"power-on": PowerOp.ON, "power-off": PowerOp.OFF, "power-cycle": PowerOp.CYCLE}


class Pages:
    """Everything the status handlers share, owned by one application."""

    def __init__(self, hub: StatusHub) -> None:
        self.hub = hub
        self.sessions = Sessions()
        self.env = jinja2.Environment(loader=jinja2.PackageLoader("bootd", "templates/status"),
                                      undefined=jinja2.StrictUndefined, autoescape=True,
                                      trim_blocks=True, lstrip_blocks=True)
        self.env.globals.update(path=[s.value for s in PATH], tone=tone)
        folder = resources.files("bootd").joinpath("templates", "status")
        self.assets = {name: folder.joinpath(name).read_bytes() for name in ASSETS}

    def render(self, template: str, **context: object) -> str:
        return self.env.get_template(template).render(**context)

    def row_html(self, node: NodeRecord, timeouts: Mapping[NodeState, int], now: datetime) -> str:
        macro = self.env.get_template("_row.html.j2").module.row  # type: ignore[attr-defined]
        return str(macro(row(node, now, timeouts, self.hub.last().get(node.name))))


PAGES = web.AppKey("status-pages", Pages)


def install(app: web.Application, feed: ChangeFeed) -> None:
    """Adds the status page to `app`: routes, the hub on `feed`, fast shutdown."""
    inventory = app[api.REPO]
    stamp = inventory.inventory_stamp if isinstance(inventory, Stamped) else None
    pages = Pages(StatusHub(app[api.LIFECYCLE].nodes, stamp=stamp))
    app[PAGES] = pages
    unsubscribe = feed.subscribe(pages.hub.on_change)

    async def on_startup(_: web.Application) -> None:
        pages.hub.preload()  # 10,000 nodes take about a second to read: not in a page view

    async def on_shutdown(_: web.Application) -> None:
        await pages.hub.shutdown()  # open streams end now, not after the runner's shutdown timeout
        unsubscribe()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.add_routes(routes())


# -- sessions and responses -------------------------------------------------------------


def _session(request: web.Request) -> tuple[str | None, Session | None]:
    sid = request.cookies.get(COOKIE)
    return sid, request.app[PAGES].sessions.get(sid)


def _html(request: web.Request, template: str, status: int = 200, **context: object) -> web.Response:
    _, session = _session(request)
    context.setdefault("csrf", session.csrf if session is not None else "")
    context.setdefault("live", "")
    # Other DHCP servers seen: a banner for those who may read the page (not on the login form).
    context.setdefault("rogue", findings.banners(request.app) if _may_read(request) else [])
    resp = web.Response(text=request.app[PAGES].render(template, **context), status=status,
                        content_type="text/html")
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["Cache-Control"] = "no-store"
    return resp


def _refuse(request: web.Request, message: str) -> web.Response:
    log.info("status action refused", extra=kv(peer=request.remote, path=request.path, reason=message))
    return _html(request, "message.html.j2", 403, title="Forbidden", message=message)


def _may_read(request: web.Request) -> bool:
    return request.app[SETTINGS].config.http.status_public or _session(request)[1] is not None


def _to_login(request: web.Request) -> web.HTTPSeeOther:
    return web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))


# -- pages ------------------------------------------------------------------------------


async def index(request: web.Request) -> web.Response:
    if not _may_read(request):
        raise _to_login(request)
    pages, config = request.app[PAGES], request.app[SETTINGS].config
    flt = Filter.parse(request.query)
    view = overview(await pages.hub.nodes(), flt, utc_now(), config.lifecycle.timeouts, pages.hub.last())

    def query(page: int) -> str:
        return urlencode({k: v for k, v in {**request.query, "page": str(page)}.items()})

    rollouts = request.app.get(ROLLOUTS)  # running and paused ones, with their progress
    shown = [] if rollouts is None else await rollouts.list(sorted(LIVE))
    return _html(request, "index.html.j2", title="Status", view=view, flt=flt, query=query, live="fleet",
                 rollouts=shown)


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: str
    kind: str
    source: str
    target: str
    actor: str
    message: str


@dataclass(frozen=True, slots=True)
class BootNext:
    mode: str = ""
    kernel: str = ""
    initrd: str = ""
    append: str = ""
    error: str = ""


def _boot_next(node: NodeRecord, request: web.Request) -> BootNext:
    # No token in the view: the page shows what the node boots, never its secret.
    try:
        t = boot_scripts.target(boot_scripts.view_of(node), request.app[SETTINGS].config)
    except BootdError as exc:
        return BootNext(error=str(exc))
    return BootNext(t.mode, t.kernel, t.initrd, t.append)


async def _timeline(request: web.Request, node: NodeRecord) -> list[TimelineEntry]:
    out = [TimelineEntry(e.at.isoformat(timespec="seconds"), e.kind, e.from_state or "", e.to_state or "",
                         e.actor, e.message)
           for e in await request.app[api.LIFECYCLE].events(node.name)]
    macs = {i.mac for i in node.interfaces}
    for fetch in request.app[POLICY].activity.of(macs):  # recent TFTP and HTTP fetches (in memory)
        at = datetime.fromtimestamp(fetch.at, UTC).isoformat(timespec="seconds")
        out.append(TimelineEntry(at, f"{fetch.kind}-fetch", "", "", fetch.kind, fetch.detail))
    for lease in await request.app[api.REPO].list_leases():
        if lease.mac in macs:
            out.append(TimelineEntry(lease.expires_at.isoformat(timespec="seconds"), "dhcp-lease", "", "",
                                     "dhcp", f"{lease.ip} {lease.state.value} (expiry time) to {lease.mac}"))
    return sorted(out, key=lambda e: e.at)


async def node_page(request: web.Request, message: str = "", kind: str = "ok",
                    status: int = 200) -> web.Response:
    if not _may_read(request):
        raise _to_login(request)
    config = request.app[SETTINGS].config
    node = await request.app[api.LIFECYCLE].node(request.match_info["name"])  # NotFound: JSON 404
    last = request.app[PAGES].hub.last().get(node.name)
    inventory = ""
    if node.inventory:
        try:
            inventory = json.dumps(json.loads(node.inventory), indent=2, sort_keys=True)
        except ValueError:
            inventory = node.inventory
    done = request.query.get("done", "")
    if not message and done:
        message = f"{done}: done"
    return _html(request, "node.html.j2", status, title=f"Node {node.name}", node=node,
                 r=row(node, utc_now(), config.lifecycle.timeouts, last), rack=rack_of(node),
                 profiles=sorted(config.profiles), boot=_boot_next(node, request),
                 timeline=await _timeline(request, node), inventory=inventory, message=message,
                 message_kind=kind, live=node.name)


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    return web.Response(body=request.app[PAGES].assets[name], content_type=ASSETS[name],
                        headers={"Cache-Control": "max-age=300"})


# -- login ------------------------------------------------------------------------------


def _local(target: str) -> str:
    """Only a path on this server: never an open redirect (//evil, http://evil)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/"


async def login_form(request: web.Request) -> web.Response:
    return _html(request, "login.html.j2", title="Log in", next=_local(request.query.get("next", "/")),
                 message="")


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    target = _local(str(form.get("next", "/")))
    if not same_token(str(form.get("token", "")), request.app[OPERATOR]):
        log.info("status login refused", extra=kv(peer=request.remote, reason="wrong operator token"))
        return _html(request, "login.html.j2", 403, title="Log in", next=target, message="wrong token")
    sessions = request.app[PAGES].sessions
    sessions.drop(request.cookies.get(COOKIE))  # a fresh id at every login: no session fixation
    sid, _ = sessions.create()
    resp = web.HTTPSeeOther(target)
    resp.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path="/")
    log.info("status login", extra=kv(peer=request.remote))
    raise resp


async def logout(request: web.Request) -> web.Response:
    sid, session = _session(request)
    form = await request.post()
    if session is None or not session.csrf_ok(str(form.get("csrf", ""))):
        return _refuse(request, "not logged in, or the form's CSRF token is missing or wrong")
    request.app[PAGES].sessions.drop(sid)
    resp = web.HTTPSeeOther("/login")
    resp.del_cookie(COOKIE, path="/")
    raise resp


# -- actions ----------------------------------------------------------------------------


async def action(request: web.Request) -> web.Response:
    _, session = _session(request)
    if session is None:
        return _refuse(request, "log in with the operator token to act on nodes")
    form = await request.post()
    if not session.csrf_ok(str(form.get("csrf", ""))):
        return _refuse(request, "the form's CSRF token is missing or wrong; reload the page")
    name, op = request.match_info["name"], str(form.get("op", ""))
    try:
        if op in LIFECYCLE_OPS:
            profile = str(form.get("profile", "")) or None if op == "allocate" else None
            await request.app[api.LIFECYCLE].operate(LIFECYCLE_OPS[op], name, actor=ACTOR, profile=profile)
        elif op in POWER_OPS:
            power = request.app.get(api.POWER)
            if power is None:
                raise InvalidInput("power control is not part of this server")
            await request.app[api.LIFECYCLE].node(name)  # NotFound before any BMC traffic
            result = await power.one(POWER_OPS[op], name, actor=ACTOR)
            if not result.ok:
                return await node_page(request, f"{op} failed: {result.error}", "bad", 502)
        else:
            raise InvalidInput(f"no action {op!r}")
    except (Conflict, InvalidInput) as exc:
        return await node_page(request, f"{op}: {exc}", "bad", 409 if isinstance(exc, Conflict) else 400)
    except NotFound:
        raise
    log.info("status action", extra=kv(node=name, op=op, peer=request.remote))
    raise web.HTTPSeeOther(f"/nodes/{quote(name, safe='')}?done={quote(op)}")


# -- the event stream -------------------------------------------------------------------


def _message(request: web.Request, stream: Stream, flt: Filter) -> bytes | None:
    names, overflow = stream.take()
    if not names and not overflow:
        return None
    pages, hub = request.app[PAGES], request.app[PAGES].hub
    now, timeouts = utc_now(), request.app[SETTINGS].config.lifecycle.timeouts
    rows: dict[str, str | None] = {}
    for name in [] if overflow else sorted(names):
        node = hub.node(name)
        if node is None:
            rows[name] = None
        elif (flt.rack is None or rack_of(node) == flt.rack) and flt.text in node.name:
            rows[name] = pages.row_html(node, timeouts, now)
    tally = {s.value: n for s, n in counts(hub.snapshot())}
    payload = {"rows": rows, "counts": {**tally, "total": sum(tally.values())}, "resync": overflow}
    return f"event: nodes\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    if not _may_read(request):
        return _refuse(request, "log in to follow the status page")
    hub = request.app[PAGES].hub
    await hub.nodes()  # loaded before the first change is rendered
    flt = Filter.parse(request.query)
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)
    stream = hub.open()
    try:
        await resp.write(b"retry: 3000\n\n")
        while not stream.stopped:
            try:
                await stream.wait(HEARTBEAT)
            except TimeoutError:
                await resp.write(b": keep-alive\n\n")
                await hub.nodes()  # a stale snapshot reloads in the background
                continue
            data = _message(request, stream, flt)
            if data is not None:
                await resp.write(data)
            await stream.pause(BATCH)  # what changes meanwhile is the next message
    except (ConnectionResetError, BootdError) as exc:
        log.debug("status stream ended", extra=kv(reason=str(exc)))
    finally:
        hub.close(stream)
    return resp


def routes() -> list[web.RouteDef]:
    return [
        web.get("/", index),
        web.get("/nodes/{name}", node_page),
        web.post("/nodes/{name}/action", action),
        web.get("/events", events),
        web.get("/login", login_form),
        web.post("/login", login),
        web.post("/logout", logout),
        web.get("/static/{name}", asset),
    ]
