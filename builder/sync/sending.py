"""The objects a push sends, in the form dulwich writes into the PACK it sends.

A whole object (not a delta) of the image's PACK goes out as the very entry the PACK
holds: its compressed bytes are reused, after being inflated and hashed against the
id here, so they are not deflated a second time (git's pack-objects reuses its packs'
data the same way; a 1 MiB file cost ~35 ms of deflate). A delta of the image is sent
as its whole result, compressed by dulwich, as is an entry whose zlib data does not
end where expected (see stored_entry).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from dulwich.pack import UnpackedObject

from docteur.cli.progress import Progress
from docteur.guest.generations import Store
from docteur.guest.objects import TYPE_CODES
from docteur.guest.objwire import stored_entry


def records(store: Store, oids: list[bytes], bar: Progress) -> Iterator[UnpackedObject]:
    """The objects of `oids` (each in the image), read one at a time."""
    for n, oid in enumerate(oids, 1):
        yield _record(store, oid)
        bar.update(n, len(oids))


def sent_records(objects: Iterable[tuple[bytes, str, bytes, bool]], count: int,
                 bar: Progress) -> Iterator[UnpackedObject]:  # fmt: skip
    """`count` objects as an appliance's `objects` reply gives them (cli/syncsocket.py):
    (id, kind, body, stored), `stored` when the body is the PACK entry (checked by the
    guest, sent on as it is), else the whole object (compressed by dulwich)."""
    for n, (oid, kind, body, stored) in enumerate(objects, 1):
        unpacked = UnpackedObject(TYPE_CODES[kind], sha=oid, decomp_chunks=[] if stored else [body])
        if stored:
            unpacked.comp_chunks = [body]
        yield unpacked
        bar.update(n, count)


def _record(store: Store, oid: bytes) -> UnpackedObject:
    found = store.find(oid)
    whole = stored_entry(*found, oid) if found is not None else None
    if whole is None:
        kind, body = store.read_object(oid)  # raises NotFound, or for a damaged object
        return UnpackedObject(TYPE_CODES[kind], sha=oid, decomp_chunks=[body])
    num, body, entry = whole
    unpacked = UnpackedObject(num, sha=oid, decomp_chunks=[body])
    unpacked.comp_chunks = [entry]  # dulwich writes these bytes as the entry
    return unpacked
