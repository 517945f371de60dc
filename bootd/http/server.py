"""The HTTP service: one aiohttp application on the configured listen address.

Errors are translated here, at the edge (STYLE 7): NotFound -> 404, Conflict ->
409, InvalidInput -> 400, an unavailable database -> 503, each as JSON
{"error": "..."}; aiohttp's own 404/405 get the same shape. Everything under
/api/ needs `Authorization: Bearer <token>` (the token file in the state
directory); /healthz does not, so a load balancer or systemd can probe it, nor
does /metrics (http/metrics.py), so a Prometheus scraper can read it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from bootd.bmc.service import PowerService
from bootd.config import Config
from bootd.errors import BootdError, Conflict, DatabaseUnavailable, InvalidInput, NotFound
from bootd.feed import ChangeFeed
from bootd.http import agent, api, boot, findings, status
from bootd.http import metrics as http_metrics
from bootd.http.boot import bearer, same_token
from bootd.inventory import Inventory
from bootd.lifecycle import Lifecycle
from bootd.logs import kv
from bootd.metrics import Metrics
from bootd.policy import Policy
from bootd.service import BindError
from bootd.tasks import Tasks

log = logging.getLogger("bootd.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
TOKEN = web.AppKey("api_token", str)
NODE_ROUTES = {"/api/v1/nodes/{name}/transition", "/api/v1/nodes/{name}/self",
               "/api/v1/nodes/{name}/tasks", "/api/v1/nodes/{name}/tasks/{task}"}
LISTEN_BACKLOG = 4096  # the kernel caps it at net.core.somaxconn (4096 by default since Linux 5.4)
STATUS = {NotFound: 404, Conflict: 409, InvalidInput: 400, DatabaseUnavailable: 503}


def _where(request: web.Request) -> str:
    """The route, not the raw path: /install/NODE/TOKEN/... must not put a token in a log."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "-"


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except (NotFound, Conflict, InvalidInput, DatabaseUnavailable) as exc:
        status = next(code for kind, code in STATUS.items() if isinstance(exc, kind))
        if status >= 500:
            log.error("request failed", extra=kv(path=_where(request), reason=str(exc)))
        return _error(status, str(exc))
    except BootdError as exc:  # deliberate, but not the client's fault
        log.error("request failed", extra=kv(path=_where(request), reason=str(exc)))
        return _error(500, str(exc))
    except Exception as exc:  # a bug: one log line with the reason, a JSON 500, never a dead server
        log.error("request failed unexpectedly", extra=kv(path=_where(request),
                                                          reason=f"{type(exc).__name__}: {exc}"))
        return _error(500, "internal error; see the server log")


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    # A node's own calls (progress, agent) carry the node's token, checked by their handlers.
    route = request.match_info.route.resource
    operator_route = request.path.startswith("/api/") and (route is None
                                                           or route.canonical not in NODE_ROUTES)
    if operator_route and not same_token(bearer(request) or "", request.app[TOKEN]):
        log.info("API request refused", extra=kv(peer=request.remote, path=_where(request),
                                                 reason="missing or wrong bearer token"))
        resp = _error(401, "missing or wrong API token (Authorization: Bearer <token>)")
        resp.headers["WWW-Authenticate"] = 'Bearer realm="bootd"'
        return resp
    return await handler(request)


def build_app(config: Config, api_token: str, *, inventory: Inventory, policy: Policy,
              lifecycle: Lifecycle, tasks: Tasks, power: PowerService | None = None,
              feed: ChangeFeed | None = None, metrics: Metrics | None = None,
              rogue: findings.FindingsReader | None = None) -> web.Application:
    app = web.Application(middlewares=[errors, auth], client_max_size=1024**2)
    app[api.REPO] = inventory
    app[api.LIFECYCLE] = lifecycle
    if power is not None:
        app[api.POWER] = power
    app[boot.POLICY] = policy
    app[boot.REPORTS] = lifecycle
    app[agent.TASKS] = tasks
    app[boot.SETTINGS] = boot.Settings(config)
    app[boot.OPERATOR] = api_token
    app[TOKEN] = api_token
    # The node callback first: /api/v1/nodes/{name}/{op} would match it too.
    app.add_routes(boot.routes())
    app.add_routes(agent.routes())
    app.add_routes(api.routes())
    findings.install(app, feed, rogue)  # GET /api/v1/dhcp/findings, the status page's banner
    if metrics is not None:  # GET /metrics (no token, like /healthz) and request counts
        http_metrics.install(app, metrics)
    if feed is not None:  # the status page follows the lifecycle's change feed
        status.install(app, feed)
    return app


class HttpService:
    name = "http"

    def __init__(self, app: web.Application, config: Config) -> None:
        self._host, self._port = config.http.host, config.http.port
        self._app = app
        # In-flight requests get this long to finish at shutdown (set on the runner:
        # aiohttp 3.10+ deprecates it on the site).
        self._runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=10.0)
        self._site: web.TCPSite | None = None

    @property
    def address(self) -> str:
        return f"{self._host}:{self._port}"

    async def start(self) -> None:
        await self._runner.setup()
        # A rack powering on at once connects hundreds of clients in the same second: aiohttp's
        # default backlog (128) drops their SYNs, and each retry costs a client 1 s and more.
        self._site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True,
                                 backlog=LISTEN_BACKLOG)
        try:
            await self._site.start()
        except OSError as exc:
            await self._runner.cleanup()
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise BindError(f"HTTP cannot listen on {self.address}: {reason}") from None
        log.info("listening", extra=kv(address=self.address))

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        await self._runner.cleanup()

    def reconfigure(self, config: Config) -> None:
        # Profiles, install settings: the next rendered script uses them. The
        # listen address needs a restart.
        self._app[boot.SETTINGS].config = config
        self._app[agent.TASKS].reconfigure(config)
