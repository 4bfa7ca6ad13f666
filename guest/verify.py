"""Proving an image intact: the checks a guest makes at boot and `docteur verify` makes.

- `verify_pack`: every PACK byte against the PACK's trailer, the IDX's own
  checksum, the object counts, the header's commit present in the IDX.
- `verify_full`: that, plus every object inflated (each exactly once, deltas
  resolved depth-first from their bases) and hashed, the IDX rebuilt from the
  PACK and compared byte for byte, no thin PACK, the header's commit a commit,
  and every tree and blob of that commit's tree present.

Each failure raises an error whose message names what and where.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
import zlib
from collections.abc import Callable

from .delta import apply_delta
from .errors import ImageError, IntegrityError, NotFound
from .idx import build_idx
from .image import Image
from .layout import PACK_OFFSET
from .objects import MODE_GITLINK, TREE, TYPE_NUMBERS, iter_tree, object_header
from .pack import parse_entry

Progress = Callable[[int, int], None]
_CHUNK = 1 << 20
# Undeltified objects with no delta children above this size are hashed as
# they inflate instead of being held whole.
_STREAM = 4 << 20


def verify_pack(image: Image, progress: Progress | None = None) -> None:
    """Cheap boot check: PACK checksum, IDX checksum, counts, commit present."""
    fd, layout, index = image.fd, image.layout, image.index
    head = os.pread(fd, 12, PACK_OFFSET)
    magic, version, count = struct.unpack(">4sII", head)
    if magic != b"PACK" or version not in (2, 3):
        raise ImageError(f"unsupported PACK version {version} at byte {PACK_OFFSET}")
    if count != index.count:
        raise IntegrityError(f"the PACK holds {count} objects but the IDX lists {index.count}")
    end = layout.pack_end - 20
    h = hashlib.sha1()
    pos = PACK_OFFSET
    total = layout.pack_end - PACK_OFFSET
    while pos < end:
        chunk = os.pread(fd, min(_CHUNK, end - pos), pos)
        if not chunk:
            raise ImageError(f"image truncated at byte {pos}")
        h.update(chunk)
        pos += len(chunk)
        if progress:
            progress(pos - PACK_OFFSET, total)
    trailer = os.pread(fd, 20, end)
    if h.digest() != trailer:
        raise IntegrityError(
            f"PACK checksum mismatch: bytes {PACK_OFFSET}..{end} hash to {h.hexdigest()}, "
            f"the trailer says {trailer.hex()}"
        )
    if index.compute_checksum() != index.checksum:
        raise IntegrityError(f"IDX checksum mismatch (IDX at byte {layout.idx_offset})")
    tail = os.pread(fd, min(layout.image_size - layout.idx_end, 1 << 16), layout.idx_end)
    if tail.strip(b"\0"):
        at = layout.idx_end + len(tail) - len(tail.lstrip(b"\0"))
        raise ImageError(f"unexpected data after the IDX at byte {at}")
    if image.commit not in index:
        raise IntegrityError(f"the header's commit {image.commit.hex()} is not in the PACK")


def verify_full(image: Image, progress: Progress | None = None) -> None:
    """Every check there is; see the module's docstring."""
    verify_pack(image)
    _Walker(image, progress).run()
    commit = image.commit_object()  # raises when the header's object is not a commit
    _check_tree(image, commit.tree)


class _Walker:
    def __init__(self, image: Image, progress: Progress | None):
        self.image = image
        self.index = image.index
        self.progress = progress
        self.pack_len = image.layout.pack_end - PACK_OFFSET
        self.done = 0

    def run(self) -> None:
        index = self.index
        count = index.count
        by_offset = sorted((index.offset(i), i) for i in range(count))
        with mmap.mmap(self.image.fd, self.image.layout.pack_end, access=mmap.ACCESS_READ) as mm:
            mv = memoryview(mm)
            try:
                self._run(mv, by_offset)
            finally:
                mv.release()

    def _run(self, mv: memoryview, by_offset: list[tuple[int, int]]) -> None:
        index = self.index
        ends = [off for off, _ in by_offset[1:]] + [self.pack_len - 20]
        if by_offset and by_offset[0][0] != 12:
            raise IntegrityError(f"the IDX's first object is at PACK offset {by_offset[0][0]}, not 12")
        position = {}  # PACK offset -> IDX position
        entries = {}
        children: dict[int, list[int]] = {}
        roots: list[int] = []
        self.computed: list[tuple[bytes, int, int]] = []
        for (off, i), end in zip(by_offset, ends, strict=True):
            if end <= off:
                raise IntegrityError(f"the IDX lists two objects at PACK offset {off}")
            entry = parse_entry(mv, off, PACK_OFFSET + off)
            if entry.data_offset >= end:
                raise IntegrityError(f"PACK entry at {off}: header runs into the next object")
            crc = zlib.crc32(mv[PACK_OFFSET + off : PACK_OFFSET + end])
            if crc != index.crc32(i):
                raise IntegrityError(
                    f"PACK entry at {off} (object {index.oid(i).hex()}): CRC32 {crc:08x} "
                    f"differs from the IDX's {index.crc32(i):08x}"
                )
            position[off] = i
            entries[off] = (entry, end, crc)
            if entry.is_delta:
                if entry.base_offset is not None:
                    base = entry.base_offset
                else:
                    found = index.lookup(entry.base_id)
                    if found is None:
                        raise IntegrityError(
                            "Invalid image disk: the PACK file is thin "
                            f"(entry at {off} needs base {entry.base_id.hex()})"
                        )
                    base = found
                children.setdefault(base, []).append(off)
            else:
                roots.append(off)
        for base in children:
            if base not in entries:
                raise IntegrityError(f"a delta's base at PACK offset {base} is not an object start")
        self.entries, self.position, self.children = entries, position, children
        self.mv = mv
        for off in roots:
            self._tree_from(off)
        if len(self.computed) != len(entries):
            raise IntegrityError("some deltas never reach a whole object (a delta cycle)")
        rebuilt = build_idx(self.computed, index.pack_checksum)
        if rebuilt != index.data:
            at = next(
                (n for n, (a, b) in enumerate(zip(rebuilt, index.data, strict=False)) if a != b),
                min(len(rebuilt), len(index.data)),
            )
            raise IntegrityError(
                f"the IDX differs from the one rebuilt from the PACK at byte "
                f"{self.image.layout.idx_offset + at}"
            )

    def _inflate(self, off: int) -> bytes:
        entry, end, _ = self.entries[off]
        d = zlib.decompressobj()
        try:
            data = d.decompress(self.mv[PACK_OFFSET + entry.data_offset : PACK_OFFSET + end])
        except zlib.error as exc:
            raise IntegrityError(f"PACK entry at {off}: bad zlib data ({exc})") from None
        if not d.eof or d.unused_data or len(data) != entry.size:
            raise IntegrityError(f"PACK entry at {off}: zlib data does not match its header")
        self._advance(end - off)
        return data

    def _stream_hash(self, off: int, kind: str) -> bytes:
        entry, end, _ = self.entries[off]
        d = zlib.decompressobj()
        h = hashlib.sha1(object_header(kind, entry.size))
        size = 0
        src = self.mv[PACK_OFFSET + entry.data_offset : PACK_OFFSET + end]
        try:
            for at in range(0, len(src), _CHUNK):
                piece = d.decompress(src[at : at + _CHUNK])
                size += len(piece)
                h.update(piece)
        except zlib.error as exc:
            raise IntegrityError(f"PACK entry at {off}: bad zlib data ({exc})") from None
        if not d.eof or d.unused_data or size != entry.size:
            raise IntegrityError(f"PACK entry at {off}: zlib data does not match its header")
        self._advance(end - off)
        return h.digest()

    def _advance(self, n: int) -> None:
        self.done += n
        if self.progress:
            self.progress(self.done, self.pack_len)

    def _record(self, off: int, oid: bytes) -> None:
        i = self.position[off]
        expected = self.index.oid(i)
        if oid != expected:
            raise IntegrityError(
                f"object at PACK offset {off} hashes to {oid.hex()}, the IDX says {expected.hex()}"
            )
        self.computed.append((oid, self.entries[off][2], off))

    def _tree_from(self, root: int) -> None:
        entry = self.entries[root][0]
        kind = TYPE_NUMBERS[entry.type]
        if root not in self.children and entry.size > _STREAM:
            self._record(root, self._stream_hash(root, kind))
            return
        data = self._inflate(root)
        self._record(root, _hash(kind, data))
        # Depth-first, one child at a time: memory is the chain's depth, not the fan-out.
        stack = [(data, iter(self.children.pop(root, ())))]
        while stack:
            base, pending = stack[-1]
            child = next(pending, None)
            if child is None:
                stack.pop()
                continue
            body = apply_delta(base, self._inflate(child))
            self._record(child, _hash(kind, body))
            stack.append((body, iter(self.children.pop(child, ()))))


def _hash(kind: str, body: bytes) -> bytes:
    h = hashlib.sha1(object_header(kind, len(body)))
    h.update(body)
    return h.digest()


def _check_tree(image: Image, root: bytes) -> None:
    """Every tree and blob under `root` is in the image (trees parsed, ids looked up)."""
    seen: set[bytes] = set()
    pending = [(root, "/")]
    while pending:
        oid, path = pending.pop()
        if oid in seen:
            continue
        seen.add(oid)
        try:
            kind, body = image.read_object(oid, check=False)
        except NotFound:
            raise IntegrityError(f"tree {oid.hex()} ({path}) is missing from the PACK") from None
        if kind != TREE:
            raise IntegrityError(f"{path} should be a tree but {oid.hex()} is a {kind}")
        for entry in iter_tree(body):
            name = entry.name.decode("utf-8", "surrogateescape")
            if entry.mode == MODE_GITLINK:
                continue  # a submodule's commit lives in another repository
            if entry.mode & 0o170000 == 0o040000:
                pending.append((entry.id, f"{path}{name}/"))
            elif entry.id not in image.index:
                raise IntegrityError(f"blob {entry.id.hex()} ({path}{name}) is missing from the PACK")

