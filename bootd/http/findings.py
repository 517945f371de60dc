"""Other DHCP servers, for the operator: GET /api/v1/dhcp/findings and the status page's banner.

The API lists every finding of every daemon sharing the database (most recently
seen first), read through a `FindingsReader` (bootd.fleet.findings.Findings).
The banner follows the change feed's findings channel (`DhcpServerSeen`,
published by the findings service when it writes a finding and, at start, for
the current ones it remembers): it keeps the latest record per server, at most
BANNER_SERVERS of them, and shows those seen in the last RECENT. No database
read per page view.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from typing import Any, Protocol

from aiohttp import web

from bootd.feed import ChangeFeed, DhcpServerSeen
from bootd.model.findings import FindingRecord

BANNER_SERVERS = 32
RECENT = timedelta(hours=24)


class FindingsReader(Protocol):
    async def all(self) -> list[FindingRecord]: ...


class Banners:
    def __init__(self) -> None:
        self._latest: dict[tuple[str, str, IPv4Address, str], FindingRecord] = {}

    def on_finding(self, event: DhcpServerSeen) -> None:
        key = event.finding.key
        if key not in self._latest and len(self._latest) >= BANNER_SERVERS:
            oldest = min(self._latest.values(), key=lambda f: f.last_seen)
            del self._latest[oldest.key]
        self._latest[key] = event.finding

    def current(self, now: datetime) -> list[FindingRecord]:
        return sorted((f for f in self._latest.values() if now - f.last_seen <= RECENT),
                      key=lambda f: f.last_seen, reverse=True)


READER = web.AppKey("findings-reader", FindingsReader)
BANNERS = web.AppKey("findings-banners", Banners)


def install(app: web.Application, feed: ChangeFeed | None, reader: FindingsReader | None) -> None:
    """The API route (empty without a reader) and, with a feed, the banner's subscription."""
    if reader is not None:
        app[READER] = reader
    if feed is not None:
        banners = Banners()
        app[BANNERS] = banners
        unsubscribe = feed.subscribe_findings(banners.on_finding)

        async def on_shutdown(_: web.Application) -> None:
            unsubscribe()

        app.on_shutdown.append(on_shutdown)
    app.add_routes([web.get("/api/v1/dhcp/findings", list_findings)])


def banners(app: web.Application) -> list[FindingRecord]:
    """What the status page's banner shows now (nothing when the app has no feed)."""
    b = app.get(BANNERS)
    return [] if b is None else b.current(datetime.now(UTC))


def finding_json(f: FindingRecord) -> dict[str, Any]:
    return {"daemon": f.daemon, "interface": f.interface, "server_ip": str(f.server_ip),
            "server_mac": f.server_mac, "method": f.method.value, "offered": f.offered,
            "first_seen": f.first_seen.isoformat(), "last_seen": f.last_seen.isoformat(), "count": f.count}


async def list_findings(request: web.Request) -> web.Response:
    reader = request.app.get(READER)
    found = [] if reader is None else await reader.all()
    return web.json_response({"findings": [finding_json(f) for f in found]})
