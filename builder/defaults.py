"""Defaults of `docteur make` that the command line shows, in a module cheap to import
(the CLI must not pay for dulwich and urllib3 just to print its help)."""

# The original docteur's identity for a directory's commit, and the writes' default
# author: the guest's protocol writes use it too, so it is defined there, once.
from docteur.guest.defaults import AUTHOR_EMAIL, AUTHOR_NAME, DEFAULT_AUTHOR

__all__ = ["AUTHOR_EMAIL", "AUTHOR_NAME", "DEFAULT_AUTHOR", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 60.0  # seconds without a byte from the server before a fetch gives up
