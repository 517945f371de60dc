"""The DHCP view of "who is asking" (bootd.model.clients), from options 60, 77, 93, 97, 175.

iPXE is checked first: it also sends option 60 "PXEClient" and its architecture,
and it must get its script URL, not another copy of itself (the chainload loop).
"""

from __future__ import annotations

from bootd.dhcp.options import Opt
from bootd.dhcp.packet import Packet
from bootd.model.clients import Arch, BootClient, Firmware


def classify(packet: Packet) -> BootClient:
    o = packet.options
    arches = o.client_arches
    arch = Arch.of(arches[0]) if arches else None
    vendor = o.vendor_class or b""
    if b"iPXE" in o.user_classes or Opt.IPXE in o:
        firmware = Firmware.IPXE
    elif vendor.startswith(b"HTTPClient") or (arch is not None and arch.http_boot):
        firmware = Firmware.HTTP
    elif vendor.startswith(b"PXEClient"):
        firmware = Firmware.PXE
    else:
        firmware = Firmware.OTHER
    if arch is None and vendor.startswith(b"PXEClient"):
        arch = Arch.BIOS  # RFC 4578 section 2.1: pre-4578 PXE ROMs omit option 93 and are x86 BIOS
    return BootClient(packet.mac, firmware, arch, o.client_uuid)
