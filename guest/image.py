"""An open docteur image: its header, its IDX in memory, its PACK read on demand.

What was checked is remembered (object ids hashed once, `fully_verified` after
a `full` boot, the PACK reader's delta bases, the tree view's trees): that
memory holds only while the file is the one that was opened. Every read that
relies on it first compares the file's identity, size and times (one fstat)
with those taken at open; a change answers ImageChanged, naming the image,
for good. A block device shows no such change (inside the VM the host's file
is out of sight): see PROTOCOL.md, Verification.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from collections.abc import Iterator

from .errors import DocteurError, ImageChanged, ImageError, IntegrityError
from .idx import Index
from .layout import PACK_OFFSET, Layout, read_layout
from .objects import BLOB, COMMIT, TYPE_NUMBERS, Commit, object_header, object_id, sha1
from .pack import Entry, PackReader

# Objects up to this size are rebuilt in memory and hashed once; bigger
# undeltified blobs are inflated twice (hash, then serve) to keep memory flat.
STREAM_THRESHOLD = 4 << 20
_VERIFIED_MEMORY = 65536
# Inflated pieces of the hashing pass: 256 KiB inflated ~1.5x faster than 1 MiB
# under TCG (fresh 1 MiB buffers are page-faulted in at every piece).
_HASH_CHUNK = 1 << 18
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_an_image(path: str, mode: int) -> ImageError | None:
    """The error for a file that is neither a regular file nor a block device."""
    if stat.S_ISREG(mode) or stat.S_ISBLK(mode):
        return None
    # Only a regular file or a block device can be an image.
    kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
    return ImageError(f"{path}: is {kind}, not an image")


def open_image_fd(path: str) -> int:
    """A read-only descriptor of `path`, refused at once unless it is a regular
    file or a block device: opening a FIFO would wait for a writer forever."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror}") from None
    error = _not_an_image(path, st.st_mode)
    if error is not None:
        raise error
    try:
        # O_NONBLOCK: should the path become a FIFO after the stat, open returns at once.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise ImageError(f"{path}: {exc.strerror}") from None
    error = _not_an_image(path, os.fstat(fd).st_mode)
    if error is not None:
        os.close(fd)
        raise error
    os.set_blocking(fd, True)
    return fd


def _identity(fd: int) -> tuple[int, int, int, int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class Image:
    """Read-only access to a docteur image in a file or on a block device."""

    def __init__(self, fd: int, path: str, layout: Layout, index: Index, cache_bytes: int):
        self.fd = fd
        self.path = path
        self.layout = layout
        self.index = index
        self.pack = PackReader(fd, PACK_OFFSET, layout.pack_end, index, cache_bytes)
        self._opened_as = _identity(fd)
        self.changed: str | None = None  # why the file no longer is the one opened
        # Offsets whose id was checked recently: a second read need not hash again.
        self._verified: OrderedDict[int, None] = OrderedDict()
        # Set by verify_full once every object's id has been checked: reads of an
        # unchanged image need not hash again.
        self.fully_verified = False

    @classmethod
    def open(cls, path: str, cache_bytes: int = 8 << 20) -> Image:
        fd = open_image_fd(path)
        try:
            layout = read_layout(fd)
            idx = os.pread(fd, layout.idx_end - layout.idx_offset, layout.idx_offset)
            return cls(fd, path, layout, Index(idx), cache_bytes)
        except ImageError as exc:
            os.close(fd)
            raise ImageError(f"{path}: {exc}") from None
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        self.pack.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def commit(self) -> bytes:
        return self.layout.commit

    # -- the file under us ----------------------------------------------------
    def check_unchanged(self) -> None:
        """Raise ImageChanged (for good) once the file differs from the one opened.

        Called after the bytes a reply relies on were read: a write that
        landed before the read has already moved the file's times."""
        if self.changed is None:
            now = _identity(self.fd)
            if now == self._opened_as:
                return
            size = "" if now[2] == self._opened_as[2] else f" ({self._opened_as[2]} -> {now[2]} bytes)"
            self.changed = (
                f"{self.path}: the image was written while served{size}; what was checked no "
                "longer holds (restart the server to serve the new image)"
            )
            self._verified.clear()
            self.fully_verified = False
            self.pack.forget()
        # A new exception each time: re-raising one instance would grow its traceback.
        raise ImageChanged(self.changed)

    def named(self, exc: DocteurError | OSError) -> DocteurError:
        """`exc` with this image's path in front; ImageChanged when the file changed
        (a broken object in a rewritten file is the rewrite's doing)."""
        if isinstance(exc, OSError):  # EIO and the like: an image error, named
            return ImageError(f"{self.path}: I/O error reading the image: {exc.strerror or exc}")
        if isinstance(exc, IntegrityError):
            try:
                self.check_unchanged()
            except ImageChanged as changed:
                return changed
            except OSError:
                pass  # no word on the file: report the error as it is
        message = str(exc)
        if message.startswith(f"{self.path}: "):
            return exc
        return type(exc)(f"{self.path}: {message}")

    # -- objects ------------------------------------------------------------
    def _already_checked(self, offset: int) -> bool:
        if not self.fully_verified and offset not in self._verified:
            return False
        self.check_unchanged()  # the memory is of this file's bytes only
        if offset in self._verified:
            self._verified.move_to_end(offset)
        return True

    def _check_digest(self, oid: bytes, offset: int, digest: bytes) -> None:
        """Raise unless `digest` is `oid`; remember the object as checked."""
        if digest != oid:
            raise IntegrityError(f"object {oid.hex()} at PACK offset {offset} hashes to {digest.hex()}")
        self._verified[offset] = None
        if len(self._verified) > _VERIFIED_MEMORY:
            self._verified.popitem(last=False)

    def read_object(self, oid: bytes, check: bool = True) -> tuple[str, bytes]:
        """(kind, body) of object `oid`; raises NotFound or IntegrityError."""
        try:
            if self.changed is not None:  # failing for good once the file changed
                raise ImageChanged(self.changed)
            offset = self.pack.offset_of(oid)
            num, body = self.pack.resolve(offset)
            kind = TYPE_NUMBERS[num]
            if check and not self._already_checked(offset):
                self._check_digest(oid, offset, object_id(kind, body))
        except (DocteurError, OSError) as exc:
            raise self.named(exc) from None
        return kind, body

    def object_info(self, oid: bytes) -> tuple[str, int]:
        """(kind, size) from the entry headers, without inflating whole objects.

        Not checked against the id: only the boot check covers these bytes."""
        try:
            if self.changed is not None:
                raise ImageChanged(self.changed)
            num, size = self.pack.type_and_size(self.pack.offset_of(oid))
            self.check_unchanged()
        except (DocteurError, OSError) as exc:
            raise self.named(exc) from None
        return TYPE_NUMBERS[num], size

    def open_blob(self, oid: bytes) -> Blob:
        """Blob `oid`, its id checked: its size is then the checked one, never
        only what an entry header says."""
        try:
            if self.changed is not None:
                raise ImageChanged(self.changed)
            pack_offset = self.pack.offset_of(oid)
            entry = self.pack.entry(pack_offset)
            if entry.is_delta or entry.size <= STREAM_THRESHOLD:
                kind, body = self.read_object(oid)
                if kind != BLOB:
                    raise IntegrityError(f"object {oid.hex()} is a {kind}, not a blob")
                return Blob(self, len(body), body, None)
            if TYPE_NUMBERS[entry.type] != BLOB:
                raise IntegrityError(f"object {oid.hex()} is a {TYPE_NUMBERS[entry.type]}, not a blob")
            if not self._already_checked(pack_offset):
                h = sha1(object_header(BLOB, entry.size), entry.size)
                for piece in self.pack.inflate_chunks(entry, _HASH_CHUNK, direct=True):
                    h.update(piece)
                self._check_digest(oid, pack_offset, h.digest())
            return Blob(self, entry.size, None, entry)
        except (DocteurError, OSError) as exc:
            raise self.named(exc) from None

    def commit_object(self) -> Commit:
        kind, body = self.read_object(self.commit)
        if kind != COMMIT:
            raise IntegrityError(f"{self.path}: the header's commit {self.commit.hex()} is a {kind}")
        try:
            return Commit.from_raw(body)
        except (DocteurError, OSError) as exc:
            raise self.named(exc) from None


class Blob:
    """A blob whose id was checked (Image.open_blob): `size` is its checked size."""

    __slots__ = ("_body", "_entry", "_image", "size")

    def __init__(self, image: Image, size: int, body: bytes | None, entry: Entry | None):
        self._image = image
        self.size = size
        self._body = body  # small or deltified blobs: held whole, already hashed
        self._entry = entry  # big undeltified ones: inflated again as they are served

    def chunks(
        self, offset: int = 0, length: int | None = None, chunk_size: int = 1 << 16
    ) -> Iterator[bytes]:
        """The bytes [offset, offset+length), clamped to the blob."""
        stop = self.size if length is None else min(self.size, offset + length)
        if self._body is not None:
            view = memoryview(self._body)
            for at in range(min(offset, stop), stop, chunk_size):
                yield bytes(view[at : min(at + chunk_size, stop)])
            return
        if offset >= stop:
            return
        assert self._entry is not None
        image = self._image
        pos = 0
        try:
            for piece in image.pack.inflate_chunks(self._entry, chunk_size, direct=True):
                # Read again after the check: these bytes must still be the file's.
                image.check_unchanged()
                end = pos + len(piece)
                if end > offset:
                    yield piece[max(0, offset - pos) : stop - pos]
                pos = end
                if pos >= stop:
                    break
        except (DocteurError, OSError) as exc:
            raise image.named(exc) from None
