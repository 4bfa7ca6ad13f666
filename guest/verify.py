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
import zlib
from array import array
from bisect import bisect_left
from collections import namedtuple
from collections.abc import Callable

from .delta import apply_delta
from .errors import DocteurError, ImageError, IntegrityError, NotFound
from .idx import Index, build_idx
from .image import Image
from .layout import PACK_OFFSET
from .objects import COMMIT, TREE, TYPE_NUMBERS, Commit, iter_tree, object_header, object_id, sha1
from .pack import PACK_HEADER, bad_zlib, parse_entry

TYPE_CHECKING = False
if TYPE_CHECKING:  # threading only with a second CPU (see _Walker._checked)
    import threading

Progress = Callable[[int, int], None]
_CHUNK = 1 << 20
# Undeltified objects with no delta children above this size are hashed as
# they inflate instead of being held whole.
_STREAM = 4 << 20
# From this PACK size on, a second CPU takes half the objects (below, a thread
# costs more than it saves).
_THREADED = 1 << 20
# Trees' bodies kept from the hashing pass for the tree check (a bigger tree set is
# partly read again).
_TREES = 8 << 20


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
        trees = _Trees(_TREES)
        for part in parts:
            try:
                _Walker(image.fd, part, progress, done, total, trees).run()
            except DocteurError as exc:
                raise part.named(exc) from None
            done += part.length
        commit = image.commit_object()  # raises when the head's object is not a commit
        _check_tree(image, commit.tree, trees)
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
    magic, version, count = PACK_HEADER.unpack(os.pread(fd, PACK_HEADER.size, base))
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


class _NoLock:
    """A lock's interface, for a walk in one thread."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


def _cpus() -> int:
    """The CPUs this process may run on (the guest has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _Trees(dict[bytes, bytes]):
    """Trees' bodies met while hashing, by id, up to `budget` bytes in all: the tree
    check reads these instead of inflating them a second time."""

    def __init__(self, budget: int):
        super().__init__()
        self.budget = budget

    def keep(self, oid: bytes, body: bytes) -> None:
        if len(body) <= self.budget:
            self[oid] = body
            self.budget -= len(body)


class _Walker:
    """One pass over the PACK through an mmap, with per-object state in flat arrays.

    Objects are numbered by their rank in PACK order. The first pass parses each
    entry header once and keeps what the second needs (offset, header length,
    type, size): ~22 bytes an object, so a guest with 128 MiB can check PACKs of
    ~1M objects. `trees` receives the trees' bodies (up to a byte budget shared by
    the walkers of one check) for the tree check that follows, which would
    otherwise read and inflate each again.
    """

    def __init__(self, fd: int, part: _Part, progress: Progress | None, before: int = 0, total: int = 0,
                 trees: _Trees | None = None):  # fmt: skip
        self.fd = fd
        self.part = part
        self.index: Index = part.index
        self.progress = progress
        self.pack_len = part.length
        self.before = before  # bytes of earlier PACKs, for the progress
        self.total = total or part.length
        self.done = 0
        self.trees = trees if trees is not None else _Trees(0)
        self.lock: _NoLock | threading.Lock = _NoLock()  # progress and trees, when threaded

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
        index, mv, at = self.index, self.mv, self.at
        count = index.count
        by_idx = index.offsets()
        crcs = index.crc32s()
        order = sorted(range(count), key=by_idx.__getitem__)  # IDX positions in PACK order
        self.order = array("I", order)
        self.offs = offs = array("Q", [by_idx[i] for i in order])
        del by_idx
        if count and offs[0] != 12:
            raise IntegrityError(f"the IDX's first object is at PACK offset {offs[0]}, not 12")
        # What the second pass needs of each header, so that it parses none again.
        self.heads = heads = bytearray(count)  # header length (at most 31 bytes)
        self.types = types = bytearray(count)
        self.sizes = sizes = array("Q", bytes(8 * count))
        children: dict[int, list[int]] = {}
        roots: list[int] = []
        crc32 = zlib.crc32
        last = self.pack_len - 20
        for rank in range(count):
            off = offs[rank]
            end = offs[rank + 1] if rank + 1 < count else last
            if end <= off:
                raise IntegrityError(f"the IDX lists two objects at PACK offset {off}")
            entry = parse_entry(mv, off, at + off)
            if entry.data_offset >= end:
                raise IntegrityError(f"PACK entry at {off}: header runs into the next object")
            i = order[rank]
            crc = crc32(mv[at + off : at + end])
            if crc != crcs[i]:
                raise IntegrityError(
                    f"PACK entry at {off} (object {index.oid(i).hex()}): CRC32 {crc:08x} "
                    f"differs from the IDX's {crcs[i]:08x}"
                )
            heads[rank] = entry.data_offset - off
            types[rank] = entry.type
            sizes[rank] = entry.size
            if entry.base_offset is None and entry.base_id is None:
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
        if self._checked(roots) != count:
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

    def _span(self, rank: int) -> tuple[int, int]:
        """(start, end) in the mapping of the zlib data of the object of `rank`."""
        off = self.offs[rank]
        end = self.offs[rank + 1] if rank + 1 < len(self.offs) else self.pack_len - 20
        return self.at + off + self.heads[rank], self.at + end

    def _check_end(self, rank: int, d: zlib._Decompress, produced: int) -> None:
        """The zlib data ends where the entry ends, with the size its header declares."""
        if not d.eof or d.unused_data or produced != self.sizes[rank]:
            raise IntegrityError(f"PACK entry at {self.offs[rank]}: zlib data does not match its header")

    def _inflate(self, rank: int) -> bytes:
        start, end = self._span(rank)
        d = zlib.decompressobj()
        try:
            data = d.decompress(self.mv[start:end])  # one call: the output sized by zlib's module
        except zlib.error as exc:
            raise bad_zlib(self.offs[rank], exc) from None
        self._check_end(rank, d, len(data))
        self._advance(end - start + self.heads[rank])
        return data

    def _stream_hash(self, rank: int, kind: str) -> bytes:
        """The id of a big object, hashed as it inflates, _CHUNK of input at a time."""
        start, end = self._span(rank)
        size = self.sizes[rank]
        h = sha1(object_header(kind, size), size)
        d = zlib.decompressobj()
        produced = 0
        try:
            for at in range(start, end, _CHUNK):
                data = d.decompress(self.mv[at : min(at + _CHUNK, end)])
                produced += len(data)
                h.update(data)
        except zlib.error as exc:
            raise bad_zlib(self.offs[rank], exc) from None
        self._check_end(rank, d, produced)
        self._advance(end - start + self.heads[rank])
        return h.digest()

    def _checked(self, roots: list[int]) -> int:
        """Check the objects of the delta trees of `roots`; how many there were.

        Each tree is independent of the others, and inflating and hashing (zlib and
        OpenSSL) let go of the GIL: with a second CPU, a thread takes every other
        tree. The error raised is the one of the first failing tree in PACK order,
        as without the thread."""
        if _cpus() < 2 or self.pack_len < _THREADED:
            return sum(self._tree_from(rank) for rank in roots)
        import threading

        self.lock = threading.Lock()
        counts = [0, 0]
        failures: list[tuple[int, Exception]] = []
        stop: list[bool] = []  # set when the main thread leaves early (Ctrl-C): the other stops too

        def work(which: int) -> None:
            for rank in roots[which::2]:
                if stop:
                    return
                try:
                    counts[which] += self._tree_from(rank)
                except Exception as exc:
                    failures.append((rank, exc))
                    return

        other = threading.Thread(target=work, args=(1,), name="verify", daemon=True)
        other.start()
        try:
            work(0)
        except BaseException:
            stop.append(True)
            raise
        finally:
            other.join()
        if failures:
            raise min(failures, key=lambda f: f[0])[1]
        return counts[0] + counts[1]

    def _advance(self, n: int) -> None:
        with self.lock:
            self.done += n
            if self.progress:
                self.progress(self.before + self.done, self.total)

    def _check_id(self, rank: int, oid: bytes) -> None:
        expected = self.index.oid(self.order[rank])
        if oid != expected:
            raise IntegrityError(
                f"object at PACK offset {self.offs[rank]} hashes to {oid.hex()}, "
                f"the IDX says {expected.hex()}"
            )

    def _record(self, rank: int, kind: str, body: bytes) -> None:
        """Hash `body` as an object of `kind`, against the IDX's id for `rank`."""
        oid = object_id(kind, body)
        self._check_id(rank, oid)
        if kind is TREE:
            with self.lock:
                self.trees.keep(oid, body)

    def _tree_from(self, root: int) -> int:
        """Check the object of rank `root` and its deltas, theirs...; how many."""
        kind = TYPE_NUMBERS[self.types[root]]
        if root not in self.children and self.sizes[root] > _STREAM:
            self._check_id(root, self._stream_hash(root, kind))
            return 1
        data = self._inflate(root)
        self._record(root, kind, data)
        checked = 1
        # Depth-first, one child at a time: memory is the chain's depth, not the fan-out.
        stack = [(data, iter(self.children.pop(root, ())))]
        while stack:
            base, pending = stack[-1]
            child = next(pending, None)
            if child is None:
                stack.pop()
                continue
            body = apply_delta(base, self._inflate(child))
            self._record(child, kind, body)
            checked += 1
            stack.append((body, iter(self.children.pop(child, ()))))
        return checked


def _check_tree(image: Image, root: bytes, known: dict[bytes, bytes]) -> None:
    """Every tree and blob under `root` is in the image (trees parsed, ids looked up);
    `known`: trees already hashed, by id (the others are read from the image)."""
    seen: set[bytes] = set()
    pending = [(root, "/")]
    where = "the PACK" if not image.store.extents else "the image"
    while pending:
        oid, path = pending.pop()
        if oid in seen:
            continue
        seen.add(oid)
        body = known.get(oid)
        try:
            kind, body = (TREE, body) if body is not None else image.read_object(oid, check=False)
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
