"""Just enough ELF64 reading to assemble the guest without binutils.

The guest build must run on a fresh machine where readelf/objdump may be
missing, so the two facts it needs are read here directly: the shared
libraries a binary links (DT_NEEDED) and a kernel module's `.modinfo`.
"""

from __future__ import annotations

import struct
from pathlib import Path

_DT_NEEDED = 1
_DT_STRTAB = 5
_PT_LOAD = 1
_PT_DYNAMIC = 2


class ElfError(ValueError):
    pass


def _header(data: bytes) -> tuple[int, int, int, int, int, int, int]:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ElfError("not a little-endian ELF64 file")
    # e_phoff, e_shoff, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 0x36)
    return phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx


def _cstr(data: bytes, offset: int) -> str:
    end = data.index(b"\0", offset)
    return data[offset:end].decode()


def needed(path: Path) -> list[str]:
    """The DT_NEEDED sonames of a dynamically linked executable or library."""
    data = path.read_bytes()
    phoff, _, phentsize, phnum, *_ = _header(data)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == _PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return []
    entries: list[tuple[int, int]] = []
    for off in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, val = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        entries.append((tag, val))
    strtab_vaddr = next(v for t, v in entries if t == _DT_STRTAB)
    # DT_STRTAB is a virtual address: map it back to a file offset.
    strtab = next(
        off + strtab_vaddr - vaddr
        for vaddr, off, size in loads
        if vaddr <= strtab_vaddr < vaddr + size
    )
    return [_cstr(data, strtab + v) for t, v in entries if t == _DT_NEEDED]


def section(path: Path, name: str) -> bytes:
    """The bytes of one named section (e.g. a kernel module's `.modinfo`)."""
    data = path.read_bytes()
    _, shoff, _, _, shentsize, shnum, shstrndx = _header(data)

    def sh(i: int) -> tuple[int, int, int]:
        sh_name, _, _, _, sh_offset, sh_size = struct.unpack_from(
            "<IIQQQQ", data, shoff + i * shentsize
        )
        return sh_name, sh_offset, sh_size

    strtab_off = sh(shstrndx)[1]
    for i in range(shnum):
        sh_name, off, size = sh(i)
        if _cstr(data, strtab_off + sh_name) == name:
            return data[off : off + size]
    raise ElfError(f"{path}: no section {name}")


def modinfo(path: Path) -> dict[str, str]:
    """A kernel module's `.modinfo` as a dict (last value wins for repeated keys)."""
    info: dict[str, str] = {}
    for item in section(path, ".modinfo").split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            info[key] = value
    return info
