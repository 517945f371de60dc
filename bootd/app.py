"""The composition root of `bootd serve`.

Order of operations: parse the config and check it against the host; open the
database and apply migrations; create every enabled service and let each bind
its sockets (all of them, before any serves); tell systemd READY=1; then run
every service, the watchdog and the signal handling under one TaskGroup.

The first service to fail (or to return, which a service never should) ends
the group: the others are cancelled, every socket is released, the database
engine is disposed (SQLite checkpoints its WAL on the last close) and the
process exits non-zero with one line naming the cause. SIGTERM and SIGINT end
it the same way with exit 0; SIGHUP re-reads the config file and hands it to
the services, keeping the running config if the new one is invalid.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import netifaces
from aiohttp import web

from bootd import __version__, logs
from bootd.backend import build_backend
from bootd.bmc.service import PowerService
from bootd.config import Config, check_host, load_config
from bootd.db.engine import open_database
from bootd.db.findings import FindingRows
from bootd.db.repository import Repository
from bootd.db.rollouts import RolloutRows
from bootd.dhcp.rogue_transport import RogueWatcher
from bootd.dhcp.server import DhcpService
from bootd.dns.server import DnsService
from bootd.errors import BootdError, ConfigError
from bootd.feed import ChangeFeed
from bootd.fleet.claims import subnet_claims
from bootd.fleet.findings import Findings
from bootd.fleet.notices import change_notices
from bootd.fleet.rollout import Rollouts, RolloutService
from bootd.http import rollouts as http_rollouts
from bootd.http.server import HttpService, build_app
from bootd.images.bootloaders import missing_loaders
from bootd.keys import SecretBox, api_token
from bootd.lifecycle import Lifecycle, LifecycleService
from bootd.logs import kv
from bootd.metrics import Metrics
from bootd.policy import Policy
from bootd.ra import RaService
from bootd.sdnotify import Notifier
from bootd.service import Service
from bootd.tasks import Tasks
from bootd.tftp.server import TftpService

log = logging.getLogger("bootd.app")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


class _Shutdown(Exception):
    """Raised inside the TaskGroup to end it on a stop signal."""


class ServiceExited(BootdError):
    pass


def host_interfaces() -> list[str]:
    return list(netifaces.interfaces())


ServiceFactory = Callable[[Config, Repository], list[Service]]


def http_app(repo: Repository, api_token: str, config: Config, power: PowerService | None = None, *,
             policy: Policy | None = None, lifecycle: Lifecycle | None = None,
             tasks: Tasks | None = None, feed: ChangeFeed | None = None,
             metrics: Metrics | None = None, rollouts: Rollouts | None = None) -> web.Application:
    """The HTTP application over `repo`, with whatever services are not given made
    here (one feed shared by the lifecycle, the policy and the status page). The daemon
    passes its own."""
    feed = feed if feed is not None else ChangeFeed()
    if lifecycle is None:
        lifecycle = Lifecycle(config, repo, power=power, feed=feed, metrics=metrics)
    app = build_app(config, api_token, inventory=repo, lifecycle=lifecycle,
                    policy=policy if policy is not None else Policy(config, repo, feed),
                    tasks=tasks if tasks is not None else Tasks(config, repo), power=power, feed=feed,
                    metrics=metrics,
                    rogue=Findings(config, FindingRows(repo), feed) if isinstance(repo, Repository) else None)
    if rollouts is None and isinstance(repo, Repository):  # not a test's stand-in without a database
        rollouts = Rollouts(config, RolloutRows(repo), lifecycle)
    if rollouts is not None:
        http_rollouts.install(app, rollouts)
    return app


def build_services(config: Config, repo: Repository) -> list[Service]:
    metrics = Metrics()  # this daemon's registry, handed to each service (GET /metrics)
    backend = build_backend(config, repo, metrics=metrics)
    policy = Policy(config, repo, backend.feed, admissions=backend.admissions)  # waves at boot time
    metrics.watch_policy(policy)
    # Every node change goes through backend.lifecycle; this service is its timer.
    timer = LifecycleService(config, repo, power=backend.power, feed=backend.feed,
                             lifecycle=backend.lifecycle)
    services: list[Service] = [policy, timer, *change_notices(config, repo, backend.feed)]
    rogue = backend.findings  # other DHCP servers: log, metrics, banner
    metrics.watch_rogue(rogue)
    services.append(RolloutService(backend.rollouts, backend.feed))  # the rollouts' driver
    metrics.watch_rollouts(lambda: {o.value: n for o, n in backend.rollouts.outcome_counts.items()})
    if config.services.http:
        app = http_app(repo, api_token(config.http.api_token_file), config, backend.power,
                       policy=policy, lifecycle=backend.lifecycle, tasks=Tasks(config, repo),
                       feed=backend.feed, metrics=metrics, rollouts=backend.rollouts)
        services.append(HttpService(app, config))
    if config.services.dhcp:
        dhcp = DhcpService(config, repo, policy)
        metrics.watch_dhcp(dhcp)
        services.append(dhcp)
        if config.rogue.watch or config.rogue.probe_interval:
            services += [rogue, RogueWatcher(config, rogue)]
    if config.ra.enabled and config.services.needs_interfaces:  # lifetime 0: iPXE stops waiting for IPv6
        services.append(RaService(config))
    if config.services.tftp:
        tftp = TftpService(config, policy, config.tftp_root, metrics=metrics)
        metrics.watch_tftp(tftp)
        services.append(tftp)
    for missing in missing_loaders(config) if config.services.tftp or config.services.http else []:
        log.warning("boot loader missing", extra=kv(**missing.fields()))
    if config.services.dns:
        dns = DnsService(config, repo, policy, backend.feed)
        metrics.watch_dns(dns)
        services.append(dns)
    return services


class Daemon:
    def __init__(self, config_path: Path, *, notifier: Notifier | None = None,
                 interfaces: Callable[[], Collection[str]] = host_interfaces,
                 services: ServiceFactory = build_services) -> None:
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self._interfaces = interfaces
        self._build_services = services
        self._stop = asyncio.Event()
        self.services: list[Service] = []

    def _load(self) -> Config:
        config = load_config(self.config_path)
        check_host(config, self._interfaces())
        return config

    async def run(self) -> int:
        # Signals first: a SIGTERM while the database opens still ends in a clean stop.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        try:
            self.config = self._load()
        except ConfigError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_CONFIG
        logs.set_level(self.config.log_level)
        try:
            engine = await open_database(self.config.database_url)
        except BootdError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_FAILURE
        try:
            repo = Repository(engine, SecretBox.from_file(self.config.secret_key_file))
            await repo.seal_tokens()
            # Subnet claims first: no socket is bound while another daemon serves a subnet of ours.
            return await self._run_with(repo, subnet_claims(self.config, engine))
        except BootdError as exc:
            log.error("cannot start: %s", exc)
            return EXIT_FAILURE
        finally:
            await engine.dispose()
            log.info("stopped")

    async def _run_with(self, repo: Repository, claims: Sequence[Service] = ()) -> int:
        self.services = [*claims, *self._build_services(self.config, repo)]
        started: list[Service] = []
        try:
            for service in self.services:
                await service.start()
                started.append(service)
            return await self._serve()
        finally:
            self.notifier.stopping()
            for service in reversed(started):
                try:
                    await service.stop()
                except (BootdError, OSError) as exc:
                    log.warning("unclean stop", extra=kv(service=service.name, reason=str(exc)))

    async def _serve(self) -> int:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
        names = ", ".join(s.name for s in self.services) or "no services"
        log.info("bootd %s serving", __version__, extra=kv(services=names, pid=os.getpid()))
        self.notifier.ready(f"serving {names}")
        rc = EXIT_OK
        try:
            async with asyncio.TaskGroup() as group:
                for service in self.services:
                    group.create_task(self._supervise(service), name=service.name)
                group.create_task(self.notifier.watchdog(), name="watchdog")
                group.create_task(self._until_stopped(), name="signals")
        except* _Shutdown:
            pass
        except* BootdError as group_error:
            for exc in group_error.exceptions:
                log.error("stopping: %s", exc)
            rc = EXIT_FAILURE
        return rc

    async def _supervise(self, service: Service) -> None:
        await service.run()
        raise ServiceExited(f"service {service.name} stopped unexpectedly")

    async def _until_stopped(self) -> None:
        await self._stop.wait()
        raise _Shutdown

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        log.info("shutting down", extra=kv(signal=sig.name))
        self._stop.set()

    def stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        self.notifier.reloading()
        try:
            new = self._load()
        except ConfigError as exc:
            log.error("reload failed, keeping the running configuration: %s", exc)
        else:
            restart = self.config.restart_needed_for(new)
            if restart:
                log.warning("changed keys take effect only after a restart",
                            extra=kv(keys=",".join(restart)))
            logs.set_level(new.log_level)
            for service in self.services:
                service.reconfigure(new)
            self.config = new
            log.info("configuration reloaded", extra=kv(config=str(self.config_path)))
        self.notifier.ready("serving " + ", ".join(s.name for s in self.services))

