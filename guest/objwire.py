"""The records an `objects` reply carries (PROTOCOL.md, "Push and pull"): each object
asked for, by id, whole, or marked absent. A record may span DATA frames: the client
reads the reply's DATA payloads as one byte stream."""

from __future__ import annotations

import struct

from .objects import TYPE_CODES, TYPE_NUMBERS

RECORD = struct.Struct(">20sBQ")  # id, git type number (0: absent), body length
ABSENT = 0


def record_header(oid: bytes, kind: str | None, size: int) -> bytes:
    return RECORD.pack(oid, ABSENT if kind is None else TYPE_CODES[kind], size)


class Records:
    """Decodes records from DATA payloads fed in order: (id, kind or None, body)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, str | None, bytes]]:
        self._buf += data
        out = []
        pos = 0
        buf = self._buf
        while len(buf) - pos >= RECORD.size:
            oid, code, size = RECORD.unpack_from(buf, pos)
            end = pos + RECORD.size + size
            if len(buf) < end:
                break
            if code != ABSENT and code not in TYPE_NUMBERS:
                raise ValueError(f"object record of type {code}")
            body = bytes(buf[pos + RECORD.size : end])
            out.append((oid, None if code == ABSENT else TYPE_NUMBERS[code], body))
            pos = end
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished record (non-zero at the end: a truncated reply)."""
        return len(self._buf)
