"""The objects a push sends, in the form dulwich writes into the PACK it sends.

A whole object (not a delta) of the image's PACK goes out as the very entry the PACK
holds: its compressed bytes are reused, after being inflated and hashed against the
id here, so they are not deflated a second time (git's pack-objects reuses its packs'
data the same way; a 1 MiB file cost ~35 ms of deflate). A delta of the image is sent
as its whole result, compressed by dulwich, as is an entry whose zlib data does not
end where expected (see _entry).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

from dulwich.pack import UnpackedObject

from docteur.cli.progress import Progress
from docteur.guest.errors import IntegrityError
from docteur.guest.generations import Store
from docteur.guest.objects import TYPE_CODES, TYPE_NUMBERS, object_id
from docteur.guest.pack import PackReader, bad_zlib

# A deflate stream holds at most ~0.03% more than its input (stored blocks: 5 bytes a
# 64 KiB block, plus zlib's header and checksum): what is read of an entry at once.
_SLACK = 64


def records(store: Store, oids: list[bytes], bar: Progress) -> Iterator[UnpackedObject]:
    """The objects of `oids` (each in the image), read one at a time."""
    for n, oid in enumerate(oids, 1):
        yield _record(store, oid)
        bar.update(n, len(oids))


def whole_records(objects: Iterable[tuple[bytes, str, bytes]], count: int,
                  bar: Progress) -> Iterator[UnpackedObject]:  # fmt: skip
    """`count` objects given whole as (id, kind, body): dulwich compresses each (an
    image behind a socket, cli/syncsocket.py, sends its objects inflated)."""
    for n, (oid, kind, body) in enumerate(objects, 1):
        yield UnpackedObject(TYPE_CODES[kind], sha=oid, decomp_chunks=[body])
        bar.update(n, count)


def _record(store: Store, oid: bytes) -> UnpackedObject:
    found = store.find(oid)
    whole = _entry(*found, oid) if found is not None else None
    if whole is None:
        kind, body = store.read_object(oid)  # raises NotFound, or for a damaged object
        return UnpackedObject(TYPE_CODES[kind], sha=oid, decomp_chunks=[body])
    num, body, entry = whole
    unpacked = UnpackedObject(num, sha=oid, decomp_chunks=[body])
    unpacked.comp_chunks = [entry]  # dulwich writes these bytes as the entry
    return unpacked


def _entry(reader: PackReader, offset: int, oid: bytes) -> tuple[int, bytes, bytes] | None:
    """(type number, body, the entry's bytes: header and zlib data) of the whole
    object at `offset`, its body checked against `oid`; None for a delta, or when its
    zlib data does not end within the bytes read (left to the general path)."""
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
