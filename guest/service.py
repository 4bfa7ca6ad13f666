"""What the server answers: a request in, a value of `values` out.

No wire bytes here: the connection encodes the answers. A get or a list
answers with a lazy iterator, pulled by the connection only as fast as the
client reads, so a big file is never held whole. Operations are dispatched
by an explicit table (`OPERATIONS`): a new operation is one function there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .errors import DocteurError, ImageError, IntegrityError, NotFound
from .image import Image
from .kverrors import InvalidPath
from .protocol import MAX_CHUNK, VERSIONS, Request
from .treeview import Disk, NotADirectory, NotAFile
from .values import Answer, Body, Failure, History, Listing, LogEntry, Result

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is dear to import in the VM
    from .connection import Session


class NoSuchDisk(DocteurError):
    """A request names a disk that is not served."""


_ERROR_NAMES: tuple[tuple[type[BaseException], str], ...] = (
    (InvalidPath, "invalid_path"),
    (NoSuchDisk, "no_such_disk"),
    (NotFound, "not_found"),
    (NotAFile, "not_a_file"),
    (NotADirectory, "not_a_directory"),
    (IntegrityError, "integrity"),
    (ImageError, "image"),
    (OSError, "image"),
)


def error_code(exc: BaseException) -> str:
    for cls, name in _ERROR_NAMES:
        if isinstance(exc, cls):
            return name
    return "internal"


def error_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, DocteurError):
        return f"I/O error reading the image: {exc.strerror or exc}"
    if isinstance(exc, DocteurError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def failure(exc: BaseException) -> Failure:
    return Failure(error_code(exc), error_message(exc))


class Service:
    """The disks being served, or the boot error that replaces them."""

    def __init__(self, disks: dict[str, Disk], hello: dict[str, str], boot_error: str | None):
        self.disks = disks
        self.hello_fields = hello
        self.boot_error = boot_error
        self.shutdown_requested = False

    def greeting(self, session: Session | None = None) -> dict[str, str]:
        """The HELLO's fields (in a session of `session.version`)."""
        fields = {**self.hello_fields, "versions": " ".join(map(str, VERSIONS))}
        if session is not None and session.version >= 2:
            fields["protocol"] = str(session.version)
            fields["max_chunk"] = str(MAX_CHUNK)
            for name in self.disks:
                fields[f"writable.{name}"] = self.writable(name)
        return fields

    def writable(self, name: str) -> str:
        """`yes`, or why the disk cannot be written."""
        return "read-only attach"

    def end_session(self, session: Session) -> None:
        """A client's session ended: nothing kept yet."""

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

    def disk(self, name: str) -> Disk:
        disk = self.disks.get(name)
        if disk is None:
            known = ", ".join(sorted(self.disks)) or "none"
            raise NoSuchDisk(f"no disk named {name!r} (disks: {known})")
        return disk


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
    end, chunks = service.disk(req.disk).get(req.path, req.offset, req.length)
    return Body(_guarded(chunks), end)


def _list(service: Service, req: Request, session: Session | None) -> Answer:
    return Listing(_guarded(service.disk(req.disk).list(req.path)))


def _exists(service: Service, req: Request, session: Session | None) -> Answer:
    return Result(service.disk(req.disk).exists(req.path))


def _stat(service: Service, req: Request, session: Session | None) -> Answer:
    return Result(service.disk(req.disk).stat(req.path))


def _size(service: Service, req: Request, session: Session | None) -> Answer:
    return Result(service.disk(req.disk).size(req.path))


def _digest(service: Service, req: Request, session: Session | None) -> Answer:
    return Result(service.disk(req.disk).digest(req.path))


def _last_modified(service: Service, req: Request, session: Session | None) -> Answer:
    return Result(service.disk(req.disk).last_modified(req.path))


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


def _read_only(service: Service, req: Request, session: Session | None) -> Answer:
    return Failure("read_only", f"disk {req.disk} is served read-only")


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
    "begin": _read_only,
    "put": _read_only,
    "remove": _read_only,
    "rename": _read_only,
    "commit": _read_only,
    "abort": _read_only,
    "log": _log,
}
