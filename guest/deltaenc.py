"""Making Git deltas (the inverse of delta.apply_delta), for compaction.

Blocks of the base are indexed by content; the target is scanned for them and
each hit is grown as far as it goes by comparing slices (C speed). Meant for the
small objects whose history compacts well (trees, text files): the scan is a
Python loop over the bytes that do not match.
"""

from __future__ import annotations

_BLOCK = 16
_MAX_COPY = 0xFFFF  # one copy instruction; 0x10000 would need the size-0 special case
_MAX_INSERT = 0x7F


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _copy(out: bytearray, off: int, size: int) -> None:
    op = 0x80
    args = bytearray()
    for i in range(4):
        byte = (off >> (8 * i)) & 0xFF
        if byte:
            op |= 1 << i
            args.append(byte)
    for i in range(2):
        byte = (size >> (8 * i)) & 0xFF
        if byte:
            op |= 0x10 << i
            args.append(byte)
    out.append(op)
    out += args


def _match_length(base: bytes, at: int, target: bytes, pos: int) -> int:
    """How many bytes from base[at:] equal those from target[pos:] (at most _MAX_COPY)."""
    limit = min(len(base) - at, len(target) - pos, _MAX_COPY)
    lo, hi = 0, limit  # base[at:at+lo] == target[pos:pos+lo] holds; find the largest
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if base[at : at + mid] == target[pos : pos + mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def make_delta(base: bytes, target: bytes) -> bytes:
    """A delta that rebuilds `target` from `base`."""
    out = bytearray(_varint(len(base)) + _varint(len(target)))
    index: dict[bytes, int] = {}
    for at in range(0, len(base) - _BLOCK + 1, _BLOCK):
        index.setdefault(base[at : at + _BLOCK], at)
    literal = bytearray()

    def flush_literal() -> None:
        for at in range(0, len(literal), _MAX_INSERT):
            piece = literal[at : at + _MAX_INSERT]
            out.append(len(piece))
            out.extend(piece)
        literal.clear()

    pos, end = 0, len(target)
    while pos < end:
        at = index.get(target[pos : pos + _BLOCK]) if pos + _BLOCK <= end else None
        if at is None:
            literal.append(target[pos])
            pos += 1
            continue
        size = _match_length(base, at, target, pos)
        flush_literal()
        _copy(out, at, size)
        pos += size
    flush_literal()
    return bytes(out)
