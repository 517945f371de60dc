"""The install answer files (kickstarts, preseed, autoinstall user-data), rendered
for realistic nodes and checked with the real validators: pykickstart's
ksvalidator, debconf-set-selections --checkonly and a YAML parser.

Their shell fragments are run too, under sh with stub commands standing in for
the installer's tools (curl, wget, python, in-target, curtin, list-devices...)
and a scratch directory standing in for the target, so that the callbacks, the
quoting and the files written (the first-boot script above all) are checked by
what a shell really does with them.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import jinja2
import jinja2.meta
import jinja2.nodes
import pytest
import yaml

BIN = Path(sys.executable).parent
KSVALIDATOR = BIN / "ksvalidator"
DEBCONF_SET_SELECTIONS = "/usr/bin/debconf-set-selections"

RHEL5 = "kickstart/rhel-5.6.ks.j2"
ROCKY9 = "kickstart/rocky-9.ks.j2"
PRESEED = "preseed/ubuntu-20.04.preseed.j2"
USER_DATA = "preseed/ubuntu-24.04.user-data.j2"
TEMPLATES = (RHEL5, ROCKY9, PRESEED, USER_DATA)
KS_VERSION = {RHEL5: "RHEL5", ROCKY9: "RHEL9"}

CONTEXT_NAMES = {"node", "install", "profile", "callback", "firstboot"}
CALLBACK = "http://198.18.0.1:8080/api/v1/nodes/{name}/transition?token=q7Xv-_9kLm2Zp4Rt&state="
SHA512 = ("$6$Kq3Zp8wXv1$tEtv7sAR3ATNfCeBDAtMGbtXH20U2OgR2jUA/EHy85hLRPfq9Qmz7DsZPs11GpJdvOwF"
          "uAdp.AGRFBhuT7qUf1")
KEYS = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkq4cYx0Rrj3l2m5b3JxZ0gq3kXl1mP7vE9Wm0oQ6aZ ops@bastion",
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7v3m9Q0vN5 o'brien's \"laptop\" $HOME")
# Hand-written first-boot script full of characters that shells, YAML and
# debconf treat specially (quotes, $, backslashes, %, #, an empty line, a tab).
TRICKY_FIRSTBOOT = """#!/bin/sh
# it's "quoted" & $(not expanded) `nor this` $HOME \\ %s 100% #hash
msg='single '\\''quoted'\\'' text'
printf '%s\\n' "$msg" >/dev/null

\tprintf 'tab-indented line\\n' >/dev/null
echo done \\
  continued >/dev/null
"""

ENV = jinja2.Environment(loader=jinja2.PackageLoader("bootd", "templates"),
                         undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                         keep_trailing_newline=True, autoescape=False)


@dataclass(frozen=True)
class Variant:
    id: str
    node: dict[str, object]
    install: dict[str, object]
    tricky_firstboot: bool


VARIANTS = (
    Variant("static-keys",
            dict(name="r1-n07", mac="52:54:00:12:34:56", admin_ip="198.18.0.37",
                 netmask="255.255.255.0", gateway="198.18.0.1", domain="rack1.example",
                 name_servers=["198.18.0.53", "198.18.0.54"]),
            dict(root_password_hash=SHA512, ssh_keys=list(KEYS), disk="sda", timezone="Europe/Berlin"),
            tricky_firstboot=False),
    Variant("dhcp-nokeys",
            dict(name="r2-n11", mac="52:54:00:ab:cd:ef", admin_ip=None, netmask=None, gateway=None,
                 domain="", name_servers=[]),
            dict(root_password_hash="!", ssh_keys=[], disk="", timezone="UTC"),
            tricky_firstboot=True),
    # An isolated admin network (what `bootd init` writes): no router, no name server.
    Variant("static-routerless",
            dict(name="r3-n02", mac="52:54:00:00:03:02", admin_ip="198.18.0.41",
                 netmask="255.255.255.0", gateway=None, domain="bootd.internal", name_servers=[]),
            dict(root_password_hash="!", ssh_keys=[], disk="vda", timezone="UTC"),
            tricky_firstboot=False),
)
PROFILES = {RHEL5: "rhel-5.6", ROCKY9: "rocky-9", PRESEED: "ubuntu-20.04", USER_DATA: "ubuntu-24.04"}


def context(template: str, variant: Variant) -> dict[str, object]:
    node = types.SimpleNamespace(**variant.node)
    callback = CALLBACK.format(name=node.name)
    if variant.tricky_firstboot:
        firstboot = TRICKY_FIRSTBOOT
    else:  # the project's own first-boot script, as bootd renders it
        firstboot = ENV.get_template("firstboot.sh.j2").render(callback=callback, node=node)
    name = PROFILES[template]
    return dict(node=node, install=types.SimpleNamespace(**variant.install),
                profile=types.SimpleNamespace(name=name,
                                              tree=f"http://198.18.0.1:8080/images/{name}/tree"),
                callback=callback, firstboot=firstboot)


def render(template: str, ctx: dict[str, object]) -> str:
    return ENV.get_template(template).render(**ctx)


def run(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


# --- running installer shell fragments with stub commands --------------------------------------

STUB = """#!/bin/sh
printf '%s\\n' "${0##*/} $*" >> "$STUB_LOG"
case " $STUB_FAIL " in *" ${0##*/} "*) exit 1 ;; esac
case ${0##*/} in
  list-devices) echo /dev/vdb ;;
  list-harddrives) echo "vdb 20480.0"; echo "vdc 40960.0" ;;
esac
exit 0
"""
STUBS = ("curl", "wget", "python", "in-target", "curtin", "kill-all-dhcp", "netcfg", "list-devices",
         "list-harddrives", "debconf-set", "restorecon", "systemctl")


@dataclass
class Sandbox:
    root: Path  # stands in for /target
    log: Path

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name in STUBS:
        path = stubs / name
        path.write_text(STUB)
        path.chmod(0o755)
    root = tmp_path / "target"
    for sub in ("etc/systemd/system", "root", "tmp"):
        (root / sub).mkdir(parents=True)
    return Sandbox(root, tmp_path / "calls.log")


def run_shell(box: Sandbox, script: str, *, fail: str = "", target: str = "/target") -> None:
    """Run one installer shell fragment with its target paths moved into the sandbox."""
    script = script.replace(target, str(box.root))
    stubs = box.root.parent / "stubs"
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STUB_LOG": str(box.log), "STUB_FAIL": fail,
           "HOME": str(box.root / "root")}
    proc = run(["sh", "-e", "-c", script], env=env, cwd=box.root)
    assert proc.returncode == 0, report(proc) + "\nscript:\n" + script


def assert_reported(box: Sandbox, url: str, tool: str) -> None:
    calls = [c for c in box.calls() if c.startswith(tool + " ")]
    assert calls, f"no {tool} call in {box.calls()}"
    assert all(c.split()[-1] == url for c in calls), calls


def heredoc(text: str, path: str) -> str:
    """The body of `cat > PATH <<'BOOTD_EOF'`, as a shell would write it."""
    match = re.search(rf"^cat > {re.escape(path)} <<'BOOTD_EOF'\n(.*?\n)BOOTD_EOF$", text, re.M | re.S)
    assert match is not None, f"no quoted here-document writing {path}"
    return match.group(1)


def check_unit(unit: str) -> None:
    sections = {"[Unit]", "[Service]", "[Install]"}
    assert sections <= set(unit.splitlines())
    for line in ("Type=oneshot", "ExecStart=/usr/local/sbin/bootd-firstboot",
                 "WantedBy=multi-user.target", "After=network-online.target", "Wants=network-online.target"):
        assert line in unit.splitlines()


# --- every template ----------------------------------------------------------------------------

@pytest.mark.parametrize("template", TEMPLATES)
def test_uses_only_the_documented_context(template: str) -> None:
    source = ENV.loader.get_source(ENV, template)[0]
    assert source.startswith("{#"), "each template opens with a comment saying what it is for"
    tree = ENV.parse(source)
    # Names a template sets itself in one branch show up as undeclared too.
    assigned = {a.target.name for a in tree.find_all(jinja2.nodes.Assign)
                if isinstance(a.target, jinja2.nodes.Name)}
    assert jinja2.meta.find_undeclared_variables(tree) - assigned == CONTEXT_NAMES


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
@pytest.mark.parametrize("template", TEMPLATES)
def test_names_node_callbacks_and_firstboot(template: str, variant: Variant) -> None:
    ctx = context(template, variant)
    text = render(template, ctx)
    callback = str(ctx["callback"])
    assert f"'{callback}installing'" in text
    assert f"'{callback}installed'" in text
    assert variant.node["name"] in text
    assert "None" not in text  # no unset optional value leaked into the file
    if template in KS_VERSION:  # the script travels verbatim in a quoted here-document
        assert heredoc(text, "/usr/local/sbin/bootd-firstboot") == ctx["firstboot"]
    elif template == USER_DATA:  # verbatim, indented inside a YAML literal block
        for line in str(ctx["firstboot"]).splitlines():
            assert line.strip() in text
    else:  # preseed: one single-quoted printf word per line (checked by running it below)
        for line in str(ctx["firstboot"]).splitlines():
            assert "'" + line.replace("'", "'\\''") + "' \\\n" in text


@pytest.mark.parametrize("missing", sorted(CONTEXT_NAMES))
@pytest.mark.parametrize("template", TEMPLATES)
def test_missing_variable_is_an_error(template: str, missing: str) -> None:
    ctx = context(template, VARIANTS[0])
    del ctx[missing]
    with pytest.raises(jinja2.UndefinedError):
        render(template, ctx)


@pytest.mark.parametrize(("obj", "attr"), [("node", "name"), ("node", "admin_ip"),
                                           ("install", "root_password_hash"), ("install", "disk"),
                                           ("profile", "tree")])
@pytest.mark.parametrize("template", TEMPLATES)
def test_missing_attribute_is_an_error(template: str, obj: str, attr: str) -> None:
    ctx = context(template, VARIANTS[0])
    ctx[obj] = types.SimpleNamespace(**{k: v for k, v in vars(ctx[obj]).items() if k != attr})
    with pytest.raises(jinja2.UndefinedError):
        render(template, ctx)


# --- kickstarts --------------------------------------------------------------------------------

def ks_scripts(text: str, version: str) -> list[tuple[str, bool, str]]:
    """(section, in chroot, body) of each %pre/%post, as pykickstart reads them."""
    from pykickstart.constants import KS_SCRIPT_POST, KS_SCRIPT_PRE
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    parser = KickstartParser(makeVersion(version), followIncludes=False)
    parser.readKickstartFromString(text)
    kinds = {KS_SCRIPT_PRE: "pre", KS_SCRIPT_POST: "post"}
    return [(kinds[s.type], s.inChroot, s.script) for s in parser.handler.scripts]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
@pytest.mark.parametrize("template", [RHEL5, ROCKY9])
def test_kickstart_passes_ksvalidator(template: str, variant: Variant, tmp_path: Path,
                                      sandbox: Sandbox) -> None:
    version = KS_VERSION[template]
    text = render(template, context(template, variant))
    ks = tmp_path / "ks.cfg"
    ks.write_text(text)
    proc = run([str(KSVALIDATOR), "-v", version, str(ks)])
    assert proc.returncode == 0, report(proc)

    # No disk given: %pre picks the first one and writes the partitioning for
    # %include. Run it and validate the kickstart with the result spliced in.
    include = "%include /tmp/bootd-disk.ks"
    if variant.install["disk"]:
        assert include not in text
        return
    pre = next(body for kind, _, body in ks_scripts(text, version) if kind == "pre")
    run_shell(sandbox, pre, target="/tmp")
    part = (sandbox.root / "bootd-disk.ks").read_text()
    assert "--only-use=vdb\n" in part
    whole = tmp_path / "ks-whole.cfg"
    whole.write_text(text.replace(include, part))
    proc = run([str(KSVALIDATOR), "-v", version, str(whole)])
    assert proc.returncode == 0, report(proc)


def test_rhel5_kickstart_has_no_modern_syntax() -> None:
    for variant in VARIANTS:
        lines = render(RHEL5, context(RHEL5, variant)).splitlines()
        assert "%end" not in lines  # RHEL 5 anaconda ends sections at the next %section
        assert not any(line.startswith(("sshkey", "langsupport")) for line in lines)
        assert "install" in lines
        assert "key --skip" in lines


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
@pytest.mark.parametrize("template", [RHEL5, ROCKY9])
def test_kickstart_settings(template: str, variant: Variant) -> None:
    from pykickstart.parser import KickstartParser
    from pykickstart.version import makeVersion

    ctx = context(template, variant)
    parser = KickstartParser(makeVersion(KS_VERSION[template]), followIncludes=False)
    parser.readKickstartFromString(render(template, ctx))
    handler = parser.handler
    assert handler.url.url == f"http://198.18.0.1:8080/images/{PROFILES[template]}/tree"
    assert handler.rootpw.isCrypted
    assert handler.rootpw.password == variant.install["root_password_hash"]
    assert handler.timezone.timezone == variant.install["timezone"]
    assert handler.reboot.action is not None
    [net] = handler.network.network
    fqdn = ".".join(filter(None, [variant.node["name"], variant.node["domain"]]))
    assert net.hostname == fqdn
    if variant.node["admin_ip"]:
        assert (net.bootProto, net.ip, net.netmask, net.gateway) == (
            "static", variant.node["admin_ip"], variant.node["netmask"], variant.node["gateway"] or "")
        # Only name servers that answer; none: --nodns, so anaconda configures none.
        assert net.nameserver == ",".join(variant.node["name_servers"])  # type: ignore[arg-type]
        assert bool(net.nodns) == (not variant.node["name_servers"])
    else:
        assert net.bootProto == "dhcp"
        assert (net.gateway, net.nameserver, net.nodns) == ("", "", False)
    if template == ROCKY9:
        assert net.device == variant.node["mac"]
    if variant.install["disk"]:
        assert handler.ignoredisk.onlyuse == [variant.install["disk"]]
        assert handler.clearpart.drives == [variant.install["disk"]]
        assert handler.autopart.autopart


@pytest.mark.parametrize("fail", ["", "python curl", "python wget curl"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
@pytest.mark.parametrize("template", [RHEL5, ROCKY9])
def test_kickstart_scripts_run(template: str, variant: Variant, fail: str, sandbox: Sandbox) -> None:
    ctx = context(template, variant)
    text = render(template, ctx)
    callback = str(ctx["callback"])
    scripts = ks_scripts(text, KS_VERSION[template])
    assert [(kind, chroot) for kind, chroot, _ in scripts] == [
        ("pre", False), ("post", True), ("post", False)]
    for _, _, body in scripts:
        proc = run(["sh", "-n", "-c", body])
        assert proc.returncode == 0, report(proc) + body

    # %pre reports "installing" (a failed report does not stop it), and the last
    # %post, outside the chroot, reports "installed".
    first = "python" if template == RHEL5 else "curl"
    run_shell(sandbox, scripts[0][2], target="/tmp", fail=fail)
    assert_reported(sandbox, callback + "installing", first)
    if template == RHEL5 and "python" in fail:
        assert_reported(sandbox, callback + "installing", "wget")
    sandbox.log.unlink()
    run_shell(sandbox, scripts[2][2], target="/mnt/sysimage" if template == RHEL5 else "/mnt/sysroot",
              fail=fail)
    assert_reported(sandbox, callback + "installed", first)
    assert "installing" not in sandbox.log.read_text()

    # The chrooted %post installs the first-boot script and its trigger, and root's keys.
    post = scripts[1][2]
    assert heredoc(post, "/usr/local/sbin/bootd-firstboot") == ctx["firstboot"]
    assert "chmod 0755 /usr/local/sbin/bootd-firstboot" in post.splitlines()
    if template == RHEL5:
        assert ("echo '/usr/local/sbin/bootd-firstboot >/var/log/bootd-firstboot.log 2>&1 &'"
                " >> /etc/rc.d/rc.local") in post.splitlines()
        assert "systemctl" not in post.replace(str(ctx["firstboot"]), "")
    else:
        check_unit(heredoc(post, "/etc/systemd/system/bootd-firstboot.service"))
        assert "systemctl enable bootd-firstboot.service" in post.splitlines()
    keys = variant.install["ssh_keys"]
    if keys:
        assert heredoc(post, "/root/.ssh/authorized_keys") == "".join(k + "\n" for k in keys)
    else:
        assert "authorized_keys" not in post


# --- preseed -----------------------------------------------------------------------------------

def preseed_values(text: str) -> dict[str, tuple[str, str]]:
    """question -> (type, value), joining backslash-continued lines as debconf does."""
    values: dict[str, tuple[str, str]] = {}
    for line in re.sub(r"\\\n", "", text).splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        owner, question, kind, *rest = line.split(None, 3)
        assert owner in {"d-i", "tasksel", "popularity-contest"}, line
        assert question not in values, f"{question} given twice"
        values[question] = (kind, rest[0] if rest else "")
    return values


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_preseed_passes_debconf_checkonly(variant: Variant, tmp_path: Path) -> None:
    path = tmp_path / "preseed.cfg"
    path.write_text(render(PRESEED, context(PRESEED, variant)))
    proc = run([DEBCONF_SET_SELECTIONS, "--checkonly", str(path)])
    assert proc.returncode == 0, report(proc)
    output = (proc.stdout + proc.stderr).lower()
    assert "warning" not in output, report(proc)
    assert "error" not in output, report(proc)


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_preseed_settings(variant: Variant) -> None:
    values = preseed_values(render(PRESEED, context(PRESEED, variant)))
    value = {q: v for q, (_, v) in values.items()}
    assert value["netcfg/get_hostname"] == variant.node["name"]
    assert value["netcfg/hostname"] == variant.node["name"]
    assert value["netcfg/get_domain"] == variant.node["domain"]
    assert value["mirror/country"] == "manual"
    assert value["mirror/protocol"] == "http"
    assert value["mirror/http/hostname"] == "198.18.0.1:8080"
    assert value["mirror/http/directory"] == "/images/ubuntu-20.04/tree"
    assert value["time/zone"] == variant.install["timezone"]
    assert value["passwd/root-login"] == "true"
    assert value["passwd/make-user"] == "false"
    assert values["passwd/root-password-crypted"] == ("password", variant.install["root_password_hash"])
    assert set(value["pkgsel/include"].split()) >= {"openssh-server", "curl"}
    assert values["finish-install/reboot_in_progress"] == ("note", "")
    assert value["partman-auto/method"] == "regular"
    if variant.install["disk"]:
        assert value["partman-auto/disk"] == f"/dev/{variant.install['disk']}"
        assert value["grub-installer/bootdev"] == f"/dev/{variant.install['disk']}"
    else:
        assert "partman-auto/disk" not in value
        assert "partman/early_command" in value
    if variant.node["admin_ip"]:
        assert value["netcfg/disable_autoconfig"] == "true"
        assert value["netcfg/get_ipaddress"] == variant.node["admin_ip"]
        assert value["netcfg/get_netmask"] == variant.node["netmask"]
        assert value["netcfg/get_gateway"] == (variant.node["gateway"] or "")
        assert value["netcfg/confirm_static"] == "true"
        # netcfg, run again by early_command, must not ask about the route or DNS.
        assert value.get("netcfg/no_default_route") == (None if variant.node["gateway"] else "true")
        assert value["netcfg/get_nameservers"] == " ".join(variant.node["name_servers"])  # type: ignore[arg-type]
    else:
        assert "netcfg/get_ipaddress" not in value


@pytest.mark.parametrize("fail", ["", "wget"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_preseed_commands_run(variant: Variant, fail: str, sandbox: Sandbox) -> None:
    ctx = context(PRESEED, variant)
    callback = str(ctx["callback"])
    value = {q: v for q, (_, v) in preseed_values(render(PRESEED, ctx)).items()}

    run_shell(sandbox, value["preseed/early_command"], fail=fail)
    calls = sandbox.calls()
    assert calls[0] == f"wget -q -O /dev/null --post-data= {callback}installing"
    if variant.node["admin_ip"]:  # static: netcfg again, without DHCP
        assert calls[-2:] == ["kill-all-dhcp ", "netcfg "]
    else:
        assert not any(c.startswith("netcfg") for c in calls)
    sandbox.log.unlink()

    if not variant.install["disk"]:
        run_shell(sandbox, value["partman/early_command"], fail=fail)
        assert sandbox.calls() == ["list-devices disk", "debconf-set partman-auto/disk /dev/vdb",
                                   "debconf-set grub-installer/bootdev /dev/vdb"]
        sandbox.log.unlink()

    run_shell(sandbox, value["preseed/late_command"], fail=fail)
    script = sandbox.root / "usr/local/sbin/bootd-firstboot"
    assert script.read_text() == ctx["firstboot"]
    assert script.stat().st_mode & stat.S_IXUSR
    check_unit((sandbox.root / "etc/systemd/system/bootd-firstboot.service").read_text())
    calls = sandbox.calls()
    assert "in-target systemctl enable bootd-firstboot.service" in calls
    assert calls[-1].endswith(f" {callback}installed")
    assert "installing" not in "\n".join(calls)
    keys = sandbox.root / "root/.ssh/authorized_keys"
    if variant.install["ssh_keys"]:
        assert keys.read_text() == "".join(k + "\n" for k in variant.install["ssh_keys"])
        assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    else:
        assert not keys.exists()


# --- autoinstall user-data ---------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_user_data_is_autoinstall_yaml(variant: Variant) -> None:
    ctx = context(USER_DATA, variant)
    text = render(USER_DATA, ctx)
    assert text.splitlines()[0] == "#cloud-config"
    data = yaml.safe_load(text)
    auto = data["autoinstall"]
    assert set(data) == {"autoinstall"}
    assert auto["version"] == 1
    assert auto["timezone"] == variant.install["timezone"]
    assert auto["user-data"]["hostname"] == variant.node["name"]
    assert "identity" not in auto  # root only, like the other installs
    [eth] = auto["network"]["ethernets"].values()
    assert eth["match"] == {"macaddress": variant.node["mac"]}
    if variant.node["admin_ip"]:
        assert eth["addresses"] == [f"{variant.node['admin_ip']}/24"]
        if variant.node["gateway"]:
            assert eth["routes"] == [{"to": "default", "via": variant.node["gateway"]}]
        else:  # an isolated admin network: no route at all
            assert "routes" not in eth and "gateway4" not in eth
        assert auto["user-data"]["fqdn"] == f"{variant.node['name']}.{variant.node['domain']}"
        servers = eth["nameservers"]
        assert servers.get("addresses", []) == variant.node["name_servers"]
        assert servers["search"] == [variant.node["domain"]]
    else:
        assert eth["dhcp4"] is True
        assert "addresses" not in eth
    layout = auto["storage"]["layout"]
    assert layout["name"] == "direct"
    if variant.install["disk"]:
        assert layout["match"] == {"path": f"/dev/{variant.install['disk']}"}
    callback = str(ctx["callback"])
    early, late = auto["early-commands"], auto["late-commands"]
    assert all(isinstance(c, str) for c in early + late)
    assert f"'{callback}installing'" in early[0]
    assert f"'{callback}installed'" in late[-1]
    joined = "\n".join(late)
    assert ctx["firstboot"] in joined
    for key in variant.install["ssh_keys"]:
        assert key + "\n" in joined


@pytest.mark.parametrize("fail", ["", "curl"])
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.id)
def test_user_data_commands_run(variant: Variant, fail: str, sandbox: Sandbox) -> None:
    ctx = context(USER_DATA, variant)
    auto = yaml.safe_load(render(USER_DATA, ctx))["autoinstall"]
    callback = str(ctx["callback"])
    for command in auto["early-commands"]:
        run_shell(sandbox, command, fail=fail)
    assert_reported(sandbox, callback + "installing", "curl")
    sandbox.log.unlink()
    for command in auto["late-commands"]:
        run_shell(sandbox, command, fail=fail)
    calls = sandbox.calls()
    assert calls[-1].split()[-1] == callback + "installed"
    assert "installing" not in "\n".join(calls)
    hash_ = variant.install["root_password_hash"]
    assert f"curtin in-target --target={sandbox.root} -- usermod -p {hash_} root" in calls
    assert f"curtin in-target --target={sandbox.root} -- systemctl enable bootd-firstboot.service" in calls
    assert (sandbox.root / "etc/hostname").read_text() == f"{variant.node['name']}\n"
    script = sandbox.root / "usr/local/sbin/bootd-firstboot"
    assert script.read_text() == ctx["firstboot"]
    assert script.stat().st_mode & stat.S_IXUSR
    check_unit((sandbox.root / "etc/systemd/system/bootd-firstboot.service").read_text())
    keys = sandbox.root / "root/.ssh/authorized_keys"
    if variant.install["ssh_keys"]:
        assert keys.read_text() == "".join(k + "\n" for k in variant.install["ssh_keys"])
    else:
        assert not keys.exists()


def test_validators_are_installed() -> None:
    assert KSVALIDATOR.is_file() and os.access(KSVALIDATOR, os.X_OK), KSVALIDATOR
    assert os.access(DEBCONF_SET_SELECTIONS, os.X_OK), DEBCONF_SET_SELECTIONS


# --- the installer's network, from bootd's config (bootd.boot, bootd.installnet) -------------------

ADMIN = "198.18.0.1"


def net_config(*subnets: str, extra: str = "") -> object:
    from bootd.config import parse_config

    text = f"""
[server]
admin_address = "{ADMIN}"
interfaces = ["eth0"]
state_dir = "/var/lib/bootd"
[http]
listen = "{ADMIN}:8080"
[profiles.debian-12]
family = "preseed"
kernel = "images/debian-12/linux"
initrd = "images/debian-12/initrd.gz"
template = "preseed/ubuntu-20.04.preseed.j2"
""" + extra + "".join(f"[[subnets]]\n{body}\n" for body in subnets)
    return parse_config(text)


ROUTERLESS = 'cidr = "198.18.0.0/24"\ndomain = "bootd.internal"\nstatic_range = "198.18.0.10-198.18.0.99"'
ROUTED = ('cidr = "198.19.0.0/24"\nrouter = "198.19.0.1"\ndns_servers = ["198.19.0.53", "198.19.0.54"]\n'
          'domain = "rack2.example"\nstatic_range = "198.19.0.10-198.19.0.99"')
INIT_STYLE = ('cidr = "198.18.0.0/24"\ndns_servers = ["198.18.0.1"]\ndomain = "bootd.internal"\n'
              'static_range = "198.18.0.10-198.18.0.99"')


def cmdline(config: object, profile: str, *, admin_ip: str | None = None, leased: str | None = None,
            name: str = "n1") -> list[str]:
    from ipaddress import IPv4Address

    from bootd import boot
    from bootd.model.states import NodeState

    view = boot.NodeView(name, "52:54:00:00:00:01", NodeState.HARDWARE_INSTALLED, profile, "TOK",
                         IPv4Address(admin_ip) if admin_ip else None, IPv4Address(leased) if leased else None)
    return list(boot.target(view, config).args)  # type: ignore[arg-type]


def netcfg_args(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args if a.startswith(("netcfg/", "domain=", "hostname=")))


def test_debian_installer_on_a_routerless_subnet_is_told_no_route_no_dns_and_the_domain() -> None:
    args = cmdline(net_config(ROUTERLESS), "debian-12", admin_ip="198.18.0.20")
    assert netcfg_args(args) == {"netcfg/choose_interface": "auto", "hostname": "n1",
                                 "domain": "bootd.internal", "netcfg/no_default_route": "true",
                                 "netcfg/get_nameservers": ""}
    assert {"auto=true", "priority=critical", "interface=auto"} <= set(args)


def test_debian_installer_on_a_routed_subnet_gets_its_name_server_and_no_route_question() -> None:
    config = net_config(ROUTERLESS, ROUTED)
    args = netcfg_args(cmdline(config, "debian-12", admin_ip="198.19.0.20"))
    assert "netcfg/no_default_route" not in args
    assert args["netcfg/get_nameservers"] == "198.19.0.53"  # one: no quoting on any loader's line
    assert args["domain"] == "rack2.example"


def test_bootd_own_address_is_a_name_server_only_while_bootd_serves_dns() -> None:
    # `bootd init` lists the admin address; bootd answers there only with [services] dns on.
    for services, servers in (("", "198.18.0.1"), ("[services]\ndns = true\n", "198.18.0.1"),
                              ("[services]\ndns = false\n", "")):
        args = netcfg_args(cmdline(net_config(INIT_STYLE, extra=services), "debian-12"))
        assert args["netcfg/get_nameservers"] == servers
        assert args["netcfg/no_default_route"] == "true"


def test_a_node_without_an_address_takes_the_subnet_of_its_lease() -> None:
    config = net_config(ROUTERLESS, ROUTED)
    via_relay = netcfg_args(cmdline(config, "debian-12", leased="198.19.0.150"))
    assert via_relay["domain"] == "rack2.example" and "netcfg/no_default_route" not in via_relay
    local = netcfg_args(cmdline(config, "debian-12", leased="198.18.0.150"))
    assert local["domain"] == "bootd.internal" and local["netcfg/no_default_route"] == "true"
    # Two subnets and no address known (rendered off-line): nothing asserted.
    assert netcfg_args(cmdline(config, "debian-12")) == {
        "netcfg/choose_interface": "auto", "hostname": "n1", "domain": ""}
    # One subnet: that one.
    assert netcfg_args(cmdline(net_config(ROUTERLESS), "debian-12"))["domain"] == "bootd.internal"


def test_anaconda_and_subiquity_command_lines() -> None:
    config = net_config(ROUTERLESS, ROUTED)
    routerless = cmdline(config, "rocky-9", admin_ip="198.18.0.20")
    assert "ip=dhcp" in routerless
    assert not [a for a in routerless if a.startswith(("nameserver=", "gateway=", "ip=198"))]
    routed = cmdline(config, "rocky-9", admin_ip="198.19.0.20")
    assert [a for a in routed if a.startswith("nameserver=")] == [
        "nameserver=198.19.0.53", "nameserver=198.19.0.54"]
    assert "dns=198.19.0.53,198.19.0.54" in cmdline(config, "rhel-5.6", admin_ip="198.19.0.20")
    assert not [a for a in cmdline(config, "rhel-5.6", admin_ip="198.18.0.20") if a.startswith("dns=")]
    auto = cmdline(config, "ubuntu-24.04", admin_ip="198.18.0.20")
    assert "ip=dhcp" in auto and "autoinstall" in auto


@pytest.mark.parametrize("profile", ["debian-12", "ubuntu-24.04", "rhel-5.6", "rocky-9"])
def test_answer_files_follow_the_subnet(profile: str) -> None:
    from ipaddress import IPv4Address

    from bootd import boot
    from bootd.model.profiles import ANSWER_FILE
    from bootd.model.states import NodeState

    config = net_config(ROUTERLESS, ROUTED)
    kind = ANSWER_FILE[config.profiles[profile].family]  # type: ignore[attr-defined]

    def answer(admin_ip: str | None, leased: str | None = None) -> str:
        view = boot.NodeView("n1", "52:54:00:00:00:01", NodeState.INSTALLING, profile, "TOK",
                             IPv4Address(admin_ip) if admin_ip else None,
                             IPv4Address(leased) if leased else None)
        return boot.answer(kind, view, config)  # type: ignore[arg-type]

    isolated, routed = answer("198.18.0.20"), answer("198.19.0.20")
    assert "198.19.0.1" not in isolated and "198.19.0.53" not in isolated
    assert "bootd.internal" in isolated and "rack2.example" in routed
    assert "198.19.0.1" in routed and "198.19.0.53" in routed
    # A node without an address: its lease's subnet names the domain.
    assert "rack2.example" in answer(None, "198.19.0.150")
    if kind == "preseed":
        values = {q: v for q, (_, v) in preseed_values(isolated).items()}
        assert values["netcfg/no_default_route"] == "true"
        assert values["netcfg/get_nameservers"] == ""
        assert values["netcfg/get_domain"] == "bootd.internal"


def test_policy_renders_with_the_lease_holders_subnet() -> None:
    from ipaddress import IPv4Address

    from bootd.model.records import DirectoryEntry
    from bootd.model.states import NodeState
    from bootd.policy import Policy

    mac = "52:54:00:00:00:07"
    policy = Policy(net_config(ROUTERLESS, ROUTED))  # type: ignore[arg-type]
    policy.load([DirectoryEntry(mac, "n7", None, None, NodeState.HARDWARE_INSTALLED, "debian-12")])
    policy.leased(mac, IPv4Address("198.19.0.150"))
    script = policy.script("ipxe", mac, IPv4Address("198.19.0.150"))
    assert "domain=rack2.example" in script and "netcfg/no_default_route" not in script
    policy.unleased(IPv4Address("198.19.0.150"))
    policy.leased(mac, IPv4Address("198.18.0.150"))
    script = policy.script("ipxe", mac, IPv4Address("198.18.0.150"))
    assert "domain=bootd.internal" in script and "netcfg/no_default_route=true" in script
