"""Rendering boot configs and answer files: pure functions over Jinja2 with StrictUndefined.

A missing variable is an error at render time, never an empty string in a
kernel command line. Templates ship inside the package (bootd/templates/) and
are read with importlib.resources, so a wheel install finds them as a checkout
does: boot scripts at the top (ipxe.j2, pxelinux.cfg.j2, grub.cfg.j2), answer
files under kickstart/ and preseed/, so a profile names its template as
"kickstart/rocky-9.ks.j2".
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jinja2

from bootd.errors import BootdError, InvalidInput


class RenderError(BootdError):
    """A template failed: missing, broken, or asking for a variable nobody gave it."""

# Package data, found through importlib.resources (PackageLoader), never
# through Path(__file__): a wheel or zip install has no repository around it.
PACKAGE, TEMPLATES = "bootd", "templates"


def _grub_quote(arg: str) -> str:
    """One GRUB word: GRUB's shell-like parser splits on ; and spaces and expands $."""
    if arg and all(c.isalnum() or c in "=/:.,_-+@%" for c in arg):
        return arg
    return "'" + arg.replace("'", "'\\''") + "'"


_env = jinja2.Environment(loader=jinja2.PackageLoader(PACKAGE, TEMPLATES),
                          undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                          trim_blocks=True, lstrip_blocks=True,
                          autoescape=False)  # noqa: S701 - boot configs, not HTML
_env.filters["grub_quote"] = _grub_quote


@dataclass(frozen=True, slots=True)
class BootTarget:
    """What one machine boots now, in terms every boot-config language can say."""

    mode: str  # "discovery", "install" or "local"
    mac: str
    describe: str
    kernel: str = ""  # path under the TFTP root (and under the HTTP base)
    initrd: str = ""
    args: tuple[str, ...] = field(default_factory=tuple)  # kernel arguments, one word each

    @property
    def append(self) -> str:
        return " ".join(self.args)

    @property
    def bootif(self) -> str:
        """pxelinux's BOOTIF=01-aa-bb-... (ARP type 1), which installers use to pick the NIC."""
        return "BOOTIF=01-" + self.mac.replace(":", "-")


def render(template: str, **context: object) -> str:
    try:
        return _env.get_template(template).render(**context)
    except jinja2.TemplateNotFound as exc:
        raise RenderError(f"template {exc.name!r} not found in {PACKAGE}/{TEMPLATES}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {template!r}: {type(exc).__name__}: {exc}") from None


def check(template: str) -> None:
    """The template exists and parses; InvalidInput says why not."""
    try:
        _env.get_template(template)
    except jinja2.TemplateNotFound:
        raise InvalidInput(f"template {template!r} not found in {PACKAGE}/{TEMPLATES}") from None
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidInput(f"template {template!r} line {exc.lineno}: {exc.message}") from None
