"""The records an `objects` reply carries (PROTOCOL.md, "Push and pull"): each object
asked for, by id, whole, or marked absent, or (asked `stored`) a whole object of the
image's PACK as its very entry, header and zlib data, so that a push sends those bytes
without deflating them again. A record may span DATA frames: the client reads the
reply's DATA payloads as one byte stream."""

from __future__ import annotations

import struct
import zlib

from .errors import IntegrityError
from .objects import TYPE_CODES, TYPE_NUMBERS, object_id
from .pack import PackReader, bad_zlib

RECORD = struct.Struct(">20sBQ")  # id, git type number (0: absent), body length
ABSENT = 0
STORED = 0x80  # or'ed into the type: the body is the object's PACK entry
# A deflate stream holds at most ~0.03% more than its input (stored blocks: 5 bytes a
# 64 KiB block, plus zlib's header and checksum): what is read of an entry at once.
_SLACK = 64


def record_header(oid: bytes, kind: str | None, size: int, stored: bool = False) -> bytes:
    code = ABSENT if kind is None else TYPE_CODES[kind] | (STORED if stored else 0)
    return RECORD.pack(oid, code, size)


def stored_entry(reader: PackReader, offset: int, oid: bytes) -> tuple[int, bytes, bytes] | None:
    """(type number, body, the entry's bytes: header and zlib data) of the whole object
    at `offset`, its body checked against `oid` (damaged bytes are never sent on); None
    for a delta, or when its zlib data does not end within the bytes read (left to the
    caller's general path: the object inflated and deflated again)."""
    entry = reader.entry(offset)
    if entry.is_delta:
        return None
    head = entry.data_offset - offset
    raw = reader.pread(head + entry.size + entry.size // 2048 + _SLACK, offset)
    d = zlib.decompressobj()
    try:
        body = d.decompress(memoryview(raw)[head:])
    except zlib.error as exc:
        raise bad_zlib(offset, exc) from None
    if not d.eof or len(body) != entry.size:
        return None
    if object_id(TYPE_NUMBERS[entry.type], body) != oid:
        raise IntegrityError(f"object {oid.hex()} at PACK offset {offset} does not hash to its id")
    return entry.type, body, raw[: len(raw) - len(d.unused_data)]


class Records:
    """Decodes records from DATA payloads fed in order: (id, kind or None, body, whether
    the body is the stored PACK entry)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, str | None, bytes, bool]]:
        self._buf += data
        out = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= RECORD.size:
            oid, code, size = RECORD.unpack_from(buf, pos)
            end = pos + RECORD.size + size
            if len(buf) < end:
                break
            stored, kind = bool(code & STORED), code & ~STORED
            if code != ABSENT and kind not in TYPE_NUMBERS:
                raise ValueError(f"object record of type {code}")
            body = bytes(buf[pos + RECORD.size : end])
            out.append((oid, None if code == ABSENT else TYPE_NUMBERS[kind], body, stored))
            pos = end
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished record (non-zero at the end: a truncated reply)."""
        return len(self._buf)
