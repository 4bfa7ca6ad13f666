"""A TCP server on loopback that stalls: it accepts and never answers, or relays to a real
server until some bytes went back to the client, then goes silent."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator


class StallingRelay:
    """Listens on loopback. Without `upstream`, accepts and never sends a byte. With it,
    relays each connection to 127.0.0.1:upstream, but only the first `budget` bytes
    (over all connections) go back to the client: then it goes silent, the connection
    held open. `forwarded` counts what the client got."""

    def __init__(self, upstream: int | None = None, budget: int = 0) -> None:
        self.upstream = upstream
        self.budget = budget
        self.forwarded = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._start(self._accept)

    def _start(self, target, *args: object) -> None:  # type: ignore[no-untyped-def]
        t = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._socks.append(client)
            if self.upstream is None:
                self._start(self._swallow, client)
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self._socks.append(server)
            self._start(self._pipe, client, server, False)
            self._start(self._pipe, server, client, True)

    @staticmethod
    def _swallow(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    def _pipe(self, src: socket.socket, dst: socket.socket, limited: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if limited:
                    with self._lock:
                        data = data[: self.budget - self.forwarded]
                        self.forwarded += len(data)
                    if not data:
                        return  # silent from now on; the connection stays open
                dst.sendall(data)
            if not limited:
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Wake every thread of the relay and wait for it: a thread left blocked on a
        closed socket would read from whatever socket next gets its descriptor."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self._threads[0].join(10)  # the accepting thread: no new connection after it
        with self._lock:
            socks, threads = list(self._socks), self._threads[1:]
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(10)
        for s in [self.listener, *socks]:
            s.close()


@contextlib.contextmanager
def stalling_relay(upstream: int | None = None, budget: int = 0) -> Iterator[StallingRelay]:
    relay = StallingRelay(upstream, budget)
    try:
        yield relay
    finally:
        relay.close()
