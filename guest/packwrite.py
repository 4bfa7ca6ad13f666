"""A streaming PACK v2 writer onto a device, followed by its IDX.

Objects are stored whole, or (compaction) as OFS_DELTAs against an object of the
same PACK, never of another: each PACK is self-contained. Bytes
are gathered in a buffer and written as whole 4096-byte blocks at aligned
offsets, so a blob of any size passes through a bounded amount of memory. The
PACK header's object count is only known at the end: `finish` rewrites the first
block and hashes the PACK for its trailer (from memory when it never left the
buffer, else by reading it back).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterable

from .deltaenc import make_delta
from .device import BLOCK, Device, align_up
from .errors import DocteurError
from .idx import build_idx
from .objects import TYPE_CODES, object_header, object_id, sha1
from .pack import OFS_DELTA
from .roots import Extent

# Pending bytes above this are written out (whole blocks), so a small batch's
# PACK stays in memory until `finish` and is written once.
_SPILL = 4 << 20
_READ_BACK = 1 << 20
# git's default delta chain limit (pack.depth).
MAX_DEPTH = 50


def _ofs_bytes(rel: int) -> bytes:
    """An OFS_DELTA's distance back to its base, as git encodes it."""
    out = [rel & 0x7F]
    rel >>= 7
    while rel:
        rel -= 1
        out.append(0x80 | (rel & 0x7F))
        rel >>= 7
    return bytes(reversed(out))


class NoSpace(DocteurError):
    """The batch does not fit in the image's free space; nothing was committed."""


def entry_header(kind: str | int, size: int) -> bytes:
    """A PACK entry header: type (a kind or a type number) and size, little-endian base-128."""
    byte = ((TYPE_CODES[kind] if isinstance(kind, str) else kind) << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    out.append(byte)
    return bytes(out)


class PackWriter:
    """Writes one PACK at `offset` (aligned) that must end, IDX included, by `limit`.

    `known(oid)` says whether the store holds an object already: such objects are
    skipped (for a stream, the writer rewinds to where the object began)."""

    def __init__(
        self, device: Device, offset: int, limit: int, known: Callable[[bytes], bool], level: int = 1
    ):
        if offset % BLOCK:
            raise ValueError(f"unaligned PACK offset {offset}")
        self.device = device
        self.offset = offset
        self.limit = limit
        self.known = known
        self.level = level
        self.entries: dict[bytes, tuple[int, int]] = {}  # oid -> (crc32, PACK offset)
        self._depth: dict[bytes, int] = {}  # delta chain length of the objects stored as deltas
        self._buf = bytearray(b"PACK" + struct.pack(">II", 2, 0))
        self._written = 0  # PACK-relative bytes on the device (whole blocks)
        self._first_block: bytes | None = None  # as written, count still 0
        self.finished: Extent | None = None

    @property
    def pos(self) -> int:
        """PACK-relative offset of the next byte."""
        return self._written + len(self._buf)

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.entries

    def _write(self, data: bytes | memoryview) -> None:
        self._buf += data
        if len(self._buf) >= _SPILL:
            self._spill()

    def _spill(self) -> None:
        whole = len(self._buf) - len(self._buf) % BLOCK
        if not whole:
            return
        self._check_room(self._written + whole)
        chunk = bytes(self._buf[:whole])
        if self._written == 0:
            self._first_block = chunk[:BLOCK]
        self.device.pwrite(chunk, self.offset + self._written)
        self._written += whole
        del self._buf[:whole]

    def _check_room(self, end: int) -> None:
        if self.offset + end > self.limit:
            raise NoSpace(
                f"no space: the batch needs more than the {self.limit - self.offset} free bytes "
                f"at byte {self.offset} of the image"
            )

    def add(self, kind: str, body: bytes) -> bytes:
        """Store a whole object; returns its id (also when it was already there)."""
        oid = object_id(kind, body)
        if oid in self.entries or self.known(oid):
            return oid
        data = entry_header(kind, len(body)) + zlib.compress(body, self.level)
        self.entries[oid] = (zlib.crc32(data), self.pos)
        self._write(data)
        return oid

    def add_delta(self, kind: str, body: bytes, base: bytes, base_body: bytes) -> bytes:
        """Store an object as an OFS_DELTA against `base` (an object of this PACK, whose
        body is `base_body`) when that is worth it, else whole; returns its id."""
        oid = object_id(kind, body)
        if oid in self.entries or self.known(oid):
            return oid
        depth = self._depth.get(base, 0) + 1
        if base not in self.entries or depth > MAX_DEPTH:
            return self.add(kind, body)
        delta = make_delta(base_body, body)
        if len(delta) > len(body) // 2:
            return self.add(kind, body)
        rel = self.pos - self.entries[base][1]
        data = entry_header(OFS_DELTA, len(delta)) + _ofs_bytes(rel) + zlib.compress(delta, self.level)
        self.entries[oid] = (zlib.crc32(data), self.pos)
        self._depth[oid] = depth
        self._write(data)
        return oid

    def add_stream(self, kind: str, size: int, chunks: Iterable[bytes]) -> bytes:
        """Store an object of `size` bytes given in pieces, hashed as it is written."""
        start = self.pos
        written = self._written
        # The bytes of the block `start` lies in, to restore them when rewinding.
        tail = bytes(self._buf[start - start % BLOCK - written :])
        h = sha1(object_header(kind, size), size)
        comp = zlib.compressobj(self.level)
        head = entry_header(kind, size)
        crc = zlib.crc32(head)
        got = 0
        try:
            self._write(head)
            for chunk in chunks:
                got += len(chunk)
                if got > size:
                    break
                h.update(chunk)
                data = comp.compress(chunk)
                crc = zlib.crc32(data, crc)
                self._write(data)
            if got != size:
                raise ValueError(f"the {kind} changed while it was read: {got} bytes, expected {size}")
            data = comp.flush()
            crc = zlib.crc32(data, crc)
            self._write(data)
        except BaseException:
            # A source that fails (or lies about its size) leaves the writer as it was.
            self._rewind(start, written, tail)
            raise
        oid = h.digest()
        if oid in self.entries or self.known(oid):
            self._rewind(start, written, tail)
        else:
            self.entries[oid] = (crc, start)
        return oid

    def _rewind(self, pos: int, written: int, tail: bytes) -> None:
        """Back to PACK offset `pos` (`written` and `tail` as they were there); the
        blocks already written past it lie in free space and are written over."""
        if self._written == written:
            del self._buf[pos - written :]
        else:
            self._buf = bytearray(tail)
            self._written = pos - pos % BLOCK

    def finish(self) -> Extent:
        """Write the count, the trailer and the IDX; return the extent. No flush."""
        if self.finished is not None:
            raise ValueError("this PACK is finished already")
        count = len(self.entries)
        fixed = struct.pack(">I", count)
        if self._written == 0:
            self._buf[8:12] = fixed
            h = sha1(self._buf, len(self._buf))
        else:
            assert self._first_block is not None
            first = self._first_block[:8] + fixed + self._first_block[12:]
            self.device.pwrite(first, self.offset)
            h = sha1(b"", self.pos)
            for at in range(0, self._written, _READ_BACK):
                n = min(_READ_BACK, self._written - at)
                piece = self.device.pread(n, self.offset + at)
                if at == 0:
                    piece = first + piece[BLOCK:]
                h.update(piece)
            h.update(self._buf)
        trailer = h.digest()
        self._buf += trailer
        pack_length = self.pos
        self._buf += bytes(align_up(pack_length) - pack_length)
        self._check_room(self.pos)
        self._spill()
        idx_offset = self.offset + self._written
        idx = build_idx(((oid, crc, off) for oid, (crc, off) in self.entries.items()), trailer)
        padded = idx + bytes(align_up(len(idx)) - len(idx))
        self._check_room(idx_offset + len(padded) - self.offset)
        self.device.pwrite(padded, idx_offset)
        self.finished = Extent(self.offset, pack_length, idx_offset, len(idx), trailer, idx[-20:])
        return self.finished
