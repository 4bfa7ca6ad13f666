"""What both targets do alike: claim the socket path, serve until a signal, print a file.

The targets (`docteur.vm.targets.unix`, `...microvm`) give a connected protocol client
(`session(config)`) and serve a unix socket (`serve(config, path)`); the code here prints
the file or starts serving, the same way for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import socket
import stat
import sys
from collections.abc import Awaitable, Iterator
from types import ModuleType
from typing import Any

from docteur.cli.errors import HostError
from docteur.cli.log import notice
from docteur.guest.protocol import Hello
from docteur.vm.targets.config import TargetConfig


class SocketPathError(HostError):
    """--socket PATH cannot be served or reached (too long, taken, no directory)."""


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """While serving, SIGINT, SIGTERM and SIGHUP set `stop` (a clean power-off follows);
    before and after, they raise as usual, so an interrupted boot unwinds at once."""
    loop = asyncio.get_running_loop()
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for sig in saved:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            loop.remove_signal_handler(sig)
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, handler)


async def serve_until_stopped(ready_line: str, done: Awaitable[Any]) -> bool:
    """Print the ready line and serve until `done` completes or SIGINT/SIGTERM/SIGHUP
    arrives (see stop_on_signals); True when `done` came first."""
    stop = asyncio.Event()
    finished = asyncio.ensure_future(done)
    stopped = asyncio.create_task(stop.wait())
    try:
        with stop_on_signals(stop):
            print(ready_line, flush=True)
            await asyncio.wait({finished, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        finished.cancel()
        stopped.cancel()
    return finished.done()


SUN_PATH_MAX = 107  # sun_path is 108 bytes, the terminating NUL included


def check_path_length(path: str) -> None:
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise SocketPathError(f"socket path is {size} bytes, unix sockets allow {SUN_PATH_MAX}: {path}")


def claim_socket_path(path: str) -> None:
    """Make `path` ready for a unix server to bind, or raise SocketPathError.

    Only a stale socket (nobody accepts on it) is removed: an existing file of
    another kind is never deleted, and a live server is never taken over."""
    check_path_length(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise SocketPathError(f"cannot serve on {path}: no directory {parent}")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SocketPathError(f"cannot serve on {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a file that is not a socket"
        raise SocketPathError(f"cannot serve on {path}: it exists and is {kind} (not replacing it)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise SocketPathError(f"cannot serve on {path}: {exc.strerror or exc}") from None
    else:
        raise SocketPathError(f"cannot serve on {path}: a server is already listening there")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket: its server is gone


def say_not_writable(config: TargetConfig, hello: Hello | None) -> None:
    """With --rw, one notice per disk the server will not write after all (an image made
    without room for writes, ...): its writes will answer read_only."""
    if not config.writable or hello is None:
        return
    for name in config.blocks:
        why = hello.fields.get(f"writable.{name}", "yes")
        if why != "yes":
            notice(f"docteur: disk {name} is served read-only: {why}", "read-only disk", disk=name, why=why)


class OutputError(HostError):
    """stdout refused the file (a full disk, ...); a closed pipe stays a BrokenPipeError."""


async def print_file(target: ModuleType, config: TargetConfig) -> int:
    """Boot `target` on `config`, write config.filename to stdout, stop."""
    assert config.filename is not None
    out = sys.stdout.buffer
    async with target.session(config) as client:
        try:
            async for chunk in client.stream(config.filename, disk=config.disk):
                out.write(chunk)
            out.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OutputError(f"writing the output: {exc.strerror or exc}") from None
    return 0


