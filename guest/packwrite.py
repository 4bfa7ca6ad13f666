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
from collections.abc import Callable, Iterable, Iterator

from .deltaenc import make_delta
from .device import BLOCK, Device, align_up
from .errors import DocteurError, IntegrityError
from .idx import build_idx
from .objects import TYPE_CODES, TYPE_NUMBERS, object_header, object_id, sha1
from .pack import OFS_DELTA, PACK_HEADER, parse_entry
from .roots import Extent

# Pending bytes above this are written out (whole blocks), so a small batch's
# PACK stays in memory until `finish` and is written once.
_SPILL = 4 << 20
_READ_BACK = 1 << 20
_INFLATE = 1 << 18  # inflated pieces of a read back from an open batch
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


class ObjectStream:
    """One object being written into a PackWriter, its bytes pushed as they come."""

    def __init__(self, writer: PackWriter, kind: str, size: int):
        self.writer = writer
        self.kind = kind
        self.size = size
        self.start = start = writer.pos
        self.written = written = writer._written
        # The bytes of the block `start` lies in, to restore them when rewinding.
        self.tail = bytes(writer._buf[start - start % BLOCK - written :])
        self.got = 0
        self.hash = sha1(object_header(kind, size), size)
        self.comp = zlib.compressobj(writer.level)
        head = entry_header(kind, size)
        self.crc = zlib.crc32(head)
        self.closed = False
        self._write(head)

    def _write(self, data: bytes) -> None:
        try:
            self.writer._write(data)
        except BaseException:
            self.abort()
            raise

    def write(self, chunk: bytes) -> None:
        if self.closed:
            raise ValueError("this object is finished or aborted")
        self.got += len(chunk)
        if self.got > self.size:
            self.abort()
            raise ValueError(f"the {self.kind} is longer than the {self.size} bytes declared")
        self.hash.update(chunk)
        data = self.comp.compress(chunk)
        self.crc = zlib.crc32(data, self.crc)
        self._write(data)

    def finish(self) -> bytes:
        """The object's id, once its `size` bytes were written (the writer keeps
        one copy of an object: one it holds already is rewound)."""
        if self.got != self.size:
            self.abort()
            raise ValueError(
                f"the {self.kind} changed while it was read: {self.got} bytes, expected {self.size}"
            )
        data = self.comp.flush()
        self.crc = zlib.crc32(data, self.crc)
        self._write(data)
        self.closed = True
        writer = self.writer
        oid = self.hash.digest()
        if oid in writer.entries or writer.known(oid):
            writer._rewind(self.start, self.written, self.tail)
        else:
            writer.entries[oid] = (self.crc, self.start)
        return oid

    def abort(self) -> None:
        """Leave the writer as it was before this object."""
        if not self.closed:
            self.closed = True
            self.writer._rewind(self.start, self.written, self.tail)


class NoSpace(DocteurError):
    """The batch does not fit in the image's free space; nothing was committed."""

    code = "no_space"


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
        self._buf = bytearray(PACK_HEADER.pack(b"PACK", 2, 0))
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
        stream = self.stream(kind, size)
        try:
            for chunk in chunks:
                stream.write(chunk)
            return stream.finish()
        except BaseException:
            # A source that fails (or lies about its size) leaves the writer as it was.
            stream.abort()
            raise

    def stream(self, kind: str, size: int) -> ObjectStream:
        """An object of `size` bytes pushed in pieces (`write`, then `finish`);
        `abort` leaves the writer as it was. Nothing else may be added meanwhile."""
        return ObjectStream(self, kind, size)

    def _rewind(self, pos: int, written: int, tail: bytes) -> None:
        """Back to PACK offset `pos` (`written` and `tail` as they were there); the
        blocks already written past it lie in free space and are written over."""
        if self._written == written:
            del self._buf[pos - written :]
        else:
            self._buf = bytearray(tail)
            self._written = pos - pos % BLOCK

    def read_entry(self, oid: bytes) -> tuple[str, int, Iterator[bytes]] | None:
        """(kind, size, inflated pieces) of an object this PACK holds whole, None
        when it does not: a batch reads what it wrote before it commits."""
        found = self.entries.get(oid)
        if found is None or oid in self._depth:
            return None
        entry = parse_entry(self._read(found[1], 32), found[1])
        return TYPE_NUMBERS[entry.type], entry.size, self._inflate(entry.data_offset, entry.size)

    def _read(self, at: int, n: int) -> bytes:
        """`n` PACK bytes from `at` (fewer at the end): the device's, then the buffer's."""
        out = b""
        if at < self._written:
            take = min(n, self._written - at)
            out = self.device.pread(take, self.offset + at)
            at, n = at + take, n - take
        if n > 0 and at >= self._written:
            start = at - self._written
            out += bytes(self._buf[start : start + n])
        return out

    def _inflate(self, at: int, size: int) -> Iterator[bytes]:
        d = zlib.decompressobj()
        got = 0
        while got < size:
            raw = self._read(at, _READ_BACK)
            if not raw:
                raise IntegrityError(f"PACK entry at {at} of the open batch ends early")
            at += len(raw)
            piece = d.decompress(raw, _INFLATE)
            while piece:
                got += len(piece)
                yield piece
                piece = d.decompress(d.unconsumed_tail, _INFLATE) if d.unconsumed_tail else b""
            if d.eof:
                break
        if got != size:
            raise IntegrityError(f"PACK entry of the open batch inflates to {got} bytes, not {size}")

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
