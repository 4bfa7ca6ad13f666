"""The guest server: a poll loop over one byte stream or a unix socket.

No asyncio (0.6 s to import in the VM). Each connection answers its
requests in order; a streamed reply is pulled one chunk at a time only
while the connection's output is below a high-water mark, so memory stays
bounded by connections × (mark + one chunk). A client that breaks the
framing loses its own connection, nobody else's.

    python -m docteur.guest --block NAME=PATH ... --verify MODE
                            (--stdio | --listen UNIX_PATH | --device PATH)
"""

from __future__ import annotations

import errno
import os
import select
import sys
import time

# _signal, not signal: signal's enums cost ~0.1 s of imports in the VM.
from _signal import SIGTERM, getsignal, signal
from collections import deque
from collections.abc import Iterator

from .boot import boot, log, parse_block
from .defaults import DEFAULT_VERIFY, VERIFY_MODES
from .protocol import (
    BadRequest,
    Cancel,
    Greet,
    ProtocolError,
    Request,
    ServerCodec,
)
from .service import Service

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is dear to import in the VM
    from typing import Any

HIGH_WATER = 1 << 20
MAX_QUEUED = 256  # requests waiting per connection before we stop reading it
READ_SIZE = 1 << 16
IOV_MAX = 64
_IN = select.POLLIN | select.POLLPRI
_OUT = select.POLLOUT
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class Conn:
    """One client: a socket, or the single stream (stdio, a device)."""

    def __init__(self, rfd: int, wfd: int, service: Service, stream: bool):
        self.rfd, self.wfd = rfd, wfd
        self.service = service
        self.stream = stream  # a reset, not a close, ends a session
        self.codec = ServerCodec()
        self.out: deque[bytes | memoryview] = deque()
        self.out_bytes = 0
        self.queue: deque[Request | BadRequest] = deque()
        self.current: tuple[int, Iterator] | None = None
        self.cancelled: set[int] = set()
        self.closing = False  # flush what is queued, then close
        self.eof = False
        self.gone = False  # a write failed: the peer left
        self.paused_until = 0.0
        self.push(service.hello())

    # -- output ---------------------------------------------------------------
    def push(self, *bufs: bytes) -> None:
        for b in bufs:
            if b:
                self.out.append(b)
                self.out_bytes += len(b)

    def produce(self) -> None:
        """Pull replies until the output reaches the high-water mark."""
        while self.out_bytes < HIGH_WATER and not self.closing:
            if self.current is None:
                if not self.queue:
                    return
                req = self.queue.popleft()
                if req.id in self.cancelled:
                    self.cancelled.discard(req.id)
                    self.push(ServerCodec.error(req.id, "cancelled", "cancelled by the client"))
                    continue
                reply = self.service.handle(req)
                if isinstance(reply, bytes):
                    self.push(reply)
                    continue
                self.current = (req.id, reply)
            rid, frames = self.current
            if rid in self.cancelled:
                self.cancelled.discard(rid)
                self.current = None
                self.push(ServerCodec.error(rid, "cancelled", "cancelled by the client"))
                continue
            item = next(frames, None)
            if item is None:
                self.current = None
            elif isinstance(item, tuple):
                self.push(*item)
            else:
                self.push(item)

    @property
    def has_work(self) -> bool:
        return not self.closing and (self.current is not None or bool(self.queue))

    def flush(self) -> bool:
        """Write what the fd takes now; False (and `gone`) when the peer is gone."""
        while self.out:
            bufs = [self.out[i] for i in range(min(IOV_MAX, len(self.out)))]
            try:
                n = os.writev(self.wfd, bufs)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                self.gone = True
                return False
            self.out_bytes -= n
            while n:
                head = self.out[0]
                if n >= len(head):
                    n -= len(head)
                    self.out.popleft()
                else:
                    self.out[0] = memoryview(head)[n:]
                    n = 0
        return True

    # -- input ----------------------------------------------------------------
    def receive(self, data: bytes) -> None:
        try:
            events = self.codec.receive(data)
        except ProtocolError as exc:
            self.fail(exc)
            return
        for event in events:
            if isinstance(event, Greet):
                self.restart()
            elif isinstance(event, Cancel):
                if (self.current and self.current[0] == event.id) or any(
                    r.id == event.id for r in self.queue
                ):
                    self.cancelled.add(event.id)
            else:
                self.queue.append(event)

    def fail(self, exc: ProtocolError) -> None:
        """The framing is broken: say why, drop the session."""
        self.drop_work()
        self.push(ServerCodec.error(exc.request_id, exc.code, str(exc)))
        if self.stream:
            self.codec.resync()  # wait for the host's next GREET
            self.receive(b"")  # which may already be buffered
        else:
            self.closing = True

    def drop_work(self) -> None:
        self.queue.clear()
        self.cancelled.clear()
        if self.current is not None:
            close = getattr(self.current[1], "close", None)
            if close:
                close()
            self.current = None

    def restart(self) -> None:
        """A (new) host session on the stream: forget the old one, greet again."""
        self.drop_work()
        # A frame already half-written must be finished to keep the framing.
        partial = self.out[0] if self.out and isinstance(self.out[0], memoryview) else None
        self.out.clear()
        self.out_bytes = 0
        if partial is not None:
            self.push(partial)
        self.push(self.service.hello())

    @property
    def wants_input(self) -> bool:
        return (
            not self.closing
            and not self.eof
            and len(self.queue) < MAX_QUEUED
            and time.monotonic() >= self.paused_until
        )

    @property
    def idle(self) -> bool:
        return not self.out and not self.queue and self.current is None


class Server:
    def __init__(self, service: Service):
        self.service = service
        self.conns: dict[int, Conn] = {}  # by rfd
        self.listener: Any = None  # a listening socket.socket
        self.socks: dict[int, Any] = {}
        self.stop = False

    # -- set-up ---------------------------------------------------------------
    def add_stream(self, rfd: int, wfd: int) -> None:
        for fd in {rfd, wfd}:
            os.set_blocking(fd, False)
        self.conns[rfd] = Conn(rfd, wfd, self.service, stream=True)

    def listen(self, path: str) -> None:
        import socket  # only here: the VM serves a device
        import stat

        # Replace only a leftover socket: never delete a file that is not one.
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(64)
        sock.setblocking(False)
        self.listener = sock

    def accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: keep serving the others
                log(f"accept failed: {exc}")
                return
            sock.setblocking(False)
            fd = sock.fileno()
            self.socks[fd] = sock
            self.conns[fd] = Conn(fd, fd, self.service, stream=False)

    def close(self, conn: Conn) -> None:
        conn.drop_work()
        self.conns.pop(conn.rfd, None)
        sock = self.socks.pop(conn.rfd, None)
        if sock is not None:
            sock.close()

    # -- the loop ---------------------------------------------------------------
    def run(self) -> None:
        poller = select.poll()
        while not self.stop and (self.conns or self.listener is not None):
            busy = False  # someone emptied its output and has more to send
            for conn in list(self.conns.values()):
                for _ in range(8):  # a few rounds each, then let the others in
                    conn.produce()
                    if not conn.flush() or conn.out or not conn.has_work:
                        break
                if conn.gone:
                    self.on_gone(conn)
                elif (conn.closing and not conn.out) or (conn.eof and conn.idle):
                    self.close(conn)
                elif not conn.out and conn.has_work:
                    busy = True
            if not self.conns and self.listener is None:
                return
            if self.service.shutdown_requested and all(not c.out for c in self.conns.values()):
                return
            fds = self.register(poller)
            timeout = 0 if busy else 50 if any(c.paused_until for c in self.conns.values()) else None
            try:
                events = poller.poll(timeout)
            except InterruptedError:
                continue
            for fd, _ in fds:
                poller.unregister(fd)
            self.dispatch(events)

    def register(self, poller: Any) -> list[tuple[int, int]]:
        masks: dict[int, int] = {}
        if self.listener is not None:
            masks[self.listener.fileno()] = _IN
        now = time.monotonic()
        for conn in self.conns.values():
            if conn.paused_until and now >= conn.paused_until:
                conn.paused_until = 0.0
            if conn.wants_input:
                masks[conn.rfd] = masks.get(conn.rfd, 0) | _IN
            if conn.out:
                masks[conn.wfd] = masks.get(conn.wfd, 0) | _OUT
        for fd, mask in masks.items():
            poller.register(fd, mask)
        return list(masks.items())

    def dispatch(self, events: list[tuple[int, int]]) -> None:
        for fd, ev in events:
            if self.listener is not None and fd == self.listener.fileno():
                self.accept()
                continue
            conn = self.conns.get(fd)
            if conn is None:  # the write side of a stream (stdout)
                continue
            if ev & _IN or ev & _GONE:
                self.read(conn)

    def read(self, conn: Conn) -> None:
        if not conn.wants_input:
            return
        try:
            data = os.read(conn.rfd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.EIO):
                data = b""
            else:
                raise
        if data:
            conn.receive(data)
        elif conn.stream and conn.rfd != 0:
            # A serial port reads EOF while no host is attached: drop the session
            # and look again shortly (a new host greets with GREET).
            conn.drop_work()
            conn.paused_until = time.monotonic() + 0.05
        else:
            conn.eof = True  # stdin closed or the client left: finish, then close

    def on_gone(self, conn: Conn) -> None:
        conn.gone = False
        if conn.stream and conn.rfd != 0:
            conn.drop_work()
            conn.out.clear()
            conn.out_bytes = 0
            conn.paused_until = time.monotonic() + 0.05
            conn.codec.resync()
        else:
            self.close(conn)


USAGE = (
    "usage: python -m docteur.guest --block NAME=PATH ... [--verify full|pack|none]\n"
    "                               (--stdio | --listen UNIX_PATH | --device PATH)"
)


class Args:
    """The command line (parsed by hand: argparse costs imports in the VM)."""

    def __init__(self, argv: list[str]):
        self.block: list[str] = []
        self.verify = DEFAULT_VERIFY
        self.stdio = False
        self.listen: str | None = None
        self.device: str | None = None
        it = iter(argv)
        for arg in it:
            opt, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            if opt in ("-h", "--help"):
                raise ValueError(USAGE)
            if opt == "--stdio" and not eq:
                self.stdio = True
                continue
            if opt not in ("--block", "--verify", "--listen", "--device"):
                raise ValueError(f"unknown argument {arg!r}\n{USAGE}")
            if not eq:
                value = next(it, None)
                if value is None:
                    raise ValueError(f"{opt} needs a value\n{USAGE}")
            if opt == "--block":
                self.block.append(value)
            elif opt == "--verify":
                if value not in VERIFY_MODES:
                    raise ValueError(f"--verify must be one of {', '.join(VERIFY_MODES)}")
                self.verify = value
            else:
                setattr(self, opt[2:], value)
        if sum((self.stdio, self.listen is not None, self.device is not None)) != 1:
            raise ValueError(f"give one of --stdio, --listen, --device\n{USAGE}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = Args(sys.argv[1:] if argv is None else argv)
        blocks = [parse_block(b) for b in args.block]
    except ValueError as exc:
        log(str(exc))
        return 2
    service = boot(blocks, args.verify)
    server = Server(service)
    previous = getsignal(SIGTERM)

    def on_term(signum: int, frame: object) -> None:
        server.stop = True
        raise KeyboardInterrupt

    try:
        signal(SIGTERM, on_term)
    except ValueError:  # not the main thread: the caller handles signals
        previous = None
    try:
        if args.stdio:
            server.add_stream(0, 1)
        elif args.device:
            fd = os.open(args.device, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
            server.add_stream(fd, fd)
        else:
            server.listen(args.listen)
            log(f"listening on {args.listen}")
        server.run()
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        log(f"fatal: {exc}")
        return 1
    finally:
        for conn in list(server.conns.values()):
            server.close(conn)
        if server.listener is not None:
            server.listener.close()
            if args.listen and os.path.exists(args.listen):
                os.unlink(args.listen)
        for disk in service.disks.values():
            disk.image.close()
        if previous is not None:
            signal(SIGTERM, previous)
    return 0
