"""Errors the builder shows to users: one line each, no traceback."""

from docteur.guest.errors import DocteurError


class BuildError(DocteurError):
    """`docteur make` cannot go on: bad source, missing ref, network, disk."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every cleanup runs (temp files, QEMU)."""
