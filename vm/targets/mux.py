"""Many protocol clients over the appliance's one serial port.

`docteur run --socket PATH` listens on a unix socket; each client that
connects speaks the protocol (PROTOCOL.md) exactly as it would to a guest.
The guest sees one host session (upgraded to the latest version the guest
speaks): the multiplexer decodes each client's frames with the server's own
codec, answers its GREET (version 1 or 2) with the guest's HELLO of that
version, gives every forwarded request a fresh upstream id and routes the
guest's DATA/END/ERROR frames back by that id.

Writes (version 2) need more than routing, since to the guest every client is
the same connection (PROTOCOL.md, "A multiplexer ..."):
- a batch belongs to the client that began it: another client's begin, put,
  remove or rename on that disk is answered `busy`, its commit or abort
  `no_batch`, here, without reaching the guest; the client's departure (or
  its new GREET) sends the guest an `abort`;
- a put's content is sent in one piece: from the put REQUEST to its last CHUNK
  (or CANCEL) the port carries that client's frames only, the others wait
  (the guest reads a put's content as nothing else); so is a sync's import;
- the HELLO replayed to new clients follows the commits seen pass by.
What it cannot give: the guest shows a batch to its connection, so while a
client holds a batch on a disk, the other clients' reads of that disk see the
batch too (the unix target's native sockets do not share that limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from typing import NamedTuple

from docteur.guest import protocol as p
from docteur.guest.resume import HOST_OPS
from docteur.guest.values import Committed, Put

log = logging.getLogger(__name__)
READ_SIZE = 1 << 16
# A sync's writes too: an import holds the port through its content as a put does, and
# moves the head. (sync_info is a read: its `writable` says busy, as the guest sees it.)
WRITES = frozenset(("begin", "put", "remove", "rename", "commit", "abort", "import", "set_synced"))
_COMMITS = ("put", "remove", "rename", "commit", "import", "set_synced")
_ENDS_BATCH = frozenset(("commit", "abort"))


class Route(NamedTuple):
    client: Client | None  # None: the mux's own request (an abort), its reply dropped
    rid: int  # the client's id
    op: str
    disk: str


class Mux:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        hello: bytes,
        hellos: dict[int, bytes] | None = None,
    ):
        self.up_reader, self.up_writer = reader, writer
        self.hello = hello  # the whole HELLO frame (version 1), replayed to every client
        # The HELLO of each version the upstream session was greeted in (the latest
        # is the session's): a client's GREET(v) gets the one of min(v, latest).
        self.hellos = dict(hellos or {p.VERSION: hello})
        self.routes: dict[int, Route] = {}  # upstream id -> where its reply goes
        self.ids = itertools.count(1)
        self.clients: set[Client] = set()
        self.batches: dict[str, Client] = {}  # disk -> the client whose batch is open (or asked)
        self.sending = asyncio.Lock()  # the upstream port, held through a put's content
        self.closed = asyncio.Event()
        self.handlers: set[asyncio.Task[None]] = set()  # one per connected client

    # -- guest -> clients ------------------------------------------------------
    async def pump_upstream(self) -> None:
        """Guest -> clients, until the port closes (guest powered off, QEMU gone)."""
        try:
            while True:
                header = await self.up_reader.readexactly(p.HEADER_SIZE)
                ftype, code, rid, length = p.HEADER.unpack(header)
                payload = await self.up_reader.readexactly(length) if length else b""
                route = self.routes.get(rid)
                if route is None:
                    continue  # HELLO again, or a request whose client left
                if ftype in (p.END, p.ERROR):
                    del self.routes[rid]
                    self._settled(route, ftype, code, payload)
                    if route.client is not None:
                        route.client.pending.discard(rid)
                        route.client.by_own.pop(route.rid, None)
                if route.client is not None:
                    await route.client.send(p.frame(ftype, code, route.rid, payload))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for client in list(self.clients):
                client.close()

    def _settled(self, route: Route, ftype: int, code: int, payload: bytes) -> None:
        """Batch ownership and the replayed HELLO, from a write's END or ERROR."""
        if route.op not in WRITES:
            return
        error = p.ERRORS.get(code, "internal") if ftype == p.ERROR else None
        owner = self.batches.get(route.disk)
        if owner is not None and owner is route.client and (
            (route.op == "begin" and error)
            or (route.op in _ENDS_BATCH and error != "bad_request")
            or error in ("image", "read_only")  # the guest closed the batch
        ):
            del self.batches[route.disk]
        if ftype == p.END and route.op in _COMMITS:
            with contextlib.suppress(p.ProtocolError):
                result = p.decode_result(route.op, payload)
                self._note_commit(route.disk, result.commit if isinstance(result, Put) else result)

    def _note_commit(self, disk: str, result: object) -> None:
        if not isinstance(result, Committed) or not result.committed:
            return
        for version, frame in self.hellos.items():
            hello = p.ClientCodec().receive(frame)[0]
            assert isinstance(hello, p.Hello)
            fields = {**hello.fields, f"disk.{disk}": result.commit.hex()}
            if f"generation.{disk}" in fields:
                fields[f"generation.{disk}"] = str(result.generation)
            if f"free.{disk}" in fields:
                fields[f"free.{disk}"] = str(result.free)
            self.hellos[version] = p.ServerCodec.hello(fields, hello.max_frame, hello.version)
        self.hello = self.hellos.get(p.VERSION, self.hello)

    # -- clients -> guest ------------------------------------------------------
    async def stop(self, timeout: float = 2.0) -> None:
        """Disconnect every client and wait until each one's part is wound up (its put
        cancelled, its batch aborted): the port is then free for a shutdown request."""
        for client in list(self.clients):
            client.close()
        tasks = [t for t in self.handlers if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = Client(self, writer)
        self.clients.add(client)
        task = asyncio.current_task()
        if task is not None:
            self.handlers.add(task)
            task.add_done_callback(self.handlers.discard)
        codec = p.ServerCodec()
        try:
            await client.send(self.hello)  # PROTOCOL.md: the server speaks first
            while True:
                data = await reader.read(READ_SIZE)
                if not data:
                    break
                try:
                    events = codec.receive(data)
                    while True:
                        for event in events:
                            await self._event(client, codec, event)
                        if not codec.paused:
                            break
                        # A put: the mux forwards at once, the guest keeps the barrier.
                        events = codec.resume()
                except p.ProtocolError as exc:  # as the guest answers it: ERROR, then close
                    await client.send(p.ServerCodec.error(exc.request_id, exc.code, str(exc)))
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            await self.drop(client)

    async def _event(self, client: Client, codec: p.ServerCodec, event: object) -> None:
        if isinstance(event, p.BadRequest):
            await client.send(p.ServerCodec.error(event.id, event.code, event.message))
        elif isinstance(event, p.Request):
            await self._request(client, event)
        elif isinstance(event, p.Chunk):
            upload = client.upload
            if upload is None or upload[1] != event.id:
                return  # the content of a put answered here (busy) is dropped
            await self._up(client, p.chunk_frame(upload[0], event.data), hold=not event.last)
            if event.last:
                client.upload = None
        elif isinstance(event, p.Cancel):
            if client.upload is not None and client.upload[1] == event.id:
                # Instead of the rest of its content, even when the guest has answered
                # the put already (it refused it early): the guest waits for one or the other.
                up, client.upload = client.upload[0], None
                await self._up(client, p.frame(p.CANCEL, 0, up))
            elif event.id in client.by_own:
                await self._up(client, p.frame(p.CANCEL, 0, client.by_own[event.id]))
        elif isinstance(event, p.Greet):
            await self._end_session(client)
            version = max(v for v in self.hellos if v <= event.version)
            codec.version = version  # what the upstream session can give
            await client.send(self.hellos[version])

    async def _request(self, client: Client, req: p.Request) -> None:
        if req.op in HOST_OPS:  # only the appliance's, never a client's
            why = f"{req.op} is the appliance's own request"
            await client.send(p.ServerCodec.error(req.id, "unknown_op", why))
            return
        refusal = self._refusal(client, req)
        if refusal is not None:
            await client.send(p.ServerCodec.error(req.id, *refusal))
            return
        if req.op == "begin":
            self.batches[req.disk] = client  # now: a write of another client must not slip in
        up = next(self.ids)
        self.routes[up] = Route(client, req.id, req.op, req.disk)
        client.pending.add(up)
        client.by_own[req.id] = up
        frame = p.encode_request(up, req.op, req.disk, req.path, req.offset, req.length, req.args)
        content = req.op in p.UPLOADS and getattr(req.args, "size", 0) > 0
        if content:
            client.upload = (up, req.id)
        await self._up(client, frame, hold=content)

    def _refusal(self, client: Client, req: p.Request) -> tuple[str, str] | None:
        """(code, message) when another client's batch stands in the way of `req`."""
        if req.op not in WRITES:
            return None
        owner = self.batches.get(req.disk)
        if owner is None:
            return None
        if req.op == "begin":  # the guest too answers a second begin busy, its owner's included
            return "busy", f"disk {req.disk}: a batch is open already"
        if owner is client:
            return None
        if req.op in _ENDS_BATCH:
            return "no_batch", f"no batch of this connection on disk {req.disk}"
        return "busy", f"disk {req.disk}: another connection's batch is open"

    async def _up(self, client: Client, data: bytes, hold: bool = False) -> None:
        """Write upstream; `hold` keeps the port to `client` after it (a put's content
        follows), otherwise it is free for the others again."""
        if not client.holding:
            await self.sending.acquire()
            client.holding = True
        try:
            self.up_writer.write(data)
            await self.up_writer.drain()
        finally:
            if not hold:
                client.holding = False
                self.sending.release()

    async def _end_session(self, client: Client) -> None:
        """What the guest does when a connection ends, for this client's part of the
        one upstream connection: its put stops, its requests are cancelled, its
        batches aborted."""
        with contextlib.suppress(ConnectionError, OSError):
            if client.upload is not None:
                up = client.upload[0]
                client.upload = None
                client.pending.discard(up)
                self.routes.pop(up, None)
                await self._up(client, p.frame(p.CANCEL, 0, up))
            for up in client.pending:
                self.routes.pop(up, None)
                await self._up(client, p.frame(p.CANCEL, 0, up))
            for disk in [d for d, owner in self.batches.items() if owner is client]:
                del self.batches[disk]
                up = next(self.ids)
                self.routes[up] = Route(None, 0, "abort", disk)
                await self._up(client, p.encode_request(up, "abort", disk))
        if client.holding:  # a write failed while it held the port
            client.holding = False
            self.sending.release()
        client.pending.clear()
        client.by_own.clear()

    async def drop(self, client: Client) -> None:
        """A client left: cancel what it still waits for, abort its batch."""
        self.clients.discard(client)
        await self._end_session(client)
        client.close()


class Client:
    def __init__(self, mux: Mux, writer: asyncio.StreamWriter):
        self.mux, self.writer = mux, writer
        self.pending: set[int] = set()
        self.by_own: dict[int, int] = {}  # the client's request id -> upstream id
        self.upload: tuple[int, int] | None = None  # the put whose content it sends (up, own id)
        self.holding = False  # it holds mux.sending

    async def send(self, data: bytes) -> None:
        # A slow client holds up the guest's stream: that is the serial port's
        # back-pressure, shared fairly enough for a development appliance.
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()
