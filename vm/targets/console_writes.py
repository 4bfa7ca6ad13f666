"""The write commands of `docteur query` and of its console (protocol v2).

    put PATH FILE [-x | --mode MODE]    rm PATH    mv SOURCE DEST
        outside a batch each is one commit: [-m MSG] [--author 'NAME <EMAIL>'] [--expect HEAD]
    begin    commit [-m MSG] [--author ...] [--expect HEAD]    abort    (the console only)
    log      the commits, newest first: N COMMIT DATE SUBJECT (as `docteur log IMAGE`)

Inside a batch (console: `begin`), put/rm/mv join it and `get`, `ls`, `stat`... see them;
the message and author go on `commit`. A console left with an open batch aborts it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import stat
import sys
from collections.abc import AsyncGenerator, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import BinaryIO, NoReturn

from docteur.cli.errors import UsageError
from docteur.cli.log import notice
from docteur.guest.protocol import MAX_CHUNK
from docteur.guest.protocol import MODES as PUT_MODES
from docteur.vm.client import Batch, Client, Committed

WRITE_COMMANDS = ("put", "rm", "mv", "begin", "commit", "abort", "log")
CONSOLE_ONLY = ("begin", "commit", "abort")
MODES = {f"{mode:o}": mode for mode in PUT_MODES}  # as git writes them: 100644, 100755, 120000


class _Parser(argparse.ArgumentParser):
    """argparse for one console command: a mistake is a UsageError (one line), never an exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (try help)")


def _parser(name: str, *, commit_args: bool) -> _Parser:
    p = _Parser(prog=name, add_help=False, allow_abbrev=False)
    if commit_args:
        p.add_argument("-m", "--message", metavar="MSG")
        p.add_argument("--author", metavar="'NAME <EMAIL>'")
        p.add_argument("--expect", metavar="HEAD", type=_commit_id)  # else: conflict, nothing written
    return p


def _commit_id(text: str) -> bytes:
    try:
        oid = bytes.fromhex(text)
    except ValueError:
        oid = b""
    if len(oid) != 20:
        raise argparse.ArgumentTypeError(f"not a commit id (40 hex digits): {text!r}")
    return oid


def _parsers() -> dict[str, _Parser]:
    put = _parser("put", commit_args=True)
    put.add_argument("path", metavar="PATH")
    put.add_argument("file", metavar="FILE")
    kind = put.add_mutually_exclusive_group()
    kind.add_argument("-x", "--executable", dest="mode", action="store_const", const="100755")
    kind.add_argument("--mode", choices=MODES)
    rm = _parser("rm", commit_args=True)
    rm.add_argument("path", metavar="PATH")
    mv = _parser("mv", commit_args=True)
    mv.add_argument("source", metavar="SOURCE")
    mv.add_argument("dest", metavar="DEST")
    plain = {name: _parser(name, commit_args=False) for name in ("begin", "abort", "log")}
    return {"put": put, "rm": rm, "mv": mv, "commit": _parser("commit", commit_args=True), **plain}


class WriteState:
    """What a console remembers between commands: the batch it opened, if any."""

    def __init__(self, console: bool, stdin_free: bool) -> None:
        self.console = console  # begin/commit/abort are allowed
        self.stdin_free = stdin_free  # FILE `-` may read stdin (not the console's commands)
        self.batch: Batch | None = None

    async def leave(self) -> str | None:
        """Abort an open batch (the console is closing); what to tell the user, if anything."""
        batch, self.batch = self.batch, None
        if batch is None:
            return None
        await batch.abort()
        return f"the open batch on disk {batch.disk} is aborted: nothing written"


async def execute_write(client: Client, state: WriteState, argv: list[str], out: BinaryIO) -> None:
    """Run one write command (argv[0] in WRITE_COMMANDS)."""
    cmd = argv[0]
    if cmd in CONSOLE_ONLY and not state.console:
        raise UsageError(f"{cmd}: only in the console (docteur query --socket S, no command)")
    args = _parsers()[cmd].parse_args(argv[1:])
    batch = state.batch
    given = {k: getattr(args, k, None) for k in ("message", "author", "expect")}
    if batch is not None and cmd in ("put", "rm", "mv") and any(v is not None for v in given.values()):
        raise UsageError(f"{cmd} inside a batch: -m/--author/--expect go on `commit`")
    commit = {"message": args.message, "author": args.author, "expected_head": args.expect} if (
        cmd in ("put", "rm", "mv", "commit")) else {}  # fmt: skip

    def line(text: str) -> None:
        out.write(text.encode("utf-8", "surrogateescape") + b"\n")

    if cmd == "log":
        entries = await client.log()
        for n, e in zip(range(len(entries) - 1, -1, -1), entries, strict=True):
            line(f"{n} {e.commit.hex()} {iso_date(e.time, e.tz)} {subject(e.message)}".rstrip())
    elif cmd == "begin":
        if batch is not None:
            raise UsageError(f"a batch is already open on disk {batch.disk} (commit or abort it)")
        batch = client.batch()
        await batch.begin()
        state.batch = batch
        assert batch.head is not None
        line(f"batch open on disk {batch.disk} from {batch.head.hex()} "
             f"(generation {batch.generation})")  # fmt: skip
    elif cmd in ("commit", "abort"):
        if batch is None:
            raise UsageError(f"{cmd}: no open batch (begin one)")
        try:
            if cmd == "abort":
                await batch.abort()
                line("aborted: nothing written")
            else:
                _committed(await batch.commit(**commit), state, line)
        finally:
            if not batch.open:  # over, whatever the answer (but a commit refused for its args)
                state.batch = None
    elif cmd == "put":
        mode = MODES[args.mode or "100644"]
        with _content(args.file, state) as (chunks, size):
            if batch is not None:
                await batch.put(args.path, chunks, size=size, mode=mode)
            else:
                _committed(await client.put(args.path, chunks, size=size, mode=mode, **commit), state, line)
    elif cmd == "rm":
        if batch is not None:
            await batch.remove(args.path)
        else:
            _committed(await client.remove(args.path, **commit), state, line)
    elif batch is not None:  # mv
        await batch.rename(args.source, args.dest)
    else:
        _committed(await client.rename(args.source, args.dest, **commit), state, line)
    out.flush()


def _committed(result: Committed | None, state: WriteState, line: Callable[[str], None]) -> None:
    """The new commit id on `out` (what a script reads); an unchanged tree makes none, said
    on stderr for a single command (as `docteur put IMAGE` does), in line in the console."""
    if result is not None:
        line(result.commit.hex())
        if not state.console:  # as `docteur put IMAGE` says it
            notice(f"generation {result.generation}, {result.free} bytes free", "committed",
                   commit=result.commit.hex(), generation=result.generation, free=result.free)  # fmt: skip
    elif state.console:
        line("nothing changed: no commit")
    else:
        notice("nothing changed: no commit", "unchanged")


@contextlib.contextmanager
def _content(name: str, state: WriteState) -> Iterator[tuple[AsyncGenerator[bytes, None], int | None]]:
    """FILE's bytes as chunks, and its size when known without reading it (a regular
    file); otherwise (a pipe) the client spools it to learn the size."""
    if name == "-":
        if not state.stdin_free:
            raise UsageError("put FILE: - (stdin) holds the console's commands here; give a file")
        yield _chunks(sys.stdin.buffer), _regular_size(sys.stdin.buffer.fileno())
        return
    try:
        f = open(name, "rb")  # noqa: SIM115 (a with block would hide which call failed)
    except OSError as exc:  # a directory too (EISDIR)
        raise UsageError(f"put: cannot read {name}: {exc.strerror}") from None
    with f:
        yield _chunks(f), _regular_size(f.fileno())


def _regular_size(fd: int) -> int | None:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None
    return st.st_size - os.lseek(fd, 0, os.SEEK_CUR)


async def _chunks(f: BinaryIO) -> AsyncGenerator[bytes, None]:
    """The file's bytes in chunks, each read in a thread (a slow pipe stalls no answer)."""
    while chunk := await asyncio.to_thread(f.read, MAX_CHUNK):
        yield chunk


def iso_date(seconds: int, tz_minutes: int) -> str:
    """A commit's date as `docteur log IMAGE` prints it (ISO 8601 in its own offset)."""
    offset = timezone(timedelta(minutes=tz_minutes))
    return datetime.fromtimestamp(seconds, UTC).astimezone(offset).isoformat()


def subject(message: str) -> str:
    text = message.strip()
    return text.splitlines()[0] if text else ""
