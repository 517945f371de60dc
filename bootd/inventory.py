"""What the edges may read of the inventory directly: health, leases, and the
operator's own view of a node's token (`bootd nodes render`).

A Protocol, so that edges (http/, cli/) name it without importing bootd.db:
the repository satisfies it structurally. Every node change goes through the
lifecycle service; what a booting machine gets, through the policy.
"""

from __future__ import annotations

from typing import Protocol

from bootd.model.records import LeaseRecord


class Inventory(Protocol):
    async def ping(self) -> None: ...

    async def list_leases(self) -> list[LeaseRecord]: ...

    async def node_token(self, name: str) -> str: ...
