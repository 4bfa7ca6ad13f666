"""The benchmark's own initramfs variants, built at bench time (never part of the product).

- `bare_initrd()`: only a static /init that writes "!" to the console and powers off:
  the cheapest possible boot of the same kernel, the baseline of the boot row.
- `blast_initrd(guest_initrd)`: the guest's initramfs with another /init appended
  (a later cpio entry replaces an earlier one): it sets the machine up as the real
  PID 1 does, then writes zeros to the protocol port as fast as it can, the ceiling
  of a protocol `get`.
"""

from __future__ import annotations

import struct
from pathlib import Path

from docteur.vm.guestbuild.cpio import Archive
from docteur.vm.guestbuild.initramfs import MTIME, base_archive

BLAST_INIT = Path(__file__).resolve().with_name("blast_init.py")


def bare_init() -> bytes:
    """A static x86-64 ELF that writes "!" to the console and powers off."""
    base, code_off = 0x400000, 64 + 56
    code = bytearray()
    code += b"\xb8\x01\x00\x00\x00"  # mov eax, 1 (write)
    code += b"\xbf\x01\x00\x00\x00"  # mov edi, 1
    lea_at = len(code)
    code += b"\x48\x8d\x35\0\0\0\0"  # lea rsi, [rip + msg]
    code += b"\xba\x01\x00\x00\x00"  # mov edx, 1
    code += b"\x0f\x05"  # syscall
    code += b"\xb8\xa9\x00\x00\x00"  # mov eax, 169 (reboot)
    code += b"\xbf\xad\xde\xe1\xfe"  # mov edi, LINUX_REBOOT_MAGIC1
    code += b"\xbe\x69\x19\x12\x28"  # mov esi, LINUX_REBOOT_MAGIC2
    code += b"\xba\xdc\xfe\x21\x43"  # mov edx, LINUX_REBOOT_CMD_POWER_OFF
    code += b"\x0f\x05"  # syscall
    code += b"\xeb\xfe"  # jmp $ (never returns)
    msg_at = len(code)
    code += b"!"
    struct.pack_into("<i", code, lea_at + 3, msg_at - (lea_at + 7))
    size = code_off + len(code)
    ehdr = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, base + code_off, 64, 0, 0, 64, 56, 1, 0, 0, 0
    )
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)
    return ehdr + phdr + bytes(code)


def bare_initrd() -> bytes:
    archive = base_archive()
    archive.file("init", bare_init(), 0o755)
    return archive.gzip(MTIME)


def blast_initrd(guest_initrd: bytes) -> bytes:
    """The kernel unpacks concatenated cpio archives in order: ours replaces /init."""
    extra = Archive()
    extra.file("init", BLAST_INIT.read_bytes(), 0o755)
    return guest_initrd + extra.cpio(MTIME)
