"""Errors the builder shows to users: one line each, no traceback."""

from docteur.guest.errors import DocteurError


class BuildError(DocteurError):
    """`docteur make` cannot go on: bad source, missing ref, network, disk."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP: the terminal went away), raised like Ctrl-C so that every
    cleanup runs (temp files, QEMU); `status` is the shell's 128 + signal number."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(signum)
        self.status = 128 + signum
