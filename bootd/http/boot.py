"""What booting machines and their installers fetch over HTTP, and the callback they post.

Thin handlers over the policy (what a machine boots, who may see a token) and
the lifecycle service (every node move); nothing here reads the inventory.

- GET /boot/ipxe?mac=MAC (also /boot/pxelinux, /boot/grub): the boot script of
  the machine's current state. Scripts that carry the node's token go only to
  the peer holding bootd's lease for MAC; ?node=NAME needs the operator token.
  A machine nobody knows gets the discovery script without a token: HTTP never
  records machines (a PXE DHCP exchange does).
- GET /boot/identity?mac=MAC: "node=NAME" and "token=T" lines, for the lease
  holder only: the discovery agent's way to its new token after allocation.
- GET /boot/failed?mac=MAC&step=S&errno=E&url=U: a boot script gave up on a
  fetch (bootd.model.bootfail); one event for the node with MAC, rate-limited,
  never a new node. 202 recorded, 404 unknown MAC, 429 over the rate, 400 bad input.
- GET /images/PATH: files under the TFTP root's images/ (kernels, initrds,
  install trees), by sendfile, with Range (installers resume).
- GET /tftp/PATH: the TFTP root itself, read-only, resolved as TFTP resolves it:
  UEFI HTTP boot loads its loader from the one copy TFTP serves.
- GET /install/NODE/{kickstart,preseed,user-data}?token=T, and
  /install/NODE/T/{user-data,meta-data,vendor-data} (cloud-init's nocloud-net
  seed appends the file name to a URL): the node's answer files, opened only by
  its own token.
- POST /api/v1/nodes/NODE/transition {"state": S} with the node's own token
  (Authorization: Bearer T, or ?token=T&state=S for installers that can only
  fetch a URL): the node reports its progress; the lifecycle decides.
"""

from __future__ import annotations

import hmac
import json
import logging
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Protocol

from aiohttp import web

from bootd import boot
from bootd.config import Config
from bootd.errors import InvalidInput, NotFound
from bootd.files import Missing, NotRegular, Refused, resolve
from bootd.http.api import json_body
from bootd.http.filesend import open_regular, send
from bootd.logs import kv
from bootd.model.bootfail import BootFailure, Outcome, parse_report
from bootd.model.names import mac_address
from bootd.model.records import NodeRecord
from bootd.model.states import NodeState
from bootd.policy import NotLeaseHolder, Policy

log = logging.getLogger("bootd.http")
MAX_INVENTORY = 256 * 1024


@dataclass
class Settings:
    """The live config; replaced on reload (an aiohttp app's keys are frozen)."""

    config: Config


class NodeReports(Protocol):
    """The lifecycle service as a node's callbacks see it: the one way a node moves itself."""

    async def report(self, name: str, target: NodeState, *, expect: NodeState | None = None,
                     inventory: str | None = None, message: str = "",
                     read: NodeRecord | None = None) -> NodeRecord: ...

    async def boot_failed(self, report: BootFailure, now: float | None = None) -> Outcome: ...


SETTINGS = web.AppKey("settings", Settings)
REPORTS = web.AppKey("node-reports", NodeReports)
POLICY = web.AppKey("policy", Policy)
OPERATOR = web.AppKey("operator-token", str)


def peer_address(request: web.Request) -> IPv4Address | None:
    try:
        return IPv4Address(request.remote or "")
    except ValueError:
        return None


def _is_operator(request: web.Request) -> bool:
    return same_token(bearer(request) or "", request.app[OPERATOR])


async def boot_script(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    policy = request.app[POLICY]
    if kind == "identity":
        return await identity(request)
    if kind not in boot.SCRIPT_TEMPLATES:
        raise NotFound(f"no boot script kind {kind!r} (one of {', '.join(boot.SCRIPT_TEMPLATES)})")
    name, mac_text = request.query.get("node"), request.query.get("mac")
    operator = _is_operator(request)
    if name:
        # A script carries the node's token: by name, only for the operator (a machine
        # asks by its own MAC, which is what PXE identifies it by anyway).
        if not operator:
            raise web.HTTPUnauthorized(reason="?node= needs the operator token; machines ask by ?mac=")
        mac = await policy.boot_mac(name)
    elif mac_text:
        mac = mac_address(mac_text)
    else:
        raise InvalidInput("give ?mac=MAC or ?node=NAME")
    try:
        text = await policy.boot_script(kind, mac, peer_address(request), operator=operator)
    except NotLeaseHolder as exc:
        raise web.HTTPForbidden(reason=str(exc)) from None
    return web.Response(text=text, content_type="text/plain")


async def identity(request: web.Request) -> web.Response:
    mac = mac_address(request.query.get("mac", ""))
    try:
        name, token = await request.app[POLICY].identity(mac, peer_address(request))
    except NotLeaseHolder as exc:
        raise web.HTTPForbidden(reason=str(exc)) from None
    return web.Response(text=f"node={name}\ntoken={token}\n", content_type="text/plain")


REPORT_STATUS = {Outcome.RECORDED: 202, Outcome.UNKNOWN: 404, Outcome.LIMITED: 429}


async def boot_failed(request: web.Request) -> web.Response:
    outcome = await request.app[REPORTS].boot_failed(parse_report(request.query))
    return web.Response(status=REPORT_STATUS[outcome], text=outcome.value + "\n", content_type="text/plain")


async def images(request: web.Request) -> web.StreamResponse:
    return await _from_tftp_root(request, "images/" + request.match_info["path"])


async def tftp_root(request: web.Request) -> web.StreamResponse:
    return await _from_tftp_root(request, request.match_info["path"])


async def _from_tftp_root(request: web.Request, tail: str) -> web.StreamResponse:
    config = request.app[SETTINGS].config
    try:
        # Opened once, here; everything after works on the descriptor (bootd.http.filesend).
        fd, st = open_regular(resolve(config.tftp_root, tail))
    except NotRegular:
        raise web.HTTPForbidden(reason=f"{tail} is not a file") from None
    except Refused as exc:
        raise web.HTTPForbidden(reason=f"{tail}: {exc}") from None
    except (Missing, FileNotFoundError):
        raise web.HTTPNotFound(reason=f"{tail} not found") from None
    except OSError as exc:
        raise web.HTTPForbidden(reason=f"{tail}: {exc.strerror}") from None
    rng = request.headers.get("Range")
    policy = request.app.get(POLICY)
    if policy is not None:  # the machine's recent activity (status page)
        policy.fetched(peer_address(request), "http",
                       f"{request.method} /{tail}" + (f" ({rng[:40]})" if rng else ""))
    return await send(request, tail, fd, st)


def bearer(request: web.Request) -> str | None:
    """The token of `Authorization: Bearer T`, or None. The one parser of that header."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def same_token(given: str, expected: str) -> bool:
    """Constant time; header bytes that are not UTF-8 are simply a wrong token. An
    empty expected token never matches (the daemon refuses to start with one)."""
    if not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def node_token_from(request: web.Request) -> str:
    """The node's token: Authorization: Bearer T, or ?token=T for fetch-only installers."""
    token = bearer(request)
    return token if token is not None else request.query.get("token", "")


async def own_node(request: web.Request, name: str, token: str) -> NodeRecord:
    node = await request.app[POLICY].own_node(name, token)
    if node is None:
        log.info("node callback refused", extra=kv(peer=request.remote, node=name,
                                                   reason="missing or wrong node token"))
        raise web.HTTPForbidden(reason=f"missing or wrong token for node {name}")
    return node


async def install_file(request: web.Request) -> web.Response:
    name, kind = request.match_info["node"], request.match_info["kind"]
    token = request.match_info.get("token") or request.query.get("token", "")
    node = await own_node(request, name, token)
    text = request.app[POLICY].answer(kind, node, token)
    log.info("install file served", extra=kv(node=node.name, kind=kind, peer=request.remote,
                                              agent=request.headers.get("User-Agent", "-")[:80]))
    return web.Response(text=text, content_type="text/plain")


def _state(text: object, what: str) -> NodeState:
    try:
        return NodeState(str(text))
    except ValueError:
        raise InvalidInput(f"{text!r} is not a node state ({what})") from None


async def transition(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    node = await own_node(request, name, node_token_from(request))
    # Installers that can only fetch a URL send no JSON body: state and token in the query.
    body = await json_body(request) if request.content_type == "application/json" else {}
    state_text = body.get("state", request.query.get("state"))
    if not isinstance(state_text, str):
        raise InvalidInput('give {"state": "..."} or ?state=')
    target = _state(state_text, "state")
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
    expect = None if body.get("from") is None else _state(body["from"], "from")
    record = await request.app[REPORTS].report(
        node.name, target, expect=expect, inventory=inventory_text, message=message, read=node)
    log.info("node moved", extra=kv(node=record.name, state=record.state.value, by="node"))
    return web.json_response({
        "name": record.name, "state": record.state.value, "allocated": record.allocated,
        "profile": record.profile,
        "bmc": None if record.bmc is None else {"address": record.bmc.address},
    })


def routes() -> list[web.RouteDef]:
    return [
        web.get("/boot/failed", boot_failed),  # before /boot/{kind}, which would match it
        web.get("/boot/{kind}", boot_script),
        web.get("/images/{path:.+}", images),
        web.get("/tftp/{path:.+}", tftp_root),
        web.get("/install/{node}/{kind}", install_file),
        web.get("/install/{node}/{token}/{kind}", install_file),
        web.post("/api/v1/nodes/{name}/transition", transition),
    ]
