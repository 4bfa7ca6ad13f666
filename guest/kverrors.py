"""The errors of key-value writes, named as mirage-kv names them.

Each carries the path(s) it is about and a `code`: the error name the
protocol sends (`not_found`, `value_expected`, ...), so a server maps an
exception to its wire name without a table of its own.
"""

from __future__ import annotations

from .errors import DocteurError, NotFound


def show(path: bytes) -> str:
    """A path as it appears in a message: quoted, undecodable bytes replaced."""
    return repr(path.decode("utf-8", "replace"))


class InvalidPath(DocteurError):
    """A path with NUL, empty, `.` or `..` segments, or a name git refuses."""

    code = "invalid_path"


class InvalidMode(DocteurError):
    """A put with a mode that is not a file, an executable or a symlink."""

    code = "bad_request"  # the protocol's name: a request no server can take


class PathError(DocteurError):
    """An error about one path: "'PATH': why", the why a default of each kind."""

    code = "internal"
    why = ""

    def __init__(self, path: bytes, why: str | None = None):
        super().__init__(f"{show(path)}: {why or self.why}")
        self.path = path


class PathNotFound(PathError, NotFound):
    """`Not_found k`: nothing is bound at k."""

    code = "not_found"
    why = "no such file or directory"


class ValueExpected(PathError):
    """`Value_expected k`: a value was expected at k, a directory is there."""

    code = "value_expected"
    why = "a file was expected but a directory is there"


class DictionaryExpected(PathError):
    """`Dictionary_expected k`: a directory was expected at k (often a prefix of
    the path written), a file is there."""

    code = "dictionary_expected"
    why = "a directory was expected but a file is there"


class AlreadyPresent(PathError):
    """`Already_present k`: k is bound and the operation will not replace it."""

    code = "already_present"
    why = "already present"


class RenameSourcePrefix(DocteurError):
    """`Rename_source_prefix (src, dst)`: a directory cannot move inside itself."""

    code = "rename_source_prefix"

    def __init__(self, source: bytes, dest: bytes):
        super().__init__(f"cannot move {show(source)} inside itself ({show(dest)})")
        self.path = source
        self.dest = dest


# -- the server's write errors (protocol version 2) ----------------------------------
class ReadOnlyDisk(DocteurError):
    """Writes refused: a disk served read-only, without a write area, or stopped
    after an I/O error."""

    code = "read_only"


class Busy(DocteurError):
    """Another batch is open on the disk."""

    code = "busy"


class Conflict(DocteurError):
    """The expected head is not the head."""

    code = "conflict"


class BadArguments(DocteurError):
    """Arguments the request may not carry here (commit arguments inside a batch)."""

    code = "bad_request"


class WriteFailed(DocteurError):
    """An I/O error writing or flushing: the batch is lost, the disk stops writing."""

    code = "image"


class NoBatch(DocteurError):
    """commit or abort without a batch of this connection on the disk."""

    code = "no_batch"


# Most specific first, for a server's error table.
KV_ERRORS: tuple[type[DocteurError], ...] = (
    InvalidPath,
    InvalidMode,
    PathNotFound,
    ValueExpected,
    DictionaryExpected,
    AlreadyPresent,
    RenameSourcePrefix,
)
