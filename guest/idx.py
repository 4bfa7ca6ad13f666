"""Git pack index v2: lookup by object id, and a writer identical to git's.

The IDX of an image is held in memory as bytes: about 28 bytes an object
(3 MB for 100 000 objects), and it makes every lookup a binary search
with no I/O.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterable, Iterator

from .errors import ImageError
from .objects import sha1

MAGIC = b"\377tOc\0\0\0\2"
_FANOUT = 8
_NAMES = _FANOUT + 256 * 4
COUNT_AT = _NAMES - 4  # fanout[255]: the number of objects


def offsets_at(count: int) -> int:
    """Where the 32-bit offset table starts in an IDX of `count` objects."""
    return _NAMES + 24 * count


def idx_size(count: int, large: int = 0) -> int:
    """Bytes of an IDX v2 of `count` objects, `large` of them at 64-bit offsets:
    header, fanout, then per object an id, a CRC32 and an offset, the 64-bit
    offsets, and the PACK's and the IDX's own checksums."""
    return offsets_at(count) + 4 * count + 8 * large + 40


class Index:
    """A parsed IDX v2. Offsets are relative to the start of the PACK."""

    __slots__ = ("_crc_at", "_data", "_fanout", "_large_at", "_off_at", "count")

    def __init__(self, data: bytes):
        if len(data) < _NAMES + 40 or data[:8] != MAGIC:
            raise ImageError("not a Git IDX v2")
        self._data = data
        self._fanout = struct.unpack_from(">256I", data, _FANOUT)
        self.count = self._fanout[255]
        self._crc_at = _NAMES + 20 * self.count
        self._off_at = offsets_at(self.count)
        self._large_at = self._off_at + 4 * self.count
        if len(data) < idx_size(self.count):
            raise ImageError(f"IDX truncated: {len(data)} bytes for {self.count} objects")
        prev = 0
        for n in self._fanout:
            if n < prev:
                raise ImageError("IDX fanout table is not sorted")
            prev = n

    @property
    def data(self) -> bytes:
        return self._data

    @property
    def pack_checksum(self) -> bytes:
        return self._data[-40:-20]

    @property
    def checksum(self) -> bytes:
        return self._data[-20:]

    def compute_checksum(self) -> bytes:
        return sha1(memoryview(self._data)[:-20]).digest()

    def oid(self, i: int) -> bytes:
        at = _NAMES + 20 * i
        return self._data[at : at + 20]

    def crc32(self, i: int) -> int:
        return struct.unpack_from(">I", self._data, self._crc_at + 4 * i)[0]

    def offset(self, i: int) -> int:
        (off,) = struct.unpack_from(">I", self._data, self._off_at + 4 * i)
        if off & 0x80000000:
            (off,) = struct.unpack_from(">Q", self._data, self._large_at + 8 * (off & 0x7FFFFFFF))
        return off

    def _words(self, at: int) -> array[int]:
        """The `count` big-endian 32-bit words at `at`, read in one go (a walk over
        every object would otherwise unpack them one call each)."""
        words = array("I", self._data[at : at + 4 * self.count])
        if sys.byteorder == "little":
            words.byteswap()
        return words

    def offsets(self) -> list[int]:
        """Every object's PACK offset, in IDX order."""
        offs = self._words(self._off_at).tolist()
        if offs and max(offs) & 0x80000000:  # a PACK over 2 GiB: some in the 64-bit table
            offs = [self.offset(i) if off & 0x80000000 else off for i, off in enumerate(offs)]
        return offs

    def crc32s(self) -> array[int]:
        """Every object's CRC32, in IDX order."""
        return self._words(self._crc_at)

    def position(self, oid: bytes) -> int | None:
        """Index of `oid` in the sorted table, or None."""
        if len(oid) != 20:
            return None
        first = oid[0]
        lo = self._fanout[first - 1] if first else 0
        hi = self._fanout[first]
        data = self._data
        while lo < hi:
            mid = (lo + hi) // 2
            at = _NAMES + 20 * mid
            probe = data[at : at + 20]
            if probe < oid:
                lo = mid + 1
            elif probe > oid:
                hi = mid
            else:
                return mid
        return None

    def lookup(self, oid: bytes) -> int | None:
        """PACK-relative offset of `oid`, or None when the IDX lacks it."""
        i = self.position(oid)
        return None if i is None else self.offset(i)

    def __contains__(self, oid: bytes) -> bool:
        return self.position(oid) is not None

    def __len__(self) -> int:
        return self.count

    def entries(self) -> Iterator[tuple[bytes, int, int]]:
        """(oid, crc32, offset) in id order."""
        for i in range(self.count):
            yield self.oid(i), self.crc32(i), self.offset(i)


def build_idx(entries: Iterable[tuple[bytes, int, int]], pack_checksum: bytes) -> bytes:
    """An IDX v2 for (oid, crc32, pack offset) entries, byte-identical to git's."""
    items = sorted(entries)
    fanout = [0] * 256
    for oid, _, _ in items:
        fanout[oid[0]] += 1
    total = 0
    for i in range(256):
        total += fanout[i]
        fanout[i] = total
    large: list[int] = []
    offsets = bytearray()
    for _, _, off in items:
        if off < 0x80000000:
            offsets += struct.pack(">I", off)
        else:
            offsets += struct.pack(">I", 0x80000000 | len(large))
            large.append(off)
    parts = [
        MAGIC,
        struct.pack(">256I", *fanout),
        b"".join(oid for oid, _, _ in items),
        b"".join(struct.pack(">I", crc & 0xFFFFFFFF) for _, crc, _ in items),
        bytes(offsets),
        b"".join(struct.pack(">Q", off) for off in large),
        pack_checksum,
    ]
    body = b"".join(parts)
    return body + sha1(body).digest()
