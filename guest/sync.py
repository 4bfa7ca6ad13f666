"""Push and pull through the appliance: the guest's side (PROTOCOL.md, "Push and pull").

The host does the network (dulwich, builder/sync/); the guest, the disk's one writer,
answers four requests:
- `sync_info`: the head, the recorded remote and the last synced commit;
- `objects`: objects by id, whole (the host walks the history itself, reading the few
  commits and trees it needs), or as their PACK entries (the objects a push sends, in
  batches: not deflated a second time);
- `import`: a git pack streamed in CHUNKs like a put's content, each object written
  whole into a new PACK as it arrives (deltas resolved against the pack's earlier
  objects or, for a thin pack, the image's), checked (trailer, every reference of the
  received commits and trees present), then made the head of a new generation if the
  head is still the expected one (data, flush, root, flush before the END);
- `set_synced`: record the remote's tip, a root-only generation (same compare-and-swap).
The writes hold the disk as a batch does (`busy` for the others, `read_only` where it
cannot be written); the reads (`sync_info`, `objects`) are answered on any disk. Standard library only.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator

from .delta import apply_delta
from .device import DeviceFailed
from .errors import IntegrityError, NotFound
from .failures import failure
from .generations import adopt
from .kverrors import BadArguments, Busy
from .objects import COMMIT, MODE_GITLINK, TREE, TYPE_NUMBERS, Commit, iter_tree, sha1
from .objwire import record_header, stored_entry
from .pack import ENTRY_HEADER_MAX, PACK_HEADER, bad_zlib, parse_entry
from .packwrite import ObjectStream, PackWriter
from .roots import REMOTE_MAX, ZERO_ID
from .values import Body, Committed, Failure, ImportArgs, ObjectsArgs, Result, SyncedArgs, Upload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .batch import Batch
    from .connection import Session
    from .image import Image
    from .protocol import Request
    from .service import Service
    from .values import Answer
    from .writer import DiskWriter

_IN = 1 << 18  # compressed bytes inflated per step
_OUT = 1 << 20  # inflated bytes per step: a big blob passes through in pieces


def _free_writer(service: Service, disk: str) -> DiskWriter:
    """The disk's writer, when it can write now: `read_only`, `busy` otherwise."""
    writer = service.writer(disk)
    writer._check()
    if writer.batch is not None:
        raise Busy(f"disk {writer.name}: a batch is open (push and pull need the disk to themselves)")
    return writer


def sync_info(service: Service, req: Request, session: Session | None) -> Answer:
    """A read, answered on any disk: `writable` says whether an import or set_synced
    can be taken now (`yes`, or why not), so that a pull is refused before it fetches
    and a push of a read-only disk goes ahead without recording anything."""
    disk = service.disk(req.disk)
    store = disk.image.store
    writer = service.writers.get(req.disk)
    if writer is None:
        writable = "read-only attach"
    elif writer.writable != "yes":
        writable = writer.writable
    elif writer.batch is not None:
        writable = "busy: a batch is open"
    else:
        writable = "yes"
    root = store.head
    synced = root.synced if root is not None and root.synced != ZERO_ID and root.synced in store else None
    return Result({
        "head": store.head_commit.hex(),
        "generation": str(store.generation),
        "remote": root.remote if root is not None else "",
        "synced": synced.hex() if synced else "",
        "writable": writable,
    })  # fmt: skip


def objects(service: Service, req: Request, session: Session | None) -> Answer:
    from .service import _guarded

    args = req.args
    assert isinstance(args, ObjectsArgs)
    return Body(_guarded(_records(service.disk(req.disk).image, args.ids, args.stored)), None, "objects")


def _records(image: Image, ids: list[bytes], stored: bool) -> Iterator[bytes]:
    for oid in ids:
        if oid not in image:
            yield record_header(oid, None, 0)
            continue
        found = image.store.find(oid) if stored else None
        whole = stored_entry(*found, oid) if found is not None else None
        if whole is not None:  # the entry as the PACK holds it, checked
            num, _, entry = whole
            yield record_header(oid, TYPE_NUMBERS[num], len(entry), stored=True)
            yield entry
            continue
        kind, body = image.read_object(oid)
        yield record_header(oid, kind, len(body))
        yield body


def set_synced(service: Service, req: Request, session: Session | None) -> Answer:
    args = req.args
    assert isinstance(args, SyncedArgs)
    writer = _free_writer(service, req.disk)
    writer._check_head(args.expected)
    store = writer.store
    if len(args.remote.encode()) > REMOTE_MAX:
        raise BadArguments(f"a remote record of at most {REMOTE_MAX} bytes")
    if args.commit not in store:
        raise NotFound(f"commit {args.commit.hex()} is not in the image")
    try:
        generation = store.set_synced(args.commit, args.remote)
    except (DeviceFailed, OSError) as exc:
        raise writer._failed(exc) from None
    finally:
        writer.wrote()
    return Result(Committed(True, store.head_commit, generation, store.free_space()))


def import_pack(service: Service, req: Request, session: Session | None) -> Answer:
    args = req.args
    assert isinstance(args, ImportArgs)
    writer = _free_writer(service, req.disk)
    writer._check_head(args.expected)  # conflict before any byte is read
    if args.synced is not None and len(args.synced[1].encode()) > REMOTE_MAX:
        raise BadArguments(f"a remote record of at most {REMOTE_MAX} bytes")
    return PackUpload(writer, writer._take(session), args)


class PackUpload(Upload):
    """An import's pack on its way into the disk's batch writer."""

    def __init__(self, writer: DiskWriter, batch: Batch, args: ImportArgs):
        self.writer = writer
        self.batch = batch
        self.args = args
        self.parser = PackParser(batch.writer, self._base)

    def _base(self, oid: bytes) -> tuple[str, bytes]:
        """A delta's base: an object of the pack (written whole already) or of the image."""
        got = self.batch.writer.read_entry(oid)
        if got is not None:
            kind, _, pieces = got
            return kind, b"".join(pieces)
        if oid in self.writer.store:
            return self.writer.store.read_object(oid)
        raise IntegrityError(f"a delta against {oid.hex()}, which neither the pack nor the image holds")

    def _failure(self, exc: Exception) -> Failure:
        if isinstance(exc, DeviceFailed | OSError):
            exc = self.writer._failed(exc)
        else:
            self.writer.release(self.batch)
        return failure(exc)

    def write(self, data: bytes) -> Failure | None:
        try:
            self.parser.feed(data)
        except Exception as exc:
            return self._failure(exc)
        finally:
            self.writer.wrote()
        return None

    def finish(self) -> Result | Failure:
        writer, args = self.writer, self.args
        try:
            self.parser.end()
            self._check_connected()
            writer._check_head(args.expected)
            generation = adopt(writer.store, self.batch.writer, args.head, args.synced)
            writer.disk.head_moved()
            return Result(Committed(True, args.head, generation, writer.store.free_space()))
        except Exception as exc:
            return self._failure(exc)
        finally:
            writer.release(self.batch)
            writer.wrote()

    def _check_connected(self) -> None:
        """git's connectivity check: what the received commits and trees name is
        present, and the new head is a commit."""
        store, pack = self.writer.store, self.batch.writer

        def need(oid: bytes, by: bytes) -> None:
            if oid not in pack and oid not in store:
                raise IntegrityError(
                    f"the pack lacks object {oid.hex()} (named by {by.hex()}): nothing imported"
                )

        for oid, kind, body in self.parser.small:
            if kind == COMMIT:
                commit = Commit.from_raw(body)
                for ref in (commit.tree, *commit.parents):
                    need(ref, oid)
            else:
                for entry in iter_tree(body):
                    if entry.mode != MODE_GITLINK:
                        need(entry.id, oid)
        head = self.args.head
        kind = self.parser.kinds.get(head)
        if kind is None:
            need(head, head)
            kind = store.read_object(head)[0] if head not in pack else COMMIT
        if kind != COMMIT:
            raise IntegrityError(f"{head.hex()} is a {kind}, not a commit: nothing imported")

    def abort(self) -> None:
        self.writer.release(self.batch)


class PackParser:
    """A git pack (version 2) read from a stream, each object written whole into
    `writer` as it completes: a blob of any size passes through in pieces, a delta is
    resolved against its base (`base(id)` -> (kind, body)). The commits and trees are
    kept (`small`) for the connectivity check."""

    def __init__(self, writer: PackWriter, base: Callable[[bytes], tuple[str, bytes]]):
        self.writer = writer
        self.base = base
        self.buf = bytearray()
        self.offset = 0  # the pack offset of buf[0]
        self.hash = sha1(b"", 1 << 30)
        self.count: int | None = None
        self.done = 0
        self.at: dict[int, bytes] = {}  # pack offset -> id (OFS_DELTA bases)
        self.kinds: dict[bytes, str] = {}
        self.small: list[tuple[bytes, str, bytes]] = []
        self._entry = None
        self._inflater: zlib._Decompress | None = None  # type: ignore[name-defined]
        self._stream: ObjectStream | None = None
        self._data = bytearray()  # a delta, or a commit's or tree's body
        self._got = 0

    def feed(self, data: bytes, final: bool = False) -> None:
        self.buf += data
        while self._step(final):
            pass

    def end(self) -> None:
        """The stream ended: every entry and the trailer must be there."""
        self.feed(b"", final=True)
        if self.count is None or self.done != self.count or self._entry is not None:
            raise IntegrityError("the pack ends early")
        if bytes(self.buf) != self.hash.digest():
            raise IntegrityError("the pack's trailer does not match its bytes (or bytes follow it)")

    def _consume(self, n: int) -> None:
        self.hash.update(self.buf[:n])
        del self.buf[:n]
        self.offset += n

    def _step(self, final: bool) -> bool:
        if self.count is None:
            if len(self.buf) < PACK_HEADER.size:
                return False
            magic, version, count = PACK_HEADER.unpack_from(self.buf)
            if magic != b"PACK" or version not in (2, 3):
                raise IntegrityError("not a git pack (bad header)")
            self.count = count
            self._consume(PACK_HEADER.size)
            return True
        if self._entry is None:
            if self.done == self.count or not self.buf or (len(self.buf) < ENTRY_HEADER_MAX and not final):
                return False
            self._start(parse_entry(self.buf, self.offset))
            return True
        return self._inflate()

    def _start(self, entry) -> None:  # type: ignore[no-untyped-def]
        self._consume(entry.data_offset - self.offset)
        self._entry, self._inflater, self._got = entry, zlib.decompressobj(), 0
        self._data = bytearray()
        if not entry.is_delta:
            self._stream = self.writer.stream(TYPE_NUMBERS[entry.type], entry.size)

    def _inflate(self) -> bool:
        entry, d = self._entry, self._inflater
        assert entry is not None and d is not None
        chunk = bytes(self.buf[:_IN])
        try:
            piece = d.decompress(chunk, _OUT)
        except zlib.error as exc:
            raise bad_zlib(entry.offset, exc) from None
        left = len(d.unused_data) if d.eof else len(d.unconsumed_tail)
        self._consume(len(chunk) - left)
        if piece:
            self._got += len(piece)
            if self._got > entry.size:
                raise IntegrityError(f"pack entry at {entry.offset} inflates past its {entry.size} bytes")
            if self._stream is not None:
                self._stream.write(piece)
            if self._stream is None or TYPE_NUMBERS[entry.type] in (COMMIT, TREE):
                self._data += piece
        if d.eof:
            self._finish(entry)
            return True
        return bool(piece) or len(chunk) > left

    def _finish(self, entry) -> None:  # type: ignore[no-untyped-def]
        if self._got != entry.size:
            got, size = self._got, entry.size
            raise IntegrityError(f"pack entry at {entry.offset} inflates to {got} bytes, not {size}")
        if self._stream is not None:
            kind = TYPE_NUMBERS[entry.type]
            oid = self._stream.finish()
            body = bytes(self._data)
        else:
            base = entry.base_id if entry.base_id is not None else self.at.get(entry.base_offset)
            if base is None:
                raise IntegrityError(f"pack entry at {entry.offset}: no object at its base's offset")
            kind, base_body = self.base(base)
            body = apply_delta(base_body, bytes(self._data))
            oid = self.writer.add(kind, body)
        if kind in (COMMIT, TREE):
            self.small.append((oid, kind, body))
        self.at[entry.offset] = oid
        self.kinds[oid] = kind
        self.done += 1
        self._entry = self._inflater = self._stream = None
        self._data = bytearray()
