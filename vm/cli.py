"""`docteur run` and `docteur query` (added to the builder's `docteur` parser).

Both targets (`docteur.vm.unix`, `docteur.vm.microvm`) give a connected
protocol client (`session(args)`) and serve a unix socket (`serve(args,
path)`); the code here prints the file or starts serving, the same way
for both.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import importlib
import os
import signal
import socket
import stat
import sys
from collections.abc import Awaitable, Iterator
from types import ModuleType
from typing import Any

from docteur.guest.defaults import DEFAULT_VERIFY, VERIFY_MODES
from docteur.guest.protocol import DEFAULT_DISK
from docteur.vm.client import Client, ClientError, new_runner, run
from docteur.vm.qemu import ACCELS

TARGETS = ("unix", "microvm")


def add_commands(subparsers: Any) -> None:
    from docteur.builder.cli import _add_globals  # --log-format and -v after the command too

    _add_globals(_add_run(subparsers), sub=True)
    _add_globals(_add_query(subparsers), sub=True)


def _add_run(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "run",
        help="serve an image (in a microVM, or as a host process)",
        description="Boot the appliance on IMAGE (--block NAME=IMAGE for several disks) and "
        "print one file (--filename) or serve the protocol on a unix socket (--socket).",
    )
    p.add_argument("image", nargs="?", metavar="IMAGE", help="same as --block docteur=IMAGE")
    p.add_argument("--target", choices=TARGETS, default="microvm",
                   help="microvm (QEMU, default) or unix (a host process)")  # fmt: skip
    p.add_argument("--block", action="append", default=[], metavar="NAME=IMAGE",
                   help="a named disk (repeatable)")  # fmt: skip
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--filename", metavar="PATH", help="print this file and exit")
    what.add_argument("--socket", metavar="PATH", help="serve on this unix socket until Ctrl-C")
    p.add_argument("--disk", default=DEFAULT_DISK, help="the disk --filename reads (docteur)")
    p.add_argument("--verify", choices=VERIFY_MODES, default=DEFAULT_VERIFY,
                   help="boot verification (default pack)")  # fmt: skip
    g = p.add_argument_group("microvm target")
    g.add_argument("--accel", choices=ACCELS, default="auto",
                   help="kvm only where the CPU has vmx/svm; tcg otherwise (default: auto)")  # fmt: skip
    g.add_argument("--memory", type=int, default=128, metavar="MiB", help="guest memory (128)")
    g.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                   help="boot timeout, verification included (60)")  # fmt: skip
    p.set_defaults(func=run_main)
    return p


def _add_query(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "query",
        help="ask a served image (no command: an interactive console)",
        description="Commands: get PATH [OFFSET [LENGTH]], ls [PATH], stat PATH, exists PATH, "
        "size PATH, digest PATH, mtime PATH, info, ping. Without one: a console.",
    )
    p.add_argument("--socket", required=True, metavar="PATH", help="the socket `docteur run` serves")
    p.add_argument("--disk", default=DEFAULT_DISK, help="the disk to ask (docteur)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND ...")
    p.set_defaults(func=query_main)
    return p


def _target(name: str) -> ModuleType:
    if name == "unix":
        return importlib.import_module("docteur.vm.unix")
    try:
        return importlib.import_module("docteur.vm.microvm")
    except ImportError as exc:
        raise ClientError(f"the microvm target is not available ({exc}); use --target unix") from None


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


def block_specs(args: argparse.Namespace, error: type[Exception]) -> dict[str, str]:
    """--block NAME=IMAGE (repeatable) and a bare IMAGE (= --block docteur=IMAGE);
    a bad combination raises `error` (the target's own error class)."""
    blocks: dict[str, str] = {}
    for spec in getattr(args, "block", None) or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise error(f"--block {spec}: expected NAME=IMAGE")
        if name in blocks:
            raise error(f"--block {name} given twice")
        blocks[name] = path
    image = getattr(args, "image", None)
    if image:
        if DEFAULT_DISK in blocks:
            raise error(f"IMAGE and --block {DEFAULT_DISK}=... both given")
        blocks = {DEFAULT_DISK: image, **blocks}
    if not blocks:
        raise error("no image: give IMAGE or --block NAME=IMAGE")
    return blocks


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


def _check_path_length(path: str) -> None:
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise ClientError(f"socket path is {size} bytes, unix sockets allow {SUN_PATH_MAX}: {path}")


def claim_socket_path(path: str) -> None:
    """Make `path` ready for a unix server to bind, or raise ClientError.

    Only a stale socket (nobody accepts on it) is removed: an existing file of
    another kind is never deleted, and a live server is never taken over."""
    _check_path_length(path)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ClientError(f"cannot serve on {path}: no directory {parent}")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ClientError(f"cannot serve on {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a file that is not a socket"
        raise ClientError(f"cannot serve on {path}: it exists and is {kind} (not replacing it)")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError as exc:
        if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise ClientError(f"cannot serve on {path}: {exc.strerror or exc}") from None
    else:
        raise ClientError(f"cannot serve on {path}: a server is already listening there")
    finally:
        probe.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket: its server is gone


def _interrupted(exc: KeyboardInterrupt) -> int:
    from docteur.builder.errors import Terminated

    if isinstance(exc, Terminated):  # SIGTERM/SIGHUP, once everything is cleaned up
        _fail("terminated")
        return exc.status
    _fail("interrupted")
    return 130


def _fail(message: str) -> int:
    from docteur.builder.log import error_line

    error_line(message)
    return 1


def _describe(target: ModuleType, exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror and not str(exc).startswith("[Errno"):
        return str(exc)  # asyncio's own wording names the address
    if isinstance(exc, OSError) and exc.strerror:  # not "[Errno 28] ..."
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    describe = getattr(target, "describe", None)
    return describe(exc) if callable(describe) else str(exc)


def run_main(args: argparse.Namespace) -> int:
    try:
        target = _target(args.target)
    except ClientError as exc:
        return _fail(str(exc))
    try:
        if args.socket:
            return run(target.serve(args, args.socket))
        return run(_print_file(target, args))
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except BrokenPipeError:
        return 0
    except (ClientError, OSError) as exc:
        return _fail(_describe(target, exc))
    except Exception as exc:  # the target's own errors (ApplianceError, ...): one line
        if type(exc).__module__.startswith("docteur."):
            return _fail(_describe(target, exc))
        raise


async def _print_file(target: ModuleType, args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    async with target.session(args) as client:
        try:
            async for chunk in client.stream(args.filename, disk=args.disk):
                out.write(chunk)
            out.flush()
        except BrokenPipeError:
            raise
        except OSError as exc:  # stdout on a full disk, ...
            raise ClientError(f"writing the output: {exc.strerror or exc}") from None
    return 0


def query_main(args: argparse.Namespace) -> int:
    from docteur.vm.console import UsageError, console, execute

    argv = list(args.command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    runner = new_runner()
    try:
        _check_path_length(args.socket)  # connect() would say "No such file or directory"
        with runner:
            client = runner.run(Client.open_unix(args.socket, timeout=args.timeout, disk=args.disk))
            try:
                if not argv:
                    return console(runner, client)
                runner.run(execute(client, argv, sys.stdout.buffer))
                return 0
            finally:
                with contextlib.suppress(Exception):
                    runner.run(client.close())
    except KeyboardInterrupt as exc:
        return _interrupted(exc)
    except BrokenPipeError:
        return 0
    except (ClientError, UsageError) as exc:
        return _fail(str(exc))
