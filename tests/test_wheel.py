"""A wheel install of bootd renders every built-in profile and finds its agent.

Everything bootd reads at run time (boot-script templates, answer files, the
discovery agent, the migrations) must ship inside the package. A checkout hides
a missing file, because the repository sits around the package; so this test
builds the wheel from a copy of the sources, installs it into a fresh virtual
environment of its own, and runs bootd there from a directory outside the
checkout.

Offline and quick (a few seconds): the wheel is built without build isolation
(setuptools and wheel come from the project venv, see the test extras), and the
new environment borrows the project venv's site-packages for bootd's
dependencies through a .pth line. A .pth line only appends a directory to
sys.path; the .pth files inside that directory (the project's editable install
of bootd among them) are not run, so `import bootd` can only find the wheel.
The script asserts that, too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Runs inside the fresh environment, in a directory outside the checkout.
PROBE = textwrap.dedent("""\
    import asyncio, json, sys
    from pathlib import Path

    import bootd
    from bootd import boot
    from bootd.config import parse_config
    from bootd.db.engine import current_revision, head_revision, open_database
    from bootd.model.profiles import ANSWER_FILE
    from bootd.model.states import NodeState
    from bootd.render import render

    state_dir = Path(sys.argv[1])
    config = parse_config(f'''
    [server]
    admin_address = "198.18.0.1"
    interfaces = ["eth9"]
    state_dir = "{state_dir}"
    [[subnets]]
    cidr = "198.18.0.0/24"
    router = "198.18.0.254"
    domain = "rack.example"
    ''')
    rendered = {}
    for name, profile in sorted(config.profiles.items()):
        for state in NodeState:
            view = boot.NodeView("r1-n07", "52:54:00:12:34:56", state, name, "T0KEN",
                                 config.admin_address + 7)
            for kind in boot.SCRIPT_TEMPLATES:
                rendered[f"{name}.{state.value}.{kind}"] = len(boot.script(kind, view, config))
        kind = ANSWER_FILE[profile.family]
        view = boot.NodeView("r1-n07", "52:54:00:12:34:56", NodeState.INSTALLING, name, "T0KEN",
                             config.admin_address + 7)
        rendered[f"{name}.{kind}"] = len(boot.answer(kind, view, config))
    rendered["grub-common"] = len(render("grub-common.cfg.j2"))
    from bootd.images.build import agent_script

    async def migrate():
        engine = await open_database(f"sqlite+aiosqlite:///{state_dir / 'bootd.db'}")
        try:
            return await current_revision(engine)
        finally:
            await engine.dispose()

    print(json.dumps({"bootd": bootd.__file__, "rendered": rendered,
                      "agent": agent_script()[:2].decode(), "revision": asyncio.run(migrate()),
                      "head": head_revision()}))
    """)


def _site_packages(python: Path) -> Path:
    out = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                         check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of what the sdist would hold (no build/ in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    shutil.copytree(REPO / "bootd", src / "bootd", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "-w", str(out), str(src)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    (whl,) = out.glob("bootd-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (no system site-packages) holding the wheel; dependencies borrowed."""
    env = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(system_site_packages=False, with_pip=False, symlinks=True).create(env)
    python = env / "bin" / "python"
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                          "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    site = _site_packages(python)
    borrowed = dict.fromkeys((sysconfig.get_path("purelib"), sysconfig.get_path("platlib")))
    (site / "zz-bootd-test-deps.pth").write_text("".join(f"{p}\n" for p in borrowed))
    return python


PACKAGE_DATA = ("templates/ipxe.j2", "templates/pxelinux.cfg.j2", "templates/grub.cfg.j2",
                "templates/grub-common.cfg.j2", "templates/firstboot.sh.j2",
                "templates/kickstart/rocky-9.ks.j2", "templates/kickstart/rhel-5.6.ks.j2",
                "templates/preseed/ubuntu-20.04.preseed.j2", "templates/preseed/ubuntu-24.04.user-data.j2",
                "images/agent.sh", "images/build.py", "db/migrations/env.py", "db/migrations/script.py.mako")


def test_wheel_holds_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for member in PACKAGE_DATA:
        assert f"bootd/{member}" in names, member
    assert not any(n.startswith(("tests/", "templates/", "kickstart/", "preseed/", "images/")) for n in names)


def test_installed_wheel_renders_every_profile(installed: Path, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"
    work.mkdir()
    (work / "probe.py").write_text(PROBE)
    # -I: no PYTHONPATH, no user site, and the script's directory (outside the
    # checkout anyway) is the only path added; site-packages .pth files still apply.
    res = subprocess.run([str(installed), "-I", "probe.py", str(work / "state")], cwd=work,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert Path(out["bootd"]).is_relative_to(installed.parent.parent), out["bootd"]
    assert not Path(out["bootd"]).is_relative_to(REPO)
    rendered: dict[str, int] = out["rendered"]
    for profile in ("ubuntu-20.04", "ubuntu-24.04", "rhel-5.6", "rocky-9"):
        for kind in ("ipxe", "pxelinux", "grub"):
            assert rendered[f"{profile}.installing.{kind}"] > 0
            assert rendered[f"{profile}.discovering.{kind}"] > 0
            assert rendered[f"{profile}.ready.{kind}"] > 0
    assert rendered["rocky-9.kickstart"] > 0 and rendered["rhel-5.6.kickstart"] > 0
    assert rendered["ubuntu-20.04.preseed"] > 0 and rendered["ubuntu-24.04.user-data"] > 0
    assert rendered["grub-common"] > 0
    assert out["agent"] == "#!"
    assert out["revision"] == out["head"]


def test_installed_wheel_has_the_command(installed: Path, tmp_path: Path) -> None:
    res = subprocess.run([str(installed.parent / "bootd"), "--help"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "usage" in res.stdout.lower()
