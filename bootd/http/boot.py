"""What booting machines and their installers fetch over HTTP, and the callback they post.

- GET /boot/ipxe?mac=MAC (also /boot/pxelinux, /boot/grub; or ?node=NAME):
  the boot script of the machine's current state. A MAC nobody knows is
  recorded in discovering first, so its script carries its own token.
- GET /images/PATH: files under the TFTP root's images/ (kernels, initrds,
  install trees), by sendfile, with Range (installers resume).
- GET /install/NODE/{kickstart,preseed,user-data}?token=T, and
  /install/NODE/T/{user-data,meta-data,vendor-data} (cloud-init's nocloud-net
  seed appends the file name to a URL): the node's answer files. They carry its
  root hash and token, so only its own token opens them.
- POST /api/v1/nodes/NODE/transition {"state": S} with the node's own token
  (Authorization: Bearer T, or ?token=T&state=S for installers that can only
  fetch a URL): the node reports its progress; the lifecycle table decides.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass

from aiohttp import web

from bootd import boot
from bootd.boot import NodeView
from bootd.config import Config
from bootd.db.repository import Repository
from bootd.errors import InvalidInput, NotFound
from bootd.files import Missing, Refused, resolve
from bootd.http.api import json_body
from bootd.logs import kv
from bootd.model.lifecycle import Actor
from bootd.model.names import mac_address
from bootd.model.records import NodeRecord
from bootd.model.states import NodeState

log = logging.getLogger("bootd.http")
MAX_INVENTORY = 256 * 1024


@dataclass
class Settings:
    """The live config; replaced on reload (an aiohttp app's keys are frozen)."""

    config: Config


SETTINGS = web.AppKey("settings", Settings)
REPO = web.AppKey("boot-repository", Repository)
OPERATOR = web.AppKey("operator-token", str)


def _view(node: NodeRecord, token: str, mac: str | None = None) -> NodeView:
    return NodeView(node.name, mac or node.boot_mac or "00:00:00:00:00:00", node.state, node.profile,
                    token, node.admin_ip)


async def boot_script(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    repo, config = request.app[REPO], request.app[SETTINGS].config
    if kind not in boot.SCRIPT_TEMPLATES:
        raise NotFound(f"no boot script kind {kind!r} (one of {', '.join(boot.SCRIPT_TEMPLATES)})")
    name, mac_text = request.query.get("node"), request.query.get("mac")
    if name:
        # A script carries the node's token: by name, only for the operator (a machine
        # asks by its own MAC, which is what PXE identifies it by anyway).
        if not same_token(bearer(request) or "", request.app[OPERATOR]):
            raise web.HTTPUnauthorized(reason="?node= needs the operator token; machines ask by ?mac=")
        node = await repo.get_node(name)
        mac = node.boot_mac
    elif mac_text:
        mac = mac_address(mac_text)
        found = await repo.find_node_by_mac(mac)
        if found is None:
            found = (await repo.register_booted(mac, None, actor="http")
                     or await repo.find_node_by_mac(mac))
            if found is None:  # pragma: no cover - registered and gone in one instant
                raise NotFound(f"machine {mac} could not be recorded")
            log.info("new machine booted", extra=kv(mac=mac, node=found.name, via=f"{kind} script"))
        node = found
    else:
        raise InvalidInput("give ?mac=MAC or ?node=NAME")
    token = await repo.node_token(node.name)
    text = boot.script(kind, _view(node, token, mac), config)
    return web.Response(text=text, content_type="text/plain")


async def images(request: web.Request) -> web.StreamResponse:
    config = request.app[SETTINGS].config
    tail = request.match_info["path"]
    try:
        path = resolve(config.tftp_root, "images/" + tail)
    except Refused as exc:
        raise web.HTTPForbidden(reason=f"images/{tail}: {exc}") from None
    except Missing:
        raise web.HTTPNotFound(reason=f"images/{tail} not found") from None
    if not path.is_file():
        raise web.HTTPForbidden(reason=f"images/{tail} is not a file")
    # FileResponse: sendfile(2), Range and If-Modified-Since, never the whole file in memory.
    return web.FileResponse(path, chunk_size=256 * 1024)


def bearer(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer T`, or None. The one parser of that header."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def same_token(given: str, expected: str) -> bool:
    """Constant time; header bytes that are not UTF-8 are simply a wrong token."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def node_token_from(request: web.Request) -> str:
    """The node's token: Authorization: Bearer T, or ?token=T for fetch-only installers."""
    token = bearer(request)
    return token if token is not None else request.query.get("token", "")


async def own_node(request: web.Request, name: str, token: str) -> NodeRecord:
    repo = request.app[REPO]
    if not token or not await repo.verify_token(name, token):
        log.info("node callback refused", extra=kv(peer=request.remote, node=name,
                                                   reason="missing or wrong node token"))
        raise web.HTTPForbidden(reason=f"missing or wrong token for node {name}")
    return await repo.get_node(name)


async def install_file(request: web.Request) -> web.Response:
    name, kind = request.match_info["node"], request.match_info["kind"]
    token = request.match_info.get("token") or request.query.get("token", "")
    node = await own_node(request, name, token)
    config = request.app[SETTINGS].config
    if kind == "meta-data":
        text = f"instance-id: {node.name}-{int(node.state_changed_at.timestamp())}\n" \
               f"local-hostname: {node.name}\n"
    elif kind == "vendor-data":
        text = "#cloud-config\n{}\n"
    elif kind in boot.ANSWER_KINDS:
        text = boot.answer(kind, _view(node, token), config)
    else:
        raise NotFound(f"no install file {kind!r}")
    return web.Response(text=text, content_type="text/plain")


async def transition(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    node = await own_node(request, name, node_token_from(request))
    # Installers that can only fetch a URL send no JSON body: state and token in the query.
    body = await json_body(request) if request.content_type == "application/json" else {}
    state_text = body.get("state", request.query.get("state"))
    if not isinstance(state_text, str):
        raise InvalidInput('give {"state": "..."} or ?state=')
    try:
        target = NodeState(state_text)
    except ValueError:
        raise InvalidInput(f"{state_text!r} is not a node state") from None
    message = body.get("message", "")
    if not isinstance(message, str):
        raise InvalidInput("message must be a string")
    inventory = body.get("inventory")
    inventory_text = None
    if inventory is not None:
        if not isinstance(inventory, dict):
            raise InvalidInput("inventory must be a JSON object")
        inventory_text = json.dumps(inventory, sort_keys=True)
        if len(inventory_text) > MAX_INVENTORY:
            raise InvalidInput(f"inventory larger than {MAX_INVENTORY} bytes")
    expect_text = body.get("from")
    expect = None
    if expect_text is not None:
        try:
            expect = NodeState(str(expect_text))
        except ValueError:
            raise InvalidInput(f"{expect_text!r} is not a node state") from None
    record = await request.app[REPO].transition(
        node.name, target, Actor.NODE, actor=f"node:{node.name}", message=message, expect=expect,
        inventory=inventory_text)
    log.info("node moved", extra=kv(node=record.name, state=record.state.value, by="node"))
    return web.json_response({
        "name": record.name, "state": record.state.value, "allocated": record.allocated,
        "profile": record.profile,
        "bmc": None if record.bmc is None else {"address": record.bmc.address},
    })


def routes() -> list[web.RouteDef]:
    return [
        web.get("/boot/{kind}", boot_script),
        web.get("/images/{path:.+}", images),
        web.get("/install/{node}/{kind}", install_file),
        web.get("/install/{node}/{token}/{kind}", install_file),
        web.post("/api/v1/nodes/{name}/transition", transition),
    ]
