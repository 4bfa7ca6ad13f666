"""One write batch: tree edits on top of the head, then one commit (or none).

A batch joins the store's PACK writer and a tree editor; it is the only way the
host commands (`docteur put/rm/mv/commit`) and the guest's server write:

    with FileDevice(path, writable=True) as dev, Store.open(dev) as store:
        batch = Batch(store)
        batch.put_stream(b"/big.bin", size, chunks)   # streamed, never whole in memory
        batch.remove(b"/old")
        done = batch.commit("message", "Name <email>")  # None: the tree is unchanged

Every path is checked before any byte of its blob is written, so bad input
leaves the device untouched. A failed operation leaves the batch as it was;
after a failed commit (no space, an I/O error) the batch is finished: nothing
was committed, and the blocks it wrote lie in free space. Standard library
only, no I/O but the device's.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import DocteurError, IntegrityError
from .generations import Store, _signature
from .objects import BLOB, MODE_FILE, TREE
from .packwrite import ObjectStream
from .treeedit import TreeEditor


class BadAuthor(DocteurError):
    """An author that is not `Name <email>`."""

    code = "bad_request"


class BatchClosed(DocteurError):
    """The batch was committed or aborted already."""


class PutStream:
    """A put whose content is pushed in pieces; `finish` binds the path."""

    def __init__(self, batch: Batch, path: bytes, mode: int, stream: ObjectStream):
        self.batch = batch
        self.path = path
        self.mode = mode
        self.stream = stream

    def write(self, data: bytes) -> None:
        self.stream.write(data)

    def finish(self) -> bytes:
        """The blob's id, the path bound to it in the batch."""
        oid = self.stream.finish()
        self.batch.editor.put(self.path, oid, self.mode)
        return oid

    def abort(self) -> None:
        self.stream.abort()


def check_author(who: str) -> str:
    """`who` when it is `Name <email>` as a commit can hold it, else BadAuthor."""
    try:
        _signature(who, 0, "+0000")
    except ValueError as exc:
        raise BadAuthor(str(exc)) from None
    return who


class Batch:
    """Edits of one commit on top of `store`'s head (a writable store)."""

    def __init__(self, store: Store):
        self.store = store
        self.writer = store.begin()
        self.editor = TreeEditor(self._read_tree, store.head_tree)
        self.closed = False

    def _read_tree(self, oid: bytes) -> bytes:
        kind, body = self.store.read_object(oid)
        if kind != TREE:
            raise IntegrityError(f"{oid.hex()} is a {kind}, not a tree")
        return body

    def _open(self) -> None:
        if self.closed:
            raise BatchClosed("this batch is committed or aborted already")

    # -- edits ----------------------------------------------------------------
    def put(self, path: bytes, data: bytes, mode: int = MODE_FILE) -> bytes:
        """Bind `path` to `data` (mode 100644, 100755 or 120000); the blob's id."""
        self._open()
        self.editor.check_put(path, mode)
        oid = self.writer.add(BLOB, data)
        self.editor.put(path, oid, mode)
        return oid

    def put_stream(self, path: bytes, size: int, chunks: Iterable[bytes], mode: int = MODE_FILE) -> bytes:
        """Bind `path` to the `size` bytes `chunks` yields, streamed into the PACK."""
        self._open()
        self.editor.check_put(path, mode)
        oid = self.writer.add_stream(BLOB, size, chunks)
        self.editor.put(path, oid, mode)
        return oid

    def open_put(self, path: bytes, size: int, mode: int = MODE_FILE) -> PutStream:
        """Bind `path` to `size` bytes pushed as they come (`write`, then `finish`):
        the path is checked first, so a refused put writes nothing."""
        self._open()
        self.editor.check_put(path, mode)
        return PutStream(self, path, mode, self.writer.stream(BLOB, size))

    def remove(self, path: bytes) -> None:
        """Unbind `path`, recursively for a directory (absent: PathNotFound)."""
        self._open()
        self.editor.remove(path)

    def rename(self, source: bytes, dest: bytes) -> None:
        """Move `source` to `dest`, inside it when it is a directory."""
        self._open()
        self.editor.rename(source, dest)

    def clear(self) -> None:
        """Start from an empty tree: the puts that follow are the whole new tree
        (`docteur commit DIR`); what they leave unchanged costs nothing."""
        self._open()
        self.editor.set_root(None)

    @property
    def changed(self) -> bool:
        return self.editor.changed

    # -- the end ----------------------------------------------------------------
    def commit(
        self,
        message: bytes | str,
        author: str,
        when: int | None = None,
        tz: str = "+0000",
    ) -> tuple[bytes, int] | None:
        """Make the batch one commit (author = committer): (commit id, generation),
        once durable. None, and nothing written, when the tree is unchanged."""
        self._open()
        check_author(author)
        self.closed = True
        if not self.editor.changed:
            return None
        root, trees = self.editor.finish()
        for _, body in trees:
            self.writer.add(TREE, body)
        return self.store.commit(self.writer, root, message, author, when=when, tz=tz)

    def abort(self) -> None:
        """Drop the batch: nothing is committed (written blocks stay free space)."""
        self.closed = True
