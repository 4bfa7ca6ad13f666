"""One client's session with the guest server, sans-IO (after h11's Connection).

Bytes in (`receive_data`), buffers out (`data_to_send`, then `sent(n)` with
what the fd took): no sockets, no poll, no clock. The connection owns what a
session is: the requests queued in order, the reply being streamed, the
cancels, the greeting (and a new one on GREET), resync on a stream after a
broken frame, closing, and the back-pressure decisions: stop reading past
`max_queued` waiting requests, pull a streamed reply only while less than
`high_water` bytes wait to be written. The server loop only moves bytes.

The application answers one request at a time with a value of `values`
(Result, Failure, Body, Listing, History, Upload); the connection encodes it.
A put (protocol version 2) is answered with an Upload: the connection feeds it
the put's CHUNKs as they are read, and parses nothing else meanwhile (the codec
stops at a put until every earlier request is answered), so a big put passes
through one read buffer at a time. What the application keeps for a session
(the batch a client began) lives in `session.state` and is ended with the
session: on GREET, a broken frame, EOF, a lost peer, close.

States (`state`):
    OPEN      reading requests and answering them in order
    RESYNC    a stream whose framing broke: input is skipped up to the next GREET
    CLOSING   a socket whose framing broke: the error goes out, then CLOSED
    DRAINING  the client sent EOF: what it asked is answered, then CLOSED
    CLOSED    nothing more to do: the driver closes the fd
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

from .protocol import (
    CHUNK,
    UPLOADS,
    VERSION,
    BadRequest,
    Cancel,
    Chunk,
    Greet,
    ProtocolError,
    Request,
    ServerCodec,
    data_header,
    encode_entries,
    encode_log,
)
from .values import Body, Entry, Failure, GetEnd, History, Listing, LogEntry, Result, Upload

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is dear to import in the VM
    from typing import Protocol

    from .values import Answer

    class Application(Protocol):
        def greeting(self, session: Session) -> dict[str, str]: ...
        def handle(self, request: Request, session: Session) -> Answer: ...
        def end_session(self, session: Session) -> None: ...


OPEN, RESYNC, CLOSING, DRAINING, CLOSED = "open", "resync", "closing", "draining", "closed"
HIGH_WATER = 1 << 20  # produce a streamed reply only while less than this waits
MAX_QUEUED = 256  # requests waiting per connection before it stops reading
IOV_MAX = 64  # buffers handed out at once (one writev)
LIST_BATCH = 1 << 16  # list entries go out in DATA frames of about this size

Frame = tuple  # the buffers of one frame: header, then payload pieces (for writev)


class Session:
    """One client session: its protocol version and what the application keeps
    for it (`state`, e.g. the batch it began), ended with it."""

    def __init__(self, version: int = VERSION):
        self.version = version
        self.state: dict = {}


class ServerConnection:
    def __init__(
        self,
        app: Application,
        stream: bool = False,
        high_water: int = HIGH_WATER,
        max_queued: int = MAX_QUEUED,
    ):
        self.app = app
        self.stream = stream  # a byte stream that outlives sessions (stdio, serial port)
        self.high_water = high_water
        self.max_queued = max_queued
        self.state = OPEN
        self.codec = ServerCodec()
        # Buffers waiting to be written, each with "starts a frame" (GREET must
        # finish the frame a client already has part of, to keep the framing).
        self._out: deque[tuple[bytes | memoryview, bool]] = deque()
        self.out_bytes = 0
        self.queue: deque[Request | BadRequest] = deque()
        self.current: tuple[int, Iterator[Frame]] | None = None  # the reply being streamed
        self.cancelled: set[int] = set()
        # The upload being received (a put, a sync's import): (its id, its op, where
        # its CHUNKs go; None = dropped).
        self.upload: tuple[int, str, Upload | None] | None = None
        self.session = Session()
        self._push(self._hello())

    def _hello(self) -> bytes:
        fields = self.app.greeting(self.session)
        return ServerCodec.hello(fields, version=self.session.version)

    # -- input ------------------------------------------------------------------
    @property
    def wants_input(self) -> bool:
        """Read more now? False past `max_queued` (back-pressure), at a put that
        waits for the requests before it, or when done reading."""
        return (
            self.state in (OPEN, RESYNC)
            and len(self.queue) < self.max_queued
            and not self.codec.paused
        )

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; b"" is its EOF."""
        if not data:
            if self.state in (OPEN, RESYNC):
                self.state = DRAINING
                self._feed(b"")  # a put being received gives up (nothing more comes)
            self._settle()
            return
        if self.state in (OPEN, RESYNC):
            self._feed(data)

    def _feed(self, data: bytes, resume: bool = False) -> None:
        try:
            events = self.codec.resume() if resume else self.codec.receive(data)
        except ProtocolError as exc:
            self._broken(exc)
            return
        for event in events:
            if isinstance(event, Chunk):
                self._chunk(event)
            elif isinstance(event, Greet):
                self._restart(event.version)
            elif isinstance(event, Cancel):
                rid = event.id
                if self.upload is not None and self.upload[0] == rid:
                    if self._stop_upload():
                        self._push(_cancelled(rid))
                # A cancel of an unknown or finished request has nothing to answer.
                elif (self.current and self.current[0] == rid) or any(r.id == rid for r in self.queue):
                    self.cancelled.add(rid)
            else:
                self.queue.append(event)
        if self.state == DRAINING and self.upload is not None:
            # Past the client's EOF, with all it sent parsed: the rest never comes.
            rid = self.upload[0]
            if self._stop_upload():
                self._push(ServerCodec.error(rid, "bad_request", "the client ended before the put's content"))

    def _chunk(self, chunk: Chunk) -> None:
        """A piece of the put being received: to its Upload, or dropped."""
        if self.upload is None or self.upload[0] != chunk.id:
            return  # the codec gives only the current put's
        rid, op, sink = self.upload
        if sink is not None:
            failed = sink.write(chunk.data)
            if failed is not None:
                sink = None  # the rest is read and dropped
                self._push(ServerCodec.error(rid, failed.code, failed.message))
        self.upload = None if chunk.last else (rid, op, sink)
        if chunk.last and sink is not None:
            self._answer(rid, op, sink.finish())

    def _start_upload(self, req: Request, answer: object) -> None:
        """A put was answered: receive its content (or drop it), then parse on."""
        size = req.args.size  # type: ignore[union-attr]
        sink = answer if isinstance(answer, Upload) else None
        if sink is None:
            self._answer(req.id, req.op, answer)
        if size == 0:
            if sink is not None:
                self._answer(req.id, req.op, sink.finish())
        else:
            self.upload = (req.id, req.op, sink)
        self._feed(b"", resume=True)

    def _stop_upload(self) -> bool:
        """Give up the put being received; True when it was not answered yet."""
        if self.upload is None:
            return False
        _, _, sink = self.upload
        self.upload = None
        if sink is not None:
            sink.abort()
            return True
        return False

    def _broken(self, exc: ProtocolError) -> None:
        """The framing is broken: say why, drop the session's work."""
        self._drop_work()
        self._push(ServerCodec.error(exc.request_id, exc.code, str(exc)))
        if self.stream:
            self.state = RESYNC  # a stream cannot be closed: wait for the host's GREET
            self.codec.resync()
            self._feed(b"")  # which may already be buffered
        else:
            self.state = CLOSING

    def _restart(self, version: int) -> None:
        """GREET: forget the session (keeping a half-written frame whole), greet again."""
        self._drop_work()
        self.session = Session(version)
        keep = []
        while self._out and not self._out[0][1]:
            keep.append(self._out.popleft())
        self._out.clear()
        self._out.extend(keep)
        self.out_bytes = sum(len(b) for b, _ in keep)
        self.state = OPEN
        self._push(self._hello())

    # -- events from the driver ---------------------------------------------------
    def abandon(self) -> None:
        """No host on the stream any more (a serial port reads EOF): drop its work."""
        midput = self.codec.paused or self.codec.receiving is not None
        self._drop_work()
        if midput:  # what follows the put's REQUEST cannot be parsed: wait for a GREET
            self.state = RESYNC
            self.codec.resync()

    def reset(self) -> None:
        """The stream's peer went away mid-write: drop everything, wait for a GREET."""
        self._drop_work()
        self._out.clear()
        self.out_bytes = 0
        self.state = RESYNC
        self.codec.resync()

    def close(self) -> None:
        """The driver closes the connection: stop every reply in progress."""
        self._drop_work()
        self.state = CLOSED

    # -- output -------------------------------------------------------------------
    def data_to_send(self, max_buffers: int = IOV_MAX) -> list[bytes | memoryview]:
        """The buffers to write next (producing replies up to the high-water mark).

        They stay queued until `sent()` says how many bytes the fd took."""
        self._produce()
        out = self._out
        return [out[i][0] for i in range(min(max_buffers, len(out)))]

    def sent(self, n: int) -> None:
        """`n` bytes of `data_to_send()` were written."""
        self.out_bytes -= n
        out = self._out
        while n:
            buf, _ = out[0]
            if n >= len(buf):
                n -= len(buf)
                out.popleft()
            else:
                out[0] = (memoryview(buf)[n:], False)
                n = 0
        self._settle()

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    @property
    def has_work(self) -> bool:
        """Replies still to produce (once the output drains)."""
        return self.state in (OPEN, DRAINING) and (self.current is not None or bool(self.queue))

    def _push(self, *bufs: bytes | memoryview) -> None:
        first = True
        for b in bufs:
            if b:
                self._out.append((b, first))
                self.out_bytes += len(b)
                first = False

    def _produce(self) -> None:
        """Pull replies until the output reaches the high-water mark."""
        while self.out_bytes < self.high_water and self.state in (OPEN, DRAINING):
            if self.current is None:
                if not self.queue or self.upload is not None:
                    break
                req = self.queue.popleft()
                if req.id in self.cancelled:
                    self.cancelled.discard(req.id)
                    if isinstance(req, Request) and req.op in UPLOADS:
                        self._start_upload(req, Failure("cancelled", "cancelled by the client"))
                    else:
                        self._push(_cancelled(req.id))
                elif isinstance(req, BadRequest):
                    self._push(ServerCodec.error(req.id, req.code, req.message))
                else:
                    self._start(req)
                continue
            rid, frames = self.current
            if rid in self.cancelled:
                self.cancelled.discard(rid)
                self._drop_current()
                self._push(_cancelled(rid))
                continue
            frame = next(frames, None)
            if frame is None:
                self.current = None
            else:
                self._push(*frame)
        self._settle()

    def _start(self, req: Request) -> None:
        answer = self.app.handle(req, self.session)
        if req.op in UPLOADS:
            self._start_upload(req, answer)
        else:
            self._answer(req.id, req.op, answer)

    def _answer(self, rid: int, op: str, answer: object) -> None:
        if isinstance(answer, Result):
            self._push(ServerCodec.end(rid, op, answer.value))
        elif isinstance(answer, Failure):
            self._push(ServerCodec.error(rid, answer.code, answer.message))
        elif isinstance(answer, Body):
            self.current = (rid, _body_frames(rid, answer))
        elif isinstance(answer, Listing):
            self.current = (rid, _entry_frames(rid, "list", answer.entries, encode_entries))
        elif isinstance(answer, History):
            self.current = (rid, _entry_frames(rid, "log", answer.entries, encode_log))
        else:  # an application bug: an answer, never a crash
            self._push(ServerCodec.error(rid, "internal", f"no answer for {op}"))

    def _settle(self) -> None:
        # CLOSING sends only what is queued; DRAINING also answers what was asked.
        if not self._out and self.state in (CLOSING, DRAINING) and not self.has_work:
            self.state = CLOSED
            self._end_session()

    def _end_session(self) -> None:
        """The session is over: the application drops what it kept (aborts its batch)."""
        if self.session.state:
            self.app.end_session(self.session)
            self.session.state.clear()

    def _drop_current(self) -> None:
        if self.current is not None:
            frames = self.current[1]
            self.current = None
            frames.close()  # type: ignore[attr-defined]  # generators: closes the source too

    def _drop_work(self) -> None:
        """Drop the session's requests, replies and put, and what it kept."""
        self.queue.clear()
        self.cancelled.clear()
        self._drop_current()
        self._stop_upload()
        self._end_session()


def _cancelled(rid: int) -> bytes:
    return ServerCodec.error(rid, "cancelled", "cancelled by the client")


def _body_frames(rid: int, body: Body) -> Iterator[Frame]:
    """DATA frames of at most CHUNK bytes, then END: the pieces the pack yields
    go out together under one header, written with writev (no joining copy)."""
    sent = 0
    pieces: list[bytes] = []
    size = 0
    chunks = body.chunks
    try:
        for chunk in chunks:
            if isinstance(chunk, Failure):
                yield (ServerCodec.error(rid, chunk.code, chunk.message),)
                return
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
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if pieces:
        sent += size
        yield (data_header(rid, size), *pieces)
    if body.op != "get":
        yield (ServerCodec.end(rid, body.op, sent),)
        return
    end = body.end
    if end is None:
        end = GetEnd(sent, 0, sent)
    elif sent != end.length:
        yield (ServerCodec.error(rid, "integrity", f"sent {sent} bytes, expected {end.length}"),)
        return
    yield (ServerCodec.end(rid, "get", end),)


def _entry_frames(
    rid: int, op: str, entries: Iterator[Entry | LogEntry | Failure], encode: Callable[[list], bytes]
) -> Iterator[Frame]:
    """A list's entries (or a log's), packed whole in DATA frames, then END with the count."""
    count = 0
    batch: list = []
    size = 0
    try:
        for entry in entries:
            if isinstance(entry, Failure):
                yield (ServerCodec.error(rid, entry.code, entry.message),)
                return
            batch.append(entry)
            size += _entry_size(entry)
            if size >= LIST_BATCH:
                payload = encode(batch)
                count += len(batch)
                batch, size = [], 0
                yield data_header(rid, len(payload)), payload
    finally:
        close = getattr(entries, "close", None)
        if close is not None:
            close()
    if batch:
        payload = encode(batch)
        count += len(batch)
        yield data_header(rid, len(payload)), payload
    yield (ServerCodec.end(rid, op, count),)


def _entry_size(entry: Entry | LogEntry) -> int:
    """About what an entry takes in a DATA frame (a log entry's UTF-8 may be longer)."""
    if isinstance(entry, Entry):
        return 7 + len(entry.key)
    return 36 + len(entry.author) + len(entry.message)
