"""IPv6 router advertisements (bootd/ra.py): the codec against scapy's ICMPv6 ND
layers as the oracle, the schedule with a fake clock, and in the namespaced lab a
client that hears the unsolicited RA (a raw socket, decoded by scapy) and Debian's
`rdisc6` whose solicitation is answered, both with router lifetime 0 and hop limit 255.
"""

from __future__ import annotations

import contextlib
import logging
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from ipaddress import IPv6Address
from pathlib import Path

import pytest
from boot_timeline import ipv6_on
from bootd_proc import WAIT, Bootd
from conftest import loopback_config
from hypothesis import given
from hypothesis import strategies as st
from netlab import Lab
from scapy.layers.inet6 import ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptSrcLLAddr

from bootd.config import parse_config
from bootd.ra import (
    ANSWER_BURST,
    MAX_INITIAL_RTR_ADVERT_INTERVAL,
    MAX_RA_DELAY_TIME,
    MIN_DELAY_BETWEEN_RAS,
    MalformedMessage,
    RaService,
    RouterAdvertisement,
    RouterSolicitation,
    Schedule,
    link_local,
)

MAC = bytes.fromhex("525400be0001")


# -- codec -----------------------------------------------------------------------

def test_advertisement_is_what_scapy_reads_as_not_a_router() -> None:
    wire = RouterAdvertisement(source_lla=MAC).pack()
    ra = ICMPv6ND_RA(wire)
    assert (ra.type, ra.code, ra.chlim, ra.M, ra.O) == (134, 0, 64, 0, 0)
    assert (ra.routerlifetime, ra.reachabletime, ra.retranstimer) == (0, 0, 0)
    option = ra[ICMPv6NDOptSrcLLAddr]
    assert (option.type, option.len, option.lladdr) == (1, 1, "52:54:00:be:00:01")
    assert len(wire) == 16 + 8


def test_scapy_advertisements_and_solicitations_decode() -> None:
    built = bytes(ICMPv6ND_RA(chlim=32, M=1, O=1, routerlifetime=1800, reachabletime=7, retranstimer=9)
                  / ICMPv6NDOptSrcLLAddr(lladdr="02:00:00:00:00:07"))
    assert RouterAdvertisement.unpack(built) == RouterAdvertisement(
        32, True, True, 1800, 7, 9, bytes.fromhex("020000000007"))
    rs = bytes(ICMPv6ND_RS() / ICMPv6NDOptSrcLLAddr(lladdr="52:54:00:be:00:01"))
    assert RouterSolicitation.unpack(rs) == RouterSolicitation(MAC)
    assert RouterSolicitation.unpack(bytes(ICMPv6ND_RS())) == RouterSolicitation(None)
    assert ICMPv6ND_RS(RouterSolicitation(MAC).pack())[ICMPv6NDOptSrcLLAddr].lladdr == "52:54:00:be:00:01"


@pytest.mark.parametrize(("wire", "unspecified"), [
    (b"\x85\x00\x00\x00\x00\x00\x00", False),                    # short
    (b"\x86\x00\x00\x00\x00\x00\x00\x00", False),                # an RA, not an RS
    (b"\x85\x01\x00\x00\x00\x00\x00\x00", False),                # code 1
    (b"\x85\x00\x00\x00\x00\x00\x00\x00\x01\x00" + bytes(6), False),  # option length 0 (section 6.1.1)
    (b"\x85\x00\x00\x00\x00\x00\x00\x00\x01\x02" + bytes(6), False),  # option past the end
    (RouterSolicitation(MAC).pack(), True),                       # SLLA from the unspecified address
])
def test_bad_solicitations_are_refused(wire: bytes, unspecified: bool) -> None:
    with pytest.raises(MalformedMessage):
        RouterSolicitation.unpack(wire, unspecified_source=unspecified)


@given(st.binary(max_size=80), st.booleans())
def test_decoders_are_total(data: bytes, unspecified: bool) -> None:
    for decode in (RouterAdvertisement.unpack,
                   lambda d: RouterSolicitation.unpack(d, unspecified_source=unspecified)):
        with contextlib.suppress(MalformedMessage):
            decode(data)


@given(st.integers(0, 255), st.booleans(), st.booleans(), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1), st.one_of(st.none(), st.binary(min_size=6, max_size=6)))
def test_advertisement_round_trips(hops: int, m: bool, o: bool, life: int, reach: int, retrans: int,
                                   lla: bytes | None) -> None:
    ra = RouterAdvertisement(hops, m, o, life, reach, retrans, lla)
    assert RouterAdvertisement.unpack(ra.pack()) == ra
    assert ICMPv6ND_RA(ra.pack()).routerlifetime == life


IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000505400fffebe0001 02 40 20 80     eth0
20010db8000000000000000000000001 02 40 00 80     eth0
fe80000000000000505400fffebe0002 03 40 20 c0     eth1
fe80000000000000505400fffebe0003 04 40 20 08     eth2
"""


def test_link_local_address_and_tentative_from_proc() -> None:
    assert link_local(IF_INET6, "eth0") == (IPv6Address("fe80::5054:ff:febe:1"), False)
    assert link_local(IF_INET6, "eth1")[1] is True   # IFA_F_TENTATIVE: DAD still running
    assert link_local(IF_INET6, "eth2") == (None, False)  # DAD failed: unusable
    assert link_local(IF_INET6, "lo") == (None, False)    # ::1 is not link scope
    assert link_local("", "eth0") == (None, False)


# -- schedule --------------------------------------------------------------------

def test_unsolicited_intervals_initial_then_random_in_range() -> None:
    s = Schedule(600, random.Random(1), now=0.0)
    delays = [s.unsolicited(float(i)) for i in range(50)]
    assert all(d <= MAX_INITIAL_RTR_ADVERT_INTERVAL for d in delays[:3])
    assert all(0.33 * 600 <= d <= 600 for d in delays[3:])
    assert len(set(delays[3:])) > 40  # randomised (section 6.2.4), not a fixed period
    small = Schedule(4, random.Random(1), now=0.0)  # below 9 s the minimum is the maximum
    assert {small.unsolicited(0.0) for _ in range(5)} == {4.0}


def test_answers_unicast_within_the_delay_then_multicast_rate_limited() -> None:
    s = Schedule(30, random.Random(2), now=0.0)
    s.unsolicited(0.0)
    answers = [s.solicited(1.0, unicast=True) for _ in range(int(ANSWER_BURST))]
    assert all(a is not None and a[1] and 0 <= a[0] <= MAX_RA_DELAY_TIME for a in answers)
    # The bucket is empty: the next solicitor gets the multicast answer, no sooner than
    # MIN_DELAY_BETWEEN_RAS after the last multicast RA (section 6.2.6)...
    first = s.solicited(1.0, unicast=True)
    assert first is not None and not first[1]
    assert MIN_DELAY_BETWEEN_RAS - 1.0 <= first[0] <= MIN_DELAY_BETWEEN_RAS - 1.0 + MAX_RA_DELAY_TIME
    # ... which also serves every solicitor until it has gone out.
    assert s.solicited(1.5, unicast=False) is None
    later = s.solicited(1.0 + first[0] + 0.1, unicast=False)
    assert later is not None and later[0] >= MIN_DELAY_BETWEEN_RAS - 0.1


# -- the service, without IPv6 ---------------------------------------------------------

async def test_an_interface_without_link_local_is_logged_not_fatal(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    config = parse_config(loopback_config(tmp_path / "state", 8080), "test.toml")
    proc = tmp_path / "if_inet6"
    proc.write_text(IF_INET6)  # lo has only ::1
    service = RaService(config, if_inet6=proc)
    with caplog.at_level(logging.INFO, "bootd.ra"):
        await service.start()
        await service.stop()
    assert "no IPv6 link-local address" in caplog.text
    assert [r.ctx["interface"] for r in caplog.records] == ["lo"]  # once, naming it


# -- the lab ---------------------------------------------------------------------

SERVER = "198.18.0.1"
# In the client's namespace: one raw ICMPv6 socket passing only RAs; prints the hop limit,
# the source and the message in hex, then exits.
LISTEN = """\
import socket, struct, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
blocked = [0xFFFFFFFF] * 8
blocked[134 >> 5] &= ~(1 << (134 & 31))
s.setsockopt(socket.IPPROTO_ICMPV6, 1, struct.pack("=8I", *blocked))
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
s.settimeout(float(sys.argv[1]))
print("listening", flush=True)
data, anc, _, src = s.recvmsg(1500, socket.CMSG_SPACE(4))
hops = [struct.unpack("@i", d[:4])[0] for lv, t, d in anc if t == socket.IPV6_HOPLIMIT]
print(hops[0], src[0], data.hex(), flush=True)
"""


class Rig:
    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.srv = lab.add_host("srv", f"{SERVER}/24")
        self.cli = lab.add_host("cli", "198.18.0.2/24")
        lab.link(self.srv, "br0", None)  # eth1: IPv6 stays off
        for host in (self.srv, self.cli):
            ipv6_on(host)
        self.config = tmp / "bootd.toml"
        # TFTP on: RAs go out where bootd serves network boot. interval is the maximum; the
        # first unsolicited RAs go out at most 16 s apart, so the solicitation below is
        # answered well before another unsolicited one.
        self.config.write_text(textwrap.dedent(f"""\
            [server]
            admin_address = "{SERVER}"
            interfaces = ["eth0", "eth1"]
            state_dir = "{tmp / 'state'}"
            [services]
            dhcp = false
            dns = false
            [http]
            listen = "{SERVER}:8080"
            [ra]
            interval = 1800
            """))
        self.bootd: Bootd | None = None
        self.heard = ""

    def start(self) -> None:
        # Listening before bootd starts: the first unsolicited RA goes out as it starts.
        self.listener = self.cli.popen(sys.executable, "-c", LISTEN, str(WAIT), stdout=subprocess.PIPE,
                                       text=True)
        assert self.listener.stdout is not None and self.listener.stdout.readline() == "listening\n"
        self.bootd = Bootd(self.config, self.srv.cmd()).start()
        # The unsolicited RA, heard before any test solicits (else rdisc6 could take it for its answer).
        self.heard, _ = self.listener.communicate(timeout=WAIT)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    with Lab() as lab:
        rig = Rig(lab, tmp_path_factory.mktemp("ra"))
        try:
            rig.start()
            yield rig
        finally:
            if rig.bootd is not None:
                rig.bootd.close()


def test_client_hears_an_unsolicited_advertisement_with_lifetime_0(rig: Rig) -> None:
    hops, source, wire = rig.heard.split()
    assert int(hops) == 255  # RFC 4861 section 6.1.2: anything else is dropped by hosts
    assert source.startswith("fe80::")
    ra = ICMPv6ND_RA(bytes.fromhex(wire))
    assert (ra.routerlifetime, ra.M, ra.O) == (0, 0, 0)
    mac = rig.srv.run("cat", "/sys/class/net/eth0/address").stdout.strip()
    assert ra[ICMPv6NDOptSrcLLAddr].lladdr == mac


def test_solicitation_is_answered_and_ipv6_less_nic_is_only_logged(rig: Rig) -> None:
    # rdisc6 (Debian's ndisc6) sends one RS and prints the RA it gets back.
    res = rig.cli.run("rdisc6", "-1", "-r", "1", "-w", "3000", "eth0", check=False, timeout=WAIT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Router lifetime" in res.stdout
    lifetime = next(line for line in res.stdout.splitlines() if "Router lifetime" in line)
    assert lifetime.split(":")[1].split()[0] == "0", res.stdout
    assert "from fe80::" in res.stdout
    assert rig.bootd is not None and rig.bootd.stop() == 0
    log = rig.bootd.stderr
    assert "no IPv6 link-local address" in log and "interface=eth1" in log
    stopped = next(line for line in log.splitlines() if "ra: stopped" in line)
    assert "answers=1" in stopped and "solicitations=1" in stopped, stopped
