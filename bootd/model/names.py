"""Validation and normal forms of identifiers that arrive from outside.

Node names become DNS host names (RFC 1123 section 2.1 relaxes RFC 952 to allow
a leading digit), so they follow the label rules: 1-63 of [a-z0-9-], no leading
or trailing hyphen. MACs are stored in one canonical form (lower-case,
colon-separated) so that a lookup by the address in a DHCP packet, a CLI
argument or an iPXE ${mac} always meets the same string.
"""

from __future__ import annotations

import re

from bootd.errors import InvalidInput

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_HEX12 = re.compile(r"^[0-9a-f]{12}$")


def node_name(value: str) -> str:
    name = value.strip().lower()
    if not _LABEL.match(name):
        raise InvalidInput(
            f"invalid node name {value!r}: use 1-63 letters, digits or hyphens, "
            "not starting or ending with a hyphen"
        )
    return name


def mac_address(value: str) -> str:
    """aa:bb:cc:dd:ee:ff from any of aa:bb:.., aa-bb-.., aabb.ccdd.eeff, aabbccddeeff."""
    digits = re.sub(r"[:.\-]", "", value.strip().lower())
    if not _HEX12.match(digits) or not _separators_consistent(value.strip()):
        raise InvalidInput(f"invalid MAC address {value!r}")
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def _separators_consistent(text: str) -> bool:
    seps = set(re.findall(r"[:.\-]", text))
    if not seps:
        return len(text) == 12
    if len(seps) > 1:
        return False
    sep = seps.pop()
    parts = text.split(sep)
    if sep == ".":
        return [len(p) for p in parts] == [4, 4, 4]
    return [len(p) for p in parts] == [2] * 6


def dns_domain(value: str) -> str:
    domain = value.strip().lower().rstrip(".")
    labels = domain.split(".")
    if not domain or len(domain) > 253 or not all(_LABEL.match(label) for label in labels):
        raise InvalidInput(f"invalid DNS domain {value!r}")
    return domain


def short_text(value: str, what: str, max_len: int) -> str:
    """Free text from an operator (rack, profile, BMC user): printable, one line, bounded."""
    text = value.strip()
    if not text or len(text) > max_len or not text.isprintable():
        raise InvalidInput(f"invalid {what} {value!r}: 1-{max_len} printable characters")
    return text
