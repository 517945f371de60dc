"""Building a reply (pure): one function for OFFER, ACK, NAK and the proxy's answers.

Where a reply goes is a function of the request alone (RFC 2131 section 4.1).
A reply is encoded here, at once, so that one that cannot be encoded (echoed
options too large for the client's maximum message size) is known before the
lease table or the database changes.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from bootd.dhcp.options import MalformedPacket, MessageType, Opt
from bootd.dhcp.outcome import Reply
from bootd.dhcp.packet import BOOTREPLY, BROADCAST_FLAG, DEFAULT_MAX_MESSAGE, ZERO, Packet, build

SERVER_PORT, CLIENT_PORT, PXE_PORT = 67, 68, 4011
BROADCAST = IPv4Address("255.255.255.255")
Items = list[tuple[int, bytes]]


class ReplyTooLarge(MalformedPacket):
    """The reply does not fit in what the client accepts, even overloaded (RFC 3396)."""


def destination(request: Packet, reply_type: MessageType, server_port: int,
                source_port: int) -> tuple[IPv4Address, int]:
    """RFC 2131 section 4.1, the paragraph on where replies go."""
    if request.giaddr != ZERO:
        return request.giaddr, SERVER_PORT
    if server_port == PXE_PORT and request.ciaddr != ZERO:
        return request.ciaddr, source_port  # PXE 2.1: back to the client's own port
    if reply_type is MessageType.NAK:
        return BROADCAST, CLIENT_PORT
    if request.ciaddr != ZERO:
        return request.ciaddr, CLIENT_PORT
    # A unicast to yiaddr would need an ARP entry the client cannot answer yet;
    # RFC 2131 allows the broadcast instead.
    return BROADCAST, CLIENT_PORT


def echo(request: Packet, items: Items) -> None:
    """Options a reply repeats: the client identifier (RFC 6842 section 3) and, only
    for relayed requests, the relay agent information (RFC 3046 section 2.2). A
    client has no business sending option 82: from a non-relayed client it is
    neither trusted nor echoed."""
    o = request.options
    if o.client_id is not None:
        items.append((Opt.CLIENT_ID, o.client_id))
    if request.giaddr != ZERO and Opt.RELAY_AGENT_INFO in o:
        items.append((Opt.RELAY_AGENT_INFO, o[Opt.RELAY_AGENT_INFO]))


def build_reply(request: Packet, kind: MessageType, items: Items, *, server_port: int, source_port: int,
                yiaddr: IPv4Address = ZERO, siaddr: IPv4Address = ZERO, file: bytes = b"") -> Reply:
    """The encoded reply of `kind` to `request`, with `items` (echoed options added here)."""
    echo(request, items)
    flags, ciaddr = request.flags, request.ciaddr
    if kind is MessageType.NAK:
        # RFC 2131 table 3: a NAK carries no ciaddr; through a relay it is broadcast (4.3.2).
        ciaddr = ZERO
        if request.giaddr != ZERO:
            flags |= BROADCAST_FLAG
    packet = Packet(op=BOOTREPLY, xid=request.xid, chaddr=request.chaddr, htype=request.htype,
                    hlen=request.hlen, flags=flags, ciaddr=ciaddr, yiaddr=yiaddr, siaddr=siaddr,
                    giaddr=request.giaddr, file=file)
    try:
        data = build(packet, items, request.options.max_message_size or DEFAULT_MAX_MESSAGE)
    except MalformedPacket as exc:
        raise ReplyTooLarge(str(exc)) from None
    ip, port = destination(request, kind, server_port, source_port)
    return Reply(data, ip, port)
