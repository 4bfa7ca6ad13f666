"""Proving an image intact: the checks a guest makes at boot and `docteur verify` makes.

They cover the generation the image serves: the first generation, plus, in an
image with writes, every extent (PACK + IDX) of the head (FORMAT.md).

- `verify_pack`: every PACK byte against its PACK's trailer, each IDX's own
  checksum, the object counts, the zero padding after the first generation (up
  to the write area, when there is one), the head commit present.
- `verify_full`: that, plus every object of every PACK inflated (each exactly
  once, deltas resolved depth-first from their bases) and hashed, each IDX
  rebuilt from its PACK and compared byte for byte, no thin PACK, the head a
  commit, every tree and blob of its tree present, and the head's first-parent
  history present down to the first generation's commit.

Each failure raises an error whose message names what and where (an extent's
errors start with `extent at byte N:`).
"""

from __future__ import annotations

import os
import struct
import zlib
from array import array
from bisect import bisect_left
from collections import namedtuple
from collections.abc import Callable, Iterator

from .delta import apply_delta
from .errors import DocteurError, ImageError, IntegrityError, NotFound
from .idx import Index, build_idx
from .image import Image
from .layout import PACK_OFFSET
from .objects import COMMIT, TREE, TYPE_NUMBERS, Commit, iter_tree, object_header, object_id, sha1
from .pack import bad_zlib, parse_entry

Progress = Callable[[int, int], None]
_CHUNK = 1 << 20
# Undeltified objects with no delta children above this size are hashed as
# they inflate instead of being held whole.
_STREAM = 4 << 20


class _Part(namedtuple("_Part", "base length index idx_offset reader label")):
    """One PACK of the served generation: it starts at byte `base` of the image and
    is `length` bytes long (trailer included); its IDX is at `idx_offset`. `label`
    is put before its errors (empty for the first generation's, as ever)."""

    __slots__ = ()

    def named(self, exc: DocteurError) -> DocteurError:
        return type(exc)(f"{self.label}{exc}") if self.label else exc


def _parts(image: Image) -> list[_Part]:
    """The first generation's PACK, then the head's extents, oldest first."""
    lay = image.layout
    parts = [_Part(PACK_OFFSET, lay.pack_end - PACK_OFFSET, image.index, lay.idx_offset, image.pack, "")]
    for e, index, reader in reversed(image.store.packs()[:-1]):
        parts.append(_Part(e.pack_offset, e.pack_length, index, e.idx_offset, reader,
                           f"extent at byte {e.pack_offset}: "))  # fmt: skip
    return parts


def verify_pack(image: Image, progress: Progress | None = None) -> None:
    """Cheap boot check: PACK checksums, IDX checksums, counts, head commit present."""
    try:
        _verify_pack(image, progress)
    except DocteurError as exc:
        raise image.named(exc) from None


def verify_full(image: Image, progress: Progress | None = None) -> None:
    """Every check there is; see the module's docstring."""
    try:
        _verify_pack(image, None)
        parts = _parts(image)
        total = sum(part.length for part in parts)
        done = 0
        for part in parts:
            try:
                _Walker(image.fd, part, progress, done, total).run()
            except DocteurError as exc:
                raise part.named(exc) from None
            done += part.length
        commit = image.commit_object()  # raises when the head's object is not a commit
        _check_tree(image, commit.tree)
        _check_history(image)
    except DocteurError as exc:
        raise image.named(exc) from None
    image.fully_verified = True


def _verify_pack(image: Image, progress: Progress | None) -> None:
    parts = _parts(image)
    # The store checked every extent's IDX checksum as it adopted the root, and hashed
    # the extents' PACKs too when opened with "pack": only the rest is left to do here.
    hashed = image.check == "pack"
    total = sum(part.length for part in parts if not (part.label and hashed))
    done = 0
    for part in parts:
        try:
            if part.label and hashed:
                continue
            _check_pack(image.fd, part, progress, done, total)
            if not part.label:
                _check_idx(part)
        except DocteurError as exc:
            raise part.named(exc) from None
        done += part.length
        if not part.label:
            _check_padding(image)
    if image.commit not in image:
        where = "the header's commit" if image.generation == 0 else f"generation {image.generation}'s head"
        raise IntegrityError(f"{where} {image.commit.hex()} is not in the PACK")


def _check_pack(fd: int, part: _Part, progress: Progress | None, before: int, total: int) -> None:
    """One PACK's header, count and SHA-1 against its trailer."""
    base, index = part.base, part.index
    magic, version, count = struct.unpack(">4sII", os.pread(fd, 12, base))
    if magic != b"PACK" or version not in (2, 3):
        raise ImageError(f"unsupported PACK version {version} at byte {base}")
    if count != index.count:
        raise IntegrityError(f"the PACK holds {count} objects but the IDX lists {index.count}")
    end = base + part.length - 20
    pos = base
    h = sha1(b"", part.length)
    # Direct I/O on a block device: ~1 GB/s under TCG against ~140 MB/s through
    # the page cache, which the PACK would fill for nothing.
    for chunk in part.reader.pieces(0, _CHUNK, direct=part.length > _CHUNK):
        h.update(chunk)
        pos += len(chunk)
        if progress:
            progress(before + pos - base, total)
    if pos < end:
        raise ImageError(f"image truncated at byte {pos}")
    trailer = os.pread(fd, 20, end)
    if h.digest() != trailer:
        raise IntegrityError(
            f"PACK checksum mismatch: bytes {base}..{end} hash to {h.hexdigest()}, "
            f"the trailer says {trailer.hex()}"
        )


def _check_idx(part: _Part) -> None:
    if part.index.compute_checksum() != part.index.checksum:
        raise IntegrityError(f"IDX checksum mismatch (IDX at byte {part.idx_offset})")


def _check_padding(image: Image) -> None:
    """Zeros after the first generation's IDX, up to the write area when there is one
    (garbage that is no write area header fails as in any image)."""
    layout = image.layout
    area = image.store.area
    stop = area.offset if area is not None else layout.image_size
    tail = os.pread(image.fd, min(stop - layout.idx_end, 1 << 16), layout.idx_end)
    if tail.strip(b"\0"):
        at = layout.idx_end + len(tail) - len(tail.lstrip(b"\0"))
        raise ImageError(f"non-zero byte {at} in the zero padding after the IDX")


class _Walker:
    """One pass over the PACK through an mmap, with per-object state in flat arrays.

    Objects are numbered by their rank in PACK order; the arrays cost ~20
    bytes an object, so a guest with 128 MiB can check PACKs of ~1M objects.
    """

    def __init__(self, fd: int, part: _Part, progress: Progress | None, before: int = 0, total: int = 0):
        self.fd = fd
        self.part = part
        self.index: Index = part.index
        self.progress = progress
        self.pack_len = part.length
        self.before = before  # bytes of earlier PACKs, for the progress
        self.total = total or part.length
        self.done = 0
        self.checked = 0

    def run(self) -> None:
        import mmap  # a shared library: `pack` boots need not load it

        # The mapping starts on a page: at byte 0 for the first generation (its PACK
        # at byte 28), at the PACK itself for an extent (4096-aligned).
        start = self.part.base - self.part.base % mmap.ALLOCATIONGRANULARITY
        self.at = self.part.base - start  # where the PACK starts in the mapping
        length = self.at + self.pack_len
        with mmap.mmap(self.fd, length, offset=start, access=mmap.ACCESS_READ) as mm:
            self.mv = memoryview(mm)
            try:
                self._run()
            finally:
                self.mv.release()

    def _run(self) -> None:
        index, mv = self.index, self.mv
        count = index.count
        order = sorted(range(count), key=index.offset)  # IDX positions in PACK order
        self.order = array("I", order)
        self.offs = offs = array("Q", (index.offset(i) for i in order))
        if count and offs[0] != 12:
            raise IntegrityError(f"the IDX's first object is at PACK offset {offs[0]}, not 12")
        children: dict[int, list[int]] = {}
        roots: list[int] = []
        for rank in range(count):
            off = offs[rank]
            end = offs[rank + 1] if rank + 1 < count else self.pack_len - 20
            if end <= off:
                raise IntegrityError(f"the IDX lists two objects at PACK offset {off}")
            entry = parse_entry(mv, off, self.at + off)
            if entry.data_offset >= end:
                raise IntegrityError(f"PACK entry at {off}: header runs into the next object")
            i = order[rank]
            crc = zlib.crc32(mv[self.at + off : self.at + end])
            if crc != index.crc32(i):
                raise IntegrityError(
                    f"PACK entry at {off} (object {index.oid(i).hex()}): CRC32 {crc:08x} "
                    f"differs from the IDX's {index.crc32(i):08x}"
                )
            if not entry.is_delta:
                roots.append(rank)
                continue
            if entry.base_offset is not None:
                base = self._rank(entry.base_offset)
                if base is None:
                    raise IntegrityError(
                        f"PACK entry at {off}: its delta base at {entry.base_offset} is not an object"
                    )
            else:
                found = index.position(entry.base_id)
                if found is None:
                    raise IntegrityError(
                        "Invalid image disk: the PACK file is thin "
                        f"(entry at {off} needs base {entry.base_id.hex()})"
                    )
                base = self._rank(index.offset(found))
                assert base is not None
            children.setdefault(base, []).append(rank)
        self.children = children
        for rank in roots:
            self._tree_from(rank)
        if self.checked != count:
            raise IntegrityError("some deltas never reach a whole object (a delta cycle)")
        # Every (id, CRC, offset) of the IDX now matches the PACK; rebuilding the
        # IDX from them checks what remains: order, fanout, large offsets.
        rebuilt = build_idx(index.entries(), index.pack_checksum)
        if rebuilt != index.data:
            at = next(
                (n for n, (a, b) in enumerate(zip(rebuilt, index.data, strict=False)) if a != b),
                min(len(rebuilt), len(index.data)),
            )
            raise IntegrityError(
                f"the IDX differs from the one rebuilt from the PACK at byte "
                f"{self.part.idx_offset + at}"
            )

    def _rank(self, off: int) -> int | None:
        rank = bisect_left(self.offs, off)
        return rank if rank < len(self.offs) and self.offs[rank] == off else None

    def _span(self, rank: int) -> tuple[memoryview, int, int]:
        """(zlib data, declared size, entry length) of the object of `rank`."""
        off = self.offs[rank]
        end = self.offs[rank + 1] if rank + 1 < len(self.offs) else self.pack_len - 20
        entry = parse_entry(self.mv, off, self.at + off)
        return self.mv[self.at + entry.data_offset : self.at + end], entry.size, end - off

    def _inflated(self, rank: int, piece: int) -> Iterator[bytes]:
        """The object's inflated data in pieces (from `piece` bytes of input each),
        checked to end where its entry ends and to have its declared size."""
        src, size, length = self._span(rank)
        d = zlib.decompressobj()
        produced = 0
        try:
            for at in range(0, len(src), piece):
                data = d.decompress(src[at : at + piece])
                produced += len(data)
                yield data
        except zlib.error as exc:
            raise bad_zlib(self.offs[rank], exc) from None
        if not d.eof or d.unused_data or produced != size:
            raise IntegrityError(f"PACK entry at {self.offs[rank]}: zlib data does not match its header")
        self._advance(length)

    def _inflate(self, rank: int) -> bytes:
        return b"".join(self._inflated(rank, 1 << 62))  # one decompress call

    def _stream_hash(self, rank: int, kind: str) -> bytes:
        size = self._span(rank)[1]
        h = sha1(object_header(kind, size), size)
        for data in self._inflated(rank, _CHUNK):
            h.update(data)
        return h.digest()

    def _advance(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(self.before + self.done, self.total)

    def _record(self, rank: int, oid: bytes) -> None:
        expected = self.index.oid(self.order[rank])
        if oid != expected:
            raise IntegrityError(
                f"object at PACK offset {self.offs[rank]} hashes to {oid.hex()}, "
                f"the IDX says {expected.hex()}"
            )
        self.checked += 1

    def _tree_from(self, root: int) -> None:
        off = self.offs[root]
        entry = parse_entry(self.mv, off, self.at + off)
        kind = TYPE_NUMBERS[entry.type]
        if root not in self.children and entry.size > _STREAM:
            self._record(root, self._stream_hash(root, kind))
            return
        data = self._inflate(root)
        self._record(root, object_id(kind, data))
        # Depth-first, one child at a time: memory is the chain's depth, not the fan-out.
        stack = [(data, iter(self.children.pop(root, ())))]
        while stack:
            base, pending = stack[-1]
            child = next(pending, None)
            if child is None:
                stack.pop()
                continue
            body = apply_delta(base, self._inflate(child))
            self._record(child, object_id(kind, body))
            stack.append((body, iter(self.children.pop(child, ()))))


def _check_tree(image: Image, root: bytes) -> None:
    """Every tree and blob under `root` is in the image (trees parsed, ids looked up)."""
    seen: set[bytes] = set()
    pending = [(root, "/")]
    where = "the PACK" if not image.store.extents else "the image"
    while pending:
        oid, path = pending.pop()
        if oid in seen:
            continue
        seen.add(oid)
        try:
            kind, body = image.read_object(oid, check=False)
        except NotFound:
            raise IntegrityError(f"tree {oid.hex()} ({path}) is missing from {where}") from None
        if kind != TREE:
            raise IntegrityError(f"{path} should be a tree but {oid.hex()} is a {kind}")
        for entry in iter_tree(body):
            name = entry.name.decode("utf-8", "surrogateescape")
            if entry.kind == "submodule":
                continue  # a submodule's commit lives in another repository
            if entry.kind == "directory":
                pending.append((entry.id, f"{path}{name}/"))
            elif entry.id not in image:
                raise IntegrityError(f"blob {entry.id.hex()} ({path}{name}) is missing from {where}")



def _check_history(image: Image) -> None:
    """The head's first parents, each a commit in the image, down to the first
    generation's commit (every generation is one commit on top of the one before)."""
    first = image.layout.commit
    oid = image.commit
    seen: set[bytes] = set()
    while oid != first:
        if oid in seen:
            raise IntegrityError(f"the history loops at commit {oid.hex()}")
        seen.add(oid)
        if oid not in image:
            raise IntegrityError(
                f"commit {oid.hex()} of the head's history is missing from the image "
                f"(it never reaches the first generation's commit {first.hex()})"
            )
        kind, body = image.read_object(oid, check=False)  # every object was hashed above
        if kind != COMMIT:
            raise IntegrityError(f"{oid.hex()} in the head's history is a {kind}, not a commit")
        parents = Commit.from_raw(body).parents
        if not parents:
            raise IntegrityError(
                f"commit {oid.hex()} has no parent: the head's history never reaches the first "
                f"generation's commit {first.hex()}"
            )
        oid = parents[0]
