"""The write area's header and its root records (see FORMAT.md, "Writes").

Both are fixed-size, big-endian, and end with a SHA-256 of everything before it in
the record, so a torn or garbled record never parses. Parsing checks only the
record itself; whether its extents are sound is the store's business.
"""

from __future__ import annotations

import struct
from collections import namedtuple

from .device import BLOCK

AREA_MAGIC = b"DOCTAREA"
ROOT_MAGIC = b"DOCTROOT"
VERSION = 1
SLOTS = 8
SLOT_SIZE = 4 * BLOCK
# Bytes after the first generation's IDX that may be block-size padding
# (`docteur make --bs`): the area header is looked for up to this far.
MAX_PAD = 1 << 20
REMOTE_MAX = 256
_DIGEST = 32
ZERO_ID = b"\0" * 20

_AREA = struct.Struct(">8sIII16sQ20sQ20s")
_ROOT = struct.Struct(">8sII16sQQ20sQ20s20s20sHH")
_EXTENT = struct.Struct(">QQQQ20s20s")
_ROOT_EXTENTS_AT = _ROOT.size + REMOTE_MAX
MAX_EXTENTS = (SLOT_SIZE - _ROOT_EXTENTS_AT - _DIGEST) // _EXTENT.size


def _sha256(data: bytes | memoryview) -> bytes:
    # The interpreter's own SHA-256, like objects.sha1: hashlib would load OpenSSL,
    # which costs ~40 ms in the VM for records of a few KiB.
    try:
        from _sha256 import sha256  # Python 3.11
    except ImportError:
        try:
            from _sha2 import sha256  # Python 3.12+
        except ImportError:
            from hashlib import sha256
    return sha256(data).digest()


class Binding(namedtuple("Binding", "commit idx_offset idx_checksum")):
    """What ties a write area to one first generation: its header's commit id and
    IDX offset, and its IDX's own SHA-1 checksum."""

    __slots__ = ()


class Area(namedtuple("Area", "offset slots slot_size uid first_end binding")):
    """The write area header at `offset` (4096-aligned, at or after the first
    generation's end `first_end`); the ring of root slots follows it."""

    __slots__ = ()

    @property
    def ring(self) -> int:
        return self.offset + BLOCK

    @property
    def data_start(self) -> int:
        return self.ring + self.slots * self.slot_size

    def slot_offset(self, i: int) -> int:
        return self.ring + i * self.slot_size

    def to_bytes(self) -> bytes:
        b = self.binding
        body = _AREA.pack(
            AREA_MAGIC,
            VERSION,
            self.slots,
            self.slot_size,
            self.uid,
            self.first_end,
            b.commit,
            b.idx_offset,
            b.idx_checksum,
        )
        return (body + _sha256(body)).ljust(BLOCK, b"\0")

    @classmethod
    def from_bytes(cls, offset: int, data: bytes) -> Area:
        """Parse a header block; raises ValueError naming what is wrong."""
        if data[:8] != AREA_MAGIC:
            raise ValueError("no write area signature")
        body = data[: _AREA.size]
        if len(data) < _AREA.size + _DIGEST or _sha256(body) != data[_AREA.size : _AREA.size + _DIGEST]:
            raise ValueError("the write area header's checksum does not match")
        _, version, slots, slot_size, uid, first_end, commit, idx_off, idx_sum = _AREA.unpack(body)
        if version != VERSION:
            raise ValueError(f"write area format version {version}, this docteur reads {VERSION}")
        if not 2 <= slots <= 64 or slot_size % BLOCK or slot_size < BLOCK:
            raise ValueError(f"write area header: bad ring geometry ({slots} x {slot_size})")
        if first_end > offset:
            raise ValueError("write area header: the first generation would end after it")
        return cls(offset, slots, slot_size, uid, first_end, Binding(commit, idx_off, idx_sum))


_EXTENT_FIELDS = "pack_offset pack_length idx_offset idx_length pack_checksum idx_checksum"


class Extent(namedtuple("Extent", _EXTENT_FIELDS)):
    """One generation's PACK and IDX: absolute offsets, lengths (the PACK's with its
    trailer), the PACK's trailer SHA-1 and the IDX's own SHA-1."""

    __slots__ = ()

    @property
    def start(self) -> int:
        return self.pack_offset

    @property
    def end(self) -> int:
        """Past the IDX, on a block: the space the extent occupies."""
        return -(-(self.idx_offset + self.idx_length) // BLOCK) * BLOCK


class Root(namedtuple("Root", "generation time binding head synced remote extents uid", defaults=(b"",))):
    """One root record: generation `generation` (>= 1) has `head` as its commit and
    `extents` (newest first) on top of the first generation; `synced` is the last
    commit known to be on `remote` (ZERO_ID when none)."""

    __slots__ = ()

    def to_bytes(self) -> bytes:
        remote = self.remote.encode()
        if len(remote) > REMOTE_MAX:
            raise ValueError(f"remote name longer than {REMOTE_MAX} bytes")
        if len(self.extents) > MAX_EXTENTS:
            raise ValueError(f"{len(self.extents)} extents, a root holds {MAX_EXTENTS}")
        b = self.binding
        head = _ROOT.pack(
            ROOT_MAGIC,
            VERSION,
            0,
            self.uid,
            self.generation,
            self.time,
            b.commit,
            b.idx_offset,
            b.idx_checksum,
            self.head,
            self.synced,
            len(remote),
            len(self.extents),
        )
        body = head + remote.ljust(REMOTE_MAX, b"\0") + b"".join(_EXTENT.pack(*e) for e in self.extents)
        body = body.ljust(SLOT_SIZE - _DIGEST, b"\0")
        return body + _sha256(body)

    @classmethod
    def from_bytes(cls, data: bytes) -> Root:
        """Parse a slot; raises ValueError naming what is wrong."""
        if len(data) != SLOT_SIZE:
            raise ValueError(f"root slot is {len(data)} bytes, not {SLOT_SIZE}")
        if data[:8] != ROOT_MAGIC:
            raise ValueError("no root signature")
        if _sha256(data[:-_DIGEST]) != data[-_DIGEST:]:
            raise ValueError("checksum mismatch")
        (_, version, _flags, uid, gen, when, commit, idx_off, idx_sum, head, synced, rlen, count) = (
            _ROOT.unpack_from(data)
        )
        if version != VERSION:
            raise ValueError(f"root format version {version}, this docteur reads {VERSION}")
        if rlen > REMOTE_MAX or count > MAX_EXTENTS:
            raise ValueError("root lengths out of range")
        remote = data[_ROOT.size : _ROOT.size + rlen].decode("utf-8", "replace")
        extents = tuple(
            Extent(*_EXTENT.unpack_from(data, _ROOT_EXTENTS_AT + i * _EXTENT.size)) for i in range(count)
        )
        return cls(gen, when, Binding(commit, idx_off, idx_sum), head, synced, remote, extents, uid)


def claimed_generation(data: bytes) -> int | None:
    """The generation a damaged slot claims, when its signature is there (for warnings)."""
    if data[:8] != ROOT_MAGIC or len(data) < _ROOT.size:
        return None
    return _ROOT.unpack_from(data)[4]
