"""Rendering boot configs: one pure function over Jinja2 templates with StrictUndefined.

A missing variable is an error at render time, never an empty string in a
kernel command line. Templates live in the top-level templates/ directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                          keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                          autoescape=False)  # noqa: S701 - boot configs, not HTML


@dataclass(frozen=True, slots=True)
class BootTarget:
    """What one machine boots now, in terms every boot-config language can say."""

    mode: str  # "discovery", "install" or "local"
    mac: str
    describe: str
    kernel: str = ""
    initrd: str = ""
    append: str = ""


def render(template: str, **context: object) -> str:
    return _env.get_template(template).render(**context)
