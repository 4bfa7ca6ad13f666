"""Exceptions to answers: the one table from an error to its protocol name.

Errors that carry a `code` of PROTOCOL.md (kverrors' path errors, the writes'
no_space/read_only/busy/conflict/...) answer with it; the others by class, most
specific first. Nothing of the write side is imported here: a read-only server
never loads it.
"""

from __future__ import annotations

from .errors import DocteurError, ImageError, IntegrityError, NotFound
from .protocol import ERROR_CODES
from .treeview import NotADirectory, NotAFile
from .values import Failure


class NoSuchDisk(DocteurError):
    """A request names a disk that is not served."""


_ERROR_NAMES: tuple[tuple[type[BaseException], str], ...] = (
    (NoSuchDisk, "no_such_disk"),
    (NotFound, "not_found"),
    (NotAFile, "not_a_file"),
    (NotADirectory, "not_a_directory"),
    (IntegrityError, "integrity"),
    (ImageError, "image"),
    (OSError, "image"),
)


def error_code(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in ERROR_CODES:
        return code
    for cls, name in _ERROR_NAMES:
        if isinstance(exc, cls):
            return name
    return "internal"


def error_message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, DocteurError):
        return f"I/O error reading the image: {exc.strerror or exc}"
    if isinstance(exc, DocteurError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def failure(exc: BaseException) -> Failure:
    return Failure(error_code(exc), error_message(exc))
