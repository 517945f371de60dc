"""DHCP against hostile or broken clients (issue 11, items 3.5, 3.6, 3.11, 3.12): each
of these failed on the code before the fix."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from ipaddress import IPv4Address

import pytest
from test_dhcp_decide import MAC1, NOW, ip, make, msg

from bootd.dhcp.leases import Lease
from bootd.dhcp.options import MalformedPacket, MessageType
from bootd.dhcp.outcome import Drop, Verdict
from bootd.dhcp.packet import BOOTREQUEST, Packet, build, parse
from bootd.dhcp.server import LeaseWriter
from bootd.errors import DatabaseUnavailable
from bootd.model.records import LeaseRecord, LeaseState


def _raw(htype: int, hlen: int, chaddr: bytes) -> bytes:
    return build(Packet(op=BOOTREQUEST, xid=1, chaddr=chaddr, htype=htype, hlen=hlen),
                 [(53, bytes((MessageType.DISCOVER,)))])


@pytest.mark.parametrize("hlen", [0, 5, 7, 16])
def test_ethernet_with_a_wrong_address_length_is_malformed(hlen: int) -> None:
    with pytest.raises(MalformedPacket, match="htype 1"):
        parse(_raw(1, hlen, bytes(range(16))))


def test_a_client_id_longer_than_a_lease_row_keeps_is_malformed() -> None:
    d, ing = make()
    out = d.handle(msg(MessageType.DISCOVER, client_id=b"\x00" + b"x" * 200), ing, NOW)
    assert out.verdict is Verdict.DROPPED and out.drop is Drop.MALFORMED
    assert "longer than" in out.reason
    assert not d.table.by_ip


def test_non_ethernet_hardware_is_not_served() -> None:
    d, ing = make()
    p = Packet(op=BOOTREQUEST, xid=1, chaddr=bytes(range(16)), htype=6, hlen=16,
               options=msg(MessageType.DISCOVER).options)
    out = d.handle(p, ing, NOW)
    assert out.drop is Drop.HARDWARE and not d.table.by_ip


def test_a_reply_too_large_to_send_binds_nothing() -> None:
    """A relayed REQUEST whose echoed option 82 cannot fit: dropped, counted, and the
    lease table is as it was (before: bound in memory, no row, no reply)."""
    d, ing = make()
    offer = d.handle(msg(MessageType.DISCOVER, giaddr="198.19.0.1"), ing, NOW)
    assert offer.verdict is Verdict.OFFER
    before = dict(d.table.by_ip)
    huge = b"\x01\xff" + b"a" * 255 + b"\x02\xff" + b"b" * 255 + b"\x01\xff" + b"c" * 255
    req = msg(MessageType.REQUEST, giaddr="198.19.0.1", requested=ip("198.19.1.1"),
              server_id=ip("198.18.0.1"), relay=huge, client_id=b"\x00" + b"i" * 120)
    out = d.handle(req, ing, NOW)
    assert out.verdict is Verdict.DROPPED and out.drop is Drop.TOO_LARGE
    assert out.persist is None and out.reply is None
    assert d.table.by_ip == before
    assert d.table.at(int(IPv4Address("198.19.1.1"))).state is LeaseState.OFFERED  # type: ignore[union-attr]


class _PickyStore:
    """Refuses any batch holding a lease for .66, as PostgreSQL refused a bad row."""

    def __init__(self) -> None:
        self.rows: list[LeaseRecord] = []

    async def put_leases(self, leases: Sequence[LeaseRecord]) -> None:
        if any(r.ip == IPv4Address("198.18.0.66") for r in leases):
            raise DatabaseUnavailable("value too long for type character varying(17)")
        self.rows += leases

    async def list_leases(self) -> list[LeaseRecord]:
        return list(self.rows)


async def test_one_bad_row_does_not_cost_the_batch_its_answers() -> None:
    store = _PickyStore()
    writer = LeaseWriter(store)
    answered: list[int] = []
    for n in (60, 66, 70):
        lease = Lease(int(IPv4Address(f"198.18.0.{n}")), "52:54:00:00:00:01", b"k%d" % n, None,
                      LeaseState.BOUND, NOW + 600)
        writer.submit(lease.record(), lambda n=n: answered.append(n))  # type: ignore[misc]
    await writer.flush()
    assert answered == [60, 70]
    assert {str(r.ip) for r in store.rows} == {"198.18.0.60", "198.18.0.70"}
    assert writer.failed == 1


def test_lease_records_hold_only_ethernet_macs() -> None:
    d, ing = make()
    out = d.handle(msg(MessageType.DISCOVER, MAC1), ing, NOW)
    req = msg(MessageType.REQUEST, MAC1, requested=ip("198.18.0.100"), server_id=ip("198.18.0.1"))
    ack = d.handle(req, ing, NOW)
    assert out.verdict is Verdict.OFFER and ack.persist is not None
    record = ack.persist.record()
    assert len(record.mac) == 17
    assert record.expires_at > datetime.fromtimestamp(NOW, UTC)
