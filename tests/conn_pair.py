"""A client codec and a server connection joined in memory: the protocol without sockets."""

from __future__ import annotations

from docteur.guest.connection import ServerConnection
from docteur.guest.protocol import ClientCodec, Data, End, Error, Hello


class Pair:
    """`client` ↔ `server` over bytes handed across by hand.

    `pump()` moves what the server has to send (at most `budget` bytes: a
    slow reader) into the client codec and returns the client's events.
    """

    def __init__(self, app: object, stream: bool = False, **kw: int):
        self.client = ClientCodec()
        self.server = ServerConnection(app, stream=stream, **kw)  # type: ignore[arg-type]
        self.wire = b""  # every byte the server sent

    def send(self, data: bytes) -> None:
        self.server.receive_data(data)

    def request(self, op: str, path: bytes = b"", **kw: object) -> int:
        rid, data = self.client.request(op, "", path, **kw)  # type: ignore[arg-type]
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
