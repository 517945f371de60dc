"""What kind of machine is asking: one classification for every protocol.

Architecture types are RFC 4578 section 2.1's, as kept in IANA's "Processor
Architecture Types" registry (types 15-20 are the UEFI HTTP boot ones). The
firmware kind says who is speaking: the NIC's PXE ROM, UEFI's HTTP boot
client, iPXE (identified by user class "iPXE" or its option 175), or an
ordinary DHCP client (an installed OS, dhclient) that is not booting at all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Arch(enum.IntEnum):
    BIOS = 0
    EFI_IA32 = 6
    EFI_BC = 7  # EFI byte code; in practice what x86-64 UEFI PXE ROMs send
    EFI_X64 = 9
    EFI_ARM32 = 10
    EFI_ARM64 = 11
    EFI_IA32_HTTP = 15
    EFI_X64_HTTP = 16
    EFI_ARM32_HTTP = 18
    EFI_ARM64_HTTP = 19
    BIOS_HTTP = 20

    @classmethod
    def of(cls, value: int) -> Arch | None:
        try:
            return cls(value)
        except ValueError:
            return None

    @property
    def http_boot(self) -> bool:
        return self in (Arch.EFI_IA32_HTTP, Arch.EFI_X64_HTTP, Arch.EFI_ARM32_HTTP,
                        Arch.EFI_ARM64_HTTP, Arch.BIOS_HTTP)


class Firmware(enum.StrEnum):
    PXE = "pxe"
    HTTP = "http"
    IPXE = "ipxe"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class BootClient:
    mac: str
    firmware: Firmware
    arch: Arch | None = None
    uuid: bytes | None = None

    @property
    def booting(self) -> bool:
        return self.firmware is not Firmware.OTHER
