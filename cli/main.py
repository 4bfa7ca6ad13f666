"""The `docteur` command (and its aliases `docteur.make`, `docteur.verify`): the one funnel
every command's outcome goes through.

Every error a user can cause ends as one line on stderr, `docteur: error: ...`, exit
status 1; Ctrl-C 130, SIGTERM 143, SIGHUP 129 (after the same clean-up); a closed stdout
141, silently, as a shell pipeline's writer; never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from _signal import signal  # not `signal`: its enums cost ~4 ms of imports (see errors.py)
from collections.abc import Sequence

from . import log
from .errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    STOP_SIGNALS,
    Terminated,
    describe,
    is_user_error,
    terminate,
)
from .parser import Parser, build, make_args, single, verify_args, wants_json

PROG = "docteur"


def _version() -> str:
    # The one source of the version (pyproject.toml reads it too): no importlib.metadata,
    # whose imports cost ~25 ms.
    from docteur.guest import __version__

    return __version__


def build_parser() -> Parser:
    from .commands import COMMANDS

    return build(COMMANDS, _version)


def _quiet_stdout() -> None:
    """The reader of stdout is gone: what is still buffered goes nowhere, so that the
    interpreter's final flush does not complain on stderr."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    log.set_format("json" if wants_json(sys.argv[1:] if argv is None else argv) else "console")
    args = parser.parse_args(argv)
    log.configure(getattr(args, "log_format", "console"), getattr(args, "verbose", 0))
    # SIGTERM (`timeout`, `kill`) and SIGHUP (the terminal closed) clean up like Ctrl-C:
    # no temp file, scratch dir or VM left.
    previous = {}
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        previous = {sig: signal(sig, terminate) for sig in STOP_SIGNALS}
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        if isinstance(e, Terminated):
            log.error_line("terminated", parser.prog)
            return e.status
        log.error_line("interrupted", parser.prog)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except Exception as e:
        if not is_user_error(e):
            raise
        log.error_line(describe(e), parser.prog)
        return EXIT_FAILURE
    finally:
        for sig, handler in previous.items():
            signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser(), argv)


def make_main(argv: Sequence[str] | None = None) -> int:
    from .commands import make

    return run(single("docteur.make", make_args, make, "Build a docteur image.", _version), argv)


def verify_main(argv: Sequence[str] | None = None) -> int:
    from .commands import verify

    return run(single("docteur.verify", verify_args, verify, "Check a docteur image.", _version), argv)


if __name__ == "__main__":
    sys.exit(main())
