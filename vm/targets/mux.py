"""Many protocol clients over the appliance's one serial port.

`docteur run --socket PATH` listens on a unix socket; each client that
connects speaks the protocol (PROTOCOL.md) exactly as it would to a guest.
The guest sees one host session: the multiplexer answers each client's GREET
with the guest's HELLO, gives every forwarded request a fresh upstream id and
routes the guest's DATA/END/ERROR frames back by that id. Only frame headers
are parsed; payloads pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging

from docteur.guest import protocol as p
from docteur.guest.resume import HOST_OPS

log = logging.getLogger(__name__)


class Mux:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, hello: bytes):
        self.up_reader, self.up_writer = reader, writer
        self.hello = hello  # the whole HELLO frame, replayed to every client
        self.routes: dict[int, tuple[Client, int]] = {}  # upstream id -> (client, its id)
        self.ids = itertools.count(1)
        self.clients: set[Client] = set()
        self.closed = asyncio.Event()

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
                client, client_rid = route
                if ftype in (p.END, p.ERROR):
                    del self.routes[rid]
                    client.pending.discard(rid)
                    client.by_own.pop(client_rid, None)
                await client.send(p.frame(ftype, code, client_rid, payload))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for client in list(self.clients):
                client.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = Client(self, writer)
        self.clients.add(client)
        try:
            await client.send(self.hello)  # PROTOCOL.md: the server speaks first
            while True:
                header = await reader.readexactly(p.HEADER_SIZE)
                ftype, code, rid, length = p.HEADER.unpack(header)
                if length > p.MAX_REQUEST:  # as the guest answers it: ERROR, then close
                    why = f"frame of {length} bytes, the limit is {p.MAX_REQUEST}".encode()
                    await client.send(p.frame(p.ERROR, p.ERROR_CODES["too_large"], rid, why))
                    break
                payload = await reader.readexactly(length) if length else b""
                if ftype == p.GREET:
                    await client.send(self.hello)
                elif ftype == p.REQUEST and p.OPS.get(code) in HOST_OPS:  # only the appliance's
                    why = f"{p.OPS[code]} is the appliance's own request".encode()
                    await client.send(p.frame(p.ERROR, p.ERROR_CODES["unknown_op"], rid, why))
                elif ftype == p.REQUEST:
                    up = next(self.ids)
                    self.routes[up] = (client, rid)
                    client.pending.add(up)
                    client.by_own[rid] = up
                    self.up_writer.write(p.frame(ftype, code, up, payload))
                    await self.up_writer.drain()
                elif ftype == p.CANCEL and rid in client.by_own:
                    self.up_writer.write(p.frame(p.CANCEL, 0, client.by_own[rid]))
                    await self.up_writer.drain()
                elif ftype != p.CANCEL:  # a frame no client sends: ERROR protocol, then close
                    why = f"unexpected frame type {ftype:#x} from a client".encode()
                    await client.send(p.frame(p.ERROR, p.ERROR_CODES["protocol"], 0, why))
                    break
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            await self.drop(client)

    async def drop(self, client: Client) -> None:
        """A client left: cancel what it still waits for, forget its routes."""
        self.clients.discard(client)
        for up in client.pending:
            self.routes.pop(up, None)
            with contextlib.suppress(ConnectionError, OSError):
                self.up_writer.write(p.frame(p.CANCEL, 0, up))
        client.close()


class Client:
    def __init__(self, mux: Mux, writer: asyncio.StreamWriter):
        self.mux, self.writer = mux, writer
        self.pending: set[int] = set()
        self.by_own: dict[int, int] = {}  # the client's request id -> upstream id

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
