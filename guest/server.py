"""The guest server: a poll loop over one byte stream or a unix socket.

No asyncio (0.6 s to import in the VM). This module only moves bytes
between fds and each client's sans-IO session (`connection`), which
decides what to answer, in which order, and when to stop reading (its
back-pressure keeps memory bounded by connections × (mark + one chunk)).
A client that breaks the framing loses its own connection, nobody else's;
a shortage of fds or memory pauses accepting, never the connected clients.

    python -m docteur.guest --block NAME=PATH ... --verify MODE [--rw[=NAME,...]]
                            (--stdio | --listen UNIX_PATH | --device PATH)

--rw serves the disks (all, or those named) writable: protocol version 2's
writes (PROTOCOL.md), the server the image's one writer while it runs.
"""

from __future__ import annotations

import errno
import os
import select
import sys
import time

# _signal, not signal: signal's enums cost ~0.1 s of imports in the VM.
from _signal import SIGTERM, getsignal, signal

from .boot import boot, log, parse_block
from .connection import CLOSED, ServerConnection
from .defaults import DEFAULT_VERIFY, VERIFY_MODES
from .service import Service

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is dear to import in the VM
    from typing import Any

READ_SIZE = 1 << 16
# Bytes one connection may write per turn of the loop before the others' turn.
FLUSH_BYTES = 1 << 20
# accept() failing for lack of resources (fds, buffers, memory): retrying at
# once fails again, so the listener is left alone for a growing pause.
_ACCEPT_SHORTAGE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX = 0.01, 1.0
LOG_INTERVAL = 1.0  # at most one line a second about a repeated failure
_IN = select.POLLIN | select.POLLPRI
_OUT = select.POLLOUT
_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class Conn:
    """One client's fds and its sans-IO session (`connection`)."""

    def __init__(self, rfd: int, wfd: int, service: Service, stream: bool, sock: Any = None):
        self.rfd, self.wfd = rfd, wfd
        self.sock = sock  # the socket object that owns rfd (None for a stream)
        self.session = ServerConnection(service, stream=stream)
        self.paused_until = 0.0  # a serial port with no host: look again later

    def flush(self) -> bool:
        """Write what the fd takes now, up to FLUSH_BYTES (then the others'
        turn); False when the peer is gone.

        A short write does not mean the fd is full: a virtio-serial port takes
        at most 32 KiB per write (the guest kernel's cap), so only EAGAIN sends
        us back to poll. Going round the poll loop after every 32 KiB cost more
        interpreter time under TCG than the writes themselves."""
        session = self.session
        budget = FLUSH_BYTES
        while budget > 0:
            bufs = session.data_to_send()  # produces replies up to the high-water mark
            if not bufs:
                return True
            try:
                n = os.writev(self.wfd, bufs)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError:
                return False
            if not n:
                return True
            session.sent(n)
            budget -= n
        return True

    @property
    def wants_input(self) -> bool:
        return self.session.wants_input and time.monotonic() >= self.paused_until


class RateLimitedLog:
    """One line per interval at most; the lines held back are counted in the next."""

    def __init__(self, interval: float = LOG_INTERVAL):
        self.interval = interval
        self.last = -interval
        self.suppressed = 0

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        if now - self.last < self.interval:
            self.suppressed += 1
            return
        if self.suppressed:
            message += f" ({self.suppressed} more since the last report)"
        log(message)
        self.last, self.suppressed = now, 0


class Server:
    def __init__(self, service: Service):
        self.service = service
        self.conns: dict[int, Conn] = {}  # by rfd
        self.listener: Any = None  # a listening socket.socket
        self.stop = False
        self.accept_paused_until = 0.0
        self.accept_pause = 0.0  # the current pause, doubled on each failure in a row
        self.accept_log = RateLimitedLog()

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
        sock.listen(max_backlog(socket.SOMAXCONN))
        sock.setblocking(False)
        self.listener = sock

    def accept(self) -> None:
        assert self.listener is not None
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionAbortedError:  # the client left while queued: next
                continue
            except OSError as exc:
                # Out of fds or memory: the pending client stays queued and the
                # listener stays readable, so polling it again at once would spin.
                # Keep serving the connected clients; try again after a pause.
                if exc.errno in _ACCEPT_SHORTAGE:
                    self.accept_pause = min(
                        max(self.accept_pause * 2, ACCEPT_PAUSE_MIN), ACCEPT_PAUSE_MAX
                    )
                else:
                    self.accept_pause = ACCEPT_PAUSE_MIN
                self.accept_paused_until = time.monotonic() + self.accept_pause
                self.accept_log(f"accept failed: {exc}; retrying in {self.accept_pause:g} s")
                return
            sock.setblocking(False)
            fd = sock.fileno()
            self.conns[fd] = Conn(fd, fd, self.service, stream=False, sock=sock)
        self.accept_pause = 0.0

    def close(self, conn: Conn) -> None:
        conn.session.close()
        self.conns.pop(conn.rfd, None)
        if conn.sock is not None:
            conn.sock.close()

    # -- the loop ---------------------------------------------------------------
    def run(self) -> None:
        poller = select.poll()
        while not self.stop and (self.conns or self.listener is not None):
            busy = False  # someone emptied its output and has more to send
            for conn in list(self.conns.values()):
                session = conn.session
                if not conn.flush():
                    self.on_gone(conn)
                elif session.state == CLOSED:
                    self.close(conn)
                elif not session.has_output and session.has_work:
                    busy = True
            if not self.conns and self.listener is None:
                return
            if self.service.shutdown_requested and all(
                not c.session.has_output for c in self.conns.values()
            ):
                return
            fds = self.register(poller)
            try:
                events = poller.poll(self.poll_timeout(busy))
            except InterruptedError:
                continue
            for fd, _ in fds:
                poller.unregister(fd)
            self.dispatch(events)

    def poll_timeout(self, busy: bool) -> int | None:
        """Milliseconds until something paused wants looking at again (None: never)."""
        if busy:
            return 0
        wakes = [c.paused_until for c in self.conns.values() if c.paused_until]
        if self.listener is not None and self.accept_paused_until:
            wakes.append(self.accept_paused_until)
        if not wakes:
            return None
        return max(0, int((min(wakes) - time.monotonic()) * 1000) + 1)

    def register(self, poller: Any) -> list[tuple[int, int]]:
        masks: dict[int, int] = {}
        now = time.monotonic()
        if self.listener is not None:
            if self.accept_paused_until and now >= self.accept_paused_until:
                self.accept_paused_until = 0.0
            if not self.accept_paused_until:
                masks[self.listener.fileno()] = _IN
        for conn in self.conns.values():
            if conn.paused_until and now >= conn.paused_until:
                conn.paused_until = 0.0
            if conn.wants_input:
                masks[conn.rfd] = masks.get(conn.rfd, 0) | _IN
            if conn.session.has_output:
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
        if not data and conn.session.stream and conn.rfd != 0:
            # A serial port reads EOF while no host is attached: drop the session
            # and look again shortly (a new host greets with GREET).
            conn.session.abandon()
            conn.paused_until = time.monotonic() + 0.05
        else:
            conn.session.receive_data(data)  # b"": stdin closed or the client left

    def on_gone(self, conn: Conn) -> None:
        """A write failed: the peer is gone."""
        if conn.session.stream and conn.rfd != 0:
            conn.session.reset()
            conn.paused_until = time.monotonic() + 0.05
        else:
            self.close(conn)


def max_backlog(default: int) -> int:
    """The system's largest listen backlog: a burst of clients must not find it full."""
    try:
        with open("/proc/sys/net/core/somaxconn", "rb") as f:
            return max(int(f.read()), default)
    except (OSError, ValueError):
        return default


USAGE = (
    "usage: python -m docteur.guest --block NAME=PATH ... [--verify full|pack|none] [--rw[=NAME,...]]\n"
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
        self.rw: list[str] | None = None  # the disks served writable ([] = all)
        it = iter(argv)
        for arg in it:
            opt, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
            if opt in ("-h", "--help"):
                raise ValueError(USAGE)
            if opt == "--stdio" and not eq:
                self.stdio = True
                continue
            if opt == "--rw":
                names = [n for n in value.split(",") if n]
                if eq and not names:
                    raise ValueError(f"--rw= wants disk names (NAME,...)\n{USAGE}")
                self.rw = (self.rw or []) + names
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

    def writable(self, blocks: list[tuple[str, str]]) -> set[str]:
        """The names of the disks to serve writable."""
        names = {name for name, _ in blocks}
        if self.rw is None:
            return set()
        unknown = sorted(set(self.rw) - names)
        if unknown:
            raise ValueError(f"--rw names no disk given with --block: {', '.join(unknown)}")
        return set(self.rw) or names


def main(argv: list[str] | None = None) -> int:
    try:
        args = Args(sys.argv[1:] if argv is None else argv)
        blocks = [parse_block(b) for b in args.block]
        writable = args.writable(blocks)
    except ValueError as exc:
        log(str(exc))
        return 2
    service = boot(blocks, args.verify, writable)
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
        service.close()
        if previous is not None:
            signal(SIGTERM, previous)
    return 0
