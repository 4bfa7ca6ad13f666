"""Raw protocol clients: the guest's own sans-IO codec (guest.protocol) and nothing of the
host's asyncio client, so that the server is checked independently of it.

One bookkeeping (`RawClient`: requests out, events in, the answer to a request) over three
transports: memory (`Pair`, the server's connection state machine without sockets), a
blocking socket that sends whatever bytes it is told to (`RawSocket`), and the appliance's
asyncio streams (`RawStream`, the microVM tests).
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

from docteur.guest import protocol
from docteur.guest.connection import ServerConnection
from docteur.guest.protocol import ClientCodec, Data, End, Error, Hello

if TYPE_CHECKING:
    from docteur.vm.runtime.appliance import Appliance


class GuestError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class RawClient:
    """The client side of the protocol, without I/O: `request` gives the bytes to send,
    `feed` takes the bytes received, `take` the answer to a request."""

    def __init__(self) -> None:
        self.codec = ClientCodec()
        self.events: list = []

    def request(self, op: str, path: bytes = b"", disk: str = "", **kw: object) -> tuple[int, bytes]:
        return self.codec.request(op, disk, path, **kw)  # type: ignore[arg-type]

    def feed(self, data: bytes) -> list:
        events = self.codec.receive(data)
        self.events += events
        return events

    def answered(self, rid: int) -> bool:
        """Whether request `rid`'s END or ERROR (or the connection's error, id 0) has come."""
        return any(isinstance(e, End | Error) and e.id in (rid, 0) for e in self.events)

    def take(self, rid: int) -> tuple[bytes, object]:
        """(body, last event) of request `rid` taken out of `events`: its END or ERROR once
        answered, else whatever came last (None if nothing)."""
        mine = [e for e in self.events if getattr(e, "id", None) in (rid, 0)]
        self.events = [e for e in self.events if e not in mine]
        return b"".join(e.data for e in mine if isinstance(e, Data)), (mine[-1] if mine else None)


# -- in memory ------------------------------------------------------------------------------


class Pair:
    """`client` ↔ `server` over bytes handed across by hand.

    `pump()` moves what the server has to send (at most `budget` bytes: a
    slow reader) into the client codec and returns the client's events.
    """

    def __init__(self, app: object, stream: bool = False, **kw: int):
        self.raw = RawClient()
        self.client = self.raw.codec
        self.server = ServerConnection(app, stream=stream, **kw)  # type: ignore[arg-type]
        self.wire = b""  # every byte the server sent

    def send(self, data: bytes) -> None:
        self.server.receive_data(data)

    def request(self, op: str, path: bytes = b"", **kw: object) -> int:
        rid, data = self.raw.request(op, path, **kw)
        self.send(data)
        return rid

    def pump(self, budget: int | None = None) -> list:
        return self.client.receive(self.pump_raw(budget))

    def pump_raw(self, budget: int | None = None) -> bytes:
        """What the server sends (up to `budget` bytes), not decoded."""
        out = b""
        while budget is None or len(out) < budget:
            bufs = self.server.data_to_send()
            if not bufs:
                break
            chunk = b"".join(bufs)
            if budget is not None:
                chunk = chunk[: budget - len(out)]
            self.server.sent(len(chunk))
            out += chunk
        self.wire += out
        return out


def ask(app: object, op: str, path: bytes, **kw: object) -> tuple[bytes, End | Error]:
    """One request answered in memory: (the body, the END or ERROR)."""
    pair = Pair(app)
    pair.request(op, path, **kw)
    events = [e for e in pair.pump() if not isinstance(e, Hello)]
    body = b"".join(e.data for e in events if isinstance(e, Data))
    last = events[-1]
    assert isinstance(last, End | Error)
    return body, last


# -- over a unix socket ------------------------------------------------------------------------


class RawSocket(RawClient):
    """A blocking client on a unix socket that sends whatever bytes it is told to."""

    def __init__(self, path: str):
        super().__init__()
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(10)
        self.s.connect(path)
        self.closed = False
        self._fill(lambda: self.codec.hello is not None)

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def request(self, op: str, path: bytes = b"", disk: str = "", **kw: object) -> int:  # type: ignore[override]
        rid, data = super().request(op, path, disk, **kw)
        self.send(data)
        return rid

    def _fill(self, done) -> None:  # type: ignore[no-untyped-def]
        while not done():
            data = self.s.recv(1 << 20)
            if not data:
                self.closed = True
                return
            self.feed(data)

    def until_end(self, rid: int) -> tuple[bytes, object]:
        """(body, END or ERROR) of request `rid`, or what came if the server hung up first."""
        self._fill(lambda: self.answered(rid))
        return self.take(rid)

    def until_closed(self) -> None:
        with contextlib.suppress(protocol.ProtocolError, ConnectionResetError):
            self._fill(lambda: False)

    def close(self) -> None:
        self.s.close()


# -- over the appliance's port -----------------------------------------------------------------


class RawStream(RawClient):
    """One request at a time over a booted appliance's streams (`make_client=None`)."""

    def __init__(self, vm: Appliance):
        super().__init__()
        assert vm.reader is not None and vm.writer is not None
        self.reader, self.writer = vm.reader, vm.writer
        self.codec.receive(vm.hello)  # the greeting the appliance already read

    async def call(self, op: str, disk: str = "docteur", path: bytes = b"") -> tuple[object, bytes]:
        """(END's result, the body); an ERROR raises GuestError."""
        rid, frame = self.request(op, path, disk)
        self.writer.write(frame)
        await self.writer.drain()
        while not self.answered(rid):
            data = await self.reader.read(1 << 20)
            if not data:
                raise ConnectionError("the guest's port closed")
            self.feed(data)
        body, last = self.take(rid)
        if isinstance(last, Error):
            raise GuestError(last.code, last.message)
        return last.result, body

    async def get(self, path: bytes, disk: str = "docteur") -> bytes:
        return (await self.call("get", disk, path))[1]
