"""Read your writes: a disk as the session holding its open batch sees it.

The batch's tree editor says what each path is bound to now; the objects come
from the batch's PACK writer when the batch wrote them (not committed yet),
else from the served image. Everything else (a path the batch did not touch)
is answered as the served disk answers it, its caches included.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from .batch import Batch
from .errors import IntegrityError
from .kverrors import DictionaryExpected
from .objects import BLOB, kind_of_mode, object_header, sha1
from .protocol import CHUNK
from .treeview import Disk, PathView, clamp, key_prefix
from .values import Entry, GetEnd, Stat


class BatchView(PathView):
    def __init__(self, disk: Disk, batch: Batch):
        self.disk = disk
        self.batch = batch
        self.name = disk.name

    def resolve(self, path: bytes) -> tuple[int, bytes] | None:
        """(mode, oid) of `path` in the batch, None when absent."""
        try:
            return self.batch.editor.lookup(path)
        except DictionaryExpected:  # a file on the way: nothing there
            return None

    def _written(self, oid: bytes) -> tuple[int, Iterator[bytes]] | None:
        """(size, pieces) of a blob this batch wrote, None when the image has it."""
        found = self.batch.writer.read_entry(oid)
        if found is None:
            return None
        kind, size, pieces = found
        if kind != BLOB:
            raise IntegrityError(f"object {oid.hex()} of the open batch is a {kind}, a blob was expected")
        return size, pieces

    def _size(self, oid: bytes) -> int:
        written = self._written(oid)
        if written is None:
            return self.disk._blob_size(oid)
        written[1].close()  # type: ignore[attr-defined]
        return written[0]

    # -- operations ---------------------------------------------------------------
    def size(self, path: bytes) -> int:
        return self._size(self._need_blob(path)[1])

    def stat(self, path: bytes) -> Stat:
        mode, oid = self._need(path)
        kind = kind_of_mode(mode)
        size = self._size(oid) if kind in ("file", "symlink") else 0
        return Stat(kind, mode, size, oid, self.last_modified(path)[0])

    def last_modified(self, path: bytes) -> tuple[int, int]:
        """The served answer for a path the batch left as it is; now for one it changed."""
        found = self._need(path)
        if self.disk.resolve(path) == found:
            return self.disk.last_modified(path)
        return int(time.time()), 0

    def get(
        self, path: bytes, offset: int = 0, length: int | None = None
    ) -> tuple[GetEnd | None, Iterator[bytes]]:
        _, oid = self._need_blob(path)
        whole = offset == 0 and length is None
        if self.batch.writer.read_entry(oid) is None:  # the image's (checked as the disk does)
            blob = self.disk.image.open_blob(oid)
            if whole:
                return None, blob.chunks(0, None, CHUNK)
            start, count = clamp(blob.size, offset, length)
            return GetEnd(blob.size, start, count), blob.chunks(start, count, CHUNK)
        size = self._checked(oid)
        start, count = clamp(size, offset, length)
        return (None if whole else GetEnd(size, start, count)), self._range(oid, start, count)

    def _checked(self, oid: bytes) -> int:
        """Hash what the batch wrote (a first pass, memory flat) before sending any of it."""
        written = self._written(oid)
        assert written is not None
        size, pieces = written
        h = sha1(object_header(BLOB, size), size)
        for piece in pieces:
            h.update(piece)
        if h.digest() != oid:
            raise IntegrityError(f"object {oid.hex()} of the open batch does not hash to its id")
        return size

    def _range(self, oid: bytes, start: int, count: int) -> Iterator[bytes]:
        written = self._written(oid)
        assert written is not None
        pieces = written[1]
        at = 0
        try:
            for piece in pieces:
                end = at + len(piece)
                if end > start and count > 0:
                    part = piece[max(0, start - at) :]
                    part = part[:count]
                    count -= len(part)
                    yield part
                at = end
                if count <= 0:
                    break
        finally:
            pieces.close()  # type: ignore[attr-defined]

    def list(self, path: bytes) -> Iterator[Entry]:
        self._need_tree(path)
        prefix = key_prefix(path)
        for emode, name, _ in self.batch.editor.list(path):
            yield Entry(prefix + name, kind_of_mode(emode), emode)
