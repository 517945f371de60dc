"""The fleet simulator (bench/fleet): its sans-IO machine against bootd's own codec and
templates, and a small fleet against a real bootd in the lab."""

from __future__ import annotations

import argparse
import json
import sys
from ipaddress import IPv4Address
from typing import Any

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO))

from bench.fleet.machine import (
    Client,
    DhcpIn,
    Finished,
    Http,
    HttpReply,
    Machine,
    Outcome,
    ScriptKind,
    SendDhcp,
    Sleep,
    TimedOut,
    Timing,
    parse_script,
)
from bootd.boot import DISCOVERY_INITRD, DISCOVERY_KERNEL
from bootd.dhcp.classify import classify
from bootd.dhcp.options import MessageType, Opt, Options
from bootd.dhcp.packet import BOOTREPLY, Packet, build, parse
from bootd.model.clients import Firmware
from bootd.model.states import NodeState
from bootd.render import BootTarget, render

BASE = "http://198.18.0.1:8080"
MAC = "52:54:00:12:34:56"
SERVER = IPv4Address("198.18.0.1")
LEASED = IPv4Address("198.19.3.17")


def discovery_script(node: str = "n1", token: str = "tok1", state: str = "discovering") -> str:
    args: tuple[str, ...] = (f"bootd.url={BASE}", f"bootd.node={node}", f"bootd.state={state}")
    if token:
        args += (f"bootd.token={token}",)
    return render("ipxe.j2", target=BootTarget("discovery", MAC, "d", DISCOVERY_KERNEL, DISCOVERY_INITRD,
                                               (*args, "console=tty0")), base=BASE)


def reply(request: Packet, mtype: MessageType, file: bytes = b"") -> DhcpIn:
    """What bootd would answer, through its own codec (build, then parse)."""
    items = [(Opt.MESSAGE_TYPE, bytes((mtype,))), (Opt.SERVER_ID, SERVER.packed)]
    packet = Packet(op=BOOTREPLY, xid=request.xid, chaddr=request.chaddr, options=Options(items),
                    yiaddr=LEASED, file=file)
    return DhcpIn(parse(build(packet)))


def dora(m: Machine, action: object, now: float, file: bytes = b"") -> object:
    """Answer a DISCOVER and its REQUEST; returns the machine's next action."""
    assert isinstance(action, SendDhcp) and action.packet.message_type is MessageType.DISCOVER
    request = m.feed(reply(action.packet, MessageType.OFFER), now)
    assert isinstance(request, SendDhcp) and request.packet.message_type is MessageType.REQUEST
    assert request.packet.options.requested_ip == LEASED
    assert request.packet.options.server_id == SERVER
    return m.feed(reply(request.packet, MessageType.ACK, file), now)


def test_the_discover_is_ipxe_s_to_bootd_and_survives_the_codec() -> None:
    m = Machine(MAC, Timing())
    action = m.start(0.0)
    assert isinstance(action, SendDhcp)
    packet = parse(build(action.packet))
    client = classify(packet)
    assert client.firmware is Firmware.IPXE and client.mac == MAC and client.uuid == m.uuid
    assert packet.options.vendor_class == b"PXEClient:Arch:00000:UNDI:002001"
    assert packet.options.user_classes == (b"iPXE",) and Opt.IPXE in packet.options


def test_a_machine_walks_to_discovered_as_ipxe_then_the_agent() -> None:
    m = Machine(MAC, Timing(kernel=1.5))
    url = f"{BASE}/boot/ipxe?mac={MAC}"
    fetch = dora(m, m.start(0.0), 0.1, url.encode())
    assert fetch == Http("GET", url, timeout=30.0) and m.ip == LEASED
    action = m.feed(HttpReply(200, discovery_script()), 0.2)
    assert action == Sleep(1.5)  # the kernel and initrd
    udhcpc = m.feed(TimedOut(), 1.7)
    assert isinstance(udhcpc, SendDhcp)
    assert classify(udhcpc.packet).firmware is Firmware.OTHER  # busybox's udhcpc is no PXE client
    post = dora(m, udhcpc, 1.8)
    assert isinstance(post, Http) and post.method == "POST"
    assert post.url == f"{BASE}/api/v1/nodes/n1/transition"
    assert ("Authorization", "Bearer tok1") in post.headers
    body = json.loads(post.body)
    assert body["state"] == "discovered" and body["inventory"]["nics"][0]["mac"] == MAC
    done = m.feed(HttpReply(200, '{"state": "discovered"}'), 2.0)
    assert done == Finished(Outcome.REACHED)
    assert m.marks["discovered"] == 2.0 and m.marks["first-discover"] == 0.0


def test_a_stray_reply_is_ignored_and_a_lost_one_retransmitted() -> None:
    m = Machine(MAC, Timing(dhcp_timeout=1.0))
    discover = m.start(0.0)
    assert isinstance(discover, SendDhcp) and discover.timeout == 1.0
    other = Packet(op=BOOTREPLY, xid=discover.packet.xid ^ 1, chaddr=discover.packet.chaddr,
                   options=Options([(Opt.MESSAGE_TYPE, bytes((MessageType.OFFER,)))]))
    assert m.feed(DhcpIn(other), 0.5) is None
    again = m.feed(TimedOut(), 1.0)
    assert isinstance(again, SendDhcp) and again.timeout == 2.0 and again.packet == discover.packet
    assert m.counts["discover-retransmits"] == 1


def test_a_wave_wait_script_is_slept_on_then_asked_again() -> None:
    m = Machine(MAC, Timing())
    url = f"{BASE}/boot/ipxe?mac={MAC}"
    fetch = dora(m, m.start(0.0), 0.1, url.encode())
    wait = "#!ipxe\n# bootd-wait seconds=15 place=3 of=40\necho waiting\nsleep 15\nchain " + url + "\n"
    assert m.feed(HttpReply(200, wait), 0.2) == Sleep(15)
    assert m.place == (3, 40) and m.counts["waits"] == 1
    assert m.feed(TimedOut(), 15.2) == fetch  # the same script URL, no new DHCP


def test_an_unknown_machine_reboots_after_the_agents_minute() -> None:
    m = Machine(MAC, Timing(kernel=0.0, unknown_reboot=60.0, reboot=2.0))
    dora(m, m.start(0.0), 0.1, f"{BASE}/boot/ipxe?mac={MAC}".encode())
    assert m.feed(HttpReply(200, discovery_script(node="-", token="")), 0.2) == Sleep(0.0)
    assert m.feed(TimedOut(), 0.2) == Sleep(60.0)
    assert m.feed(TimedOut(), 60.2) == Sleep(2.0)  # reboot
    again = m.feed(TimedOut(), 62.2)
    assert isinstance(again, SendDhcp) and again.packet.message_type is MessageType.DISCOVER
    assert m.counts["unknown-to-bootd"] == 1 and m.counts["reboots"] == 1


def test_after_allocation_the_agent_finds_its_new_token_and_runs_its_tasks() -> None:
    m = Machine(MAC, Timing(kernel=0.0, poll=5.0, task=0.5), until=NodeState.READY)
    dora(m, m.start(0.0), 0.1, f"{BASE}/boot/ipxe?mac={MAC}".encode())
    m.feed(HttpReply(200, discovery_script()), 0.2)
    post = dora(m, m.feed(TimedOut(), 0.2), 0.3)
    poll = m.feed(HttpReply(200, "{}"), 0.4)
    assert isinstance(poll, Http) and poll.url == f"{BASE}/api/v1/nodes/n1/self"
    assert m.feed(HttpReply(200, '{"name": "n1", "state": "discovered"}'), 0.5) == Sleep(5.0)
    poll = m.feed(TimedOut(), 5.5)
    ident = m.feed(HttpReply(403, "wrong token"), 5.6)  # allocation rotated it
    assert ident == Http("GET", f"{BASE}/boot/identity?mac={MAC}", timeout=30.0)
    retry = m.feed(HttpReply(200, "node=r1-n01\ntoken=tok2\n"), 5.7)
    assert isinstance(retry, Http) and ("Authorization", "Bearer tok2") in retry.headers
    tasks = m.feed(HttpReply(200, '{"name": "r1-n01", "state": "hardware-installing"}'), 5.8)
    assert isinstance(tasks, Http) and tasks.url == f"{BASE}/api/v1/nodes/r1-n01/tasks"
    fetch = m.feed(HttpReply(200, "bmc\n"), 5.9)
    assert isinstance(fetch, Http) and fetch.url.endswith("/tasks/bmc")
    assert m.feed(HttpReply(200, "#!/bin/sh\nexit 0\n"), 6.0) == Sleep(0.5)
    result = m.feed(TimedOut(), 6.5)
    assert isinstance(result, Http) and result.method == "POST" and ("X-Task-Status", "0") in result.headers
    done = m.feed(HttpReply(200, "{}"), 6.6)
    assert isinstance(done, Http) and json.loads(done.body)["state"] == "hardware-installed"
    assert m.feed(HttpReply(200, "{}"), 6.7) == Sleep(2.0)
    assert m.marks["hardware-installing"] == 5.8 and m.marks["hardware-installed"] == 6.7
    assert post is not None


def test_the_installer_uses_its_answer_files_callbacks_and_firstboot_reports_ready() -> None:
    timing = Timing(kernel=0.0, install=30.0, os_boot=0.0, reboot=2.0)
    m = Machine(MAC, timing, until=NodeState.READY)
    url = f"{BASE}/boot/ipxe?mac={MAC}"
    dora(m, m.start(0.0), 0.1, url.encode())
    ks = f"{BASE}/install/r1-n01/kickstart?token=tok2"
    install = render("ipxe.j2", target=BootTarget("install", MAC, "d", "images/rocky-9/vmlinuz",
                                                  "images/rocky-9/initrd.img",
                                                  (f"inst.ks={ks}", "inst.repo=x", "ip=dhcp")), base=BASE)
    assert parse_script(install).answer_url == ks
    assert m.feed(HttpReply(200, install), 0.2) == Sleep(0.0)
    installer = dora(m, m.feed(TimedOut(), 0.2), 0.3)
    assert installer == Http("GET", ks, timeout=30.0)
    cb = f"{BASE}/api/v1/nodes/r1-n01/transition?token=tok2&state="
    answer = f"%pre\ncurl -fsS -X POST -o /dev/null --max-time 30 --retry 3 '{cb}installing' || true\n"
    assert m.feed(HttpReply(200, answer), 0.4) == Http("POST", cb + "installing", timeout=30.0)
    assert m.feed(HttpReply(200, "{}"), 0.5) == Sleep(30.0)
    assert m.feed(TimedOut(), 30.5) == Http("POST", cb + "installed", timeout=30.0)
    assert m.feed(HttpReply(200, "{}"), 30.6) == Sleep(2.0)  # reboot
    local = render("ipxe.j2", target=BootTarget("local", MAC, "d"), base=BASE)
    assert parse_script(local).kind is ScriptKind.LOCAL
    dora(m, m.feed(TimedOut(), 32.6), 32.7, url.encode())
    assert m.feed(HttpReply(200, local), 32.8) == Sleep(0.0)
    os_dhcp = m.feed(TimedOut(), 32.8)
    assert isinstance(os_dhcp, SendDhcp) and classify(os_dhcp.packet).firmware is Firmware.OTHER
    assert dora(m, os_dhcp, 33.0) == Http("POST", cb + "readying", timeout=30.0)
    assert m.feed(HttpReply(200, "{}"), 33.1) == Http("POST", cb + "ready", timeout=30.0)
    assert m.feed(HttpReply(200, "{}"), 33.2) == Finished(Outcome.REACHED)
    assert [s for s in ("installing", "installed", "readying", "ready") if s in m.marks] == \
        ["installing", "installed", "readying", "ready"]


def test_client_kinds_are_what_bootd_classifies() -> None:
    kinds = {Client.IPXE: Firmware.IPXE, Client.UDHCPC: Firmware.OTHER, Client.INSTALLER: Firmware.OTHER,
             Client.OS: Firmware.OTHER}
    for kind, firmware in kinds.items():
        packet = Machine(MAC, Timing())._packet(kind, MessageType.DISCOVER)
        assert classify(parse(build(packet))).firmware is firmware, kind



# -- a small fleet against a real bootd in the lab (bench/fleet's own orchestration) -----------

FAST = ["--kernel", "0.2", "--poll", "1", "--install", "1", "--reboot", "0.5", "--unknown-reboot", "2",
        "--os-boot", "0.2", "--deadline", "120"]


def fleet(*argv: str) -> tuple[dict[str, Any], argparse.Namespace]:
    from bench.fleet.__main__ import parser, run
    args = parser().parse_args([*argv, *FAST])
    return run(args), args


@pytest.mark.lab
def test_fifty_machines_are_discovered_through_relays_despite_packet_loss() -> None:
    result, _ = fleet("--machines", "50", "--racks", "3", "--loss", "0.02", "--spread", "1")
    assert result["reached"]["discovered"] == 50 and result["unfinished"] == 0, result
    assert result["inventory"] == {"nodes": 50, "states": {"discovered": 50}}, result
    assert result["bootd_exit"] == 0
    assert result["bootd"]["VmHWM"] > 0 and result["bootd"]["cpu_s"] > 0


@pytest.mark.lab
def test_a_fleet_walks_to_ready_in_waves() -> None:
    result, _ = fleet("--machines", "10", "--racks", "2", "--until", "ready", "--max-global", "3",
                      "--max-per-rack", "2", "--wave-wait", "1")
    assert result["reached"]["ready"] == 10 and result["unfinished"] == 0, result
    assert result["inventory"] == {"nodes": 10, "states": {"ready": 10}}, result
    assert result["counts"].get("reidentified") == 10  # allocation rotated every token
    # One command rolled them out; the limits held at every instant (bootd's event log).
    assert [(r["state"], r["counts"].get("ready")) for r in result["rollouts"]] == [("done", 10)], result
    e = result["events"]
    assert 0 < e["slots_peak"] <= 3 and 0 < e["rack_slots_peak"] <= 2, e
    assert result["bootd_exit"] == 0
