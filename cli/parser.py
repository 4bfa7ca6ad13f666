"""The arguments of every `docteur` subcommand, in one place.

Only cheap imports here (the defaults' modules): `docteur --help` and a usage error
must not load dulwich, asyncio or QEMU's QMP library.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from docteur.builder.defaults import DEFAULT_AUTHOR, DEFAULT_TIMEOUT
from docteur.guest.defaults import DEFAULT_BLOCK_SIZE, DEFAULT_DISK, DEFAULT_VERIFY, VERIFY_MODES
from docteur.vm.runtime.defaults import ACCELS, BOOT_TIMEOUT, DEFAULT_MEMORY, DEFAULT_SNAPSHOT, SNAPSHOT_MODES
from docteur.vm.targets import TARGETS

from . import log
from .deferred import deferring
from .errors import EXIT_USAGE

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~5 ms of imports on every start
    from typing import Any, NoReturn

PROG = "docteur"
QUERY_TIMEOUT = 30.0  # seconds to connect and for each answer

Command = Callable[[argparse.Namespace], int]


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size finds it ($COLUMNS, then
    stdout's terminal, else 80)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class _Formatter(argparse.HelpFormatter):
    """argparse's, given its width: argparse makes one for each argument declared,
    and left to find the width itself it imports shutil (~3 ms on every start)."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:  # fmt: skip
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)  # fmt: skip


class Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are one JSON line too under --log-format json
    (subcommand parsers are of the same class)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if log.is_json():
            log.error_line(f"{message} (see {self.prog} --help)", self.prog)
            sys.exit(EXIT_USAGE)
        super().error(message)


def seconds(text: str) -> float:
    """A --timeout value: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(text: str) -> int:
    """A size in bytes: a number, or with a binary suffix K, M, G or T (256M = 256 MiB)."""
    body = text.strip()
    unit = body[-1:].upper() if body[-1:].isalpha() else ""
    number = body[: len(body) - len(unit)]
    if unit not in _UNITS or not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 268435456, 512K, 256M, 2G)")
    return int(number) * _UNITS[unit]


def wants_json(argv: Sequence[str]) -> bool:
    """--log-format json anywhere on the command line (before parsing it)."""
    for i, arg in enumerate(argv):
        if arg == "--log-format=json" or (arg == "--log-format" and argv[i + 1 : i + 2] == ["json"]):
            return True
    return False


def add_globals(p: argparse.ArgumentParser, *, sub: bool = False) -> None:
    """--log-format and -v; on a subcommand too (`docteur make -v ...`), without
    overriding what was given before it when absent."""
    p.add_argument(
        "--log-format",
        choices=("console", "json"),
        default=argparse.SUPPRESS if sub else "console",
        help="how log lines on stderr look (default: console)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS if sub else 0,
        help="more log lines (-v info, -vv debug)",
    )


def make_args(p: argparse.ArgumentParser, func: Command) -> None:
    add_globals(p, sub=True)
    p.add_argument(
        "-b",
        "--branch",
        metavar="REF",
        dest="ref",
        help="branch, tag or refs/... to take (default: the source's HEAD)",
    )
    p.add_argument("-d", "--date", metavar="RFC3339", help="commit date for a plain directory (default: now)")
    p.add_argument(
        "--bs",
        type=int,
        default=DEFAULT_BLOCK_SIZE,
        metavar="N",
        help=f"block size the image is padded to (default: {DEFAULT_BLOCK_SIZE})",
    )
    p.add_argument(
        "--timeout",
        type=seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up on a source that sends nothing for this long (default: {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "--capacity",
        type=size,
        metavar="SIZE",
        help="make the image SIZE bytes (K/M/G) with room for writes (default: read-only, no room)",
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="https://, http://, git://, ssh://, user@host:path, file://ABS, relativize://DIR or a path",
    )
    p.add_argument("image", metavar="IMAGE", help="image file to write")
    p.set_defaults(func=func)


def verify_args(p: argparse.ArgumentParser, func: Command) -> None:
    add_globals(p, sub=True)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing, only the status")
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(func=func)


def run_args(p: argparse.ArgumentParser, func: Command) -> None:
    add_globals(p, sub=True)
    p.add_argument("image", nargs="?", metavar="IMAGE", help="same as --block docteur=IMAGE")
    p.add_argument("--target", choices=TARGETS, default=TARGETS[0],
                   help="microvm (QEMU, default) or unix (a host process)")  # fmt: skip
    p.add_argument("--block", action="append", default=[], metavar="NAME=IMAGE",
                   help="a named disk (repeatable)")  # fmt: skip
    what = p.add_mutually_exclusive_group()  # neither: the console
    what.add_argument("--filename", metavar="PATH", help="print this file and exit")
    what.add_argument("--socket", metavar="PATH", help="serve on this unix socket until Ctrl-C")
    p.add_argument("--disk", default=DEFAULT_DISK, help=f"the disk --filename reads ({DEFAULT_DISK})")
    p.add_argument("--verify", choices=VERIFY_MODES, default=DEFAULT_VERIFY,
                   help=f"boot verification (default {DEFAULT_VERIFY})")  # fmt: skip
    p.add_argument("--timeout", type=seconds, default=BOOT_TIMEOUT, metavar="SECONDS",
                   help=f"boot timeout, verification included ({BOOT_TIMEOUT:g})")  # fmt: skip
    p.add_argument("--rw", action="store_true",
                   help="serve writes (query put/rm/mv): the images attached read-write, "
                   "locked against any other user")  # fmt: skip
    g = p.add_argument_group("microvm target")
    g.add_argument("--accel", choices=ACCELS, default="auto",
                   help="kvm only where the CPU has vmx/svm; tcg otherwise (default: auto)")  # fmt: skip
    g.add_argument("--memory", type=int, default=DEFAULT_MEMORY, metavar="MiB",
                   help=f"guest memory ({DEFAULT_MEMORY})")  # fmt: skip
    g.add_argument("--kernel", metavar="FILE", help="a prebuilt guest kernel (with --initrd; "
                   "default: $DOCTEUR_KERNEL, else the guest cache)")  # fmt: skip
    g.add_argument("--initrd", metavar="FILE", help="its initramfs (default: $DOCTEUR_INITRD)")
    g.add_argument("--snapshot", choices=SNAPSHOT_MODES, default=DEFAULT_SNAPSHOT,
                   help="auto: start from the state saved after a first boot of the same images and "
                   "guest (read-only runs), off: always boot, refresh: boot and save anew "
                   f"(default: {DEFAULT_SNAPSHOT})")  # fmt: skip
    p.set_defaults(func=func)


def guest_args(p: argparse.ArgumentParser, func: Command) -> None:
    add_globals(p, sub=True)
    p.add_argument("action", choices=("build", "info", "path"), metavar="build|info|path")
    p.add_argument("--force", action="store_true", help="build: even when up to date")
    p.add_argument("--from-manifest", metavar="FILE",
                   help="build: from the packages a guest manifest.json lists")  # fmt: skip
    p.set_defaults(func=func)


def query_args(p: argparse.ArgumentParser, func: Command) -> None:
    add_globals(p, sub=True)
    p.add_argument("--socket", required=True, metavar="PATH", help="the socket `docteur run` serves")
    p.add_argument("--disk", default=DEFAULT_DISK, help=f"the disk to ask ({DEFAULT_DISK})")
    p.add_argument("--timeout", type=seconds, default=QUERY_TIMEOUT, metavar="SECONDS")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND ...")
    p.set_defaults(func=func)


def _writer_args(p: argparse.ArgumentParser, func: Command, message: bool = True) -> None:
    """What every writing command takes: IMAGE first, -m, --author, -d."""
    add_globals(p, sub=True)
    if message:
        p.add_argument("-m", "--message", metavar="MSG", help="the commit message (default: the command)")
    p.add_argument("--author", metavar="'NAME <EMAIL>'", default=DEFAULT_AUTHOR,
                   help=f"author and committer (default: {DEFAULT_AUTHOR})")  # fmt: skip
    p.add_argument("-d", "--date", metavar="RFC3339", help="the commit's date (default: now)")
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(func=func)


def _image_command(sub: argparse._SubParsersAction, func: Command, name: str, help: str,
                   description: str) -> argparse.ArgumentParser:  # fmt: skip
    """A command on one IMAGE (more arguments may follow)."""
    p = sub.add_parser(name, help=help, description=description)
    add_globals(p, sub=True)
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(func=func)
    return p


def write_parsers(sub: argparse._SubParsersAction, commands: dict[str, Command]) -> None:
    """put, rm, mv, commit, log, compact, export, grow."""
    p = sub.add_parser("put", help="write one file into an image (one commit)",
                       description="Bind PATH in IMAGE to the bytes of FILE (- reads stdin): one commit. "
                       "Prints the new commit id.")  # fmt: skip
    _writer_args(p, commands["put"])
    p.add_argument("path", metavar="PATH", help="where in the image, e.g. /index.html")
    p.add_argument("file", metavar="FILE", help="the file to put, - for stdin")
    p = sub.add_parser("rm", help="remove a file or a directory (recursive) from an image",
                       description="Remove PATH (recursively) from IMAGE: one commit.")  # fmt: skip
    _writer_args(p, commands["rm"])
    p.add_argument("path", metavar="PATH")
    p = sub.add_parser("mv", help="move a file or a directory inside an image",
                       description="Move SOURCE to DEST in IMAGE (inside DEST when it is a "
                       "directory): one commit.")  # fmt: skip
    _writer_args(p, commands["mv"])
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("dest", metavar="DEST")
    p = sub.add_parser("commit", help="make a directory the image's whole tree (one commit)",
                       description="Replace the tree of IMAGE by DIR's files: one commit.")  # fmt: skip
    _writer_args(p, commands["commit"])
    p.add_argument("directory", metavar="DIR")
    _image_command(sub, commands["log"], "log", "the commits of an image, newest first",
                   "Print N COMMIT DATE SUBJECT for each commit, newest first; "
                   "0 is the commit docteur make wrote.")  # fmt: skip
    _image_command(sub, commands["compact"], "compact",
                   "rewrite an image's writes into one pack, history kept",
                   "Compact IMAGE in place, fail-safe: every commit kept, the space of older packs freed.")
    p = _image_command(sub, commands["export"], "export", "a bare git repository of an image's history",
                       "Write a new bare repository DEST holding every commit of IMAGE, its branch "
                       "at the head.")  # fmt: skip
    p.add_argument("dest", metavar="DEST.git")
    p = _image_command(sub, commands["grow"], "grow", "give an image (more) room for writes",
                       "Make IMAGE SIZE bytes (K/M/G), sparse; a read-only image becomes writable.")
    p.add_argument("size", metavar="SIZE", type=size)


def sync_parsers(sub: argparse._SubParsersAction, commands: dict[str, Command]) -> None:
    """push, pull."""
    for name, help, description in (
        ("push", "send an image's new commits to its git remote (never forced)",
         "Send IMAGE's commits to REMOTE (default: the one it was made from) and move BRANCH "
         "(default: the one it was made from) to its head, only if that loses no commit there."),
        ("pull", "bring a git remote's new commits into an image",
         "Fetch BRANCH of REMOTE (defaults: those IMAGE was made from) and fast-forward IMAGE "
         "to it as a new generation; diverged histories are a conflict (see --merge). Prints "
         "the paths that changed and the new head."),
    ):  # fmt: skip
        p = sub.add_parser(name, help=help, description=description + (
            " With --socket PATH, the image is the disk a running `docteur run --rw --socket PATH` "
            "serves (no IMAGE): the host talks to the remote, the appliance writes the disk."))
        add_globals(p, sub=True)
        p.set_defaults(func=commands[name])
        p.add_argument("image", nargs="?", metavar="IMAGE", help="the image file (not with --socket)")
        p.add_argument("remote", nargs="?", metavar="REMOTE",
                       help="a URL or path, as make takes (default: the recorded one)")  # fmt: skip
        p.add_argument("--socket", metavar="PATH", help="the socket a `docteur run --rw` serves")
        p.add_argument("--disk", help=f"with --socket: the disk to sync ({DEFAULT_DISK})")
        p.add_argument("-b", "--branch", metavar="BRANCH", help="NAME or refs/heads/NAME")
        p.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                       help=f"give up on a silent remote after this long ({DEFAULT_TIMEOUT:g})")  # fmt: skip
    pull = sub.choices["pull"]
    pull.add_argument("--merge", action="store_true",
                      help="diverged: a merge commit when the changed paths are disjoint")  # fmt: skip
    pull.add_argument("--author", metavar="'NAME <EMAIL>'", default=DEFAULT_AUTHOR,
                      help=f"the merge commit's author and committer ({DEFAULT_AUTHOR})")  # fmt: skip


class _Version(argparse.Action):
    """--version, looked up only when asked."""

    def __init__(self, *args: object, version: Callable[[], str], **kwargs: object):
        super().__init__(*args, help="show the version and exit", **kwargs)  # type: ignore[arg-type]
        self.version = version

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"{parser.prog.split()[0]} {self.version()}")
        parser.exit()


def build(commands: dict[str, Command], version: Callable[[], str]) -> Parser:
    """`docteur` with its subcommands; `commands` maps each name to its function."""
    parser = Parser(prog=PROG, description="Turn a Git repository into a verified disk image.")
    add_globals(parser)
    parser.add_argument("--version", action=_Version, nargs=0, default=argparse.SUPPRESS, version=version)
    # Each subcommand's parser is made when used (deferred.py); prog given: argparse would
    # otherwise build a help formatter to find it.
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, prog=PROG,
                                parser_class=deferring(Parser))  # fmt: skip
    make_args(sub.add_parser(
        "make", help="build an image from a Git repository or a directory",
        description="Build a docteur image from a Git repository or a directory.",
    ), commands["make"])  # fmt: skip
    verify_args(sub.add_parser(
        "verify", help="check an image and print its commit",
        description="Check every byte of a docteur image; print its commit.",
    ), commands["verify"])  # fmt: skip
    run_args(sub.add_parser(
        "run", help="serve an image (in a microVM, or as a host process)",
        description="Boot the appliance on IMAGE (--block NAME=IMAGE for several disks) and "
        "print one file (--filename), serve the protocol on a unix socket (--socket), or, "
        "with neither, open the query console (commands from stdin when it is not a terminal; "
        "exit 1 then if one failed).",
    ), commands["run"])  # fmt: skip
    query_args(sub.add_parser(
        "query", help="ask a served image (no command: an interactive console)",
        description="Commands: get PATH [OFFSET [LENGTH]], ls [-z] [PATH], stat PATH, exists PATH, "
        "size PATH, digest PATH, mtime PATH, info, ping; on a server run with --rw, each one commit "
        "(its id printed): put PATH FILE (- = stdin) [-x], rm PATH, mv SOURCE DEST, with [-m MSG] "
        "[--author 'NAME <EMAIL>'] [--expect HEAD]; log. Without one: a console (begin, ..., "
        "commit -m MSG or abort: a batch as one commit; help lists all).",
    ), commands["query"])  # fmt: skip
    write_parsers(sub, commands)
    sync_parsers(sub, commands)
    guest_args(sub.add_parser(
        "guest", help="build the microVM's guest, or show it (info, path)",
        description="build: the guest kernel and initramfs into the cache "
        "($XDG_CACHE_HOME/docteur/guest); info: what `docteur run` boots; path: its directory.",
    ), commands["guest"])  # fmt: skip
    return parser


def single(prog: str, add_args: Callable[[argparse.ArgumentParser, Command], None], func: Command,
           description: str, version: Callable[[], str]) -> Parser:  # fmt: skip
    """An alias command (`docteur.make`, `docteur.verify`): one subcommand's arguments."""
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--version", action=_Version, nargs=0, default=argparse.SUPPRESS, version=version)
    add_args(parser, func)  # brings --log-format and -v with it
    return parser
