"""An open docteur image: the generation it serves, its IDX in memory, its PACKs read on demand.

An image made with room for writes holds generations (FORMAT.md): the image
serves the head, the newest one that verifies, through the generation store's
lookup (every live extent newest first, then the first generation). An image
without a write area is the first generation alone, served as it always was.

What was checked is remembered (object ids hashed once, `fully_verified` after
a `full` boot, the PACK readers' delta bases, the tree view's trees): that
memory holds only while the file is the one that was opened. Every read that
relies on it first compares the file's identity, size and times (one fstat)
with those taken at open; a change answers ImageChanged, naming the image,
for good. A reader holds shared locks on the file that a writer respects
(device.lock_reader), so `docteur put` never changes a served image. A block
device shows no such change (inside the VM the host's file is out of sight):
see PROTOCOL.md, Verification.
"""

from __future__ import annotations

import os
import stat
from collections import OrderedDict
from collections.abc import Iterator

from .device import Device, lock_reader
from .errors import DocteurError, ImageChanged, ImageError, IntegrityError, NotFound
from .generations import Skipped, Store
from .layout import device_size
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


class _Reading(Device):
    """The image's own descriptor as the store's device: it is only read."""

    writable = False

    def __init__(self, fd: int, path: str):
        self.fd = fd
        self.name = path
        self.size = device_size(fd)

    def pread(self, n: int, off: int) -> bytes:
        n = max(0, min(n, self.size - off))
        return os.pread(self.fd, n, off) if n else b""


class Image:
    """Read-only access to a docteur image in a file or on a block device: the
    head generation's commit, tree and objects.

    `layout`, `index` and `pack` are the first generation's (header, IDX, PACK
    reader); `store` is the generation store that finds every object."""

    def __init__(self, fd: int, path: str, store: Store, check: str, identity: tuple[int, ...]):
        self.fd = fd
        self.path = path
        self.store = store
        self.check = check  # the store's open check: "pack" hashed every extent's PACK
        self.layout = store.layout
        self.index = store.first_index
        self.pack: PackReader = store.packs()[-1][2]
        self._opened_as = identity
        self.changed: str | None = None  # why the file no longer is the one opened
        # Objects (by absolute offset) whose id was checked recently: a second
        # read need not hash again.
        self._verified: OrderedDict[int, None] = OrderedDict()
        # Set by verify_full once every object's id has been checked: reads of an
        # unchanged image need not hash again.
        self.fully_verified = False

    @classmethod
    def open(
        cls, path: str, check: str = "cheap", *, lock: bool = True, device: Device | None = None
    ) -> Image:
        """Open `path` and choose the generation to serve. `check` is the store's
        (generations.CHECKS): "pack" also hashes the PACK of every extent it adopts,
        so a damaged one falls back to the generation before. `lock`: take the
        reader's locks (refused while a writer has the image). `device`: the store
        reads (and writes) through it, a writable device of the same file that this
        process writes (then lock=False); the image closes it."""
        fd = open_image_fd(path)
        try:
            identity = _identity(fd)  # before any read: a write during them is a change
            if lock:
                lock_reader(fd, path)
            store = Store.open(device or _Reading(fd, path), check)
            return cls(fd, path, store, check, identity)
        except ImageError as exc:
            os.close(fd)
            message = str(exc)
            raise ImageError(message if message.startswith(f"{path}: ") else f"{path}: {message}") from None
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            self.store.close()
            self.store.device.close()  # a writable device given to open; else a no-op
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the generation served ----------------------------------------------------
    @property
    def commit(self) -> bytes:
        """The head commit: the first generation's (the header's) without writes."""
        return self.store.head_commit

    @property
    def generation(self) -> int:
        return self.store.generation

    @property
    def skipped(self) -> list[Skipped]:
        return self.store.skipped

    def warnings(self) -> list[str]:
        """One line for each generation (or write area) skipped at open, and why."""
        return self.store.warnings()

    @property
    def has_generations(self) -> bool:
        """Whether the image is more than a first generation: it has a write area,
        or bytes after the first generation that were taken for one. Only such
        images report generations (a plain image reports exactly what it did)."""
        return self.store.area is not None or bool(self.store.skipped)

    def free_space(self) -> int:
        """Bytes free for writes (0 without a write area)."""
        return self.store.free_space()

    def object_count(self) -> int:
        return sum(len(index) for _, index, _ in self.store.packs())

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.store

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
            for _, _, reader in self.store.packs():
                reader.forget()
        # A new exception each time: re-raising one instance would grow its traceback.
        raise ImageChanged(self.changed)

    def note_own_write(self) -> None:
        """Take the file as it is now for the one opened: for a writer in this
        process, after its own batch is durable. A batch only appends an extent and
        a root record where no served generation reads (FORMAT.md), so what was
        checked still holds; a change seen before this call stays a change."""
        if self.changed is None:
            self._opened_as = _identity(self.fd)

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
    def locate(self, oid: bytes) -> tuple[PackReader, int]:
        """(reader, PACK-relative offset) of `oid` in the newest PACK holding it."""
        found = self.store.find(oid)
        if found is None:
            raise NotFound(f"object {oid.hex()} is not in the image")
        return found

    def _already_checked(self, at: int) -> bool:
        if not self.fully_verified and at not in self._verified:
            return False
        self.check_unchanged()  # the memory is of this file's bytes only
        if at in self._verified:
            self._verified.move_to_end(at)
        return True

    def _check_digest(self, oid: bytes, reader: PackReader, offset: int, digest: bytes) -> None:
        """Raise unless `digest` is `oid`; remember the object as checked."""
        if digest != oid:
            where = "" if reader is self.pack else f" of the PACK at byte {reader.base}"
            raise IntegrityError(
                f"object {oid.hex()} at PACK offset {offset}{where} hashes to {digest.hex()}"
            )
        self._verified[reader.base + offset] = None
        if len(self._verified) > _VERIFIED_MEMORY:
            self._verified.popitem(last=False)

    def read_object(self, oid: bytes, check: bool = True) -> tuple[str, bytes]:
        """(kind, body) of object `oid`; raises NotFound or IntegrityError."""
        try:
            if self.changed is not None:  # failing for good once the file changed
                raise ImageChanged(self.changed)
            reader, offset = self.locate(oid)
            num, body = reader.resolve(offset)
            kind = TYPE_NUMBERS[num]
            if check and not self._already_checked(reader.base + offset):
                self._check_digest(oid, reader, offset, object_id(kind, body))
        except (DocteurError, OSError) as exc:
            raise self.named(exc) from None
        return kind, body

    def object_info(self, oid: bytes) -> tuple[str, int]:
        """(kind, size) from the entry headers, without inflating whole objects.

        Not checked against the id: only the boot check covers these bytes."""
        try:
            if self.changed is not None:
                raise ImageChanged(self.changed)
            reader, offset = self.locate(oid)
            num, size = reader.type_and_size(offset)
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
            reader, pack_offset = self.locate(oid)
            entry = reader.entry(pack_offset)
            if entry.is_delta or entry.size <= STREAM_THRESHOLD:
                kind, body = self.read_object(oid)
                if kind != BLOB:
                    raise IntegrityError(f"object {oid.hex()} is a {kind}, not a blob")
                return Blob(self, len(body), body, None, reader)
            if TYPE_NUMBERS[entry.type] != BLOB:
                raise IntegrityError(f"object {oid.hex()} is a {TYPE_NUMBERS[entry.type]}, not a blob")
            if not self._already_checked(reader.base + pack_offset):
                h = sha1(object_header(BLOB, entry.size), entry.size)
                # No Adler-32: SHA-1 checks these very bytes, and before any is sent.
                for piece in reader.inflate_chunks(entry, _HASH_CHUNK, direct=True, adler=False):
                    h.update(piece)
                self._check_digest(oid, reader, pack_offset, h.digest())
            return Blob(self, entry.size, None, entry, reader)
        except (DocteurError, OSError) as exc:
            raise self.named(exc) from None

    def commit_object(self, oid: bytes | None = None) -> Commit:
        """The head commit (or commit `oid`), parsed."""
        oid = oid or self.commit
        kind, body = self.read_object(oid)
        if kind != COMMIT:
            what = (
                "the header's commit"
                if oid == self.layout.commit
                else f"generation {self.generation}'s head commit"
                if oid == self.commit
                else "commit"
            )
            raise IntegrityError(f"{self.path}: {what} {oid.hex()} is a {kind}")
        try:
            return Commit.from_raw(body)
        except (DocteurError, OSError) as exc:
            raise self.named(exc) from None


class Blob:
    """A blob whose id was checked (Image.open_blob): `size` is its checked size."""

    __slots__ = ("_body", "_entry", "_image", "_reader", "size")

    def __init__(
        self, image: Image, size: int, body: bytes | None, entry: Entry | None, reader: PackReader
    ):
        self._image = image
        self.size = size
        self._body = body  # small or deltified blobs: held whole, already hashed
        self._entry = entry  # big undeltified ones: inflated again as they are served
        self._reader = reader

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
            # No Adler-32 either: these are the bytes whose id was hashed in this
            # boot, of the unchanged image (checked at each piece below); Adler-32
            # would only speak after the last byte was sent, at ~40% of the inflate.
            pieces = self._reader.inflate_chunks(self._entry, chunk_size, direct=True, adler=False)
            for piece in pieces:
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


def open_checked(path: str, mode: str, writable: bool = False) -> Image:
    """The image at `path`, opened for the boot check of `mode`: in `pack` and
    `full` the store hashes each extent's PACK as it chooses the generation, so a
    damaged newest generation falls back to the one before. `writable`: through a
    writable device holding the writer's lock (as `docteur put` does; O_DIRECT on a
    block device), the image's own reader locks left out (they would refuse it).
    (Here, not in boot.py: `docteur verify` needs it without the server's modules.)"""
    check_mode = "cheap" if mode == "none" else "pack"
    if not writable:
        return Image.open(path, check_mode)
    from .device import FileDevice  # only with --rw

    device = FileDevice(path, writable=True)
    try:
        return Image.open(path, check_mode, lock=False, device=device)
    except BaseException:
        device.close()
        raise
