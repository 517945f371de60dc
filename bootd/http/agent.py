"""What the discovery / hardware-install agent asks, each call with the node's own token.

- GET  /api/v1/nodes/NODE/self: its state, allocation and profile (it polls this).
- GET  /api/v1/nodes/NODE/tasks: its hardware-install tasks, one name per line, in order.
- GET  /api/v1/nodes/NODE/tasks/TASK: the task as a shell script.
- POST /api/v1/nodes/NODE/tasks/TASK: the task's log as the body, its exit status
  in X-Task-Status; recorded as a `task` event.

Tasks: `bmc` (bootd's own: a BMC user with a password bootd generates per node,
stored encrypted, and the BMC's LAN address from the subnet's bmc_range), then
the operator's scripts, `images/tasks/*.sh` under the TFTP root, by name
(RAID, BIOS settings, disk wipes: anything a shell in the image can do).
Plain text throughout: the agent is busybox sh and wget, with no JSON parser.
"""

from __future__ import annotations

import logging
import re
import secrets
import string
from ipaddress import IPv4Address

from aiohttp import web

from bootd.config import Config
from bootd.db.repository import Repository
from bootd.errors import Conflict, InvalidInput, NotFound
from bootd.files import Missing, Refused, read_regular, resolve
from bootd.http.boot import REPO, SETTINGS, node_token_from, own_node
from bootd.logs import kv
from bootd.model.records import NodeRecord
from bootd.model.states import NodeState

log = logging.getLogger("bootd.http")
TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
EXIT_STATUS = re.compile(r"^-?[0-9]{1,5}\Z", re.ASCII)
BMC_USER, BMC_USER_ID = "bootd", 3
MAX_TASK_LOG = 64 * 1024


def task_names(config: Config) -> list[str]:
    folder = config.tftp_root / "images" / "tasks"
    names = ["bmc"]
    if folder.is_dir():
        names += sorted(p.stem for p in folder.glob("*.sh") if TASK_NAME.match(p.stem) and p.stem != "bmc")
    return names


async def _node(request: web.Request) -> NodeRecord:
    name = request.match_info["name"]
    return await own_node(request, name, node_token_from(request))


async def self_view(request: web.Request) -> web.Response:
    """The node's own view. Under a name it no longer has (allocation renamed it),
    its token still finds it, and the answer carries the new name."""
    repo: Repository = request.app[REPO]
    token = node_token_from(request)
    renamed = None
    if token and await repo.find_node_by_name(request.match_info["name"]) is None:
        renamed = await repo.node_by_token(token)
    node = renamed if renamed is not None else await _node(request)
    return web.json_response({"name": node.name, "state": node.state.value, "allocated": node.allocated,
                              "profile": node.profile})


async def list_tasks(request: web.Request) -> web.Response:
    await _node(request)
    return web.Response(text="\n".join(task_names(request.app[SETTINGS].config)) + "\n")


def _bmc_address(config: Config, repo_taken: set[str], peer: str | None) -> tuple[str, str, str] | None:
    """(address, netmask, gateway) for a new BMC, from the bmc_range of the peer's subnet."""
    if peer is None:
        return None
    try:
        subnet = config.subnet_for(IPv4Address(peer))
    except ValueError:
        return None
    if subnet is None or subnet.bmc_range is None:
        return None
    for address in subnet.bmc_range:
        if str(address) not in repo_taken:
            gateway = str(subnet.router) if subnet.router is not None else "0.0.0.0"
            return str(address), str(subnet.cidr.netmask), gateway
    return None


def _password() -> str:
    # IPMI 2.0 passwords are at most 20 bytes; letters and digits survive every shell and BMC.
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(16))


async def _bmc_script(request: web.Request, node: NodeRecord) -> str:
    repo: Repository = request.app[REPO]
    config = request.app[SETTINGS].config
    lan = ""
    address = node.bmc.address if node.bmc is not None else None
    if address is None:
        taken = {n.bmc.address for n in await repo.list_nodes() if n.bmc is not None}
        found = _bmc_address(config, taken, request.remote)
        if found is not None:
            address, netmask, gateway = found
            lan = (f"ipmitool lan set 1 ipsrc static\nipmitool lan set 1 ipaddr {address}\n"
                   f"ipmitool lan set 1 netmask {netmask}\nipmitool lan set 1 defgw ipaddr {gateway}\n")
    else:
        lan = f"# BMC address {address} already recorded; LAN settings left as they are\n"
    password = _password()
    await repo.set_bmc(node.name, address or "dhcp", BMC_USER, password, actor=f"node:{node.name}")
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
        "echo 'BMC configured'\n")


async def get_task(request: web.Request) -> web.Response:
    node = await _node(request)
    task = request.match_info["task"]
    config = request.app[SETTINGS].config
    if task not in task_names(config):
        raise NotFound(f"no task {task!r} for node {node.name}")
    if task == "bmc":
        if node.state is not NodeState.HARDWARE_INSTALLING:
            # It sets a new BMC password: only as part of a hardware install.
            raise Conflict(f"node {node.name} is {node.state.value}; the bmc task runs only "
                           "in hardware-installing")
        text = await _bmc_script(request, node)
    else:
        try:
            path = resolve(config.tftp_root, f"images/tasks/{task}.sh")
            body = read_regular(path, limit=1 << 20).decode("utf-8", "replace")
        except (Missing, Refused) as exc:
            raise NotFound(f"task {task}: {exc}") from None
        text = (f"#!/bin/sh\n# bootd task {task} for {node.name}\nexport BOOTD_NODE={node.name}\n"
                f"export BOOTD_PROFILE={node.profile or ''}\n{body}")
    return web.Response(text=text, content_type="text/x-shellscript")


async def post_task(request: web.Request) -> web.Response:
    node = await _node(request)
    task = request.match_info["task"]
    if not TASK_NAME.match(task):
        raise InvalidInput(f"{task!r} is not a task name")
    status_text = request.headers.get("X-Task-Status", "")
    if not EXIT_STATUS.match(status_text):
        raise InvalidInput("X-Task-Status must be the task's exit status")
    status = int(status_text)
    body = (await request.content.read(MAX_TASK_LOG + 1))[:MAX_TASK_LOG]
    text = body.decode("utf-8", "replace")
    printable = "".join(c if c.isprintable() or c == "\n" else "?" for c in text)[-1800:]
    await request.app[REPO].record_event(node.name, "task", f"{task} exit={status_text}\n{printable}",
                                         actor=f"node:{node.name}")
    log.info("task reported", extra=kv(node=node.name, task=task, status=status_text))
    return web.json_response({"node": node.name, "task": task, "status": status})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/nodes/{name}/self", self_view),
        web.get("/api/v1/nodes/{name}/tasks", list_tasks),
        web.get("/api/v1/nodes/{name}/tasks/{task}", get_task),
        web.post("/api/v1/nodes/{name}/tasks/{task}", post_task),
    ]
