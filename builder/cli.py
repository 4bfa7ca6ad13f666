"""The `docteur` command: make, verify (and run, query from docteur.vm when present).

Every error a user can cause ends as one line on stderr, `docteur: error: ...`,
exit status 1 (130 for Ctrl-C), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from docteur.guest.errors import DocteurError
from docteur.guest.layout import DEFAULT_BLOCK_SIZE

from . import log
from .defaults import DEFAULT_TIMEOUT
from .errors import Terminated
from .redact import redact

PROG = "docteur"


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are one JSON line too under --log-format json
    (subcommand parsers are of the same class)."""

    def error(self, message: str) -> NoReturn:
        if log.is_json():
            log.error_line(f"{message} (see {self.prog} --help)", self.prog)
            sys.exit(2)
        super().error(message)


def _wants_json(argv: Sequence[str]) -> bool:
    for i, arg in enumerate(argv):
        if arg == "--log-format=json" or (arg == "--log-format" and argv[i + 1 : i + 2] == ["json"]):
            return True
    return False


def _add_globals(p: argparse.ArgumentParser, *, sub: bool = False) -> None:
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


def _add_make(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "make",
        help="build an image from a Git repository or a directory",
        description="Build a docteur image from a Git repository or a directory.",
    )
    _make_args(p)
    return p


def _make_args(p: argparse.ArgumentParser) -> None:
    _add_globals(p, sub=True)
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
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"give up when the server sends nothing for this long (default: {DEFAULT_TIMEOUT:g})",
    )
    p.add_argument(
        "source",
        metavar="SOURCE",
        help="https://, http://, git://, ssh://, user@host:path, file://ABS, relativize://DIR or a path",
    )
    p.add_argument("image", metavar="IMAGE", help="image file to write")
    p.set_defaults(func=cmd_make)


def _add_verify(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "verify",
        help="check an image and print its commit",
        description="Check every byte of a docteur image; print its commit.",
    )
    _verify_args(p)
    return p


def _verify_args(p: argparse.ArgumentParser) -> None:
    _add_globals(p, sub=True)
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing, only the status")
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(func=cmd_verify)


def cmd_make(args: argparse.Namespace) -> int:
    from .make import make
    from .progress import human_bytes

    s = make(args.source, args.image, ref=args.ref, date=args.date, block_size=args.bs,
             timeout=args.timeout)
    log.notice(
        f"{s.image}: commit {s.commit.hex()}, {s.objects} objects, {human_bytes(s.size)} ({s.size} bytes)",
        "image written", image=s.image, commit=s.commit.hex(), objects=s.objects, size=s.size,
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .report import verify_image

    verify_image(args.image, sys.stdout.buffer, quiet=args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description="Turn a Git repository into a verified disk image."
    )
    _add_globals(parser)
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_make(sub)
    _add_verify(sub)
    try:
        from docteur.vm import cli as vm_cli
    except ImportError:
        vm_cli = None  # the runtime side is optional
    if vm_cli is not None and hasattr(vm_cli, "add_commands"):
        vm_cli.add_commands(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("docteur")
    except PackageNotFoundError:
        return "(not installed)"


def _single(
    prog: str, add_args: Callable[[argparse.ArgumentParser], None], description: str
) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"{prog} {_version()}")
    add_args(parser)  # brings --log-format and -v with it
    return parser


def _error(message: str, prog: str = PROG) -> None:
    log.error_line(" ".join(redact(message).split()), prog)  # one line, whatever the message held


def _describe(e: BaseException) -> str:
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"disk full{': ' + str(e.filename) if e.filename else ''}"
        name = f"{e.filename}: " if e.filename else ""
        return f"{name}{e.strerror or e}"
    return str(e) or type(e).__name__


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


def _terminate(signum: int, _frame: object) -> None:
    raise Terminated(signum)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    log.configure("json" if _wants_json(sys.argv[1:] if argv is None else argv) else "console")
    args = parser.parse_args(argv)
    log.configure(getattr(args, "log_format", "console"), getattr(args, "verbose", 0))
    # SIGTERM (`timeout`, `kill`) and SIGHUP (the terminal closed) clean up like Ctrl-C:
    # no temp file, scratch dir or VM left.
    previous = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        previous = {sig: signal.signal(sig, _terminate) for sig in STOP_SIGNALS}
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            _error("terminated", parser.prog)
            return e.status
        _error("interrupted", parser.prog)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:
        if not _is_expected(e):
            raise
        _error(_describe(e), parser.prog)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _is_expected(e: Exception) -> bool:
    """Ours, the system's, dulwich's and urllib3's errors: a user's problem, not a bug of ours."""
    if isinstance(e, DocteurError | OSError):
        return True
    mod = type(e).__module__ or ""
    return mod.startswith(("dulwich", "urllib3"))


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


def make_main(argv: Sequence[str] | None = None) -> int:
    return run(_single("docteur.make", _make_args, "Build a docteur image."), argv)


def verify_main(argv: Sequence[str] | None = None) -> int:
    return run(_single("docteur.verify", _verify_args, "Check a docteur image."), argv)


if __name__ == "__main__":
    sys.exit(main())
