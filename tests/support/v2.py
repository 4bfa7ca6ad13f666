"""Protocol version 2 in tests: a writable image served in memory, and a client
session upgraded to version 2 that writes through the guest's own codec."""

from __future__ import annotations

import shutil
from pathlib import Path

from docteur.guest.boot import boot
from docteur.guest.protocol import Data, End, Error, Hello, decode_log
from docteur.guest.service import Service
from docteur.guest.values import CommitArgs, LogEntry, PutArgs, RenameArgs
from tests.support.protocol import Pair, RawSocket
from tests.support.writes import made

FILES = {"README.md": b"hello\n", "d/a.txt": b"a\n", "d/e/b.txt": b"b\n", "run.sh": b"#!/bin/sh\n",
         "x/e/c.txt": b"c\n"}  # fmt: skip


def writable_image(base: Path, tmp: Path, capacity: str = "16M", name: str = "w.img") -> Path:
    """A fresh copy (in `tmp`) of an image of FILES with room for writes, made once in `base`."""
    master = base / f"{capacity}-{name}"
    if not master.exists():
        made(base, FILES, capacity, name=f"{capacity}-{name}")
    copy = tmp / name
    shutil.copyfile(master, copy)
    return copy


_SERVED: list[Service] = []


def serve(image: Path, rw: bool = True) -> Service:
    """The service `python -m docteur.guest --block docteur=IMAGE [--rw]` runs (closed by
    `close_served`: a writable one holds the image's writer lock)."""
    service = boot([("docteur", str(image))], "pack", {"docteur"} if rw else ())
    _SERVED.append(service)
    return service


def close_served() -> None:
    while _SERVED:
        _SERVED.pop().close()


class Session:
    """One client connection in memory, upgraded to version 2."""

    def __init__(self, service: Service, stream: bool = False, version: int = 2, **kw: int):
        self.pair = Pair(service, stream=stream, **kw)
        [first] = self.pair.pump()
        assert isinstance(first, Hello) and first.version == 1
        self.hello = first
        if version == 2:
            self.pair.send(self.pair.client.upgrade(2))
            [self.hello] = self.pair.pump()
            assert self.hello.version == 2

    @property
    def server(self):  # type: ignore[no-untyped-def]
        return self.pair.server

    def send(self, data: bytes) -> None:
        self.pair.send(data)

    def start(self, op: str, path: bytes = b"", args: object = None, **kw: object) -> int:
        rid, data = self.pair.raw.request(op, path, args=args, **kw)
        self.send(data)
        return rid

    def answer(self, rid: int) -> tuple[bytes, End | Error]:
        self.pair.raw.events += self.pair.pump()
        body, last = self.pair.raw.take(rid)
        assert isinstance(last, End | Error), f"no answer to {rid}: {last}"
        return body, last

    def call(self, op: str, path: bytes = b"", args: object = None, **kw: object) -> End | Error:
        return self.answer(self.start(op, path, args, **kw))[1]

    def ok(self, op: str, path: bytes = b"", args: object = None, **kw: object) -> object:
        """The END result of a request that must succeed."""
        last = self.call(op, path, args, **kw)
        assert isinstance(last, End), last
        return last.result

    def error(self, op: str, path: bytes = b"", args: object = None, **kw: object) -> Error:
        last = self.call(op, path, args, **kw)
        assert isinstance(last, Error), last
        return last

    def get(self, path: bytes) -> bytes:
        body, last = self.answer(self.start("get", path))
        assert isinstance(last, End), last
        return body

    def put(self, path: bytes, data: bytes, mode: int = 0o100644, commit: CommitArgs | None = None,
            piece: int = 1 << 16) -> End | Error:  # fmt: skip
        rid = self.start("put", path, PutArgs(len(data), mode, commit))
        for at in range(0, len(data), piece):
            self.send(self.pair.client.chunk(rid, data[at : at + piece]))
        return self.answer(rid)[1]

    def rename(self, source: bytes, dest: bytes, commit: CommitArgs | None = None) -> End | Error:
        return self.call("rename", source, RenameArgs(dest, commit))

    def log(self, limit: int | None = None) -> list[LogEntry]:
        rid = self.start("log", args=limit)
        self.pair.raw.events += self.pair.pump()
        mine = [e for e in self.pair.raw.events if getattr(e, "id", None) == rid]
        self.pair.raw.take(rid)
        assert isinstance(mine[-1], End), mine[-1]
        return [entry for e in mine if isinstance(e, Data) for entry in decode_log(e.data)]

    def close(self) -> None:
        """The client goes away (EOF, then the driver closes the connection)."""
        self.send(b"")
        self.pair.pump()
        self.server.close()


def upgraded_socket(path: str) -> RawSocket:
    """A blocking client on the server's socket, in a version-2 session."""
    raw = RawSocket(path)
    raw.send(raw.codec.upgrade(2))
    raw._fill(lambda: raw.codec.version == 2)
    return raw


def call(raw: RawSocket, op: str, path: bytes = b"", args: object = None) -> End | Error:
    """One request over a socket: its END or ERROR."""
    _, last = raw.until_end(raw.request(op, path, args=args))
    assert isinstance(last, End | Error), last
    return last


def put(raw: RawSocket, path: bytes, data: bytes, mode: int = 0o100644,
        commit: CommitArgs | None = None) -> End | Error:  # fmt: skip
    rid = raw.request("put", path, args=PutArgs(len(data), mode, commit))
    for at in range(0, len(data), 1 << 18):
        raw.send(raw.codec.chunk(rid, data[at : at + (1 << 18)]))
    _, last = raw.until_end(rid)
    assert isinstance(last, End | Error), last
    return last
