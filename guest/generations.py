"""The generation store: a docteur image plus the write batches appended to it.

Generation 0 is the first generation: the image as `docteur make` wrote it, never
written again. Each later generation is one root record naming its head commit and
the extents (PACK + IDX) it adds on top of generation 0, newest first. Opening picks
the newest root that verifies; committing writes data, flush, root, flush.
See FORMAT.md for the format and the reasons.

    with FileDevice(path, writable=True) as dev, Store.open(dev) as store:
        writer = store.begin()                      # a PACK in free space
        blob = writer.add_stream("blob", size, chunks)
        for oid, body in new_trees:                 # e.g. a tree editor's output
            writer.add("tree", body)
        commit, generation = store.commit(writer, root_tree, "message", "Name <email>")
"""

from __future__ import annotations

import time
from collections import namedtuple
from collections.abc import Iterator
from itertools import pairwise

from .device import BLOCK, Device, align_up
from .errors import DocteurError, ImageError, IntegrityError, NotFound
from .idx import MAGIC as IDX_MAGIC
from .idx import Index
from .layout import PACK_OFFSET, Layout, read_layout
from .objects import (
    COMMIT,
    MODE_GITLINK,
    MODE_TREE,
    TYPE_NUMBERS,
    Commit,
    Signature,
    iter_tree,
    object_header,
    object_id,
    sha1,
)
from .pack import PackReader
from .roots import (
    MAX_EXTENTS,
    MAX_PAD,
    ZERO_ID,
    Area,
    Binding,
    Extent,
    Root,
    claimed_generation,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .packwrite import PackWriter

# Objects up to this size are copied whole by compaction; bigger whole blobs are streamed.
_STREAM = 4 << 20
# Compaction stores versions up to this size as deltas (making one is a Python loop
# over the bytes that changed).
_DELTA_MAX = 256 << 10
_HASH_READ = 1 << 20
CHECKS = ("cheap", "pack")
# zlib levels, as git chooses them: batches are written fast (git's loose objects use 1:
# a 64 MiB text file deflates ~1.5x faster than at 6 for ~8% more bytes), compaction
# packs tighter (git's packs use zlib's default, 6).
BATCH_LEVEL = 1
COMPACT_LEVEL = 6

__all__ = ["ReadOnly", "Skipped", "Store", "TooManyExtents"]


class ReadOnly(DocteurError):
    """The image has no room for writes (no write area)."""

    code = "read_only"


class TooManyExtents(DocteurError):
    """A root record is full of extents: the image must be compacted first."""

    code = "no_space"


class Skipped(namedtuple("Skipped", "generation reason")):
    """A generation that could not be used, and why; `generation` None when the whole
    write area is (then `reason` says what is wrong with it)."""

    __slots__ = ()

    def line(self, serving: int) -> str:
        if self.generation is None:
            return f"warning: {self.reason}; serving generation {serving}"
        return f"warning: generation {self.generation} skipped ({self.reason}); serving generation {serving}"


class _Part(namedtuple("_Part", "index reader")):
    __slots__ = ()


class Store:
    """An open image: generation 0 and, when the image has a write area, the newest
    generation that verifies. `writable` stores can `begin`/`commit`/`compact`."""

    def __init__(self, device: Device, layout: Layout, first: Index):
        self.device = device
        self.layout = layout
        self.first_index = first
        self.binding = Binding(layout.commit, layout.idx_offset, first.checksum)
        self.area: Area | None = None
        self.head: Root | None = None  # None: generation 0
        self.skipped: list[Skipped] = []
        self.slots: list[Root | None] = []  # parsed slots of this area (checksum and binding valid)
        self._parts: list[_Part] = []  # newest first; generation 0 last
        self._indexes: dict[Extent, Index] = {}  # extents whose IDX verified, read once
        self._first_part = _Part(first, PackReader(device.fd, PACK_OFFSET, layout.pack_end, first))

    # -- opening ------------------------------------------------------------
    @classmethod
    def open(cls, device: Device, check: str = "cheap") -> Store:
        """Open the image on `device`. `check`: "cheap" verifies each candidate root's
        checksum, binding and extents (bounds, IDX checksums, PACK trailers); "pack"
        also hashes every PACK byte of the extents it adopts."""
        if check not in CHECKS:
            raise ValueError(f"unknown check {check!r}")
        try:
            layout = read_layout(device.fd, device.size)
        except ImageError as exc:
            raise ImageError(f"{device.name}: {exc}") from None
        idx = device.pread(layout.idx_end - layout.idx_offset, layout.idx_offset)
        store = cls(device, layout, Index(idx))
        store._find_area()
        if store.area is not None:
            store._choose_root(check)
        store._parts = store._parts_of(store.head)
        return store

    def _find_area(self) -> None:
        at = align_up(self.layout.idx_end)
        stop = min(self.device.size - BLOCK, self.layout.idx_end + MAX_PAD + BLOCK)
        while at <= stop:
            block = self.device.pread(BLOCK, at)
            if block.strip(b"\0"):
                try:
                    area = Area.from_bytes(at, block)
                except ValueError as exc:
                    self.skipped.append(Skipped(None, f"write area header at byte {at} ignored: {exc}"))
                    return
                if area.binding != self.binding or area.first_end < self.layout.idx_end:
                    self.skipped.append(
                        Skipped(None, f"the write area at byte {at} belongs to another image")
                    )
                    return
                if area.data_start >= self.device.size:
                    self.skipped.append(Skipped(None, f"the write area at byte {at} is truncated"))
                    return
                self.area = area
                return
            at += BLOCK

    def _choose_root(self, check: str) -> None:
        area = self.area
        assert area is not None
        damaged: list[tuple[int, str]] = []
        for i in range(area.slots):
            raw = self.device.pread(area.slot_size, area.slot_offset(i))
            root: Root | None = None
            if raw.strip(b"\0"):
                try:
                    root = Root.from_bytes(raw)
                except ValueError as exc:
                    gen = claimed_generation(raw)
                    if gen is not None:
                        damaged.append((gen, f"root record in slot {i}: {exc}"))
                if root is not None and (root.uid != area.uid or root.binding != self.binding):
                    root = None  # a record of an earlier write area at the same place
            self.slots.append(root)
        candidates = sorted((r for r in self.slots if r is not None), key=lambda r: -r.generation)
        for root in candidates:
            try:
                self._verify_root(root, check)
            except (IntegrityError, ImageError, NotFound, ValueError) as exc:
                self.skipped.append(Skipped(root.generation, str(exc)))
                continue
            self.head = root
            break
        serving = self.generation
        # A damaged slot matters only if it might have been newer than what is served.
        self.skipped += [Skipped(gen, why) for gen, why in damaged if gen > serving]
        self.skipped.sort(key=lambda s: -s.generation)

    def _verify_root(self, root: Root, check: str) -> None:
        area = self.area
        assert area is not None
        spans = []
        for e in root.extents:
            if not (area.data_start <= e.pack_offset and e.pack_offset % BLOCK == 0):
                raise IntegrityError(f"extent at byte {e.pack_offset} lies outside the data area")
            if e.idx_offset != align_up(e.pack_offset + e.pack_length) or e.end > self.data_end:
                raise IntegrityError(f"extent at byte {e.pack_offset} lies outside the data area")
            spans.append((e.start, e.end))
        spans.sort()
        for (_, end), (start, _) in pairwise(spans):
            if start < end:
                raise IntegrityError("two extents of the root overlap")
        for e in root.extents:
            index = self._extent_index(e)
            head = self.device.pread(12, e.pack_offset)
            if head[:8] != b"PACK\0\0\0\2" or int.from_bytes(head[8:12], "big") != index.count:
                raise IntegrityError(f"PACK at byte {e.pack_offset}: bad header or object count")
            trailer = self.device.pread(20, e.pack_offset + e.pack_length - 20)
            if trailer != e.pack_checksum or index.pack_checksum != e.pack_checksum:
                raise IntegrityError(f"PACK at byte {e.pack_offset}: its trailer does not match the root")
            if check == "pack":
                self._hash_pack(e)
        if root.head not in self.first_index and not any(
            root.head in self._extent_index(e) for e in root.extents
        ):
            raise IntegrityError(f"head commit {root.head.hex()} is in none of the root's PACKs")

    def _extent_index(self, e: Extent) -> Index:
        cached = self._indexes.get(e)
        if cached is not None:
            return cached
        data = self.device.pread(e.idx_length, e.idx_offset)
        if data[:8] != IDX_MAGIC or len(data) != e.idx_length:
            raise IntegrityError(f"no IDX v2 at byte {e.idx_offset}")
        # The checksum first: a damaged IDX is reported as such, whatever it garbled.
        if data[-20:] != e.idx_checksum or sha1(memoryview(data)[:-20]).digest() != e.idx_checksum:
            raise IntegrityError(f"IDX at byte {e.idx_offset}: checksum mismatch")
        try:
            index = self._indexes[e] = Index(data)
        except ImageError as exc:
            raise IntegrityError(f"IDX at byte {e.idx_offset}: {exc}") from None
        return index

    def _hash_pack(self, e: Extent) -> None:
        end = e.pack_offset + e.pack_length - 20
        h = sha1(b"", e.pack_length)
        for at in range(e.pack_offset, end, _HASH_READ):
            h.update(self.device.pread(min(_HASH_READ, end - at), at))
        if h.digest() != e.pack_checksum:
            raise IntegrityError(f"PACK at byte {e.pack_offset}: checksum mismatch")

    def _parts_of(self, root: Root | None) -> list[_Part]:
        parts = []
        for e in root.extents if root else ():
            index = self._extent_index(e)
            reader = PackReader(self.device.fd, e.pack_offset, e.pack_offset + e.pack_length, index)
            parts.append(_Part(index, reader))
        return [*parts, self._first_part]

    # -- state ----------------------------------------------------------------
    @property
    def generation(self) -> int:
        return self.head.generation if self.head else 0

    @property
    def head_commit(self) -> bytes:
        return self.head.head if self.head else self.layout.commit

    @property
    def head_tree(self) -> bytes:
        """The head commit's root tree (a batch whose tree is this changes nothing)."""
        return self.commit_object().tree

    @property
    def extents(self) -> tuple[Extent, ...]:
        """The head's extents, newest first (generation 0 is implicit, always last)."""
        return self.head.extents if self.head else ()

    @property
    def writable(self) -> bool:
        return self.area is not None

    @property
    def data_end(self) -> int:
        return self.device.size - self.device.size % BLOCK

    def warnings(self) -> list[str]:
        return [s.line(self.generation) for s in self.skipped]

    def close(self) -> None:
        for part in self._parts:
            part.reader.close()
        self._first_part.reader.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- objects --------------------------------------------------------------
    def find(self, oid: bytes) -> tuple[PackReader, int] | None:
        """(reader, PACK-relative offset) of `oid` in the newest extent holding it."""
        for part in self._parts:
            off = part.index.lookup(oid)
            if off is not None:
                return part.reader, off
        return None

    def packs(self) -> list[tuple[Extent | None, Index, PackReader]]:
        """Every PACK the head reads from, in lookup order (newest first): its extent,
        its IDX and its reader; the first generation last, with extent None."""
        return [(e, p.index, p.reader) for e, p in zip((*self.extents, None), self._parts, strict=True)]

    def __contains__(self, oid: bytes) -> bool:
        return any(oid in part.index for part in self._parts)

    def read_object(self, oid: bytes) -> tuple[str, bytes]:
        """(kind, body) of `oid`, checked against its id."""
        found = self.find(oid)
        if found is None:
            raise NotFound(f"object {oid.hex()} is not in the image")
        reader, off = found
        num, body = reader.resolve(off)
        kind = TYPE_NUMBERS[num]
        if object_id(kind, body) != oid:
            raise IntegrityError(f"object {oid.hex()} at PACK offset {off} does not hash to its id")
        return kind, body

    def commit_object(self, oid: bytes | None = None) -> Commit:
        oid = oid or self.head_commit
        kind, body = self.read_object(oid)
        if kind != COMMIT:
            raise IntegrityError(f"{oid.hex()} is a {kind}, not a commit")
        return Commit.from_raw(body)

    def log(self) -> Iterator[tuple[bytes, Commit]]:
        """(id, commit) from the head along first parents, while the image holds them."""
        oid: bytes | None = self.head_commit
        while oid is not None and oid in self:
            commit = self.commit_object(oid)
            yield oid, commit
            oid = commit.parents[0] if commit.parents else None

    # -- space ------------------------------------------------------------------
    def _protected(self) -> list[tuple[int, int]]:
        """Spans no write may touch: the extents of every root that verified its own
        checksum and binding (any of them may be adopted at the next open if the
        newer ones turn out damaged), merged and sorted."""
        spans = sorted(
            (max(e.start, 0), e.end) for root in self.slots if root is not None for e in root.extents
        )
        merged: list[tuple[int, int]] = []
        for start, end in spans:
            if merged and start <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
            else:
                merged.append((start, end))
        return merged

    def holes(self) -> list[tuple[int, int]]:
        """Free (offset, length) spans of the data area, in disk order."""
        if self.area is None:
            return []
        out = []
        at = self.area.data_start
        for start, end in self._protected():
            if start > at:
                out.append((at, min(start, self.data_end) - at))
            at = max(at, end)
        if at < self.data_end:
            out.append((at, self.data_end - at))
        return [(o, n) for o, n in out if n > 0]

    def free_space(self) -> int:
        return sum(n for _, n in self.holes())

    # -- writing ------------------------------------------------------------------
    def begin(self, level: int = BATCH_LEVEL) -> PackWriter:
        """A writer in the largest free span; add objects to it, then `commit` it."""
        if self.area is None:
            raise ReadOnly(f"{self.device.name}: the image has no room for writes (see docteur grow)")
        if not self.device.writable:
            raise ReadOnly(f"{self.device.name}: opened for reading only")
        self._check_extent_room(len(self.extents) + 1)
        return self._writer(level)

    def _writer(self, level: int) -> PackWriter:
        # The writer's modules only when writing: `docteur verify` and a read-only
        # boot never load them (~2 ms).
        from .packwrite import NoSpace, PackWriter

        assert self.area is not None
        self.device.refuse_if_failed()
        holes = self.holes()
        if not holes:
            raise NoSpace(f"no space: {self.device.name} has no free space left")
        offset, length = max(holes, key=lambda h: (h[1], -h[0]))
        return PackWriter(self.device, offset, offset + length, self.__contains__, level)

    def commit(
        self,
        writer: PackWriter,
        tree: bytes,
        message: bytes | str,
        author: Signature | str,
        committer: Signature | str | None = None,
        when: int | None = None,
        tz: str = "+0000",
    ) -> tuple[bytes, int]:
        """Make the commit of `tree` (its objects added to `writer` or already stored),
        parent the current head, and make it the new head. Returns (commit id,
        generation) once the root record is durable. It always commits: a caller
        that wants no empty commits compares `tree` with `head_tree` first."""
        if tree not in writer and tree not in self:
            raise NotFound(f"tree {tree.hex()} is neither in the batch nor in the image")
        when = int(time.time()) if when is None else when
        author = _signature(author, when, tz)
        committer = author if committer is None else _signature(committer, when, tz)
        if isinstance(message, str):
            message = message.encode()
        if message and not message.endswith(b"\n"):
            message += b"\n"
        commit = Commit(tree, (self.head_commit,), author, committer, message)
        oid = writer.add(COMMIT, commit.as_raw())
        root = self._publish([writer.finish(), *self.extents], oid)
        return oid, root.generation

    def _publish(
        self,
        extents: list[Extent],
        head: bytes,
        copies: int = 1,
        synced: tuple[bytes, str] | None = None,
    ) -> Root:
        """Flush the data, write the next root record (in `copies` slots), flush: the
        commit point. Nothing in memory changes unless it succeeds."""
        area = self.area
        assert area is not None
        self._check_extent_room(len(extents))
        old = self.head
        if synced is None:
            synced = (old.synced, old.remote) if old else (ZERO_ID, "")
        generation = max((r.generation for r in self.slots if r is not None), default=0) + 1
        root = Root(generation, int(time.time()), self.binding, head, *synced, tuple(extents), area.uid)
        record = root.to_bytes()
        slots = self._free_slots(copies)
        self.device.flush()
        for slot in slots:
            self.device.pwrite(record, area.slot_offset(slot))
        self.device.flush()
        # Durable: only now does the in-memory state move.
        for part in self._parts[:-1]:
            part.reader.close()
        for slot in slots:
            self.slots[slot] = root
        self.head = root
        self.skipped = []
        self._parts = self._parts_of(root)
        self._indexes = {e: self._indexes[e] for e in root.extents if e in self._indexes}
        return root

    def _check_extent_room(self, count: int) -> None:
        if count > MAX_EXTENTS:
            raise TooManyExtents(
                f"{self.device.name}: {count - 1} batches since the last compaction, the most "
                "one root record lists: run docteur compact"
            )

    def _free_slots(self, n: int) -> list[int]:
        """`n` slots to write a root into: empty or unreadable ones first, then the
        oldest; never one holding the head (a torn write there could lose it)."""
        order = sorted(
            (i for i, r in enumerate(self.slots) if r is None or r.generation != self.generation),
            key=lambda i: -1 if self.slots[i] is None else self.slots[i].generation,  # type: ignore[union-attr]
        )
        return order[:n]

    def set_synced(self, commit: bytes, remote: str) -> int:
        """Record that `commit` is on `remote` (a URL without credentials and a branch):
        a root-only generation. Returns the generation."""
        return self._publish(list(self.extents), self.head_commit, synced=(commit, remote)).generation

    def compact(self, level: int = COMPACT_LEVEL) -> int:
        """Rewrite every object of the extents into one PACK (history kept), check it,
        and commit it as the only extent. Returns the new generation."""
        if not self.extents:
            return self.generation
        first = self.first_index
        writer = self._writer(level)
        writer.known = first.__contains__  # only generation 0 counts as stored
        self._copy_versions(writer)
        # What the history walk did not reach (commits, big blobs) goes whole.
        for part in self._parts[:-1]:
            for oid, _, off in sorted(part.index.entries(), key=lambda e: e[2]):
                if oid in writer or oid in first:
                    continue
                entry = part.reader.entry(off)
                if not entry.is_delta and entry.size > _STREAM:
                    kind = TYPE_NUMBERS[entry.type]
                    got = writer.add_stream(kind, entry.size, part.reader.inflate_chunks(entry, 1 << 20))
                else:
                    kind, body = self.read_object(oid)
                    got = writer.add(kind, body)
                if got != oid:
                    raise IntegrityError(f"object {oid.hex()} does not hash to its id")
        extent = writer.finish()
        self._check_extent(extent)
        # Two copies of the new root: once the older slots are cleared, each copy is
        # the other's fallback.
        root = self._publish([extent], self.head_commit, copies=2)
        self._retire_older(root)
        return root.generation

    def _copy_versions(self, writer: PackWriter) -> None:
        """The trees and small blobs of the history, path by path: the newest version
        whole, each older one as a delta against the next newer (git's order, so that
        recent versions read fastest)."""
        first = self.first_index
        versions: dict[bytes, list[bytes]] = {}  # path -> ids, newest first
        seen: set[bytes] = set()

        def walk(tree: bytes, path: bytes) -> None:
            if tree in seen or tree in first:
                return
            seen.add(tree)
            versions.setdefault(path, []).append(tree)
            for entry in iter_tree(self.read_object(tree)[1]):
                child = path + b"/" + entry.name
                if entry.mode == MODE_TREE:
                    walk(entry.id, child)
                elif entry.mode != MODE_GITLINK and entry.id not in seen and entry.id not in first:
                    seen.add(entry.id)
                    versions.setdefault(child, []).append(entry.id)

        for _, commit in self.log():
            walk(commit.tree, b"")
        for oids in versions.values():
            newer: tuple[bytes, bytes] | None = None
            for oid in oids:
                reader, off = self.find(oid) or (None, 0)
                if reader is None or reader.type_and_size(off)[1] > _DELTA_MAX:
                    newer = None
                    continue
                kind, body = self.read_object(oid)
                got = writer.add_delta(kind, body, *newer) if newer else writer.add(kind, body)
                if got != oid:
                    raise IntegrityError(f"object {oid.hex()} does not hash to its id")
                newer = (oid, body)

    def _retire_older(self, root: Root) -> None:
        """Clear every slot but `root`'s copies, then flush: the extents only those
        slots referenced become free space (until then they stay protected, so a
        crash here leaves either the old slots or none, and `root` either way)."""
        area = self.area
        assert area is not None
        stale = [i for i, r in enumerate(self.slots) if r is not None and r is not root]
        for i in stale:
            self.device.pwrite(bytes(area.slot_size), area.slot_offset(i))
        if stale:
            self.device.flush()
        for i in stale:
            self.slots[i] = None

    def verify(self, mode: str = "pack") -> None:
        """Check every extent of the head: "pack" hashes each PACK against its trailer
        (the IDX checksums were checked at open), "full" also inflates and hashes every
        object. Generation 0 is checked by verify.py as for any image."""
        if mode not in ("pack", "full"):
            raise ValueError(f"unknown verify mode {mode!r}")
        for e in self.extents:
            if mode == "full":
                self._check_extent(e)
            else:
                self._hash_pack(e)

    def _check_extent(self, e: Extent) -> None:
        """IDX checksum, PACK checksum and every object's id, read from the device."""
        index = self._extent_index(e)
        reader = PackReader(self.device.fd, e.pack_offset, e.pack_offset + e.pack_length, index)
        try:
            for oid, _, off in index.entries():
                entry = reader.entry(off)
                if entry.is_delta:  # small: rebuilt from its base in memory
                    num, body = reader.resolve(off)
                    digest = object_id(TYPE_NUMBERS[num], body)
                else:
                    h = sha1(object_header(TYPE_NUMBERS[entry.type], entry.size), entry.size)
                    for piece in reader.inflate_chunks(entry, 1 << 20):
                        h.update(piece)
                    digest = h.digest()
                if digest != oid:
                    raise IntegrityError(f"object {oid.hex()} at offset {off} hashes to {digest.hex()}")
        except IntegrityError as exc:
            raise IntegrityError(f"PACK at byte {e.pack_offset}: {exc}") from None
        finally:
            reader.close()
        self._hash_pack(e)


def _signature(who: Signature | str, when: int, tz: str) -> Signature:
    if isinstance(who, Signature):
        return who
    name, _, email = who.partition("<")
    if not email.endswith(">") or "\n" in who or "<" in email or not name.strip():
        raise ValueError(f"bad author {who!r}: give 'Name <email>'")
    return Signature.make(name.strip(), email[:-1], when, tz)


# -- sync (push and pull) ----------------------------------------------------------------


def adopt(
    store: Store, writer: PackWriter | None, head: bytes, synced: tuple[bytes, str] | None = None
) -> int:
    """Make `head`, a commit object already written into `writer` (a batch of fetched
    objects) or already in the image, the head of a new generation; with `synced`
    (commit, remote), record it as the remote's tip in the same root. This is how a
    pull fast-forwards or merges. Returns the generation once durable."""
    if writer is not None and head in writer:
        pass  # added through the writer, which checked its id
    elif head in store:
        store.commit_object(head)  # a commit, not some other object
    else:
        raise NotFound(f"commit {head.hex()} is neither in the batch nor in the image")
    extents = list(store.extents)
    if writer is not None and writer.entries:
        extents.insert(0, writer.finish())
    return store._publish(extents, head, synced=synced).generation
