"""What to answer to one DHCP message (pure: no sockets, no database, no clock).

Server mode follows RFC 2131 section 4.3: DISCOVER -> OFFER; REQUEST in its
four guises (SELECTING: server id and requested address; INIT-REBOOT:
requested address only; RENEWING/REBINDING: ciaddr only) -> ACK or NAK;
DECLINE quarantines the address; RELEASE frees it; INFORM -> ACK without an
address (4.3.5). The subnet is the one holding giaddr for relayed messages,
else the one on the receiving interface (4.3.1). Known nodes (MAC in the
inventory) get their reserved address and their name; others get the pool.

Proxy mode (PXE 2.1, ProxyDHCP): only PXE/iPXE/HTTP-boot clients are answered,
with boot options and no address, on 67 (DISCOVER -> OFFER) and 4011
(REQUEST -> ACK).

The caller applies an Outcome: it persists `persist` before it sends `reply`
(an ACK is a promise that must survive a crash), and logs `note`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from bootd.config import Config, DhcpMode, Subnet
from bootd.dhcp.classify import classify
from bootd.dhcp.leases import Lease, LeaseTable, client_key
from bootd.dhcp.options import (
    IPXE_NO_PXEDHCP,
    PXE_DISCOVERY_CONTROL,
    MalformedPacket,
    MessageType,
    Opt,
    RelaySub,
    encode_tlvs,
    ips,
    u8,
    u32,
)
from bootd.dhcp.packet import BOOTREPLY, BOOTREQUEST, BROADCAST_FLAG, ZERO, Packet, build
from bootd.model.clients import BootClient, Firmware
from bootd.model.records import LeaseState
from bootd.policy import BootAnswer, Policy

SERVER_PORT, CLIENT_PORT, PXE_PORT = 67, 68, 4011
BROADCAST = IPv4Address("255.255.255.255")


@dataclass(frozen=True, slots=True)
class Ingress:
    """Where a message came in: the interface, our address there, its subnets."""

    interface: str
    server_ip: IPv4Address
    subnets: tuple[Subnet, ...]
    port: int = SERVER_PORT
    source: tuple[str, int] = ("0.0.0.0", CLIENT_PORT)


@dataclass(frozen=True, slots=True)
class Reply:
    packet: Packet
    items: list[tuple[int, bytes]]
    ip: IPv4Address
    port: int
    max_message: int

    def encode(self) -> bytes:
        return build(self.packet, self.items, self.max_message)


@dataclass(slots=True)
class Outcome:
    note: str
    reply: Reply | None = None
    persist: Lease | None = None
    dropped: bool = False  # malformed or unexpected: counted and logged as such
    client: BootClient | None = None
    location: str | None = None
    extra: dict[str, object] = field(default_factory=dict)


def destination(request: Packet, reply_type: MessageType, ingress: Ingress) -> tuple[IPv4Address, int]:
    """RFC 2131 section 4.1, the paragraph on where replies go."""
    if request.giaddr != ZERO:
        return request.giaddr, SERVER_PORT
    if ingress.port == PXE_PORT and request.ciaddr != ZERO:
        return request.ciaddr, ingress.source[1]  # PXE 2.1: back to the client's own port
    if reply_type is MessageType.NAK:
        return BROADCAST, CLIENT_PORT
    if request.ciaddr != ZERO:
        return request.ciaddr, CLIENT_PORT
    # A unicast to yiaddr would need an ARP entry the client cannot answer yet;
    # RFC 2131 allows the broadcast instead.
    return BROADCAST, CLIENT_PORT


def location_of(relay_info: dict[int, bytes]) -> str | None:
    """Option 82 as "remote-id/circuit-id": the switch and its port (RFC 3046 section 3)."""
    if not relay_info:
        return None
    def text(raw: bytes | None) -> str:
        if raw is None:
            return "-"
        return raw.decode() if raw.isascii() and raw.decode().isprintable() else raw.hex()
    return f"{text(relay_info.get(RelaySub.REMOTE_ID))}/{text(relay_info.get(RelaySub.CIRCUIT_ID))}"[:255]


class Decider:
    def __init__(self, config: Config, policy: Policy, table: LeaseTable) -> None:
        self.config = config
        self.policy = policy
        self.table = table
        # Whether a never-used address may be offered (probed free); set by the server.
        self.usable: Callable[[int], bool] = lambda ip: True
        self._per_subnet: dict[Subnet, tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]] = {}

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._per_subnet.clear()

    # -- entry ----------------------------------------------------------------

    def handle(self, request: Packet, ingress: Ingress, now: float) -> Outcome:
        try:
            if request.op != BOOTREQUEST:
                return Outcome("not a BOOTREQUEST", dropped=True)
            kind = request.message_type
            if kind is None:
                return Outcome("no message type (plain BOOTP)", dropped=True)
            if self.config.dhcp.mode is DhcpMode.PROXY:
                return self._proxy(request, kind, ingress)
            if ingress.port == PXE_PORT:
                return self._proxy(request, kind, ingress)  # PXE boot server requests
            return self._server(request, kind, ingress, now)
        except MalformedPacket as exc:
            return Outcome(str(exc), dropped=True)

    # -- server mode ------------------------------------------------------------

    def _subnet(self, request: Packet, ingress: Ingress) -> Subnet | None:
        if request.giaddr != ZERO:
            return self.config.subnet_for(request.giaddr)
        if request.ciaddr != ZERO:
            for subnet in ingress.subnets:
                if request.ciaddr in subnet.cidr:
                    return subnet
        return ingress.subnets[0] if ingress.subnets else None

    def _server(self, request: Packet, kind: MessageType, ingress: Ingress, now: float) -> Outcome:
        o = request.options
        client = classify(request)
        location = location_of(o.relay_agent_info)
        subnet = self._subnet(request, ingress)
        if subnet is None:
            where = f"relay {request.giaddr}" if request.giaddr != ZERO else f"interface {ingress.interface}"
            return Outcome(f"no configured subnet for {where}", dropped=True)
        key = client_key(o.client_id, request.htype, request.hardware_address)
        base = Outcome("", client=client, location=location)
        if kind is MessageType.DISCOVER:
            return self._discover(request, ingress, subnet, key, now, base)
        if kind is MessageType.REQUEST:
            return self._request(request, ingress, subnet, key, now, base)
        if kind is MessageType.DECLINE:
            return self._decline(request, ingress, key, now, base)
        if kind is MessageType.RELEASE:
            return self._release(request, ingress, key, now, base)
        if kind is MessageType.INFORM:
            base.note = "inform"
            base.reply = self._reply(request, ingress, subnet, MessageType.ACK, ZERO, client, None)
            return base
        return Outcome(f"unexpected {kind.name} from a client", dropped=True)

    def _reserved(self, request: Packet, subnet: Subnet) -> tuple[int | None, str | None]:
        """The known node's address in this subnet, and its name."""
        node = self.policy.node(request.mac)
        if node is None:
            return None, None
        if node.admin_ip is not None and node.admin_ip in subnet.cidr:
            return int(node.admin_ip), node.name
        return None, node.name

    def _allowed(self, ip: int, reserved: int | None, subnet: Subnet) -> bool:
        """May this client hold `ip`? Its reservation, or the dynamic pool."""
        if reserved is not None:
            return ip == reserved
        pool = subnet.dynamic_pool
        return pool is not None and IPv4Address(ip) in pool

    def _discover(self, request: Packet, ingress: Ingress, subnet: Subnet, key: bytes, now: float,
                  out: Outcome) -> Outcome:
        reserved, name = self._reserved(request, subnet)
        table = self.table
        ip: int | None = None
        if reserved is not None:
            ip = reserved if table.free_for(reserved, key, now) else None
            if ip is None:
                out.note = f"reserved address {IPv4Address(reserved)} is held by another client"
                return out
        else:
            current = table.of_client(key)
            requested = request.options.requested_ip
            if current is not None and self._allowed(current.ip, None, subnet) and \
                    table.free_for(current.ip, key, now):
                ip = current.ip
            elif requested is not None and self._allowed(int(requested), None, subnet) and \
                    table.free_for(int(requested), key, now) and \
                    (int(requested) in table.by_ip or self.usable(int(requested))):
                ip = int(requested)
            elif subnet.dynamic_pool is not None:
                ip = table.allocate(subnet.dynamic_pool, now, self.usable)
            if ip is None:
                out.note = "no free address in the pool" if subnet.dynamic_pool else "no dynamic pool"
                out.extra["exhausted"] = True
                return out
        hold = min(self.config.dhcp.offer_hold, subnet.lease_time)
        table.put(Lease(ip, request.mac, key, request.options.client_id, LeaseState.OFFERED,
                        now + hold, name))
        out.note = "offer"
        out.reply = self._reply(request, ingress, subnet, MessageType.OFFER, IPv4Address(ip),
                                out.client, name)
        return out

    def _request(self, request: Packet, ingress: Ingress, subnet: Subnet, key: bytes, now: float,
                 out: Outcome) -> Outcome:
        o = request.options
        server_id, requested = o.server_id, o.requested_ip
        if server_id is not None:  # SELECTING
            if server_id != ingress.server_ip and server_id != self.config.admin_address:
                self.table.forget_offer(key)
                out.note = f"client chose server {server_id}"
                return out
            if requested is None:
                return Outcome("REQUEST with server id but no requested address", dropped=True)
            ip, state = int(requested), "selecting"
        elif requested is not None:  # INIT-REBOOT
            ip, state = int(requested), "init-reboot"
        elif request.ciaddr != ZERO:  # RENEWING (unicast) or REBINDING (broadcast)
            ip, state = int(request.ciaddr), "renewing"
        else:
            return Outcome("REQUEST with neither requested address nor ciaddr", dropped=True)
        reserved, name = self._reserved(request, subnet)
        if IPv4Address(ip) not in subnet.cidr:
            return self._nak(request, ingress, subnet, out, f"{state}: {IPv4Address(ip)} is not on "
                             f"subnet {subnet.cidr}")
        current = self.table.at(ip)
        mine = current is not None and current.client_key == key and current.state in (
            LeaseState.OFFERED, LeaseState.BOUND, LeaseState.RELEASED, LeaseState.EXPIRED)
        if not self._allowed(ip, reserved, subnet):
            return self._nak(request, ingress, subnet, out, f"{state}: {IPv4Address(ip)} is not "
                             "this client's address")
        if not mine:
            if not self.table.free_for(ip, key, now):
                return self._nak(request, ingress, subnet, out,
                                 f"{state}: {IPv4Address(ip)} is held by another client")
            if state == "selecting":
                return self._nak(request, ingress, subnet, out,
                                 f"selecting: {IPv4Address(ip)} was not offered to this client")
            if not self.config.dhcp.authoritative:
                out.note = f"{state}: no record of this client; not authoritative, silent"
                return out
        lease = Lease(ip, request.mac, key, o.client_id, LeaseState.BOUND, now + subnet.lease_time,
                      name)
        self.table.put(lease)
        out.note = f"ack ({state})"
        out.persist = lease
        out.reply = self._reply(request, ingress, subnet, MessageType.ACK, IPv4Address(ip),
                                out.client, name)
        return out

    def _nak(self, request: Packet, ingress: Ingress, subnet: Subnet, out: Outcome,
             why: str) -> Outcome:
        out.note = f"nak: {why}"
        if not self.config.dhcp.authoritative:
            out.note += " (not authoritative, silent)"
            return out
        items: list[tuple[int, bytes]] = [(Opt.MESSAGE_TYPE, u8(MessageType.NAK)),
                                          (Opt.SERVER_ID, ingress.server_ip.packed),
                                          (Opt.MESSAGE, why.encode()[:255])]
        self._echo(request, items)
        # RFC 2131 4.3.2: a NAK through a relay is broadcast by the relay.
        flags = request.flags | (BROADCAST_FLAG if request.giaddr != ZERO else 0)
        packet = Packet(op=BOOTREPLY, xid=request.xid, chaddr=request.chaddr, htype=request.htype,
                        hlen=request.hlen, flags=flags, giaddr=request.giaddr)
        ip, port = destination(request, MessageType.NAK, ingress)
        out.reply = Reply(packet, items, ip, port, request.options.max_message_size or 576)
        return out

    def _decline(self, request: Packet, ingress: Ingress, key: bytes, now: float,
                 out: Outcome) -> Outcome:
        ip = request.options.requested_ip
        if ip is None:
            return Outcome("DECLINE without the declined address", dropped=True)
        current = self.table.at(int(ip))
        if current is None or current.client_key != key:
            out.note = f"decline of {ip}, not this client's; ignored"
            return out
        lease = Lease(int(ip), request.mac, key, current.client_id, LeaseState.DECLINED,
                      now + self.config.dhcp.decline_quarantine)
        self.table.put(lease)
        out.note = f"declined {ip}: quarantined"
        out.persist = lease
        return out

    def _release(self, request: Packet, ingress: Ingress, key: bytes, now: float,
                 out: Outcome) -> Outcome:
        current = self.table.at(int(request.ciaddr))
        if current is None or current.client_key != key or current.state is not LeaseState.BOUND:
            out.note = f"release of {request.ciaddr}, not this client's lease; ignored"
            return out
        lease = Lease(current.ip, current.mac, key, current.client_id, LeaseState.RELEASED, now,
                      current.hostname)
        self.table.put(lease)
        out.note = f"released {request.ciaddr}"
        out.persist = lease
        return out

    # -- building replies ------------------------------------------------------------

    def _subnet_items(self, subnet: Subnet) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
        """The options every reply on a subnet carries, encoded once per config."""
        cached = self._per_subnet.get(subnet)
        if cached is None:
            t = subnet.lease_time
            lease: list[tuple[int, bytes]] = [(Opt.LEASE_TIME, u32(t)), (Opt.RENEWAL_TIME, u32(t // 2)),
                     (Opt.REBINDING_TIME, u32(t * 7 // 8))]
            network: list[tuple[int, bytes]] = [(Opt.SUBNET_MASK, subnet.cidr.netmask.packed),
                       (Opt.BROADCAST_ADDRESS, subnet.cidr.broadcast_address.packed)]
            if subnet.router is not None:
                network.append((Opt.ROUTER, subnet.router.packed))
            if subnet.dns_servers:
                network.append((Opt.DNS_SERVERS, ips(*subnet.dns_servers)))
            if subnet.domain:
                network.append((Opt.DOMAIN_NAME, subnet.domain.encode()))
            cached = self._per_subnet[subnet] = (lease, network)
        return cached

    def _echo(self, request: Packet, items: list[tuple[int, bytes]]) -> None:
        o = request.options
        if o.client_id is not None:
            items.append((Opt.CLIENT_ID, o.client_id))  # RFC 6842 section 3
        if Opt.RELAY_AGENT_INFO in o:
            items.append((Opt.RELAY_AGENT_INFO, o[Opt.RELAY_AGENT_INFO]))  # RFC 3046 section 2.2

    def _boot_items(self, request: Packet, answer: BootAnswer | None, client: BootClient | None,
                    items: list[tuple[int, bytes]]) -> tuple[IPv4Address, bytes]:
        """Boot options into items; returns (siaddr, file) for the BOOTP header."""
        if answer is None or client is None:
            return ZERO, b""
        filename = answer.filename.encode()
        if answer.vendor_class is not None:
            items.append((Opt.VENDOR_CLASS, answer.vendor_class))
        if not answer.is_url:
            items.append((Opt.TFTP_SERVER_NAME, str(answer.next_server).encode()))
        items.append((Opt.BOOTFILE_NAME, filename))
        if client.firmware is Firmware.IPXE:
            items.append((Opt.IPXE, encode_tlvs([(IPXE_NO_PXEDHCP, b"\x01")])))
        # Some ROMs read only the BOOTP fields (shim reads `file`; LAB-NOTES), so fill both.
        return answer.next_server, filename if len(filename) < 128 else b""

    def _reply(self, request: Packet, ingress: Ingress, subnet: Subnet, kind: MessageType,
               yiaddr: IPv4Address, client: BootClient | None, hostname: str | None) -> Reply:
        items: list[tuple[int, bytes]] = [(Opt.MESSAGE_TYPE, u8(kind)),
                                          (Opt.SERVER_ID, ingress.server_ip.packed)]
        lease_items, network_items = self._subnet_items(subnet)
        if kind is not MessageType.ACK or yiaddr != ZERO:  # INFORM replies carry no lease
            items += lease_items
        items += network_items
        if hostname:
            items.append((Opt.HOSTNAME, hostname.encode()))
        answer = self.policy.boot(client) if client is not None else None
        siaddr, file = self._boot_items(request, answer, client, items)
        self._echo(request, items)
        packet = Packet(op=BOOTREPLY, xid=request.xid, chaddr=request.chaddr, htype=request.htype,
                        hlen=request.hlen, flags=request.flags, ciaddr=request.ciaddr,
                        yiaddr=yiaddr, siaddr=siaddr, giaddr=request.giaddr, file=file)
        ip, port = destination(request, kind, ingress)
        return Reply(packet, items, ip, port, request.options.max_message_size or 576)

    # -- proxy mode ---------------------------------------------------------------

    def _proxy(self, request: Packet, kind: MessageType, ingress: Ingress) -> Outcome:
        client = classify(request)
        if not client.booting:
            return Outcome("proxy: not a network-boot client; ignored", client=client)
        if ingress.port == SERVER_PORT and kind is MessageType.DISCOVER:
            reply_type = MessageType.OFFER
        elif kind is MessageType.REQUEST and (ingress.port == PXE_PORT or
                                              request.options.server_id == ingress.server_ip):
            reply_type = MessageType.ACK
        else:
            return Outcome(f"proxy: {kind.name} not for us; ignored", client=client)
        answer = self.policy.boot(client)
        if answer is None:
            return Outcome(f"proxy: no loader for architecture {client.arch}", client=client)
        items: list[tuple[int, bytes]] = [(Opt.MESSAGE_TYPE, u8(reply_type)),
                                          (Opt.SERVER_ID, ingress.server_ip.packed)]
        if answer.vendor_class is None:
            # PXE 2.1: "PXEClient" plus discovery control 8 (boot from this file,
            # no boot server discovery); iPXE then keeps this offer (no 4011 round trip).
            items.append((Opt.VENDOR_CLASS, b"PXEClient"))
            items.append((Opt.VENDOR_SPECIFIC, encode_tlvs([(PXE_DISCOVERY_CONTROL, b"\x08")]) + b"\xff"))
        siaddr, file = self._boot_items(request, answer, client, items)
        if request.options.client_uuid is not None:
            items.append((Opt.CLIENT_UUID, b"\x00" + request.options.client_uuid))
        self._echo(request, items)
        packet = Packet(op=BOOTREPLY, xid=request.xid, chaddr=request.chaddr, htype=request.htype,
                        hlen=request.hlen, flags=request.flags, ciaddr=request.ciaddr,
                        siaddr=siaddr, giaddr=request.giaddr, file=file)
        ip, port = destination(request, reply_type, ingress)
        return Outcome(f"proxy {reply_type.name.lower()}", client=client,
                       reply=Reply(packet, items, ip, port, request.options.max_message_size or 576))
