"""Errors the builder shows to users: one line each, no traceback."""

from docteur.cli.errors import HostError


class BuildError(HostError):
    """`docteur make` cannot go on: bad source, missing ref, network, disk."""
