"""The `bootd` command: node management round trips and every error path as one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from bootd import __version__
from bootd.cli import main

SUBNET = """
[[subnets]]
cidr = "198.18.0.0/24"
static_range = "198.18.0.10-198.18.0.99"
dynamic_pool = "198.18.0.100-198.18.0.199"
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse's own exits (--version, usage errors)
        rc = int(exc.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def cfg(write_config: Any) -> str:
    return str(write_config(extra=SUBNET))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "--version") == (0, f"bootd {__version__}\n", "")


def test_nodes_round_trip(capsys: pytest.CaptureFixture[str], cfg: str, tmp_path: Path) -> None:
    assert run(capsys, "nodes", "list", "--config", cfg) == (0, "no nodes\n", "")
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    rc, out, err = run(capsys, "--config", cfg, "nodes", "add", "r1-n01", "--mac", "52:54:00:12:34:56",
                       "--mac", "52-54-00-12-34-57", "--ip", "198.18.0.10", "--rack", "r1",
                       "--bmc-address", "198.18.0.200", "--bmc-user", "admin",
                       "--bmc-password-file", str(pw))
    assert (rc, out, err) == (0, "added node r1-n01 (discovering)\n", "")
    rc, out, _ = run(capsys, "nodes", "list", "--config", cfg)
    assert rc == 0
    header, row = out.splitlines()
    assert header.split() == ["NAME", "STATE", "ALLOCATED", "PROFILE", "IP", "RACK", "MACS"]
    assert row.split() == ["r1-n01", "discovering", "no", "-", "198.18.0.10", "r1",
                           "52:54:00:12:34:56,52:54:00:12:34:57"]
    rc, out, _ = run(capsys, "nodes", "list", "--json", "--config", cfg)
    nodes = json.loads(out)["nodes"]
    assert [n["name"] for n in nodes] == ["r1-n01"]
    assert nodes[0]["bmc"] == {"address": "198.18.0.200", "username": "admin", "reachable": None,
                               "power": None, "last_error": None, "checked_at": None}
    rc, out, _ = run(capsys, "nodes", "show", "r1-n01", "--config", cfg)
    assert "bmc:         198.18.0.200 (user admin)" in out
    assert "created  - -> discovering" in out
    assert "bmc-set" in out
    rc, out, _ = run(capsys, "nodes", "show", "r1-n01", "--json", "--config", cfg)
    shown = json.loads(out)
    assert [e["kind"] for e in shown["events"]] == ["created", "bmc-set"]
    assert "hunter2" not in out
    assert "token" not in out
    assert run(capsys, "nodes", "delete", "r1-n01", "--config", cfg) == (
        0, "deleted node r1-n01\n", "")
    assert run(capsys, "nodes", "list", "--config", cfg)[1] == "no nodes\n"


ERRORS = [
    # (argv after --config, exit code, stderr)
    (["nodes", "show", "ghost"], 1, "bootd: error: no node named 'ghost'\n"),
    (["nodes", "delete", "ghost"], 1, "bootd: error: no node named 'ghost'\n"),
    (["nodes", "add", "n1", "--mac", "52:54:00:zz:00:01"], 1,
     "bootd: error: invalid MAC address '52:54:00:zz:00:01'\n"),
    (["nodes", "add", "n_1"], 1, "bootd: error: invalid node name 'n_1': use 1-63 letters, digits or "
     "hyphens, not starting or ending with a hyphen\n"),
    (["nodes", "add", "n1", "--ip", "198.18.0.150"], 1, "bootd: error: --ip: 198.18.0.150 is not "
     "inside the static_range of a configured subnet\n"),
    (["nodes", "add", "n1", "--ip", "nope"], 1, "bootd: error: --ip: 'nope' is not an IPv4 address\n"),
    (["nodes", "add", "n1", "--bmc-address", "198.18.0.200"], 1,
     "bootd: error: --bmc-address, --bmc-user and --bmc-password-file go together\n"),
    (["nodes", "add", "n1", "--bmc-address", "1.2.3.4", "--bmc-user", "u", "--bmc-password-file",
      "/nonexistent/pw"], 1, "bootd: error: cannot read BMC password from /nonexistent/pw: "
     "No such file or directory\n"),
]


@pytest.mark.parametrize(("argv", "rc", "stderr"), ERRORS, ids=[" ".join(e[0][:3]) for e in ERRORS])
def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str], cfg: str, argv: list[str],
                                 rc: int, stderr: str) -> None:
    assert run(capsys, "--config", cfg, *argv) == (rc, "", stderr)


def test_duplicate_mac(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    assert run(capsys, "--config", cfg, "nodes", "add", "a", "--mac", "52:54:00:00:00:01")[0] == 0
    assert run(capsys, "--config", cfg, "nodes", "add", "b", "--mac", "52:54:00:00:00:01") == (
        1, "", "bootd: error: MAC 52:54:00:00:00:01 already belongs to node a\n")


def test_config_errors_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, err = run(capsys, "--config", str(tmp_path / "none.toml"), "nodes", "list")
    assert (rc, out) == (2, "")
    assert err == f"bootd: error: {tmp_path / 'none.toml'}: no such file (create one with `bootd init`)\n"
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nadmin_address = "1.2.3.4"\ninterfaces = ["eth0"]\nport = 5\n')
    assert run(capsys, "check", "--config", str(bad)) == (
        2, "", f"bootd: error: {bad}: server.port: unknown key\n")


def test_leases_list(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    assert run(capsys, "leases", "list", "--config", cfg) == (0, "no leases\n", "")
    rc, out, _ = run(capsys, "leases", "list", "--json", "--config", cfg)
    assert (rc, json.loads(out)) == (0, {"leases": []})


def test_check_accepts_a_good_config(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    assert run(capsys, "check", "--config", cfg) == (0, f"{cfg}: ok (1 subnet(s))\n", "")


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run(capsys, "nodes", "frobnicate")
    assert rc == 2
    assert "invalid choice: 'frobnicate'" in err


def _subprocess(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bootd", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_unreachable_database_is_one_line_without_traceback(write_config: Any) -> None:
    cfg = write_config(extra="").read_text().replace(
        "[server]\n", '[server]\ndatabase_url = "postgresql+asyncpg://bootd@127.0.0.1:1/bootd"\n')
    path = Path(write_config()).with_name("pg.toml")
    path.write_text(cfg)
    res = _subprocess("--config", str(path), "nodes", "list")
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.startswith("bootd: error: cannot open or migrate the database: ")
    assert res.stderr.count("\n") == 1
    assert "Traceback" not in res.stderr


def test_bootd_env_config_and_no_traceback_on_missing_file(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "bootd", "nodes", "list"], cwd=REPO, text=True,
                         capture_output=True, timeout=60,
                         env={"BOOTD_CONFIG": str(tmp_path / "x.toml"), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 2
    assert res.stderr == f"bootd: error: {tmp_path / 'x.toml'}: no such file (create one with `bootd init`)\n"


def test_lifecycle_commands(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    for i in (1, 2):
        assert run(capsys, "--config", cfg, "nodes", "add", f"n{i}", "--mac", f"52:54:00:00:00:0{i}",
                   "--rack", "r9")[0] == 0
    rc, out, err = run(capsys, "--config", cfg, "nodes", "allocate", "--rack", "r9", "--profile", "rocky-9")
    # Both are still discovering: one line per node, non-zero exit.
    assert rc == 1 and out == "" and err.count("failed: operator cannot move node") == 2
    rc, out, err = run(capsys, "--config", cfg, "nodes", "allocate", "n1", "n2", "--rack", "r9")
    assert rc == 1 and "exactly one of" in err
    assert run(capsys, "--config", cfg, "nodes", "reset", "--all") == (0, "n1: reset\nn2: reset\n", "")
    rc, out, _ = run(capsys, "--config", cfg, "nodes", "events", "n1")
    assert rc == 0 and "discovering -> reset" in out
    rc, out, err = run(capsys, "--config", cfg, "nodes", "render", "n1", "pxelinux", "--state", "installing",
                       "--profile", "rhel-5.6")
    assert rc == 0 and "ks=http://127.0.0.1:" in out and "ksdevice=bootif" in out
    rc, _, err = run(capsys, "--config", cfg, "nodes", "render", "n1", "kickstart")
    assert rc == 1 and "has no profile" in err
    assert run(capsys, "--config", cfg, "nodes", "delete", "n2") == (0, "deleted node n2\n", "")
