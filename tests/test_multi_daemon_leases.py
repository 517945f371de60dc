"""Several daemons, one lease table: a daemon loads and owns only its own subnets' leases.

Another daemon's lease, if loaded, would let this daemon answer a RELEASE (or
DECLINE) for it and overwrite that daemon's row in the shared database, and
trust its holder for node tokens. Fails on the old load (every lease taken).
"""

from __future__ import annotations

from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network

from bootd.config import parse_config
from bootd.dhcp.decide import Decider, Ingress
from bootd.dhcp.leases import LeaseTable
from bootd.dhcp.options import MessageType, Opt, Options
from bootd.dhcp.packet import BOOTREQUEST, Packet
from bootd.model.records import LeaseRecord, LeaseState
from bootd.policy import Policy

CONFIG = """
[server]
admin_address = "198.18.1.1"
interfaces = ["eth0"]
[[subnets]]
cidr = "198.19.2.0/24"
dynamic_pool = "198.19.2.10-198.19.2.200"
"""
NOW = 1_800_000_000.0
MINE, THEIRS = IPv4Address("198.19.2.10"), IPv4Address("198.19.1.10")  # 198.19.1.0/24: daemon admin-1's


def lease(ip: IPv4Address, mac: str) -> LeaseRecord:
    return LeaseRecord(ip, mac, LeaseState.BOUND, datetime.fromtimestamp(NOW + 600, UTC))


def test_only_served_subnets_leases_are_loaded_and_a_foreign_release_is_ignored() -> None:
    config = parse_config(CONFIG)
    table = LeaseTable()
    taken = table.load([lease(MINE, "52:54:00:00:02:01"), lease(THEIRS, "52:54:00:00:01:01")],
                       [s.cidr for s in config.subnets])
    assert [r.ip for r in taken] == [MINE]
    assert table.at(int(THEIRS)) is None
    # The client of admin-1's rack moved behind our relay and releases its old address to us:
    # not ours to write.
    decider = Decider(config, Policy(config), table)
    release = Packet(op=BOOTREQUEST, xid=7, chaddr=bytes.fromhex("525400000101") + bytes(10),
                     ciaddr=THEIRS, giaddr=IPv4Address("198.19.2.1"),
                     options=Options([(Opt.MESSAGE_TYPE, bytes((MessageType.RELEASE,))),
                                      (Opt.SERVER_ID, IPv4Address("198.18.1.1").packed)]))
    out = decider.handle(release, Ingress("eth0", IPv4Address("198.18.1.1"), ()), NOW)
    assert out.persist is None


def test_load_without_subnets_takes_everything() -> None:
    table = LeaseTable()
    assert len(table.load([lease(MINE, "52:54:00:00:02:01"), lease(THEIRS, "52:54:00:00:01:01")])) == 2
    assert table.load([lease(MINE, "52:54:00:00:02:02")], [IPv4Network("10.0.0.0/8")]) == []
