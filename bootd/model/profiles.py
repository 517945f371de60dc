"""OS profiles: what an installer needs to boot and which answer file it reads.

A profile is a kernel and initrd (paths under the TFTP root, also served over
HTTP under /images/), an install tree URL, and an install family, which fixes
the kernel arguments the installer understands and the answer file bootd
renders for it. Operators add or override profiles in the config
(`[profiles.NAME]`) or import media with `bootd images import`, which writes
<state_dir>/profiles/NAME.toml (read after the built-ins, before the config
file's own tables); the built-ins expect the media under
<state_dir>/tftp/images/<name>/ (kernel, initrd and tree/).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# A profile name is a file name (profiles/NAME.toml) and a URL path part (/images/NAME/).
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def valid_name(name: str) -> bool:
    """Letters (lower case), digits, '-', '_' and '.', not starting with '.' or '-', no '..'."""
    return _NAME.fullmatch(name) is not None and ".." not in name


class Family(enum.StrEnum):
    PRESEED = "preseed"          # Debian-installer (Ubuntu <= 20.04 netboot)
    AUTOINSTALL = "autoinstall"  # Subiquity + cloud-init nocloud-net (Ubuntu >= 20.04 live server)
    KICKSTART_RHEL5 = "kickstart-rhel5"  # anaconda of RHEL 5: ks= ksdevice= method=
    KICKSTART = "kickstart"      # current anaconda: inst.ks= inst.repo=


# The answer file each family reads, by the name it is served under /install/<node>/.
ANSWER_FILE = {
    Family.PRESEED: "preseed",
    Family.AUTOINSTALL: "user-data",
    Family.KICKSTART_RHEL5: "kickstart",
    Family.KICKSTART: "kickstart",
}


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    family: Family
    kernel: str    # under the TFTP root
    initrd: str
    # install tree: a URL, or a path under the TFTP root served by HTTP (an imported
    # tree, or the ISO casper's url= fetches); "" = <http base>/images/<name>/tree
    tree: str
    template: str  # the answer file's template
    extra_args: str = ""  # more kernel arguments

    def tree_url(self, http_base: str) -> str:
        if not self.tree:
            return f"{http_base}/images/{self.name}/tree"
        if "://" in self.tree or self.tree.startswith("nfs:"):
            return self.tree
        return f"{http_base}/{self.tree}"


def _builtin(name: str, family: Family, template: str, kernel: str = "vmlinuz",
             initrd: str = "initrd.img", extra: str = "") -> Profile:
    return Profile(name, family, f"images/{name}/{kernel}", f"images/{name}/{initrd}", "", template, extra)


BUILTIN: dict[str, Profile] = {p.name: p for p in (
    _builtin("ubuntu-20.04", Family.PRESEED, "preseed/ubuntu-20.04.preseed.j2", "linux", "initrd.gz"),
    _builtin("ubuntu-24.04", Family.AUTOINSTALL, "preseed/ubuntu-24.04.user-data.j2", "vmlinuz", "initrd"),
    _builtin("rhel-5.6", Family.KICKSTART_RHEL5, "kickstart/rhel-5.6.ks.j2"),
    _builtin("rocky-9", Family.KICKSTART, "kickstart/rocky-9.ks.j2"),
)}
