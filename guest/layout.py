"""The docteur image layout, as the original OCaml docteur writes it.

    0   20  raw SHA-1 of the commit
    20   8  absolute offset of the IDX, int64 little-endian
    28   n  a Git PACK v2, then zeros up to the next block boundary
            (a whole block more when the PACK already ends on one)
    idx  m  a Git IDX v2 (offsets relative to the PACK), then zeros, same rule
"""

from __future__ import annotations

import os
import struct
from collections import namedtuple

from .defaults import DEFAULT_BLOCK_SIZE
from .errors import ImageError
from .idx import COUNT_AT, idx_size, offsets_at
from .idx import MAGIC as IDX_MAGIC

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is dear to import in the VM
    from typing import BinaryIO

HEADER_SIZE = 28
PACK_OFFSET = HEADER_SIZE
# Smallest PACK: 12-byte header + 20-byte trailer.
MIN_PACK_SIZE = 32
MIN_IDX_SIZE = idx_size(0)
_HEADER = struct.Struct("<20sq")


def padded_end(end: int, block_size: int) -> int:
    """Where the zero padding after `end` stops: always past `end`, on a block."""
    return (end // block_size + 1) * block_size


class Header(namedtuple("Header", "commit idx_offset")):
    """The first 28 bytes: the raw commit id and the IDX's absolute offset."""

    __slots__ = ()

    def to_bytes(self) -> bytes:
        return _HEADER.pack(self.commit, self.idx_offset)

    @classmethod
    def from_bytes(cls, data: bytes) -> Header:
        if len(data) < HEADER_SIZE:
            raise ImageError(f"not a docteur image: {len(data)} bytes, a header needs {HEADER_SIZE}")
        commit, idx_offset = _HEADER.unpack_from(data)
        return cls(commit, idx_offset)


class Layout(namedtuple("Layout", "header pack_end idx_end image_size")):
    """Where things are in one image; `pack_end` includes the PACK's trailer."""

    __slots__ = ()

    @property
    def commit(self) -> bytes:
        return self.header.commit

    @property
    def idx_offset(self) -> int:
        return self.header.idx_offset


def write_image(
    out: BinaryIO,
    commit: bytes,
    pack: BinaryIO,
    idx: bytes,
    block_size: int = DEFAULT_BLOCK_SIZE,
    *,
    chunk_size: int = 1 << 20,
    on_bytes: object = None,
) -> int:
    """Write an image to `out` from a PACK stream and IDX bytes; return its size.

    `pack` is read to its end and copied as it is. `on_bytes(n)`, when given,
    is called with the number of bytes written so far (for progress).
    """
    if len(commit) != 20:
        raise ValueError("commit must be a raw 20-byte SHA-1")
    if block_size <= 0:
        raise ValueError("block size must be positive")
    out.write(b"\0" * HEADER_SIZE)  # rewritten once the IDX offset is known
    written = HEADER_SIZE
    while chunk := pack.read(chunk_size):
        out.write(chunk)
        written += len(chunk)
        if callable(on_bytes):
            on_bytes(written)
    idx_offset = padded_end(written, block_size)
    out.write(b"\0" * (idx_offset - written))
    out.write(idx)
    end = padded_end(idx_offset + len(idx), block_size)
    out.write(b"\0" * (end - idx_offset - len(idx)))
    if callable(on_bytes):
        on_bytes(end)
    out.seek(0)
    out.write(Header(commit, idx_offset).to_bytes())
    out.seek(end)
    return end


def read_layout(fd: int, size: int | None = None) -> Layout:
    """Read and sanity-check the header of the image open on `fd`.

    Finds the end of the PACK by its trailer, which the IDX repeats: the
    PACK is followed by zeros only, so the trailer ends within 20 bytes
    after the last non-zero byte before the IDX.
    """
    if size is None:
        size = device_size(fd)
    header = Header.from_bytes(os.pread(fd, HEADER_SIZE, 0))
    if size < HEADER_SIZE + MIN_PACK_SIZE + MIN_IDX_SIZE:
        raise ImageError(f"not a docteur image: only {size} bytes")
    if os.pread(fd, 4, PACK_OFFSET) != b"PACK":
        raise ImageError("not a docteur image: no PACK signature at byte 28")
    off = header.idx_offset
    if not (PACK_OFFSET + MIN_PACK_SIZE <= off <= size - MIN_IDX_SIZE):
        raise ImageError(f"not a docteur image: IDX offset {off} is outside the image ({size} bytes)")
    if os.pread(fd, 8, off) != IDX_MAGIC:
        raise ImageError(f"no IDX v2 signature at byte {off} (the header's IDX offset)")
    # The IDX's length follows from its object count.
    (count,) = struct.unpack(">I", os.pread(fd, 4, off + COUNT_AT))
    if idx_size(count) > size - off:
        raise ImageError(f"IDX at byte {off} claims {count} objects, more than the image holds")
    # 64-bit offsets (packs over 2 GiB) add 8 bytes each after the 32-bit table.
    off32 = os.pread(fd, 4 * count, off + offsets_at(count))
    length = idx_size(count, sum(1 for i in range(0, len(off32), 4) if off32[i] & 0x80))
    if length > size - off:
        raise ImageError(f"IDX at byte {off} is truncated")
    pack_sha = os.pread(fd, 20, off + length - 40)
    pack_end = _find_pack_end(fd, off, pack_sha)
    return Layout(header, pack_end, off + length, size)


def _find_pack_end(fd: int, idx_offset: int, pack_sha: bytes) -> int:
    window = min(idx_offset - PACK_OFFSET, 1 << 16)
    pos = idx_offset
    # Skip the zero padding backwards (normally under one block).
    while pos > PACK_OFFSET:
        start = max(PACK_OFFSET, pos - window)
        chunk = os.pread(fd, pos - start, start)
        stripped = chunk.rstrip(b"\0")
        if stripped:
            last = start + len(stripped)  # one past the last non-zero byte
            for end in range(last, min(last + 20, idx_offset) + 1):
                if end - 20 >= PACK_OFFSET + 12 and os.pread(fd, 20, end - 20) == pack_sha:
                    return end
            _check_padding(fd, last, idx_offset, pack_sha)
            break
        pos = start
    raise ImageError("the PACK's trailer does not match the checksum the IDX records")


def _check_padding(fd: int, last: int, idx_offset: int, pack_sha: bytes) -> None:
    """Raise when the trailer sits a little before `last`: the PACK is whole and
    a non-zero byte lies in the padding after it (a padding is under a block)."""
    start = max(PACK_OFFSET + 12, last - (1 << 16))
    found = os.pread(fd, last - start, start).rfind(pack_sha)
    if found < 0:
        return
    end = start + found + 20
    tail = os.pread(fd, idx_offset - end, end)
    at = end + len(tail) - len(tail.lstrip(b"\0"))
    raise ImageError(
        f"non-zero byte {at} in the zero padding between the PACK (ends at byte {end}) "
        f"and the IDX (at byte {idx_offset})"
    )


def device_size(fd: int) -> int:
    """Size of a regular file or a block device open on `fd`."""
    size = os.fstat(fd).st_size
    if size == 0:  # block devices report 0; seeking to the end works for both
        size = os.lseek(fd, 0, os.SEEK_END)
    return size
