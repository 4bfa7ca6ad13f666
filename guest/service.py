"""What the server answers: requests in, frames out (no I/O here).

A reply is either complete at once (END or ERROR) or a lazy iterator of
frames, pulled by the server loop only as fast as the client reads, so a
big file is never held whole.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import DocteurError, ImageError, IntegrityError, NotFound
from .protocol import CHUNK, BadRequest, GetEnd, Request, ServerCodec, data_header, encode_entries
from .treeview import Disk, InvalidPath, NotADirectory, NotAFile

LIST_BATCH = 1 << 16

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


Reply = bytes | Iterator[bytes | tuple[bytes, bytes]]


class Service:
    """The disks being served, or the boot error that replaces them."""

    def __init__(self, disks: dict[str, Disk], hello: dict[str, str], boot_error: str | None):
        self.disks = disks
        self.hello_fields = hello
        self.boot_error = boot_error
        self.shutdown_requested = False

    def hello(self) -> bytes:
        return ServerCodec.hello(self.hello_fields)

    def handle(self, req: Request | BadRequest) -> Reply:
        if isinstance(req, BadRequest):
            return ServerCodec.error(req.id, req.code, req.message)
        if self.boot_error is not None and req.op not in ("ping", "shutdown"):
            return ServerCodec.error(req.id, "boot_failed", self.boot_error)
        try:
            return self._dispatch(req)
        except Exception as exc:  # every failure is an answer, never a crash
            return ServerCodec.error(req.id, error_code(exc), error_message(exc))

    def _disk(self, name: str) -> Disk:
        disk = self.disks.get(name)
        if disk is None:
            known = ", ".join(sorted(self.disks)) or "none"
            raise NoSuchDisk(f"no disk named {name!r} (disks: {known})")
        return disk

    def _dispatch(self, req: Request) -> Reply:
        op, rid = req.op, req.id
        if op == "ping":
            return ServerCodec.end(rid, op, None)
        if op == "shutdown":
            self.shutdown_requested = True
            return ServerCodec.end(rid, op, None)
        disk = self._disk(req.disk)
        if op == "info":
            fields = {**self.hello_fields, **disk.info()}
            return ServerCodec.end(rid, op, fields)
        if op == "get":
            end, chunks = disk.get(req.path, req.offset, req.length)
            return _stream_get(rid, end, chunks)
        if op == "list":
            return _stream_list(rid, disk, req.path)
        result = getattr(disk, op)(req.path)  # exists, stat, size, digest, last_modified
        return ServerCodec.end(rid, op, result)


def _stream_get(rid: int, end: GetEnd | None, chunks: Iterator[bytes]) -> Iterator[bytes | tuple]:
    """DATA frames of at most CHUNK bytes: the pieces the pack yields (up to
    CHUNK each) go out together under one header, written with writev (no
    joining copy)."""
    sent = 0
    pieces: list[bytes] = []
    size = 0
    try:
        for chunk in chunks:
            if not chunk:
                continue
            if pieces and size + len(chunk) > CHUNK:  # a frame never exceeds CHUNK
                sent += size
                yield (data_header(rid, size), *pieces)
                pieces, size = [], 0
            pieces.append(chunk)
            size += len(chunk)
            if size >= CHUNK:
                sent += size
                yield (data_header(rid, size), *pieces)
                pieces, size = [], 0
    except Exception as exc:
        yield ServerCodec.error(rid, error_code(exc), error_message(exc))
        return
    if pieces:
        sent += size
        yield (data_header(rid, size), *pieces)
    if end is None:
        end = GetEnd(sent, 0, sent)
    elif sent != end.length:
        yield ServerCodec.error(rid, "integrity", f"sent {sent} bytes, expected {end.length}")
        return
    yield ServerCodec.end(rid, "get", end)


def _stream_list(rid: int, disk: Disk, path: bytes) -> Iterator[bytes | tuple]:
    count = 0
    batch: list = []
    size = 0
    try:
        entries = disk.list(path)
        for entry in entries:
            batch.append(entry)
            size += 7 + len(entry.key)
            if size >= LIST_BATCH:
                payload = encode_entries(batch)
                count += len(batch)
                batch, size = [], 0
                yield data_header(rid, len(payload)), payload
    except Exception as exc:
        yield ServerCodec.error(rid, error_code(exc), error_message(exc))
        return
    if batch:
        payload = encode_entries(batch)
        count += len(batch)
        yield data_header(rid, len(payload)), payload
    yield ServerCodec.end(rid, "list", count)
