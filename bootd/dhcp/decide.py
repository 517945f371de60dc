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

Every reply is built and encoded before the lease table changes (reply.py),
so a request whose reply cannot be sent leaves no lease behind. An OFFER
reserves its address only softly: when a pool has nothing else, the oldest
offer another client never took is offered again (Kea and dnsmasq hold
nothing for an OFFER), so a flood of DISCOVERs from spoofed MACs cannot starve
a real client. The probed-free addresses of the conflict check come in as data
(FreeSets); using one is an effect the service applies.
"""

from __future__ import annotations

from dataclasses import dataclass
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
from bootd.dhcp.outcome import (
    Booted,
    Drop,
    Effect,
    FreeSets,
    Outcome,
    PersistLease,
    PoolExhausted,
    Reply,
    UsedProbed,
    Verdict,
    dropped,
)
from bootd.dhcp.packet import BOOTREQUEST, HTYPE_ETHERNET, ZERO, Packet
from bootd.dhcp.reply import CLIENT_PORT, PXE_PORT, SERVER_PORT, Items, ReplyTooLarge, build_reply
from bootd.installnet import name_servers
from bootd.model.clients import BootClient, Firmware
from bootd.model.records import LeaseState
from bootd.policy import BootAnswer, Policy

RELAYS_CACHED = 1024


@dataclass(frozen=True, slots=True)
class Ingress:
    """Where a message came in: the interface, our address there, its subnets."""

    interface: str
    server_ip: IPv4Address
    subnets: tuple[Subnet, ...]
    port: int = SERVER_PORT
    source: tuple[str, int] = ("0.0.0.0", CLIENT_PORT)


def location_of(request: Packet) -> str | None:
    """Option 82 as "remote-id/circuit-id": the switch and its port (RFC 3046 section 3).
    Only a relay adds option 82: from a non-relayed client it is not trusted."""
    if request.giaddr == ZERO:
        return None
    relay_info = request.options.relay_agent_info
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
        self._per_subnet: dict[Subnet, tuple[Items, Items]] = {}
        self._relayed: dict[IPv4Address, Subnet | None] = {}  # giaddr -> subnet, bounded

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self._per_subnet.clear()
        self._relayed.clear()

    # -- entry ----------------------------------------------------------------

    def handle(self, request: Packet, ingress: Ingress, now: float, free: FreeSets | None = None) -> Outcome:
        try:
            if request.op != BOOTREQUEST:
                return dropped(Drop.NOT_A_REQUEST, "not a BOOTREQUEST")
            kind = request.message_type
            if kind is None:
                return dropped(Drop.NO_MESSAGE_TYPE, "no message type (plain BOOTP)")
            if request.htype != HTYPE_ETHERNET:
                return dropped(Drop.HARDWARE, f"hardware type {request.htype}: only Ethernet is served")
            if self.config.dhcp.mode is DhcpMode.PROXY or ingress.port == PXE_PORT:
                return self._proxy(request, kind, ingress)  # proxy mode, or PXE boot server requests
            return self._server(request, kind, ingress, now, free)
        except ReplyTooLarge as exc:
            return dropped(Drop.TOO_LARGE, f"reply too large: {exc}")
        except MalformedPacket as exc:
            return dropped(Drop.MALFORMED, str(exc))

    # -- server mode ------------------------------------------------------------

    def _subnet(self, request: Packet, ingress: Ingress) -> Subnet | None:
        if request.giaddr != ZERO:
            relayed = self._relayed
            try:
                return relayed[request.giaddr]
            except KeyError:
                pass
            if len(relayed) >= RELAYS_CACHED:  # giaddr is the sender's word: keep the cache bounded
                relayed.clear()
            subnet = relayed[request.giaddr] = self.config.subnet_for(request.giaddr)
            return subnet
        if request.ciaddr != ZERO:
            for subnet in ingress.subnets:
                if request.ciaddr in subnet.cidr:
                    return subnet
        return ingress.subnets[0] if ingress.subnets else None

    def _server(self, request: Packet, kind: MessageType, ingress: Ingress, now: float,
                free: FreeSets | None) -> Outcome:
        client = classify(request)
        subnet = self._subnet(request, ingress)
        if subnet is None:
            where = f"relay {request.giaddr}" if request.giaddr != ZERO else f"interface {ingress.interface}"
            return dropped(Drop.NO_SUBNET, f"no configured subnet for {where}")
        key = client_key(request.options.client_id, request.htype, request.hardware_address)
        booted: tuple[Effect, ...] = ((Booted(client, location_of(request), subnet.rack),)
                                      if client.booting else ())
        if kind is MessageType.DISCOVER:
            out = self._discover(request, ingress, subnet, key, now, free, client)
        elif kind is MessageType.REQUEST:
            out = self._request(request, ingress, subnet, key, now, client)
        elif kind is MessageType.DECLINE:
            out = self._decline(request, key, now)
        elif kind is MessageType.RELEASE:
            out = self._release(request, key, now)
        elif kind is MessageType.INFORM:
            out = Outcome(Verdict.INFORM, "inform",
                          self._reply(request, ingress, subnet, MessageType.ACK, ZERO, client, None))
        else:
            return dropped(Drop.UNEXPECTED_TYPE, f"unexpected {kind.name} from a client")
        return Outcome(out.verdict, out.reason, out.reply, booted + out.effects, out.drop, client)

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
        return pool is not None and int(pool.first) <= ip <= int(pool.last)

    def _discover(self, request: Packet, ingress: Ingress, subnet: Subnet, key: bytes, now: float,
                  free: FreeSets | None, client: BootClient) -> Outcome:
        reserved, name = self._reserved(request, subnet)
        table, pool = self.table, subnet.dynamic_pool
        probed = None if free is None or pool is None else free.get((int(pool.first), int(pool.last)))

        def usable(ip: int) -> bool:  # never handed out: only if probed free (when checks are on)
            return probed is None or ip in probed

        ip: int | None = None
        if reserved is not None:
            if not table.free_for(reserved, key, now):
                return Outcome(Verdict.IGNORED, f"reserved address {IPv4Address(reserved)} is held "
                                                "by another client")
            ip = reserved
        else:
            current = table.of_client(key)
            requested = request.options.requested_ip
            if current is not None and self._allowed(current.ip, None, subnet) and \
                    table.free_for(current.ip, key, now):
                ip = current.ip
            elif requested is not None and self._allowed(int(requested), None, subnet) and \
                    table.free_for(int(requested), key, now) and \
                    (int(requested) in table.by_ip or usable(int(requested))):
                ip = int(requested)
            elif pool is not None:
                ip = table.allocate(pool, now, usable, key)
            if ip is None:
                why = "no free address in the pool" if pool else "no dynamic pool"
                return Outcome(Verdict.EXHAUSTED, why, effects=(PoolExhausted(subnet.cidr),))
        reply = self._reply(request, ingress, subnet, MessageType.OFFER, IPv4Address(ip), client, name)
        effects: tuple[Effect, ...] = ()
        if ip not in table.by_ip and probed is not None and ip in probed:
            effects = (UsedProbed(ip),)
        hold = min(self.config.dhcp.offer_hold, subnet.lease_time)
        table.put(Lease(ip, request.mac, key, request.options.client_id, LeaseState.OFFERED,
                        now + hold, name))
        return Outcome(Verdict.OFFER, "offer", reply, effects)

    def _request(self, request: Packet, ingress: Ingress, subnet: Subnet, key: bytes, now: float,
                 client: BootClient) -> Outcome:
        o = request.options
        server_id, requested = o.server_id, o.requested_ip
        if server_id is not None:  # SELECTING
            if server_id != ingress.server_ip and server_id != self.config.admin_address:
                self.table.forget_offer(key)
                return Outcome(Verdict.IGNORED, f"client chose server {server_id}")
            if requested is None:
                return dropped(Drop.INCOMPLETE, "REQUEST with server id but no requested address")
            ip, state = int(requested), "selecting"
        elif requested is not None:  # INIT-REBOOT
            ip, state = int(requested), "init-reboot"
        elif request.ciaddr != ZERO:  # RENEWING (unicast) or REBINDING (broadcast)
            ip, state = int(request.ciaddr), "renewing"
        else:
            return dropped(Drop.INCOMPLETE, "REQUEST with neither requested address nor ciaddr")
        reserved, name = self._reserved(request, subnet)
        cidr = subnet.cidr
        if not int(cidr.network_address) <= ip <= int(cidr.broadcast_address):
            return self._nak(request, ingress, f"{state}: {IPv4Address(ip)} is not on subnet {subnet.cidr}")
        current = self.table.at(ip)
        mine = current is not None and current.client_key == key and current.state in (
            LeaseState.OFFERED, LeaseState.BOUND, LeaseState.RELEASED, LeaseState.EXPIRED)
        if not self._allowed(ip, reserved, subnet):
            return self._nak(request, ingress, f"{state}: {IPv4Address(ip)} is not this client's address")
        if not mine:
            if not self.table.free_for(ip, key, now):
                return self._nak(request, ingress, f"{state}: {IPv4Address(ip)} is held by another client")
            if state == "selecting":
                return self._nak(request, ingress,
                                 f"selecting: {IPv4Address(ip)} was not offered to this client")
            if not self.config.dhcp.authoritative:
                return Outcome(Verdict.IGNORED, f"{state}: no record of this client; not authoritative, "
                                                "silent")
        reply = self._reply(request, ingress, subnet, MessageType.ACK, IPv4Address(ip), client, name)
        lease = Lease(ip, request.mac, key, o.client_id, LeaseState.BOUND, now + subnet.lease_time, name)
        self.table.put(lease)
        return Outcome(Verdict.ACK, f"ack ({state})", reply, (PersistLease(lease),))

    def _nak(self, request: Packet, ingress: Ingress, why: str) -> Outcome:
        if not self.config.dhcp.authoritative:
            return Outcome(Verdict.IGNORED, f"nak: {why} (not authoritative, silent)")
        items: Items = [(Opt.MESSAGE_TYPE, u8(MessageType.NAK)), (Opt.SERVER_ID, ingress.server_ip.packed),
                        (Opt.MESSAGE, why.encode()[:255])]
        reply = build_reply(request, MessageType.NAK, items, server_port=ingress.port,
                            source_port=ingress.source[1])
        return Outcome(Verdict.NAK, f"nak: {why}", reply)

    def _decline(self, request: Packet, key: bytes, now: float) -> Outcome:
        ip = request.options.requested_ip
        if ip is None:
            return dropped(Drop.INCOMPLETE, "DECLINE without the declined address")
        current = self.table.at(int(ip))
        if current is None or current.client_key != key:
            return Outcome(Verdict.IGNORED, f"decline of {ip}, not this client's; ignored")
        lease = Lease(int(ip), request.mac, key, current.client_id, LeaseState.DECLINED,
                      now + self.config.dhcp.decline_quarantine)
        self.table.put(lease)
        return Outcome(Verdict.DECLINED, f"declined {ip}: quarantined", effects=(PersistLease(lease),))

    def _release(self, request: Packet, key: bytes, now: float) -> Outcome:
        current = self.table.at(int(request.ciaddr))
        if current is None or current.client_key != key or current.state is not LeaseState.BOUND:
            return Outcome(Verdict.IGNORED, f"release of {request.ciaddr}, not this client's lease; ignored")
        lease = Lease(current.ip, current.mac, key, current.client_id, LeaseState.RELEASED, now,
                      current.hostname)
        self.table.put(lease)
        return Outcome(Verdict.RELEASED, f"released {request.ciaddr}", effects=(PersistLease(lease),))

    # -- building replies ------------------------------------------------------------

    def _subnet_items(self, subnet: Subnet) -> tuple[Items, Items]:
        """The options every reply on a subnet carries, encoded once per config."""
        cached = self._per_subnet.get(subnet)
        if cached is None:
            t = subnet.lease_time
            lease: Items = [(Opt.LEASE_TIME, u32(t)), (Opt.RENEWAL_TIME, u32(t // 2)),
                            (Opt.REBINDING_TIME, u32(t * 7 // 8))]
            network: Items = [(Opt.SUBNET_MASK, subnet.cidr.netmask.packed),
                              (Opt.BROADCAST_ADDRESS, subnet.cidr.broadcast_address.packed)]
            if subnet.router is not None:
                network.append((Opt.ROUTER, subnet.router.packed))
            dns = name_servers(self.config, subnet)  # only servers that answer (installnet)
            if dns:
                network.append((Opt.DNS_SERVERS, ips(*dns)))
            if subnet.domain:
                network.append((Opt.DOMAIN_NAME, subnet.domain.encode()))
            cached = self._per_subnet[subnet] = (lease, network)
        return cached

    def _boot_items(self, answer: BootAnswer | None, client: BootClient | None,
                    items: Items) -> tuple[IPv4Address, bytes]:
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
        items: Items = [(Opt.MESSAGE_TYPE, u8(kind)), (Opt.SERVER_ID, ingress.server_ip.packed)]
        lease_items, network_items = self._subnet_items(subnet)
        if kind is not MessageType.ACK or yiaddr != ZERO:  # INFORM replies carry no lease
            items += lease_items
        items += network_items
        if hostname:
            items.append((Opt.HOSTNAME, hostname.encode()))
        answer = self.policy.boot(client) if client is not None else None
        siaddr, file = self._boot_items(answer, client, items)
        return build_reply(request, kind, items, server_port=ingress.port, source_port=ingress.source[1],
                           yiaddr=yiaddr, siaddr=siaddr, file=file)

    # -- proxy mode ---------------------------------------------------------------

    def _proxy(self, request: Packet, kind: MessageType, ingress: Ingress) -> Outcome:
        client = classify(request)
        if not client.booting:
            return Outcome(Verdict.IGNORED, "proxy: not a network-boot client; ignored", client=client)
        booted: tuple[Effect, ...] = (Booted(client, location_of(request)),)
        if ingress.port == SERVER_PORT and kind is MessageType.DISCOVER:
            reply_type, verdict = MessageType.OFFER, Verdict.PROXY_OFFER
        elif kind is MessageType.REQUEST and (ingress.port == PXE_PORT or
                                              request.options.server_id == ingress.server_ip):
            reply_type, verdict = MessageType.ACK, Verdict.PROXY_ACK
        else:
            return Outcome(Verdict.IGNORED, f"proxy: {kind.name} not for us; ignored", client=client)
        answer = self.policy.boot(client)
        if answer is None:
            return Outcome(Verdict.IGNORED, f"proxy: no loader for architecture {client.arch}",
                           effects=booted, client=client)
        items: Items = [(Opt.MESSAGE_TYPE, u8(reply_type)), (Opt.SERVER_ID, ingress.server_ip.packed)]
        if answer.vendor_class is None:
            # PXE 2.1: "PXEClient" plus discovery control 8 (boot from this file,
            # no boot server discovery); iPXE then keeps this offer (no 4011 round trip).
            items.append((Opt.VENDOR_CLASS, b"PXEClient"))
            items.append((Opt.VENDOR_SPECIFIC, encode_tlvs([(PXE_DISCOVERY_CONTROL, b"\x08")]) + b"\xff"))
        siaddr, file = self._boot_items(answer, client, items)
        if request.options.client_uuid is not None:
            items.append((Opt.CLIENT_UUID, b"\x00" + request.options.client_uuid))
        reply = build_reply(request, reply_type, items, server_port=ingress.port,
                            source_port=ingress.source[1], siaddr=siaddr, file=file)
        return Outcome(verdict, f"proxy {reply_type.name.lower()}", reply, booted, client=client)
