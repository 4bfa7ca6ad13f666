"""The host's one error funnel: which errors are the user's, their one line, the exit codes.

Every host error derives from `HostError` (the builder's `BuildError`, the runtime's
`ApplianceError`/`QemuError`, the targets' `TargetError`, ...); `HostError` itself is a
`DocteurError`, the guest core's root, so one `except DocteurError` holds both sides. The
protocol client (`docteur.vm.client`) stays free of host imports (it is a library of its
own): its `ClientError` family is mapped here, in `is_user_error`, with dulwich's and
urllib3's.
"""

from __future__ import annotations

import errno

# _signal, not signal: signal's enums cost ~4 ms on every start (the numbers are the same).
from _signal import SIGHUP, SIGINT, SIGPIPE, SIGTERM

from docteur.guest.errors import DocteurError

EXIT_FAILURE = 1
EXIT_USAGE = 2  # argparse's
EXIT_INTERRUPTED = 128 + SIGINT  # 130, as a shell reports Ctrl-C
# A closed stdout (`docteur query ... | head -1`) ends every command silently with the
# status a shell pipeline's writer gets from SIGPIPE: the reader had all it wanted.
EXIT_BROKEN_PIPE = 128 + SIGPIPE  # 141
STOP_SIGNALS = (SIGTERM, SIGHUP)  # cleaned up like Ctrl-C (see Terminated)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_LINE = "disk full"  # how every line about ENOSPC/EDQUOT starts
# Whose errors are a user's problem (a network, a server, a path), not a bug of ours.
_FOREIGN_MODULES = ("dulwich", "urllib3", "docteur.vm.client")


class HostError(DocteurError):
    """Root of the host side's errors: str() is the one line shown; `detail` (several
    lines, usually empty) follows it, e.g. the tail of a dead VM's console log."""

    detail = ""


class UsageError(HostError):
    """A command line that cannot work, found after argparse: `--block` without `=`, an
    unknown `query` command, a missing argument."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP: the terminal went away), raised like Ctrl-C so that every
    cleanup runs (temp files, QEMU); `status` is the shell's 128 + signal number."""

    def __init__(self, signum: int = SIGTERM) -> None:
        super().__init__(signum)
        self.status = 128 + signum


def terminate(signum: int, _frame: object) -> None:
    """The handler of STOP_SIGNALS while a command runs."""
    raise Terminated(signum)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL


def describe_os_error(exc: OSError, what: str | None = None) -> str:
    """One line for a system error: "disk full[: WHAT]" for ENOSPC/EDQUOT (the one place
    that says so), otherwise "WHAT: reason"; WHAT defaults to the error's file name."""
    what = what or (str(exc.filename) if exc.filename else None)
    if exc.errno in DISK_FULL:
        return f"{DISK_FULL_LINE}: {what}" if what else DISK_FULL_LINE
    reason = exc.strerror or str(exc)
    return f"{what}: {reason}" if what else reason


def is_user_error(exc: BaseException) -> bool:
    """Ours, the system's and the libraries' we map: one line, no traceback."""
    if isinstance(exc, DocteurError | OSError):
        return True
    module = type(exc).__module__ or ""
    return module.startswith(_FOREIGN_MODULES)


def describe(exc: BaseException) -> str:
    """The line (and a HostError's detail after it) a user error prints."""
    if isinstance(exc, OSError):
        return describe_os_error(exc)
    line = " ".join((str(exc) or type(exc).__name__).split())
    detail = getattr(exc, "detail", "")
    return f"{line}\n{detail}" if detail else line
