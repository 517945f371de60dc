"""The change feed: every committed change to a node, published in process.

The lifecycle service publishes after its transaction commits; subscribers
(the policy's node directory today, the status page and the DNS zone next)
react at once instead of polling. Subscribers are plain callbacks run on the
event loop: they must be quick and must not raise (one that does is logged
and the others still run). Changes made by another process (the CLI writing
the database directly) still reach the daemon through the policy's cheap
inventory-stamp poll. With several daemons on one PostgreSQL, changes go
out and come in over LISTEN/NOTIFY (bootd/fleet/notices.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from bootd.logs import kv
from bootd.model.findings import FindingRecord
from bootd.model.records import NodeRecord

log = logging.getLogger("bootd.feed")


@dataclass(frozen=True, slots=True)
class NodeChanged:
    """`node` is the record after the change; `deleted` when it is gone."""

    node: NodeRecord
    kind: str  # the event kind written with it: transition, deleted, renamed, timeout, ...
    deleted: bool = False
    old_name: str | None = None  # set when the change renamed the node
    remote: bool = False  # committed by another daemon on the same database (bootd/fleet/notices.py)


Subscriber = Callable[[NodeChanged], None]


@dataclass(frozen=True, slots=True)
class DhcpServerSeen:
    """Another DHCP server answers on an admin interface (bootd.fleet.findings): the
    finding as recorded; `new` the first time this daemon sees that server."""

    finding: FindingRecord
    new: bool


class ChangeFeed:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._findings: list[Callable[[DhcpServerSeen], None]] = []

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Adds `callback`; returns the function that removes it again."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def publish(self, change: NodeChanged) -> None:
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception as exc:  # a subscriber's bug must not undo a committed change
                log.error("change subscriber failed", extra=kv(node=change.node.name,
                                                               reason=f"{type(exc).__name__}: {exc}"))

    def subscribe_findings(self, callback: Callable[[DhcpServerSeen], None]) -> Callable[[], None]:
        """Rogue DHCP findings (a channel of their own: node subscribers never see them)."""
        self._findings.append(callback)
        return lambda: self._findings.remove(callback) if callback in self._findings else None

    def publish_finding(self, event: DhcpServerSeen) -> None:
        for callback in list(self._findings):
            try:
                callback(event)
            except Exception as exc:  # same rule as publish
                log.error("finding subscriber failed", extra=kv(reason=f"{type(exc).__name__}: {exc}"))
