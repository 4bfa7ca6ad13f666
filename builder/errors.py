"""Errors the builder shows to users: one line each, no traceback."""

from docteur.guest.errors import DocteurError


class BuildError(DocteurError):
    """`docteur make` cannot go on: bad source, missing ref, network, disk."""
