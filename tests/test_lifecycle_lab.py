"""End to end in the namespaced lab: a scripted machine does DHCP as iPXE would, fetches
its boot script over HTTP, posts `discovered`, is allocated through the API, and walks
to `ready`, fetching its kickstart on the way; the event log shows every step."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from bootd_proc import Bootd
from conftest import REPO
from netlab import Host, Lab

pytestmark = pytest.mark.lab
SERVER = "198.18.0.1"
BASE = f"http://{SERVER}:8080"


def curl(host: Host, *args: str) -> tuple[int, str]:
    res = host.run("curl", "-sS", "-o", "-", "-w", "\n%{http_code}", *args, check=False, timeout=30)
    body, _, code = res.stdout.rpartition("\n")
    return int(code or 0), body


def test_a_machine_walks_from_first_boot_to_ready(lab: Lab, tmp_path: Path) -> None:
    srv = lab.add_host("srv", f"{SERVER}/24")
    node_host = lab.add_host("node")
    config = tmp_path / "bootd.toml"
    config.write_text(textwrap.dedent(f"""\
        [server]
        admin_address = "{SERVER}"
        interfaces = ["eth0"]
        state_dir = "{tmp_path / 'state'}"
        [services]
        dns = false
        [http]
        listen = "{SERVER}:8080"
        [install]
        root_password_hash = "$6$lab$hash"
        [[subnets]]
        cidr = "198.18.0.0/24"
        dynamic_pool = "198.18.0.100-198.18.0.199"
        """))
    bootd = Bootd(config, srv.cmd()).start()
    try:
        operator = (tmp_path / "state" / "api-token").read_text().strip()
        op = ["-H", f"Authorization: Bearer {operator}"]
        mac = node_host.run("cat", "/sys/class/net/eth0/address").stdout.strip()

        # 1. DHCP as iPXE: the boot file is the URL of its boot script.
        res = node_host.run(sys.executable, str(REPO / "tests" / "dhcp_client.py"), "--mac", mac,
                            "--request", "--wait", "2", "--vendor", "PXEClient:Arch:00000:UNDI:002001",
                            "--user-class", "iPXE", timeout=120)
        replies = {r["type"]: r for r in json.loads(res.stdout)["replies"]}
        ack = replies["ack"]
        node_host.run("ip", "addr", "add", f"{ack['yiaddr']}/24", "dev", "eth0")
        url = ack["file"]
        assert url == f"{BASE}/boot/ipxe?mac={mac}"

        # 2. The discovery script names the node and carries its token.
        code, script = curl(node_host, url)
        assert code == 200 and script.startswith("#!ipxe"), script
        assert "images/discovery/vmlinuz" in script and "bootd.state=discovering" in script
        name = re.search(r"bootd\.node=(\S+)", script).group(1)  # type: ignore[union-attr]
        token = re.search(r"bootd\.token=(\S+)", script).group(1)  # type: ignore[union-attr]
        me = ["-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json"]

        def post_state(state: str, **extra: Any) -> dict[str, Any]:
            code, body = curl(node_host, *me, "-X", "POST", "--data", json.dumps({"state": state, **extra}),
                              f"{BASE}/api/v1/nodes/{name}/transition")
            assert code == 200, (state, body)
            return dict(json.loads(body))

        # 3. The agent reports what the machine is; it waits, unallocated.
        got = post_state("discovered", inventory={"memory_mb": 1024, "macs": [mac]})
        assert got == {"name": name, "state": "discovered", "allocated": False, "profile": None,
                       "bmc": None}

        # 4. The operator allocates it (a profile and a name) through the API.
        code, body = curl(node_host, *op, "-X", "POST", "-H", "Content-Type: application/json",
                          "--data", json.dumps({"profile": "rocky-9", "name": "r1-n01"}),
                          f"{BASE}/api/v1/nodes/{name}/allocate")
        assert code == 200, body
        name = "r1-n01"
        code, script = curl(node_host, url)
        assert "bootd.state=hardware-installing" in script
        # Allocation rotated the token: the old one moves nothing, the script has the new one.
        old = token
        token = re.search(r"bootd\.token=(\S+)", script).group(1)  # type: ignore[union-attr]
        assert token != old
        code, body = curl(node_host, "-X", "POST", f"{BASE}/api/v1/nodes/{name}/transition?token={old}"
                          "&state=hardware-installed")
        assert code == 403, body
        code, ident = curl(node_host, f"{BASE}/boot/identity?mac={mac}")  # the agent's way to it
        assert (code, ident) == (200, f"node={name}\ntoken={token}\n")
        me = ["-H", f"Authorization: Bearer {token}", "-H", "Content-Type: application/json"]

        # 5. Hardware install done; the next boot is the OS installer with its kickstart.
        post_state("hardware-installed")
        code, script = curl(node_host, url)
        ks_url = re.search(r"inst\.ks=(\S+)", script).group(1)  # type: ignore[union-attr]
        assert f"/install/{name}/kickstart?token={token}" in ks_url
        code, kickstart = curl(node_host, ks_url)
        assert code == 200 and "r1-n01" in kickstart and "$6$lab$hash" in kickstart
        # The installer's callbacks: the kickstart's own URLs, token in the query.
        callback = f"{BASE}/api/v1/nodes/{name}/transition?token={token}&state="
        assert callback in kickstart
        for state in ("installing", "installed"):
            code, body = curl(node_host, "-X", "POST", callback + state)
            assert code == 200, body
        # A replayed callback is refused, the state unchanged.
        code, body = curl(node_host, "-X", "POST", callback + "installed")
        assert code == 409 and "already installed" in body

        # 6. First boot from disk: the boot script says local; the first-boot script reports.
        code, script = curl(node_host, url)
        assert "sanboot --no-describe --drive 0x80" in script
        post_state("readying")
        post_state("ready")

        # 7. Another node's token cannot move this one; the operator sees every step.
        code, _ = curl(node_host, "-X", "POST",
                       f"{BASE}/api/v1/nodes/{name}/transition?token=x&state=problem")
        assert code == 403
        code, body = curl(node_host, *op, f"{BASE}/api/v1/nodes/{name}/events")
        steps = [(e["from"], e["to"]) for e in json.loads(body)["events"] if e["kind"] == "transition"]
        assert steps == [("discovering", "discovered"), ("discovered", "hardware-installing"),
                         ("hardware-installing", "hardware-installed"),
                         ("hardware-installed", "installing"), ("installing", "installed"),
                         ("installed", "readying"), ("readying", "ready")]
        shown = json.loads(bootd.cli("nodes", "show", name, "--json"))
        assert shown["state"] == "ready" and shown["inventory"]["memory_mb"] == 1024
        rendered = bootd.cli("nodes", "render", name, "ipxe", "--state", "installing")
        assert "inst.ks=" in rendered and "inst.repo=" in rendered
    finally:
        bootd.close()
    assert "Traceback" not in bootd.stderr, bootd.stderr
