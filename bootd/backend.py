"""The application layer over one inventory: open the database, build the services.

The CLI and the daemon (app.py) both start here, so an operation run from
either goes through the same objects: the lifecycle service (every node
change), the power service (BMCs) and one change feed. Edges (cli/, http/)
import nothing from db/; this module and app.py are where the database meets
the services.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bootd.bmc.service import PowerService
from bootd.config import Config
from bootd.db.engine import open_database
from bootd.db.findings import FindingRows
from bootd.db.repository import Repository
from bootd.db.rollouts import RolloutRows
from bootd.feed import ChangeFeed
from bootd.fleet.admission import Admissions
from bootd.fleet.findings import Findings
from bootd.fleet.notices import sending
from bootd.fleet.rollout import Rollouts
from bootd.inventory import Inventory
from bootd.keys import SecretBox
from bootd.lifecycle.service import Lifecycle
from bootd.metrics import Metrics


@dataclass(frozen=True)
class Backend:
    config: Config
    inventory: Inventory  # reads that are no one service's (leases, a node's token for render)
    power: PowerService
    lifecycle: Lifecycle
    feed: ChangeFeed
    rollouts: Rollouts
    findings: Findings  # other DHCP servers seen (rogue DHCP)
    admissions: Admissions  # install waves: the policy asks it at boot time; snapshot() for status


def build_backend(config: Config, repo: Repository, *, feed: ChangeFeed | None = None,
                  power: PowerService | None = None, metrics: Metrics | None = None) -> Backend:
    """The services over an open repository (the daemon opens its own, app.py, with its metrics)."""
    feed = feed if feed is not None else ChangeFeed()
    power = power if power is not None else PowerService(config, repo, metrics=metrics)
    lifecycle = Lifecycle(config, repo, power=power, feed=feed, metrics=metrics)
    return Backend(config, repo, power, lifecycle, feed, Rollouts(config, RolloutRows(repo), lifecycle),
                   Findings(config, FindingRows(repo), feed), Admissions(config, repo, feed=feed))


@asynccontextmanager
async def open_backend(config: Config) -> AsyncIterator[Backend]:
    """Open (and migrate) the config's database and build the services; dispose after."""
    engine = await open_database(config.database_url)
    try:
        repo = Repository(engine, SecretBox.from_file(config.secret_key_file))
        backend = build_backend(config, repo)
        async with sending(config, repo, backend.feed):  # PostgreSQL: tell the daemons
            yield backend
    finally:
        await engine.dispose()
