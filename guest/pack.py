"""Random access to a Git PACK inside an image, read with pread.

Objects are found through the IDX, inflated on demand and rebuilt from
their delta chains with a small LRU of bases bounded in bytes, so memory
does not grow with the size of the PACK.
"""

from __future__ import annotations

import os
import stat
import struct
import zlib
from collections import OrderedDict, namedtuple
from collections.abc import Iterator

from .delta import apply_delta, delta_sizes
from .errors import IntegrityError, NotFound
from .idx import Index
from .objects import TYPE_NUMBERS

OFS_DELTA, REF_DELTA = 6, 7
PACK_HEADER = struct.Struct(">4sII")  # "PACK", version, object count
# An entry header is at most 10 size bytes + 1, plus a 20-byte base id or a
# 10-byte base offset: 64 bytes always hold it.
ENTRY_HEADER_MAX = 64
_READ = 1 << 16
_MAX_READ = 1 << 20
# Direct I/O (block devices only): reads of whole aligned blocks into a buffer of
# this size, DMA'd by the device, bypassing the page cache.
_DIRECT_ALIGN = 4096
_DIRECT_READ = 1 << 20
# Longer delta chains are taken for a cycle (git's default depth is 50).
MAX_CHAIN = 10_000


def bad_zlib(offset: int, exc: zlib.error) -> IntegrityError:
    """The error for an entry whose deflate data zlib rejects (one wording everywhere)."""
    return IntegrityError(f"PACK entry at {offset}: bad zlib data ({exc})")


def _skip_zlib_header(offset: int, raw: memoryview) -> memoryview:
    """`raw` past its zlib header (RFC 1950), which must be deflate without a
    preset dictionary, as zlib itself would check it."""
    if len(raw) < 2:
        raise bad_zlib(offset, zlib.error("truncated zlib header"))
    cmf, flg = raw[0], raw[1]
    if cmf & 0x0F != 8 or cmf >> 4 > 7 or (cmf << 8 | flg) % 31 or flg & 0x20:
        raise bad_zlib(offset, zlib.error("Error -3 while decompressing data: incorrect header check"))
    return raw[2:]


class Entry(namedtuple("Entry", "offset type size data_offset base_offset base_id", defaults=(None, None))):
    """One PACK entry's header; offsets are relative to the PACK start.

    `type` is 1..4 for whole objects, 6/7 for deltas; `size` the inflated size
    of the entry's data (the delta's own size for a delta); `base_offset` is set
    for an OFS_DELTA, `base_id` for a REF_DELTA.
    """

    __slots__ = ()

    @property
    def is_delta(self) -> bool:
        return self.type in (OFS_DELTA, REF_DELTA)


def parse_entry(buf: bytes | memoryview, offset: int, at: int = 0) -> Entry:
    """Parse the entry header found at `buf[at:]`, which sits at PACK `offset`."""
    try:
        byte = buf[at]
        kind = (byte >> 4) & 7
        size = byte & 0x0F
        shift = 4
        pos = at + 1
        while byte & 0x80:
            byte = buf[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
        if kind == OFS_DELTA:
            byte = buf[pos]
            pos += 1
            rel = byte & 0x7F
            while byte & 0x80:
                byte = buf[pos]
                pos += 1
                rel = ((rel + 1) << 7) | (byte & 0x7F)
            if rel <= 0 or rel > offset:
                raise IntegrityError(f"PACK entry at {offset}: delta base offset out of range")
            return Entry(offset, kind, size, offset + pos - at, base_offset=offset - rel)
        if kind == REF_DELTA:
            base = bytes(buf[pos : pos + 20])
            if len(base) != 20:
                raise IndexError
            return Entry(offset, kind, size, offset + pos + 20 - at, base_id=base)
    except IndexError:
        raise IntegrityError(f"PACK entry at {offset}: truncated header") from None
    if kind not in TYPE_NUMBERS:
        raise IntegrityError(f"PACK entry at {offset}: invalid object type {kind}")
    return Entry(offset, kind, size, offset + pos - at)


class PackReader:
    """Objects of the PACK that starts at byte `base` of the file open on `fd`."""

    def __init__(self, fd: int, base: int, end: int, index: Index, cache_bytes: int = 8 << 20):
        self.fd = fd
        self.base = base
        self.end = end - base  # PACK-relative end, trailer included
        self.index = index
        self._cache: OrderedDict[int, tuple[int, bytes]] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._direct_fd: int | None = None  # -1: no direct I/O here

    def forget(self) -> None:
        """Drop the cached delta bases (the file under them changed)."""
        self._cache.clear()
        self._cache_bytes = 0

    def close(self) -> None:
        if self._direct_fd is not None and self._direct_fd >= 0:
            os.close(self._direct_fd)
        self._direct_fd = None

    # -- raw access ---------------------------------------------------------
    def pread(self, n: int, offset: int) -> bytes:
        """`n` bytes at PACK-relative `offset`, never past the trailer."""
        n = min(n, self.end - 20 - offset)
        return os.pread(self.fd, n, self.base + offset) if n > 0 else b""

    def entry(self, offset: int) -> Entry:
        if not 12 <= offset < self.end - 20:
            raise IntegrityError(f"PACK offset {offset} is outside the PACK")
        return parse_entry(self.pread(ENTRY_HEADER_MAX, offset), offset)

    def _direct(self) -> int:
        """An O_DIRECT descriptor of the same block device, or -1.

        Under TCG the page cache path (readahead, cache insertion, the copy to
        user space) reads a virtio-blk disk at ~140 MB/s, direct reads at
        ~1 GB/s. Only for block devices: an image file on the host keeps the
        page cache, which caches it."""
        if self._direct_fd is None:
            self._direct_fd = -1
            try:
                if stat.S_ISBLK(os.fstat(self.fd).st_mode):
                    self._direct_fd = os.open(
                        f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC
                    )
            except (OSError, AttributeError):
                pass
        return self._direct_fd

    def pieces(
        self, pos: int, read_size: int = _MAX_READ, first: int = 0, direct: bool = False
    ) -> Iterator[bytes | memoryview]:
        """The PACK bytes from PACK-relative `pos` up to the trailer, in pieces of
        `read_size` (the first one `first` when given). `direct`: with direct I/O
        when the image is a block device.

        A direct read yields views of one buffer, refilled at the next step: each
        piece is used up before the next is asked for. The buffer is this
        generator's own, never shared by two streams."""
        fd = self._direct() if direct else -1
        if fd >= 0:
            import mmap  # a shared library: loaded only when needed

            # Page-aligned, as O_DIRECT wants; unmapped when the last view goes.
            view = memoryview(mmap.mmap(-1, _DIRECT_READ))
            limit = self.base + self.end - 20
            at = self.base + pos
            skip = at % _DIRECT_ALIGN
            at -= skip
            while at < limit:
                n = os.preadv(fd, [view], at)
                stop = min(n, limit - at)
                if stop > skip:
                    yield view[skip:stop]
                if n < len(view):
                    return
                at += n
                skip = 0
            return
        want = first or read_size
        while True:
            raw = self.pread(want, pos)
            if not raw:
                return
            pos += len(raw)
            want = read_size
            yield raw

    def inflate_chunks(
        self, entry: Entry, chunk_size: int = _READ, direct: bool = False, adler: bool = True
    ) -> Iterator[bytes]:
        """The entry's inflated data in pieces, checked against its declared size.

        `direct`: read a big entry with direct I/O when the image is a block device.
        `adler=False`: skip zlib's Adler-32 of the inflated data (its header is
        still checked), for a caller that hashes the same data with SHA-1 against
        the object's id: the Adler-32 then adds nothing but ~40% of the inflate
        time under TCG, and it is only compared after the last byte anyway."""
        d = zlib.decompressobj() if adler else zlib.decompressobj(-zlib.MAX_WBITS)
        header = not adler  # the 2-byte zlib header, read here for raw inflate
        produced = 0
        read_size = max(_READ, min(chunk_size, _MAX_READ))
        # Compressed data is rarely much bigger than its output: read it in one go
        # when small. Big objects are read in pieces as large as the chunks asked
        # for, so that incompressible data comes out in few, big pieces (each
        # piece costs interpreter time, which is dear under TCG).
        first = min(max(entry.size + 64, 256), read_size)
        direct = direct and entry.size > _DIRECT_READ
        pieces = self.pieces(entry.data_offset, read_size, first, direct)
        try:
            for piece in pieces:
                raw = memoryview(piece)
                if header:
                    raw = _skip_zlib_header(entry.offset, raw)
                    header = False
                # At most chunk_size of input per call: when the output fills
                # max_length, zlib copies the rest of its input (unconsumed_tail).
                for at in range(0, len(raw), chunk_size):
                    data = d.decompress(raw[at : at + chunk_size], chunk_size)
                    while True:
                        if data:
                            produced += len(data)
                            if produced > entry.size:
                                break
                            yield data
                        # Raw deflate leaves the Adler-32 after its end in unconsumed_tail
                        # when max_length stopped the call: eof, not an empty tail, ends it.
                        if d.eof or not d.unconsumed_tail:
                            break
                        data = d.decompress(d.unconsumed_tail, chunk_size)
                    if d.eof or produced > entry.size:
                        break
                if d.eof or produced > entry.size:
                    break
            else:
                raise IntegrityError(f"PACK entry at {entry.offset}: zlib data runs off the PACK")
        except zlib.error as exc:
            raise bad_zlib(entry.offset, exc) from None
        finally:
            pieces.close()
        if produced != entry.size:
            raise IntegrityError(
                f"PACK entry at {entry.offset}: inflates to {produced} bytes, header says {entry.size}"
            )

    def inflate(self, entry: Entry) -> bytes:
        if entry.size < _READ:
            # Most objects are small: one read, one decompress call, no generator
            # (their per-call cost is most of a small object's). Data that does not end
            # within the read (it cannot, unless damaged) takes the general path below.
            d = zlib.decompressobj()
            try:
                data = d.decompress(self.pread(entry.size + ENTRY_HEADER_MAX, entry.data_offset))
            except zlib.error as exc:
                raise bad_zlib(entry.offset, exc) from None
            if d.eof:
                if len(data) != entry.size:
                    raise IntegrityError(f"PACK entry at {entry.offset}: inflates to {len(data)} bytes, "
                                         f"header says {entry.size}")  # fmt: skip
                return data
        return b"".join(self.inflate_chunks(entry, 1 << 30))

    def inflate_prefix(self, entry: Entry, n: int) -> bytes:
        """The first `n` inflated bytes (to read a delta's sizes cheaply)."""
        d = zlib.decompressobj()
        try:
            return d.decompress(self.pread(min(entry.size + 64, 4096), entry.data_offset), n)
        except zlib.error as exc:
            raise bad_zlib(entry.offset, exc) from None

    # -- objects --------------------------------------------------------------
    def base_of(self, entry: Entry) -> int:
        if entry.base_offset is not None:
            return entry.base_offset
        assert entry.base_id is not None
        off = self.index.lookup(entry.base_id)
        if off is None:
            raise IntegrityError(
                f"PACK entry at {entry.offset}: delta base {entry.base_id.hex()} is not in the "
                "PACK (the PACK file is thin)"
            )
        return off

    def chain(self, offset: int) -> Iterator[Entry]:
        """The entry at `offset`, then its delta base, its base's base... down to a
        whole object (the last one yielded). The one walk down a delta chain."""
        entry = self.entry(offset)
        depth = 0
        while True:
            yield entry
            if not entry.is_delta:
                return
            depth += 1
            if depth > MAX_CHAIN:
                raise IntegrityError(f"PACK entry at {offset}: delta chain too deep or cyclic")
            entry = self.entry(self.base_of(entry))

    def resolve(self, offset: int) -> tuple[int, bytes]:
        """(type number, body) of the object at `offset`, deltas applied."""
        hit = self._cache.get(offset)
        if hit is not None:
            self._cache.move_to_end(offset)
            return hit
        # Walk down the chain iteratively (chains can be thousands deep), up to a
        # cached base or a whole object.
        deltas: list[Entry] = []
        for entry in self.chain(offset):
            hit = self._cache.get(entry.offset) if deltas else None
            if hit is not None:
                self._cache.move_to_end(entry.offset)
                kind, data = hit
                break
            if entry.is_delta:
                deltas.append(entry)
                continue
            kind, data = entry.type, self.inflate(entry)
            if deltas:
                self._remember(entry.offset, kind, data)
        for delta_entry in reversed(deltas):
            data = apply_delta(data, self.inflate(delta_entry))
            # Bases are what gets reused; the final object is returned, not cached.
            if delta_entry is not deltas[0]:
                self._remember(delta_entry.offset, kind, data)
        return kind, data

    def _remember(self, offset: int, kind: int, data: bytes) -> None:
        if len(data) > self._cache_limit // 4:
            return
        self._cache[offset] = (kind, data)
        self._cache_bytes += len(data)
        while self._cache_bytes > self._cache_limit:
            _, (_, old) = self._cache.popitem(last=False)
            self._cache_bytes -= len(old)

    def type_and_size(self, offset: int) -> tuple[int, int]:
        """(type number, object size) without inflating whole objects."""
        entry = self.entry(offset)
        if not entry.is_delta:
            return entry.type, entry.size
        _, size = delta_sizes(self.inflate_prefix(entry, 32))
        *_, base = self.chain(offset)
        return base.type, size

    def offset_of(self, oid: bytes) -> int:
        off = self.index.lookup(oid)
        if off is None:
            raise NotFound(f"object {oid.hex()} is not in the image")
        return off
