"""What the discovery / hardware-install agent asks, each call with the node's own token.

- GET  /api/v1/nodes/NODE/self: its state, allocation and profile (it polls this).
- GET  /api/v1/nodes/NODE/tasks: its hardware-install tasks, one name per line, in order.
- GET  /api/v1/nodes/NODE/tasks/TASK: the task as a shell script.
- POST /api/v1/nodes/NODE/tasks/TASK: the task's log as the body, its exit status
  in X-Task-Status; recorded as a `task` event (bootd.tasks says what else).

Plain text throughout: the agent is busybox sh and wget, with no JSON parser.
Thin handlers: the tasks service and the policy decide.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from bootd.errors import InvalidInput
from bootd.http.boot import node_token_from, own_node
from bootd.model.records import NodeRecord
from bootd.tasks import Tasks

log = logging.getLogger("bootd.http")
EXIT_STATUS = re.compile(r"^-?[0-9]{1,5}\Z", re.ASCII)
MAX_TASK_LOG = 64 * 1024
TASKS = web.AppKey("tasks", Tasks)


async def _node(request: web.Request) -> NodeRecord:
    return await own_node(request, request.match_info["name"], node_token_from(request))


async def self_view(request: web.Request) -> web.Response:
    """The node's own view; after a rename its token still finds it, and the answer
    carries the new name."""
    node = await _node(request)
    return web.json_response({"name": node.name, "state": node.state.value, "allocated": node.allocated,
                              "profile": node.profile})


async def list_tasks(request: web.Request) -> web.Response:
    await _node(request)
    return web.Response(text="\n".join(request.app[TASKS].names()) + "\n")


async def get_task(request: web.Request) -> web.Response:
    node = await _node(request)
    text = await request.app[TASKS].script(node, request.match_info["task"], request.remote)
    return web.Response(text=text, content_type="text/x-shellscript")


async def post_task(request: web.Request) -> web.Response:
    node = await _node(request)
    status_text = request.headers.get("X-Task-Status", "")
    if not EXIT_STATUS.match(status_text):
        raise InvalidInput("X-Task-Status must be the task's exit status")
    body = (await request.content.read(MAX_TASK_LOG + 1))[:MAX_TASK_LOG]
    result = await request.app[TASKS].report(node, request.match_info["task"], int(status_text),
                                             body.decode("utf-8", "replace"))
    return web.json_response({"node": result.node, "task": result.task, "status": result.status})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/nodes/{name}/self", self_view),
        web.get("/api/v1/nodes/{name}/tasks", list_tasks),
        web.get("/api/v1/nodes/{name}/tasks/{task}", get_task),
        web.post("/api/v1/nodes/{name}/tasks/{task}", post_task),
    ]
