"""What the server answers: a request in, a value of `values` out.

No wire bytes here: the connection encodes the answers. A get or a list
answers with a lazy iterator, pulled by the connection only as fast as the
client reads, so a big file is never held whole. Operations are dispatched
by an explicit table (`OPERATIONS`): a new operation is one function there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .failures import NoSuchDisk, error_code, error_message, failure
from .image import Image
from .kverrors import NoBatch, ReadOnlyDisk
from .protocol import MAX_CHUNK, VERSIONS, Request
from .resume import restored, snapshot
from .treeview import Disk, generation_fields
from .values import (
    Answer,
    Body,
    CommitArgs,
    Failure,
    History,
    Listing,
    LogEntry,
    PutArgs,
    RenameArgs,
    Result,
)

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is dear to import in the VM
    from .batchview import BatchView
    from .connection import Session
    from .writer import DiskWriter

__all__ = ["NoSuchDisk", "Service", "error_code", "error_message", "failure"]


class Service:
    """The disks being served, or the boot error that replaces them."""

    def __init__(
        self,
        disks: dict[str, Disk],
        hello: dict[str, str],
        boot_error: str | None,
        writers: dict[str, DiskWriter] | None = None,
    ):
        self.disks = disks
        self.hello_fields = hello
        self.boot_error = boot_error
        self.writers = writers or {}  # the disks served writable (--rw)
        self.shutdown_requested = False
        self.marks: dict[str, bytes] = {}  # what the disks held when a snapshot was taken (resume.py)

    def greeting(self, session: Session | None = None) -> dict[str, str]:
        """The HELLO's fields (in a session of `session.version`)."""
        fields = {**self.hello_fields, "versions": " ".join(map(str, VERSIONS))}
        for name in self.writers:  # the head now: this server may have committed
            image = self.disks[name].image
            fields[f"disk.{name}"] = image.commit.hex()
            fields.update(generation_fields(image, f".{name}"))
        if session is not None and session.version >= 2:
            fields["protocol"] = str(session.version)
            fields["max_chunk"] = str(MAX_CHUNK)
            for name in self.disks:
                writer = self.writers.get(name)
                fields[f"writable.{name}"] = "read-only attach" if writer is None else writer.writable
        return fields

    def end_session(self, session: Session) -> None:
        """A client's session ended: the batches it holds are aborted."""
        for writer in list(session.state.values()):
            writer.end_session(session)

    def handle(self, req: Request, session: Session | None = None) -> Answer:
        if self.boot_error is not None and req.op not in ("ping", "shutdown"):
            return Failure("boot_failed", self.boot_error)
        operation = OPERATIONS.get(req.op)
        if operation is None:  # the codec knows an op this table lacks: a bug
            return Failure("unknown_op", f"operation {req.op!r} is not served")
        try:
            return operation(self, req, session)
        except Exception as exc:  # every failure is an answer, never a crash
            return failure(exc)

    def close(self) -> None:
        """Close the images (a batch still open is dropped: nothing of it was committed)."""
        for disk in self.disks.values():
            disk.image.close()

    def disk(self, name: str) -> Disk:
        disk = self.disks.get(name)
        if disk is None:
            known = ", ".join(sorted(self.disks)) or "none"
            raise NoSuchDisk(f"no disk named {name!r} (disks: {known})")
        return disk

    def view(self, name: str, session: Session | None) -> Disk | BatchView:
        """What `session` reads on disk `name`: its open batch there, else the last commit."""
        disk = self.disk(name)
        writer = self.writers.get(name)
        batch = writer.holds(session) if writer is not None else None
        if batch is None:
            return disk
        from .batchview import BatchView  # the write side: only with a batch open

        return BatchView(disk, batch)

    def writer(self, name: str) -> DiskWriter:
        disk = self.disk(name)
        writer = self.writers.get(name)
        if writer is None:
            raise ReadOnlyDisk(f"disk {disk.name} is served read-only")
        return writer


def _guarded(items: Iterator) -> Iterator:
    """`items`, ending with one Failure instead of raising (a read failing midway)."""
    try:
        yield from items
    except Exception as exc:
        yield failure(exc)


def _ping(service: Service, req: Request, session: Session | None) -> Answer:
    return Result(None)


def _shutdown(service: Service, req: Request, session: Session | None) -> Answer:
    service.shutdown_requested = True
    return Result(None)


def _info(service: Service, req: Request, session: Session | None) -> Answer:
    return Result({**service.greeting(session), **service.disk(req.disk).info()})


def _get(service: Service, req: Request, session: Session | None) -> Answer:
    end, chunks = service.view(req.disk, session).get(req.path, req.offset, req.length)
    return Body(_guarded(chunks), end)


def _list(service: Service, req: Request, session: Session | None) -> Answer:
    return Listing(_guarded(service.view(req.disk, session).list(req.path)))


def _exists(service: Service, req: Request, session: Session | None) -> Answer:
    return Result(service.view(req.disk, session).exists(req.path))


def _stat(service: Service, req: Request, session: Session | None) -> Answer:
    return Result(service.view(req.disk, session).stat(req.path))


def _size(service: Service, req: Request, session: Session | None) -> Answer:
    return Result(service.view(req.disk, session).size(req.path))


def _digest(service: Service, req: Request, session: Session | None) -> Answer:
    return Result(service.view(req.disk, session).digest(req.path))


def _last_modified(service: Service, req: Request, session: Session | None) -> Answer:
    return Result(service.view(req.disk, session).last_modified(req.path))


def _log(service: Service, req: Request, session: Session | None) -> Answer:
    image = service.disk(req.disk).image
    limit = req.args if isinstance(req.args, int) else 0
    return History(_guarded(_history(image, limit)))


def _history(image: Image, limit: int) -> Iterator[LogEntry]:
    """The head's first-parent history while the image holds it, newest first."""
    oid: bytes | None = image.commit
    count = 0
    while oid is not None and oid in image and (not limit or count < limit):
        commit = image.commit_object(oid)
        committer = commit.committer
        message = (commit.message or b"").decode("utf-8", "replace")
        yield LogEntry(oid, committer.timestamp, committer.tz_minutes, commit.author.who, message)
        count += 1
        oid = commit.parents[0] if commit.parents else None


def _begin(service: Service, req: Request, session: Session | None) -> Answer:
    assert session is not None
    return Result(service.writer(req.disk).begin(session))


def _put(service: Service, req: Request, session: Session | None) -> Answer:
    args = req.args
    assert isinstance(args, PutArgs)
    return service.writer(req.disk).put(session, req.path, args.size, args.mode, args.commit)


def _remove(service: Service, req: Request, session: Session | None) -> Answer:
    commit = req.args if isinstance(req.args, CommitArgs) else None
    return Result(service.writer(req.disk).remove(session, req.path, commit))


def _rename(service: Service, req: Request, session: Session | None) -> Answer:
    args = req.args
    assert isinstance(args, RenameArgs)
    return Result(service.writer(req.disk).rename(session, req.path, args.dest, args.commit))


def _commit(service: Service, req: Request, session: Session | None) -> Answer:
    args = req.args
    assert isinstance(args, CommitArgs)
    return Result(service.writer(req.disk).commit(session, args))


def _abort(service: Service, req: Request, session: Session | None) -> Answer:
    writer = service.writers.get(req.disk)
    if writer is None:
        service.disk(req.disk)
        raise NoBatch(f"disk {req.disk}: no batch open by this connection")
    writer.abort(session)
    return Result(None)


def _sync(name: str) -> Callable[[Service, Request, Session | None], Answer]:
    """An operation of push and pull (sync.py), loaded when first asked for (a server
    that is never synced never loads it)."""

    def operation(service: Service, req: Request, session: Session | None) -> Answer:
        from . import sync

        return getattr(sync, name)(service, req, session)

    return operation


OPERATIONS: dict[str, Callable[[Service, Request, Session | None], Answer]] = {
    "info": _info,
    "exists": _exists,
    "stat": _stat,
    "get": _get,
    "size": _size,
    "digest": _digest,
    "last_modified": _last_modified,
    "list": _list,
    "ping": _ping,
    "shutdown": _shutdown,
    "begin": _begin,
    "put": _put,
    "remove": _remove,
    "rename": _rename,
    "commit": _commit,
    "abort": _abort,
    "log": _log,
    "snapshot": snapshot,
    "restored": restored,
    "sync_info": _sync("sync_info"),
    "objects": _sync("objects"),
    "import": _sync("import_pack"),
    "set_synced": _sync("set_synced"),
}
