"""GET /metrics (Prometheus text format) and the middleware that counts HTTP requests.

/metrics needs no token, like /healthz: Prometheus scrapers usually carry
none, the endpoint lives on the admin network with the rest of bootd's HTTP,
and it holds no secrets (counts and label values from fixed sets, never a
node's token, MAC or a raw path). The middleware labels each request by its
route pattern (`/install/{node}/{token}/{kind}`), never the raw path, which
would put node tokens into the metrics and let any client mint new series;
requests that match no route are "unmatched". It is the outermost middleware,
so it sees the status the client got (the errors middleware's JSON 404s and
500s included). A streamed response (the status page's event stream) counts
when it ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from bootd.metrics import Metrics, Stopwatch

METRICS = web.AppKey("metrics", Metrics)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
    watch, status = Stopwatch(), 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:  # redirects pass through the errors middleware as exceptions
        status = exc.status
        raise
    finally:
        request.app[METRICS].http_request(request.method, route_of(request), status, watch.seconds)


async def scrape(request: web.Request) -> web.Response:
    # body, not text: generate_latest already encodes, and the content type carries a version.
    return web.Response(body=request.app[METRICS].exposition(), headers={"Content-Type": CONTENT_TYPE})


def install(app: web.Application, metrics: Metrics) -> None:
    """Serve `metrics` at GET /metrics on `app` and count its requests (before the app freezes)."""
    app[METRICS] = metrics
    app.middlewares.insert(0, count)
    app.router.add_get("/metrics", scrape)
