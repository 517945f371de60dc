"""The README's demo command works as written (in its non-interactive --check form):
two VMs PXE-boot from bootd and reach ready."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, free_port
from netlab import PREFIX, namespaces

pytestmark = pytest.mark.lab


def test_demo_check(tmp_path: Path) -> None:
    tag = f"demo{os.getpid()}"
    env = {**os.environ, "BOOTD_DEMO_PORT": str(free_port()), "BOOTD_DEMO_DIR": str(tmp_path),
           "BOOTD_DEMO_TAG": tag}
    res = subprocess.run([str(REPO / "scripts" / "demo"), "--check"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert res.returncode == 0, res.stderr
    assert "demo ok: healthz ok, 2 nodes ready via http://127.0.0.1:" in res.stdout, res.stdout
    assert "all 2 VMs ready" in res.stdout
    assert re.search(r"install slots: [1-9]\d* admitted, at most 1 at once", res.stdout), res.stdout
    assert not [ns for ns in namespaces() if ns.startswith(f"{PREFIX}{tag}-")]
    log = (tmp_path / "bootd.log").read_text()
    assert "shutting down signal=SIGTERM" in log
    assert "Traceback" not in log
