r"""`docteur query` commands, and the interactive console that runs them.

    get PATH [OFFSET [LENGTH]]   ls [-z] [PATH]   stat PATH   exists PATH
    size PATH   digest PATH   mtime PATH   info   ping   help   quit
    put PATH FILE   rm PATH   mv SOURCE DEST   log   begin   commit   abort   (console_writes)

`ls` quotes a path as git does by default (core.quotePath): one that holds a control
character, `"`, `\` or a byte >= 0x80 is printed in double quotes with C escapes, so a
name never breaks a line; `ls -z` ends each entry with NUL and prints paths raw.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import time
from typing import BinaryIO

from docteur.cli.errors import Terminated, UsageError
from docteur.vm.client import Client, ClientError, ConnectionLost
from docteur.vm.targets.console_writes import WRITE_COMMANDS, WriteState, execute_write

HELP = """\
get PATH [OFFSET [LENGTH]]  print a file (a symlink prints its target)
ls [PATH]                   list a directory (default /): mode, kind, path (quoted as git does)
ls -z [PATH]                the same, each entry NUL-terminated, its path raw
stat PATH                   kind, mode, size, digest, mtime
exists PATH                 file, directory, symlink, submodule or absent
size PATH | digest PATH | mtime PATH
info                        the commit and the image
disk [NAME]                 show or choose the disk (default docteur)
ping                        round trip time
history                     the commands typed so far (up/down arrows recall them)
help | quit

writes (a server run with --rw; without begin, each is one commit and prints its id):
put PATH FILE [-x | --mode 100644|100755|120000]   FILE's bytes at PATH (-x: executable)
rm PATH                     remove a file or a directory (recursive)
mv SOURCE DEST              move (inside DEST when it is a directory)
   ... [-m MSG] [--author 'NAME <EMAIL>'] [--expect HEAD]   outside a batch: the commit's
begin                       open a batch: put/rm/mv join it, get/ls/stat... see it
commit [-m MSG] [--author 'NAME <EMAIL>'] [--expect HEAD]   the batch as one commit
abort                       drop the batch (leaving the console aborts an open one too)
log                         the commits, newest first: N COMMIT DATE SUBJECT"""

COMMANDS = ("get", "cat", "ls", "list", "stat", "exists", "size", "digest", "mtime",
            "last_modified", "info", "ping", "help", "history", "disk", "quit", "exit",
            *WRITE_COMMANDS)  # fmt: skip


# git's quote_c_style: these get a letter, other bytes below 0x20, 0x7f and >= 0x80 octal.
_C_ESCAPES = {0x07: "a", 0x08: "b", 0x09: "t", 0x0A: "n", 0x0B: "v", 0x0C: "f", 0x0D: "r",
              0x22: '"', 0x5C: "\\"}  # fmt: skip


def quote_path(path: bytes) -> str:
    """`path` as `git ls-tree` prints it with core.quotePath=true (git's default)."""
    if all(0x20 <= b < 0x7F and b not in (0x22, 0x5C) for b in path):
        return path.decode("ascii")
    out = []
    for b in path:
        if b in _C_ESCAPES:
            out.append("\\" + _C_ESCAPES[b])
        elif b < 0x20 or b >= 0x7F:
            out.append(f"\\{b:03o}")
        else:
            out.append(chr(b))
    return '"' + "".join(out) + '"'


def _arg(argv: list[str], i: int, what: str) -> str:
    if len(argv) <= i:
        raise UsageError(f"{argv[0]}: missing {what} (try help)")
    return argv[i]


def _int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{what} must be a number, not {text!r}") from None
    if value < 0:
        raise UsageError(f"{what} must not be negative")
    if value >= 1 << 64:  # the protocol's u64
        raise UsageError(f"{what} must be below 2^64")
    return value


def _fmt_time(seconds: int, tz_minutes: int) -> str:
    sign = "-" if tz_minutes < 0 else "+"
    m = abs(tz_minutes)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds + tz_minutes * 60))
    return f"{stamp} {sign}{m // 60:02d}{m % 60:02d} ({seconds})"


async def execute(client: Client, argv: list[str], out: BinaryIO, writes: WriteState | None = None) -> None:
    """Run one command, writing its output to `out`; raises ClientError/UsageError.
    `writes`: the console's open batch (default: a single command, stdin free for `put`)."""
    cmd = argv[0]
    if cmd in WRITE_COMMANDS:
        await execute_write(client, writes or WriteState(console=False, stdin_free=True), argv, out)
        return

    def line(text: str) -> None:
        out.write(text.encode("utf-8", "surrogateescape") + b"\n")

    if cmd in ("get", "cat"):
        path = _arg(argv, 1, "PATH")
        offset = _int(argv[2], "OFFSET") if len(argv) > 2 else 0
        length = _int(argv[3], "LENGTH") if len(argv) > 3 else None
        async for chunk in client.stream(path, offset, length):
            out.write(chunk)
    elif cmd in ("ls", "list"):
        args = argv[1:]
        nul = "-z" in args
        args = [a for a in args if a != "-z"]
        if len(args) > 1:
            raise UsageError(f"{cmd}: one PATH at most (try help)")
        for e in await client.list(args[0] if args else "/"):
            if nul:
                out.write(f"{e.mode:06o} {e.kind:<9} ".encode() + e.key + b"\0")
            else:
                line(f"{e.mode:06o} {e.kind:<9} {quote_path(e.key)}")
    elif cmd == "stat":
        path = _arg(argv, 1, "PATH")
        st = await client.stat(path)
        mtime = await client.last_modified(path)
        line(f"path:   {path}\nkind:   {st.kind}\nmode:   {st.mode:06o}\nsize:   {st.size}")
        line(f"digest: {st.digest}\nmtime:  {_fmt_time(*mtime)}")
    elif cmd == "exists":
        line(await client.exists(_arg(argv, 1, "PATH")))
    elif cmd == "size":
        line(str(await client.size(_arg(argv, 1, "PATH"))))
    elif cmd == "digest":
        line(await client.digest(_arg(argv, 1, "PATH")))
    elif cmd in ("mtime", "last_modified"):
        line(_fmt_time(*await client.last_modified(_arg(argv, 1, "PATH"))))
    elif cmd == "info":
        info = await client.info()
        width = max(16, *(len(k) + 2 for k in info))
        for key, value in info.items():
            if key == "message":
                value = value.rstrip("\n").replace("\n", "\n" + " " * width)
            line(f"{key + ':':<{width}}{value}")
    elif cmd == "ping":
        start = time.perf_counter()
        await client.ping()
        line(f"pong in {(time.perf_counter() - start) * 1000:.2f} ms")
    elif cmd == "help":
        line(HELP)
    elif cmd == "disk":
        if len(argv) > 1 and writes is not None and writes.batch is not None:
            raise UsageError(f"a batch is open on disk {writes.batch.disk}: commit or abort it first")
        if len(argv) > 1:
            known = client.hello.disks if client.hello else {}
            if known and argv[1] not in known:
                raise UsageError(f"no disk named {argv[1]!r} (disks: {', '.join(known)})")
            client.disk = argv[1]
        line(f"disk {client.disk} (disks: {', '.join(client.hello.disks) if client.hello else '?'})")
    elif cmd == "history":
        raise UsageError("history: only in the console (docteur query with no command)")
    else:
        raise UsageError(f"unknown command {cmd!r} (try help)")
    out.flush()


def _history_file() -> str:
    return os.path.join(os.path.expanduser("~"), ".docteur_history")


def _setup_readline() -> None:
    try:
        import readline
    except ImportError:
        return
    with contextlib.suppress(OSError):
        readline.read_history_file(_history_file())
    readline.set_history_length(1000)
    readline.parse_and_bind("tab: complete")
    words = sorted(COMMANDS)
    readline.set_completer(
        lambda text, state: ([w for w in words if w.startswith(text)] + [None])[state]
    )


def _history() -> list[str]:
    try:
        import readline
    except ImportError:
        return []
    return [readline.get_history_item(i) for i in range(1, readline.get_current_history_length() + 1)]


def _save_history() -> None:
    with contextlib.suppress(ImportError, OSError):
        import readline

        readline.write_history_file(_history_file())


class _Tracked:
    """stdout that remembers the last byte written (did the output end a line?)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.last = b"\n"

    def write(self, data: bytes) -> int:
        if data:
            self.last = data[-1:]
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


def console(runner: asyncio.Runner, client: Client) -> int:
    """Read commands until EOF/quit; each runs on `runner`'s loop. Commands piped in print
    their results only (no banner, no prompts), and the exit status is 1 if one failed,
    so a script knows."""
    _setup_readline()
    hello = client.hello
    interactive = sys.stdin.isatty()  # commands piped in: no prompts in the output
    scripted = not interactive  # its status says whether every command succeeded
    failed = False
    if hello is not None and not scripted:
        writable = {n for n in hello.disks if hello.fields.get(f"writable.{n}") == "yes"}
        disks = ", ".join(f"{n} ({c[:12] or 'unopened'}{', writable' * (n in writable)})"
                          for n, c in hello.disks.items())  # fmt: skip
        print(f"docteur protocol v{hello.version}, disks: {disks}; type help")
        if not hello.ok:
            print(f"the server failed to boot: {hello.fields.get('error', '?')}")
    out = _Tracked(sys.stdout.buffer)
    writes = WriteState(console=True, stdin_free=False)  # stdin holds the commands
    try:
        while True:
            try:
                batch = " [batch]" if writes.batch is not None else ""
                text = input(f"docteur:{client.disk}{batch}> " if interactive else "")
            except EOFError:
                if interactive:
                    print()
                return int(scripted and (failed | _leave(runner, writes)))
            except Terminated:
                raise  # SIGTERM/SIGHUP end the console; only Ctrl-C is a fresh prompt
            except KeyboardInterrupt:
                print()
                continue
            try:
                argv = shlex.split(text)
            except ValueError as exc:
                failed = True
                print(f"error: {exc}")
                continue
            if not argv:
                continue
            if argv[0] in ("quit", "exit"):
                return int(scripted and (failed | _leave(runner, writes)))
            if argv[0] == "history":
                for number, line in enumerate(_history(), 1):
                    print(f"{number:5d}  {line}")
                continue
            sys.stdout.flush()  # text before the raw bytes of the answer
            out.last = b"\n"
            problem = None
            lost = False
            try:
                runner.run(execute(client, argv, out, writes))
            except ConnectionLost as exc:  # the server is gone: nothing more will work
                problem, lost = f"error: {exc}", True
            except (ClientError, UsageError) as exc:
                problem = f"error: {exc}"
            except Terminated:
                raise
            except KeyboardInterrupt:
                problem = "interrupted"
            if out.last != b"\n":
                out.write(b"\n")  # a file that does not end with one: the prompt starts a line
            out.flush()
            if problem:
                failed = True
                print(problem, flush=True)
            if lost:
                writes.batch = None  # the server aborted it with the connection
                return 1
    finally:
        _leave(runner, writes)  # Ctrl-D, quit, SIGTERM: an open batch is never left behind
        _save_history()


def _leave(runner: asyncio.Runner, writes: WriteState) -> bool:
    """Abort the console's open batch, saying so; True when there was one (a script that
    forgot `commit` has not written what it meant to)."""
    if writes.batch is None:
        return False
    try:
        said = runner.run(writes.leave())
    except ClientError as exc:  # the connection is gone: the server aborted it
        said = f"the open batch is aborted (nothing written): {exc}"
    print(f"error: {said}" if said else "", flush=True)
    return True
