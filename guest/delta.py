"""Git delta instructions (the body of an OFS_DELTA / REF_DELTA entry)."""

from __future__ import annotations

from .errors import IntegrityError


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Little-endian base-128 size as used in delta headers; returns (value, next pos)."""
    value = shift = 0
    while True:
        if pos >= len(data):
            raise IntegrityError("truncated delta header")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def delta_sizes(delta: bytes | memoryview) -> tuple[int, int]:
    """(source size, target size) from the start of a delta."""
    src, pos = read_varint(delta, 0)
    dst, _ = read_varint(delta, pos)
    return src, dst


def apply_delta(base: bytes, delta: bytes) -> bytes:
    src_size, pos = read_varint(delta, 0)
    dst_size, pos = read_varint(delta, pos)
    if src_size != len(base):
        raise IntegrityError(f"delta expects a base of {src_size} bytes, got {len(base)}")
    src = memoryview(base)
    out = bytearray()
    end = len(delta)
    try:
        while pos < end:
            op = delta[pos]
            pos += 1
            if op & 0x80:
                off = size = 0
                if op & 0x01:
                    off = delta[pos]
                    pos += 1
                if op & 0x02:
                    off |= delta[pos] << 8
                    pos += 1
                if op & 0x04:
                    off |= delta[pos] << 16
                    pos += 1
                if op & 0x08:
                    off |= delta[pos] << 24
                    pos += 1
                if op & 0x10:
                    size = delta[pos]
                    pos += 1
                if op & 0x20:
                    size |= delta[pos] << 8
                    pos += 1
                if op & 0x40:
                    size |= delta[pos] << 16
                    pos += 1
                if size == 0:
                    size = 0x10000
                if off + size > src_size:
                    raise IntegrityError("delta copies past the end of its base")
                out += src[off : off + size]
            elif op:
                if pos + op > end:
                    raise IntegrityError("delta insert runs past its end")
                out += delta[pos : pos + op]
                pos += op
            else:
                raise IntegrityError("delta has a reserved zero opcode")
    except IndexError:
        raise IntegrityError("truncated delta instruction") from None
    if len(out) != dst_size:
        raise IntegrityError(f"delta gives {len(out)} bytes, announces {dst_size}")
    return bytes(out)
