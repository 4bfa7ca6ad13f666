"""Defaults of `docteur make` that the command line shows, in a module cheap to import
(the CLI must not pay for dulwich and urllib3 just to print its help)."""

DEFAULT_TIMEOUT = 60.0  # seconds without a byte from the server before a fetch gives up
# The original docteur's identity for a directory's commit, and the writes' default author.
AUTHOR_NAME = "Dr. Greenthumb"
AUTHOR_EMAIL = "noreply@cypress.hill"
DEFAULT_AUTHOR = f"{AUTHOR_NAME} <{AUTHOR_EMAIL}>"
