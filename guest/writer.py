"""The server as its disks' one writer: the batch open on each disk and who owns it.

A disk served writable has one `DiskWriter`. It holds the store the served image
reads (so a commit moves what every reader sees at once), the batch open on the
disk (at most one, owned by one client session) and whether the disk may still
be written: after an I/O error writing or flushing, the device's cache is in an
unknown state, so the disk refuses writes (`read_only`, with the reason) until
the server restarts, while reads go on.

Every write is a batch (`batch.py`): a single put, remove or rename outside a
batch is one of its own, committed before it is answered. Errors are exceptions
carrying their protocol name (`code`), as kverrors' are.
"""

from __future__ import annotations

from .batch import Batch, PutStream, check_author
from .defaults import DEFAULT_AUTHOR, DEFAULT_MESSAGE
from .device import DeviceFailed
from .failures import failure
from .kverrors import BadArguments, Busy, Conflict, NoBatch, ReadOnlyDisk, WriteFailed
from .treeview import Disk
from .values import Begun, CommitArgs, Committed, Failure, Put, Result, Upload

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .connection import Session


class DiskWriter:
    """The writes of one disk served --rw (`why_not`: why it cannot be written at all)."""

    def __init__(self, disk: Disk, why_not: str | None = None):
        self.disk = disk
        self.name = disk.name
        self.store = disk.image.store
        self.why_not = why_not  # e.g. "no write area"
        self.failed: str | None = None  # why writes stopped (an I/O error)
        self.batch: Batch | None = None
        self.owner: Session | None = None

    # -- state ----------------------------------------------------------------
    @property
    def writable(self) -> str:
        """`yes`, or why the disk cannot be written (the greeting's writable.NAME)."""
        return self.failed or self.why_not or "yes"

    def _check(self) -> None:
        if self.failed is not None:
            raise ReadOnlyDisk(f"disk {self.name} {self.failed}")
        if self.why_not is not None:
            raise ReadOnlyDisk(f"disk {self.name} is served read-only ({self.why_not})")

    def holds(self, session: Session | None) -> Batch | None:
        """The batch `session` has open on this disk, if any."""
        return self.batch if session is not None and self.owner is session else None

    def _failed(self, exc: BaseException) -> WriteFailed:
        """An I/O error: close the batch, stop writing for good, name the error."""
        self._close()
        self.failed = f"stopped writing after an I/O error ({exc}): restart to write again"
        return WriteFailed(f"disk {self.name}: I/O error: {exc}")

    def wrote(self) -> None:
        """This process wrote the file (a batch's data, a root record, or only part of
        them): the served image takes it as its own, not as a change under it."""
        self.disk.image.note_own_write()

    def release(self, batch: Batch) -> None:
        """`batch` is over: the disk is free again (unless it already went to another)."""
        if self.batch is batch:
            self._close()

    def _close(self) -> None:
        if self.batch is not None:
            self.batch.abort()
        if self.owner is not None:
            self.owner.state.pop(self.name, None)
        self.batch = self.owner = None

    # -- batches ----------------------------------------------------------------
    def _take(self, session: Session | None) -> Batch:
        """A new batch on the head, the disk's one, owned by `session` until it ends."""
        batch = Batch(self.store)
        self.batch, self.owner = batch, session
        if session is not None:
            session.state[self.name] = self  # its end aborts the batch
        return batch

    def begin(self, session: Session) -> Begun:
        self._check()
        if self.batch is not None:
            who = "this connection" if self.owner is session else "another connection"
            raise Busy(f"disk {self.name}: a batch is open already (by {who})")
        self._take(session)
        return Begun(self.store.head_commit, self.store.generation)

    def _for_write(self, session: Session | None, args: CommitArgs | None) -> tuple[Batch, bool]:
        """The batch a put/remove/rename goes into, and whether it is its own."""
        self._check()
        held = self.holds(session)
        if held is not None:
            if args is not None:
                raise BadArguments("inside a batch, a write takes no commit arguments")
            return held, False
        if self.batch is not None:
            raise Busy(f"disk {self.name}: another connection has a batch open")
        # Refused before any byte is written: a bad author, a head that moved already.
        check_author((args and args.author) or DEFAULT_AUTHOR)
        if args is not None and args.expected is not None:
            self._check_head(args.expected)
        # Its own batch holds the disk like any other while it lasts (a put's content
        # comes in many reads): no other write commits on a head it did not see.
        return self._take(session), True

    def _check_head(self, expected: bytes) -> None:
        head = self.store.head_commit
        if expected != head:
            raise Conflict(
                f"disk {self.name}: the head is {head.hex()}, not the expected "
                f"{expected.hex()}: nothing written"
            )

    def _commit_own(self, batch: Batch, args: CommitArgs | None, default: str) -> Committed:
        """Commit a write's own batch, which then gives the disk back."""
        try:
            return self._commit(batch, args or CommitArgs(), default)
        finally:
            self.release(batch)

    def commit(self, session: Session | None, args: CommitArgs) -> Committed:
        batch = self.holds(session)
        if batch is None:
            raise NoBatch(f"disk {self.name}: no batch open by this connection")
        check_author(args.author or DEFAULT_AUTHOR)  # a bad one leaves the batch open
        try:
            return self._commit(batch, args)
        finally:
            self._close()

    def abort(self, session: Session | None) -> None:
        if self.holds(session) is None:
            raise NoBatch(f"disk {self.name}: no batch open by this connection")
        self._close()

    def end_session(self, session: Session) -> None:
        """The session ended (closed, lost, greeted again): its batch is aborted."""
        if self.owner is session:
            self._close()

    def _commit(self, batch: Batch, args: CommitArgs, default: str = DEFAULT_MESSAGE) -> Committed:
        """Commit `batch` (closed whatever happens): durable when this returns."""
        store = self.store
        if args.expected is not None:
            self._check_head(args.expected)
        try:
            done = batch.commit(args.message or default, args.author or DEFAULT_AUTHOR)
        except (DeviceFailed, OSError) as exc:
            raise self._failed(exc) from None
        finally:
            self.wrote()
        if done is None:
            return Committed(False, bytes(20), store.generation, store.free_space())
        commit, generation = done
        self.disk.head_moved()
        return Committed(True, commit, generation, store.free_space())

    # -- the writes -----------------------------------------------------------------
    def put(
        self, session: Session | None, path: bytes, size: int, mode: int, args: CommitArgs | None
    ) -> Upload:
        batch, own = self._for_write(session, args)
        try:
            stream = batch.open_put(path, size, mode)
        except (DeviceFailed, OSError) as exc:
            raise self._failed(exc) from None
        except BaseException:
            if own:
                self.release(batch)
            raise
        return PutUpload(self, stream, own, args, f"put {show(path)}")

    def remove(self, session: Session | None, path: bytes, args: CommitArgs | None) -> Committed | None:
        batch, own = self._for_write(session, args)
        if not own:
            batch.remove(path)
            return None
        try:
            batch.remove(path)
        except BaseException:
            self.release(batch)
            raise
        return self._commit_own(batch, args, f"rm {show(path)}")

    def rename(
        self, session: Session | None, source: bytes, dest: bytes, args: CommitArgs | None
    ) -> Committed | None:
        batch, own = self._for_write(session, args)
        if not own:
            batch.rename(source, dest)
            return None
        try:
            batch.rename(source, dest)
        except BaseException:
            self.release(batch)
            raise
        return self._commit_own(batch, args, f"mv {show(source)} {show(dest)}")


def show(path: bytes) -> str:
    """A path in a default commit message."""
    return path.decode("utf-8", "replace")


class PutUpload(Upload):
    """A put's content on its way into the batch (its own batch: committed at the end)."""

    def __init__(
        self, writer: DiskWriter, stream: PutStream, own: bool, args: CommitArgs | None, message: str
    ):
        self.writer = writer
        self.stream = stream
        self.own = own
        self.args = args
        self.message = message  # the commit's when the client gives none

    def _failure(self, exc: Exception) -> Failure:
        if isinstance(exc, DeviceFailed | OSError):
            exc = self.writer._failed(exc)
        elif self.own:
            self.writer.release(self.stream.batch)
        return failure(exc)

    def write(self, data: bytes) -> Failure | None:
        try:
            self.stream.write(data)
        except Exception as exc:  # the stream rewound itself: the batch is as it was
            return self._failure(exc)
        finally:
            self.writer.wrote()
        return None

    def finish(self) -> Result | Failure:
        try:
            blob = self.stream.finish()
            if not self.own:
                return Result(Put(blob))
            return Result(Put(blob, self.writer._commit_own(self.stream.batch, self.args, self.message)))
        except Exception as exc:
            return self._failure(exc)
        finally:
            self.writer.wrote()

    def abort(self) -> None:
        self.stream.abort()
        if self.own:
            self.writer.release(self.stream.batch)
