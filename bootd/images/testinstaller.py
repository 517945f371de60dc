"""A miniature installer and a boot sector, for the VM tests and the demo.

Not an OS: the test installer is the discovery image with another /init. It does
what a real installer's callbacks do: fetches the node's rendered kickstart,
reports `installing` with the kickstart's own callback URL, writes a mark to the
disk's second sector, reports `installed` and reboots. The boot sector prints
LOCAL_MARK on COM1, so "booted from its own disk" shows on a serial console.
"""

from __future__ import annotations

from pathlib import Path

from bootd.images.cpio import archive

LOCAL_MARK = b"bootd-local-disk"

# A 512-byte boot sector: prints LOCAL_MARK on COM1 and halts (so "booted from
# the local disk" shows on the serial console). 16-bit real mode, hand-assembled.
BOOT_CODE = bytes.fromhex(
    "fa31c08ed8be217c"    # cli; xor ax,ax; mov ds,ax; mov si,0x7c21
    "ac84c07411"          # next: lodsb; test al,al; jz done
    "88c3bafd03"          # mov bl,al; mov dx,0x3fd
    "eca82074fb"          # wait: in al,dx; test al,0x20; jz wait
    "b2f888d8ee" "ebea"   # mov dl,0xf8; mov al,bl; out dx,al; jmp next
    "f4ebfd"              # done: hlt; jmp done
) + LOCAL_MARK + b"\r\n\0"
MBR = BOOT_CODE.ljust(510, b"\0") + b"\x55\xaa"

# The test installer: what the installed OS's installer does, in miniature. It
# fetches the rendered kickstart, reports `installing`, writes its mark to the
# second sector, reports `installed` with the kickstart's own callback URLs, reboots.
INSTALLER = """#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for m in virtio_pci virtio_net virtio_blk; do modprobe $m; done
ks=""; for w in $(cat /proc/cmdline); do case $w in inst.ks=*) ks=${w#inst.ks=};; esac; done
cat > /tmp/dhcp.sh <<'EOF'
#!/bin/sh
[ "$1" = bound ] && ip addr add "$ip/${mask:-24}" dev "$interface"; exit 0
EOF
chmod +x /tmp/dhcp.sh
for dev in /sys/class/net/*; do
  n=${dev##*/}; [ $n = lo ] || { ip link set $n up; udhcpc -i $n -n -q -s /tmp/dhcp.sh; }
done
timeout 30 wget -q -O /tmp/ks "$ks" || echo "installer: cannot fetch $ks"
cb=$(sed -n "s/.*'\\(http[^']*state=\\)installing'.*/\\1/p" /tmp/ks | head -n 1)
echo "installer: callback $cb"
timeout 30 wget -q -O /dev/null --post-data '' "${cb}installing"
echo "bootd-installed $(sed -n 's/^network .*--hostname=\\([^ ]*\\).*/\\1/p' /tmp/ks)" |
  dd of=/dev/vda bs=512 seek=1 conv=notrunc,sync 2>/dev/null
sync
timeout 30 wget -q -O /dev/null --post-data '' "${cb}installed" && echo "installer: installed"
sleep 1
reboot -f
"""




def build(tftp_root: Path, name: str = "testinstall") -> Path:
    """images/<name>/{vmlinuz,initrd.img} from the discovery image already built there."""
    discovery = tftp_root / "images" / "discovery"
    out = tftp_root / "images" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "vmlinuz").write_bytes((discovery / "vmlinuz").read_bytes())
    extra = out / ".init-root"
    extra.mkdir(exist_ok=True)
    (extra / "init").write_text(INSTALLER)
    (extra / "init").chmod(0o755)
    # A second archive after the first overrides /init: the kernel unpacks both in order.
    (out / "initrd.img").write_bytes((discovery / "initrd.img").read_bytes() + archive(extra))
    (extra / "init").unlink()
    extra.rmdir()
    return out


def disk_image(path: Path, size: int) -> None:
    """A raw disk holding only the boot sector."""
    with path.open("wb") as f:
        f.write(MBR)
        f.truncate(size)
