"""The asyncio client of the docteur protocol (PROTOCOL.md).

Works over any asyncio StreamReader/StreamWriter pair: a unix socket, a
subprocess's pipes, the microVM's serial-port chardev. Requests are
pipelined (each has an id) and every wait has a timeout.

    async with await Client.open_unix("/tmp/docteur.sock") as client:
        data = await client.get("/README.md")
        async for chunk in client.stream("/big.bin"):
            ...
        # Writes (protocol version 2, a server run with --rw): one commit per batch.
        async with client.batch(message="deploy", author="Ops <ops@example.org>") as b:
            await b.put("/index.html", data)  # or an async iterator of chunks, any size
            await b.remove("/old"); await b.rename("/a", "/b")
            assert await b.get("/index.html") == data  # its reads see its writes
        b.result  # the commit (None: nothing changed); an exception in the block aborts
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from docteur.guest.protocol import (
    DEFAULT_DISK,
    MAX_CHUNK,
    VERSIONS,
    ClientCodec,
    Data,
    End,
    Error,
    Hello,
    ProtocolError,
    chunk_header,
    decode_entries,
    decode_log,
)
from docteur.guest.values import (
    Begun,
    CommitArgs,
    Committed,
    Entry,
    GetEnd,
    LogEntry,
    Put,
    PutArgs,
    RenameArgs,
    Stat,
)

from .content import Chunks, Content, ContentError, prepared

T = TypeVar("T")
QUEUE_CHUNKS = 64  # chunks buffered per request before the connection stops reading
READ_SIZE = 1 << 20
CONNECT_PATIENCE = 2.0  # seconds a full backlog or a refused connect is retried


class ClientError(Exception):
    """An error answered by the server, or a failed connection; str() is one line."""

    code = "internal"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code


class NotFoundError(ClientError):
    code = "not_found"


class NotAFileError(ClientError):
    code = "not_a_file"


class NotADirectory(ClientError):
    code = "not_a_directory"


class InvalidPathError(ClientError):
    code = "invalid_path"


class NoSuchDiskError(ClientError):
    code = "no_such_disk"


class IntegrityError(ClientError):
    code = "integrity"


class BootFailedError(ClientError):
    code = "boot_failed"


class RequestError(ClientError):
    """bad_request, unknown_op, too_large, protocol: the client sent something wrong."""

    code = "bad_request"


class ValueExpectedError(ClientError):
    code = "value_expected"


class DictionaryExpectedError(ClientError):
    code = "dictionary_expected"


class AlreadyPresentError(ClientError):
    code = "already_present"


class NoSpaceError(ClientError):
    code = "no_space"


class RenameSourcePrefixError(ClientError):
    code = "rename_source_prefix"


class ReadOnlyError(ClientError):
    """The disk is served read-only (no --rw, or after an I/O error: the message says)."""

    code = "read_only"


class BusyError(ClientError):
    """Another batch is open on the disk (one per disk; it is refused, not waited for)."""

    code = "busy"


class ConflictError(ClientError):
    """The head is no longer the expected one: nothing written."""

    code = "conflict"


class NoBatchError(ClientError):
    code = "no_batch"


class DiskImageError(ClientError):
    """The image failed under a read or a write (an I/O error: the batch is lost)."""

    code = "image"


class VersionError(ClientError):
    """The server speaks an older protocol, without the operation asked for."""

    code = "version"


class BadContentError(ClientError):
    """A put's content is not what it declared (shorter, longer, not bytes): not sent."""

    code = "bad_content"


class ConnectionLost(ClientError):
    code = "connection_lost"


class Timeout(ClientError, TimeoutError):
    code = "timeout"


_BY_CODE: dict[str, type[ClientError]] = {
    c.code: c
    for c in (
        NotFoundError,
        NotAFileError,
        NotADirectory,
        InvalidPathError,
        NoSuchDiskError,
        IntegrityError,
        BootFailedError,
        ValueExpectedError,
        DictionaryExpectedError,
        AlreadyPresentError,
        NoSpaceError,
        RenameSourcePrefixError,
        ReadOnlyError,
        BusyError,
        ConflictError,
        NoBatchError,
        DiskImageError,
    )
}
_BY_CODE.update(dict.fromkeys(("bad_request", "unknown_op", "too_large", "protocol"), RequestError))


def error_for(code: str, message: str) -> ClientError:
    return _BY_CODE.get(code, ClientError)(message, code)


def _path(path: str | bytes) -> bytes:
    return path if isinstance(path, bytes) else path.encode("utf-8", "surrogateescape")


class Client:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout: float = 30.0,
        disk: str = DEFAULT_DISK,
        resync: bool = False,
        version: int = VERSIONS[-1],
    ):
        self.reader, self.writer = reader, writer
        self.timeout = timeout
        self.disk = disk
        self.codec = ClientCodec(resync=resync)
        self.wanted = version  # the highest protocol version to negotiate
        self.hello: Hello | None = None
        self._batches: dict[str, Batch] = {}  # this client's open batch per disk
        self._hello_seen = asyncio.Event()
        self._queues: dict[int, asyncio.Queue[Data | End | Error | ClientError]] = {}
        self._failure: ClientError | None = None
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()

    # -- connection -------------------------------------------------------------
    @classmethod
    async def connect(
        cls,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        greet: bool = True,
        resync: bool = False,
        **kwargs: Any,
    ) -> Client:
        """A client whose greeting has arrived.

        `greet` sends GREET (a server greets by itself on a new connection, but
        a multiplexer or a serial port that an earlier session used greets only
        when asked; a second greeting is ignored). `resync` skips bytes before
        the greeting: for a serial stream that a previous session left midway;
        there the client asks for its version at once and skips to its HELLO.
        Elsewhere it reads the first HELLO and upgrades when the server lists
        a later version (`versions`); a server without it stays version 1.
        """
        client = cls(reader, writer, resync=resync, **kwargs)
        client._task = asyncio.create_task(client._read_loop())
        try:
            if resync and client.wanted > 1:
                writer.write(client.codec.upgrade(client.wanted))
            elif greet:
                writer.write(ClientCodec.greet())
            await client._greeting()
            hello = client.hello
            assert hello is not None
            offered = [int(v) for v in hello.fields.get("versions", "").split() if v.isdigit()]
            best = max((v for v in offered if v <= client.wanted), default=hello.version)
            if best > hello.version:
                client._hello_seen.clear()
                writer.write(client.codec.upgrade(best))
                await client._greeting()
        except BaseException:
            await client.close()
            raise
        return client

    async def _greeting(self) -> None:
        await self._wait(self._hello_seen.wait(), "the server's greeting")
        if self._failure is not None:
            raise self._failure

    @property
    def version(self) -> int:
        """The session's protocol version (2: writes)."""
        return self.codec.version

    @classmethod
    async def over_streams(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, **kwargs: Any
    ) -> Client:
        """Over a stream whose greeting may already have been read (the microVM's
        port): asks for a new one and skips whatever precedes it."""
        return await cls.connect(reader, writer, greet=True, resync=True, **kwargs)

    @classmethod
    async def open_unix(cls, path: str, **kwargs: Any) -> Client:
        timeout = kwargs.get("timeout", 30.0)
        try:
            sock = await asyncio.wait_for(_connect_unix(path, min(timeout, CONNECT_PATIENCE)), timeout)
            reader, writer = await asyncio.open_unix_connection(sock=sock, limit=READ_SIZE)
        except (TimeoutError, OSError) as exc:
            reason = getattr(exc, "strerror", None) or "timed out"
            raise ConnectionLost(f"cannot connect to {path}: {reason}") from None
        return await cls.connect(reader, writer, **kwargs)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        self._fail(ConnectionLost("the client is closed"))

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _wait(self, aw: Coroutine[Any, Any, T], what: str) -> T:
        try:
            async with asyncio.timeout(self.timeout):  # cheaper than wait_for: no task
                return await aw
        except TimeoutError:
            raise Timeout(f"no answer within {self.timeout:g} s waiting for {what}") from None

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    raise ConnectionLost("the server closed the connection")
                for event in self.codec.receive(data):
                    await self._route(event)
        except ProtocolError as exc:
            if self.hello is None:  # the first bytes were not a greeting at all
                self._fail(ConnectionLost(f"not a docteur server (no greeting): {exc}", "protocol"))
            else:
                self._fail(ConnectionLost(f"protocol error from the server: {exc}", "protocol"))
        except ClientError as exc:
            self._fail(exc)
        except (OSError, EOFError) as exc:
            reason = str(exc) or type(exc).__name__
            lost = reason if reason.lower().startswith("connection lost") else f"connection lost: {reason}"
            self._fail(ConnectionLost(lost))
        except asyncio.CancelledError:
            raise

    async def _route(self, event: Hello | Data | End | Error) -> None:
        if isinstance(event, Hello):
            self.hello = event
            self._hello_seen.set()
            return
        if isinstance(event, Error) and event.id == 0:  # about the connection itself
            raise ConnectionLost(f"the server dropped the connection: {event.message}", event.code)
        queue = self._queues.get(event.id)
        if queue is None:
            return  # cancelled, or abandoned after a timeout
        if not isinstance(event, Data):
            del self._queues[event.id]
        await queue.put(event)  # blocks while a stream's reader lags: backpressure

    def _fail(self, exc: ClientError) -> None:
        if self._failure is None:
            self._failure = exc
        self._hello_seen.set()
        for queue in self._queues.values():
            _drain(queue)
            queue.put_nowait(exc)
        self._queues.clear()

    # -- requests ---------------------------------------------------------------
    async def _send(
        self, op: str, path: str | bytes = b"", offset: int = 0, length: int | None = None,
        disk: str | None = None, args: object = None,
    ) -> tuple[int, asyncio.Queue[Data | End | Error | ClientError]]:
        async with self._write_lock:
            return await self._send_locked(op, path, offset, length, disk, args)

    async def _send_locked(
        self, op: str, path: str | bytes = b"", offset: int = 0, length: int | None = None,
        disk: str | None = None, args: object = None,
    ) -> tuple[int, asyncio.Queue[Data | End | Error | ClientError]]:
        """Send one REQUEST (the caller holds the write lock); its reply queue."""
        if self._failure is not None:
            raise type(self._failure)(str(self._failure), self._failure.code)
        if self.hello is not None and not self.hello.ok and op not in ("ping", "shutdown"):
            raise BootFailedError(self.hello.fields.get("error", "the server failed to boot"))
        try:
            rid, frame = self.codec.request(op, disk or self.disk, _path(path), offset, length, args)
        except ValueError as exc:  # too long to send at all
            raise (InvalidPathError if args is None else RequestError)(str(exc)) from None
        queue: asyncio.Queue[Data | End | Error | ClientError] = asyncio.Queue(QUEUE_CHUNKS)
        self._queues[rid] = queue
        self.writer.write(frame)
        await self._drain(f"sending {op}")
        return rid, queue

    async def _drain(self, what: str) -> None:
        """Wait while the transport's buffer is full: the server's pace is the client's."""
        try:
            await self._wait(self.writer.drain(), what)
        except (OSError, RuntimeError) as exc:
            raise ConnectionLost(f"connection lost: {exc}") from None

    async def _next(self, rid: int, queue: asyncio.Queue, what: str) -> Data | End:
        try:
            event = await self._wait(queue.get(), what)
        except BaseException:
            self._abandon(rid)
            raise
        if isinstance(event, ClientError):
            raise type(event)(str(event), event.code)
        if isinstance(event, Error):
            raise error_for(event.code, event.message)
        return event

    def _abandon(self, rid: int) -> None:
        queue = self._queues.pop(rid, None)
        if queue is not None:
            _drain(queue)  # unblocks the read loop if it waits on this queue
            if self._failure is None:
                with contextlib.suppress(Exception):
                    self.writer.write(self.codec.cancel(rid))

    async def request(
        self, op: str, path: str | bytes = b"", offset: int = 0, length: int | None = None,
        disk: str | None = None, args: object = None,
    ) -> AsyncIterator[Data | End]:
        """The raw replies to one request: Data events, then the End (errors raise)."""
        rid, queue = await self._send(op, path, offset, length, disk, args)
        what = f"{op} {_path(path).decode('utf-8', 'replace')}".strip()
        done = False
        try:
            while True:
                event = await self._next(rid, queue, what)
                if isinstance(event, End):
                    done = True
                yield event
                if done:
                    return
        finally:
            if not done:
                self._abandon(rid)

    async def call(
        self, op: str, path: str | bytes = b"", disk: str | None = None, args: object = None
    ) -> object:
        result: object = None
        async for event in self.request(op, path, disk=disk, args=args):
            if isinstance(event, End):
                result = event.result
        return result

    # -- the operations ---------------------------------------------------------
    async def stream(
        self, path: str | bytes, offset: int = 0, length: int | None = None, disk: str | None = None
    ) -> AsyncIterator[bytes]:
        """The file's bytes in chunks. Consume concurrent streams in request order."""
        async for event in self.request("get", path, offset, length, disk):
            if isinstance(event, Data):
                yield event.data

    async def get(
        self, path: str | bytes, offset: int = 0, length: int | None = None, disk: str | None = None
    ) -> bytes:
        parts = [chunk async for chunk in self.stream(path, offset, length, disk)]
        return b"".join(parts)

    async def get_with_end(self, path: str | bytes, disk: str | None = None) -> tuple[bytes, GetEnd]:
        parts: list[bytes] = []
        end = None
        async for event in self.request("get", path, disk=disk):
            if isinstance(event, Data):
                parts.append(event.data)
            else:
                end = event.result
        assert isinstance(end, GetEnd)
        return b"".join(parts), end

    async def list(self, path: str | bytes = "/", disk: str | None = None) -> list[Entry]:
        return await self._records("list", path, decode_entries, disk)

    async def _records(
        self, op: str, path: str | bytes, decode: Callable[[bytes], list[Any]],
        disk: str | None, args: object = None,
    ) -> list[Any]:
        """The records a reply's DATA frames carry whole (a listing, a log), decoded."""
        records: list[Any] = []
        async for event in self.request(op, path, disk=disk, args=args):
            if isinstance(event, Data):
                try:
                    records += decode(event.data)
                except ProtocolError as exc:
                    raise ConnectionLost(f"protocol error from the server: {exc}") from None
        return records

    async def exists(self, path: str | bytes, disk: str | None = None) -> str:
        return str(await self.call("exists", path, disk))

    async def stat(self, path: str | bytes, disk: str | None = None) -> Stat:
        result = await self.call("stat", path, disk)
        assert isinstance(result, Stat)
        return result

    async def size(self, path: str | bytes, disk: str | None = None) -> int:
        return int(await self.call("size", path, disk))  # type: ignore[call-overload]

    async def digest(self, path: str | bytes, disk: str | None = None) -> str:
        return str(await self.call("digest", path, disk))

    async def last_modified(self, path: str | bytes, disk: str | None = None) -> tuple[int, int]:
        result = await self.call("last_modified", path, disk)
        assert isinstance(result, tuple)
        return result

    async def info(self, disk: str | None = None) -> dict[str, str]:
        result = await self.call("info", b"", disk)
        assert isinstance(result, dict)
        return result

    async def ping(self) -> None:
        await self.call("ping")

    async def shutdown(self) -> None:
        """Ask the server to exit (the microVM powers off)."""
        await self.call("shutdown")

    # -- writes (protocol version 2) ----------------------------------------------
    def batch(
        self, *, message: str | None = None, author: str | None = None, disk: str | None = None,
        expected_head: bytes | None = None,
    ) -> Batch:
        """A batch of writes on `disk`, one commit when the `async with` block ends
        (`message`, `author` 'Name <email>' and `expected_head` are the commit's; None = the
        server's defaults); an exception inside the block aborts it: nothing written."""
        return Batch(self, disk or self.disk, message, author, expected_head)

    async def put(
        self, path: str | bytes, data: Content, *, size: int | None = None, mode: int = 0o100644,
        message: str | None = None, author: str | None = None, expected_head: bytes | None = None,
        disk: str | None = None,
    ) -> Committed | None:
        """Bind `path` to `data` (bytes, or an async iterator of chunks: `size` its total,
        else it is spooled to a temporary file first) as one commit; None: unchanged tree."""
        disk = self._single_write("put", disk)
        commit = _commit_args(message, author, expected_head)
        put = await self._put(path, data, size, mode, disk, commit)
        return _changed(put.commit)

    async def remove(
        self, path: str | bytes, *, message: str | None = None, author: str | None = None,
        expected_head: bytes | None = None, disk: str | None = None,
    ) -> Committed | None:
        """Remove `path` (recursively) as one commit."""
        disk = self._single_write("remove", disk)
        result = await self.call("remove", path, disk, _commit_args(message, author, expected_head))
        return _changed(result)

    async def rename(
        self, source: str | bytes, dest: str | bytes, *, message: str | None = None,
        author: str | None = None, expected_head: bytes | None = None, disk: str | None = None,
    ) -> Committed | None:
        """Move `source` to `dest` (inside it when it is a directory) as one commit."""
        disk = self._single_write("rename", disk)
        args = RenameArgs(_path(dest), _commit_args(message, author, expected_head))
        return _changed(await self.call("rename", source, disk, args))

    async def log(self, limit: int | None = None, disk: str | None = None) -> list[LogEntry]:
        """The disk's commits, newest first (at most `limit`)."""
        self._check_version("log")
        return await self._records("log", b"", decode_log, disk, limit or None)

    def _check_version(self, op: str) -> None:
        if self.version < 2:
            raise VersionError(f"the server speaks protocol {self.version}: no writes ({op})")

    def _single_write(self, op: str, disk: str | None) -> str:
        """The disk of a write that is its own batch; refused while this client holds one there
        (the server would take it into that batch)."""
        disk = disk or self.disk
        self._check_version(op)
        if disk in self._batches:
            raise RequestError(f"a batch of this client is open on disk {disk}: write through it")
        return disk

    async def _put(
        self, path: str | bytes, data: Content, size: int | None, mode: int, disk: str,
        commit: CommitArgs | None,
    ) -> Put:
        """A put REQUEST, then its content in CHUNK frames at the server's pace."""
        self._check_version("put")
        name = _path(path).decode("utf-8", "replace")
        result = await self.upload("put", path, data, size, lambda n: PutArgs(n, mode, commit), disk, name)
        if not isinstance(result, Put):
            raise ConnectionLost(f"protocol error from the server: put {name} answered {result!r:.80}")
        return result

    async def upload(
        self, op: str, path: str | bytes, data: Content, size: int | None,
        args: Callable[[int], object], disk: str, name: str,
    ) -> object:
        """A REQUEST whose content follows in CHUNK frames (a put, a sync's import), sent at
        the server's pace; `args(size)` its arguments. Its END result."""
        try:
            chunks, size = await prepared(data, size)
        except ContentError as exc:
            raise BadContentError(str(exc)) from None
        announced = self.hello.fields.get("max_chunk", "") if self.hello else ""
        step = min(int(announced), MAX_CHUNK) if announced.isdigit() and int(announced) else MAX_CHUNK
        try:
            # No other frame may go between the REQUEST and its last CHUNK.
            async with self._write_lock:
                rid, queue = await self._send_locked(op, path, disk=disk, args=args(size))
                try:
                    await self._send_content(rid, queue, chunks, size, f"{op} {name}", step)
                except BaseException as exc:
                    self._abandon(rid)  # CANCEL instead of the rest of the content
                    if isinstance(exc, ContentError):  # a chunk that is not bytes
                        raise BadContentError(f"{op} {name}: {exc}") from None
                    raise
        finally:
            await chunks.aclose()
        event = await self._next(rid, queue, f"{op} {name}")
        if not isinstance(event, End):
            self._abandon(rid)
            raise ConnectionLost(f"protocol error from the server: {op} {name} answered {event!r:.80}")
        return event.result

    async def _send_content(
        self, rid: int, queue: asyncio.Queue, chunks: Chunks, size: int,
        name: str, step: int,
    ) -> None:
        sent = 0
        async for view in chunks:
            if sent + len(view) > size:
                raise BadContentError(f"{name}: more content than the {size} bytes declared")
            for start in range(0, len(view), step):
                if not queue.empty():  # answered before its content ended: refused (an error)
                    if self._failure is None:
                        self.writer.write(self.codec.cancel(rid))  # no more content: it is over
                    return
                piece = view[start : start + step]
                if not piece.readonly:  # the transport may keep it until sent
                    piece = memoryview(bytes(piece))
                self.writer.writelines((chunk_header(rid, len(piece)), piece))
                await self._drain(f"sending {name}")
                await asyncio.sleep(0)  # the read loop's turn: a refusal stops the content early
            sent += len(view)
        if sent != size:
            raise BadContentError(f"{name}: {sent} bytes of content, {size} declared")


class Batch:
    """Writes that become one commit (`Client.batch`). Its reads (get, list, stat, ...) see
    its writes; other connections see the last commit until it is committed.

        async with client.batch(message="deploy") as b:
            await b.put("/index.html", data)
        b.result  # the commit (None: nothing changed)
    """

    def __init__(
        self, client: Client, disk: str, message: str | None, author: str | None,
        expected_head: bytes | None,
    ):
        self.client, self.disk = client, disk
        self._commit = (message, author, expected_head)
        self.head: bytes | None = None  # the commit it started from
        self.generation: int | None = None
        self.result: Committed | None = None
        self.open = False

    async def __aenter__(self) -> Batch:
        await self.begin()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if not self.open:
            return
        if exc_type is not None:
            with contextlib.suppress(ClientError):  # the connection is gone: the server aborted it
                await self.abort()
            return
        try:
            await self.commit()
        finally:
            if self.open:  # a commit refused for its arguments leaves the batch open
                with contextlib.suppress(ClientError):
                    await self.abort()

    async def begin(self) -> Begun:
        client = self.client
        client._check_version("begin")
        if self.open or self.disk in client._batches:
            raise BusyError(f"this client already has a batch open on disk {self.disk}")
        begun = await client.call("begin", b"", self.disk)
        assert isinstance(begun, Begun)
        self.head, self.generation, self.open = begun.head, begun.generation, True
        client._batches[self.disk] = self
        return begun

    def _check_open(self, op: str) -> None:
        if not self.open:
            raise NoBatchError(f"{op}: the batch on disk {self.disk} is not open")

    async def put(
        self, path: str | bytes, data: Content, *, size: int | None = None, mode: int = 0o100644
    ) -> bytes:
        """Bind `path` to `data` in the batch; the blob's git id."""
        self._check_open("put")
        return (await self.client._put(path, data, size, mode, self.disk, None)).blob

    async def remove(self, path: str | bytes) -> None:
        self._check_open("remove")
        await self.client.call("remove", path, self.disk)

    async def rename(self, source: str | bytes, dest: str | bytes) -> None:
        self._check_open("rename")
        await self.client.call("rename", source, self.disk, RenameArgs(_path(dest)))

    async def commit(
        self, message: str | None = None, author: str | None = None,
        expected_head: bytes | None = None,
    ) -> Committed | None:
        """One commit of the batch, durable when this returns (None: the tree is unchanged).
        The batch is over, whatever the answer, but for a RequestError (an author that is not
        'Name <email>', ...): it stays open. Arguments default to the batch's."""
        self._check_open("commit")
        m, a, e = self._commit
        args = CommitArgs(message or m or "", author or a or "", expected_head or e)
        try:
            result = await self.client.call("commit", b"", self.disk, args)
        except RequestError:
            raise  # refused for its arguments: the server keeps the batch open
        except BaseException:
            self._close()
            raise
        self._close()
        assert result is None or isinstance(result, Committed)
        self.result = _changed(result)
        return self.result

    async def abort(self) -> None:
        """Drop the batch: nothing is written."""
        self._check_open("abort")
        try:
            await self.client.call("abort", b"", self.disk)
        finally:
            self._close()

    def _close(self) -> None:
        self.open = False
        if self.client._batches.get(self.disk) is self:
            del self.client._batches[self.disk]

    # Reads on the batch's disk: they see its writes.
    def stream(self, path: str | bytes, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self.client.stream(path, offset, length, self.disk)

    async def get(self, path: str | bytes, offset: int = 0, length: int | None = None) -> bytes:
        return await self.client.get(path, offset, length, self.disk)

    async def list(self, path: str | bytes = "/") -> list[Entry]:
        return await self.client.list(path, self.disk)

    async def exists(self, path: str | bytes) -> str:
        return await self.client.exists(path, self.disk)

    async def stat(self, path: str | bytes) -> Stat:
        return await self.client.stat(path, self.disk)

    async def size(self, path: str | bytes) -> int:
        return await self.client.size(path, self.disk)

    async def digest(self, path: str | bytes) -> str:
        return await self.client.digest(path, self.disk)

    async def last_modified(self, path: str | bytes) -> tuple[int, int]:
        return await self.client.last_modified(path, self.disk)


def _commit_args(message: str | None, author: str | None, expected: bytes | None) -> CommitArgs | None:
    """A single write's commit arguments; None (the server's defaults: `put PATH`, ...) when
    nothing is given."""
    if message is None and author is None and expected is None:
        return None
    return CommitArgs(message or "", author or "", expected)


def _changed(result: object) -> Committed | None:
    """A commit result, None when the tree did not change (nothing written)."""
    assert result is None or isinstance(result, Committed)
    return result if result is not None and result.committed else None


async def _connect_unix(path: str, patience: float) -> socket.socket:
    """A socket connected to `path`, retrying briefly while the server's backlog
    is full (EAGAIN: a burst of clients) or nobody listens yet (ECONNREFUSED)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience
    delay = 0.005
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect(path)  # a unix socket connects at once, or EAGAIN when full
            return sock
        except (BlockingIOError, ConnectionRefusedError) as exc:
            sock.close()
            if loop.time() + delay > deadline:
                raise ConnectionLost(
                    f"cannot connect to {path}: {exc.strerror} (still after {patience:g} s)"
                ) from None
        except BaseException:
            sock.close()
            raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)


def _drain(queue: asyncio.Queue) -> None:
    while not queue.empty():
        queue.get_nowait()


def new_runner() -> asyncio.Runner:
    """An asyncio.Runner on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run with uvloop when it is installed."""
    with new_runner() as runner:
        return runner.run(coro)
