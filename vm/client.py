"""The asyncio client of the docteur protocol (PROTOCOL.md).

Works over any asyncio StreamReader/StreamWriter pair: a unix socket, a
subprocess's pipes, the microVM's serial-port chardev. Requests are
pipelined (each has an id) and every wait has a timeout.

    async with await Client.open_unix("/tmp/docteur.sock") as client:
        data = await client.get("/README.md")
        async for chunk in client.stream("/big.bin"):
            ...
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from docteur.guest.protocol import (
    DEFAULT_DISK,
    ClientCodec,
    Data,
    End,
    Error,
    Hello,
    ProtocolError,
    decode_entries,
)
from docteur.guest.values import Entry, GetEnd, Stat

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
    ):
        self.reader, self.writer = reader, writer
        self.timeout = timeout
        self.disk = disk
        self.codec = ClientCodec(resync=resync)
        self.hello: Hello | None = None
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
        the greeting: for a serial stream that a previous session left midway.
        """
        client = cls(reader, writer, resync=resync, **kwargs)
        client._task = asyncio.create_task(client._read_loop())
        try:
            if greet:
                writer.write(ClientCodec.greet())
            await client._wait(client._hello_seen.wait(), "the server's greeting")
            if client._failure is not None:
                raise client._failure
        except BaseException:
            await client.close()
            raise
        return client

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
        disk: str | None = None,
    ) -> tuple[int, asyncio.Queue[Data | End | Error | ClientError]]:
        if self._failure is not None:
            raise type(self._failure)(str(self._failure), self._failure.code)
        if self.hello is not None and not self.hello.ok and op not in ("ping", "shutdown"):
            raise BootFailedError(self.hello.fields.get("error", "the server failed to boot"))
        try:
            rid, frame = self.codec.request(op, disk or self.disk, _path(path), offset, length)
        except ValueError as exc:  # too long to send at all
            raise InvalidPathError(str(exc)) from None
        queue: asyncio.Queue[Data | End | Error | ClientError] = asyncio.Queue(QUEUE_CHUNKS)
        self._queues[rid] = queue
        async with self._write_lock:
            self.writer.write(frame)
            try:
                await self._wait(self.writer.drain(), f"sending {op}")
            except (OSError, RuntimeError) as exc:
                raise ConnectionLost(f"connection lost: {exc}") from None
        return rid, queue

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
        disk: str | None = None,
    ) -> AsyncIterator[Data | End]:
        """The raw replies to one request: Data events, then the End (errors raise)."""
        rid, queue = await self._send(op, path, offset, length, disk)
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

    async def call(self, op: str, path: str | bytes = b"", disk: str | None = None) -> object:
        result: object = None
        async for event in self.request(op, path, disk=disk):
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
        entries: list[Entry] = []
        async for event in self.request("list", path, disk=disk):
            if isinstance(event, Data):
                try:
                    entries += decode_entries(event.data)
                except ProtocolError as exc:
                    raise ConnectionLost(f"protocol error from the server: {exc}") from None
        return entries

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
