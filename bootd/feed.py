"""The change feed: every committed change to a node, published in process.

The lifecycle service publishes after its transaction commits; subscribers
(the policy's node directory today, the status page and the DNS zone next)
react at once instead of polling. Subscribers are plain callbacks run on the
event loop: they must be quick and must not raise (one that does is logged
and the others still run). Changes made by another process (the CLI writing
the database directly) still reach the daemon through the policy's cheap
inventory-stamp poll.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from bootd.logs import kv
from bootd.model.records import NodeRecord

log = logging.getLogger("bootd.feed")


@dataclass(frozen=True, slots=True)
class NodeChanged:
    """`node` is the record after the change; `deleted` when it is gone."""

    node: NodeRecord
    kind: str  # the event kind written with it: transition, deleted, renamed, timeout, ...
    deleted: bool = False
    old_name: str | None = None  # set when the change renamed the node


Subscriber = Callable[[NodeChanged], None]


class ChangeFeed:
    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

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
