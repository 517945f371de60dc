"""Hardware-install tasks: what the discovery agent runs while its node is
hardware-installing, and what becomes of their reports.

Tasks: `bmc` (bootd's own: a BMC user with a password bootd generates per
node, and the BMC's LAN address from the subnet's bmc_range), then the
operator's scripts, `<state_dir>/tasks/*.sh`, by name (RAID, BIOS settings,
disk wipes: anything a shell in the image can do). Operator tasks live outside
the TFTP root so that neither TFTP nor /images/ hands them to anyone: only a
node, with its own token, gets them through the agent API.

The bmc task's credentials are a reservation until the node reports them
applied: the address is chosen and written in one transaction under a unique
index (two nodes asking at once cannot both get it), and the password becomes
the BMC's only when the task posts exit 0 with its "applied" marker. A script
that finds no BMC exits 0 without the marker; its reservation is dropped.
"""

from __future__ import annotations

import logging
import re
import secrets
import string
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

from bootd.config import Config
from bootd.db.repository import Repository
from bootd.errors import Conflict, InvalidInput, NotFound
from bootd.files import Missing, Refused, read_regular, resolve
from bootd.logs import kv
from bootd.model.records import NodeRecord
from bootd.model.states import NodeState

log = logging.getLogger("bootd.tasks")
TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z", re.ASCII)
BMC_USER, BMC_USER_ID = "bootd", 3
APPLIED = "bootd-bmc: applied"
MAX_SCRIPT = 1 << 20


def tasks_dir(config: Config) -> Path:
    return config.state_dir / "tasks"


def _password() -> str:
    # IPMI 2.0 passwords are at most 20 bytes; letters and digits survive every shell and BMC.
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(16))


@dataclass(frozen=True, slots=True)
class TaskResult:
    node: str
    task: str
    status: int


class Tasks:
    def __init__(self, config: Config, repo: Repository) -> None:
        self.config, self._repo = config, repo

    def reconfigure(self, config: Config) -> None:
        self.config = config

    def names(self) -> list[str]:
        folder = tasks_dir(self.config)
        names = ["bmc"]
        if folder.is_dir():
            names += sorted(p.stem for p in folder.glob("*.sh")
                            if TASK_NAME.match(p.stem) and p.stem != "bmc")
        return names

    async def script(self, node: NodeRecord, task: str, peer: str | None) -> str:
        if task not in self.names():
            raise NotFound(f"no task {task!r} for node {node.name}")
        if task == "bmc":
            if node.state is not NodeState.HARDWARE_INSTALLING:
                # It sets a new BMC password: only as part of a hardware install.
                raise Conflict(f"node {node.name} is {node.state.value}; the bmc task runs only "
                               "in hardware-installing")
            return await self._bmc_script(node, peer)
        try:
            path = resolve(tasks_dir(self.config), f"{task}.sh")
            body = read_regular(path, limit=MAX_SCRIPT).decode("utf-8", "replace")
        except (Missing, Refused) as exc:
            raise NotFound(f"task {task}: {exc}") from None
        return (f"#!/bin/sh\n# bootd task {task} for {node.name}\nexport BOOTD_NODE={node.name}\n"
                f"export BOOTD_PROFILE={node.profile or ''}\n{body}")

    def _bmc_candidates(self, peer: str | None) -> tuple[list[str], str, str]:
        """Free-address candidates from the bmc_range of the peer's subnet, its netmask, its gateway."""
        try:
            subnet = self.config.subnet_for(IPv4Address(peer)) if peer else None
        except ValueError:
            subnet = None
        if subnet is None or subnet.bmc_range is None:
            return [], "", ""
        gateway = str(subnet.router) if subnet.router is not None else "0.0.0.0"
        return [str(a) for a in subnet.bmc_range], str(subnet.cidr.netmask), gateway

    async def _bmc_script(self, node: NodeRecord, peer: str | None) -> str:
        candidates, netmask, gateway = self._bmc_candidates(peer)
        password = _password()
        address = None
        for _ in range(3):  # PostgreSQL: a concurrent reservation of the same address loses here
            try:
                address = await self._repo.reserve_bmc(node.name, candidates, BMC_USER, password,
                                                       actor=f"node:{node.name}")
                break
            except Conflict:
                continue
        else:
            raise Conflict(f"node {node.name}: BMC address reservation kept colliding; try again")
        recorded = node.bmc is not None and node.bmc.address == address
        if address is not None and not recorded:
            lan = (f"ipmitool lan set 1 ipsrc static\nipmitool lan set 1 ipaddr {address}\n"
                   f"ipmitool lan set 1 netmask {netmask}\nipmitool lan set 1 defgw ipaddr {gateway}\n")
        elif address is not None:
            lan = f"# BMC address {address} already recorded; LAN settings left as they are\n"
        else:
            lan = "# no free address in the subnet's bmc_range: the BMC keeps its own LAN settings\n"
        return (
            "#!/bin/sh\n# bootd task bmc: a BMC user for bootd with a password generated for this node.\n"
            "set -e\n"
            "if [ ! -e /dev/ipmi0 ]; then echo 'no BMC visible from the host (no /dev/ipmi0): nothing to do';"
            " exit 0; fi\n"
            f"{lan}"
            f"ipmitool user set name {BMC_USER_ID} {BMC_USER}\n"
            f"ipmitool user set password {BMC_USER_ID} {password}\n"
            f"ipmitool channel setaccess 1 {BMC_USER_ID} link=on ipmi=on callin=on privilege=4\n"
            f"ipmitool user enable {BMC_USER_ID}\n"
            "ipmitool lan set 1 access on\n"
            f"echo '{APPLIED}'\n")

    async def report(self, node: NodeRecord, task: str, status: int, text: str) -> TaskResult:
        """A task's exit status and log; for bmc, its credentials become the BMC's
        only if it ran to the end (exit 0 and the applied marker)."""
        if not TASK_NAME.match(task):
            raise InvalidInput(f"{task!r} is not a task name")
        printable = "".join(c if c.isprintable() or c == "\n" else "?" for c in text)[-1800:]
        actor = f"node:{node.name}"
        await self._repo.record_event(node.name, "task", f"{task} exit={status}\n{printable}", actor=actor)
        if task == "bmc":
            if status == 0 and APPLIED in text.splitlines():
                bmc = await self._repo.apply_pending_bmc(node.name, actor=actor)
                log.info("BMC credentials applied", extra=kv(node=node.name,
                                                             address=None if bmc is None else bmc.address))
            else:
                await self._repo.drop_pending_bmc(node.name)
        log.info("task reported", extra=kv(node=node.name, task=task, status=status))
        return TaskResult(node.name, task, status)
