"""The values the disk view answers and the protocol carries.

Plain data, no wire format: `kv` builds them, `service` answers with them,
`protocol` encodes them. Cheap to import (no typing at run time).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NamedTuple
else:
    # typing costs ~0.1 s of imports in the VM (re, enum, functools...): the few
    # lines of typing.NamedTuple these classes use, on collections.namedtuple.
    class _NamedTupleMeta(type):
        def __new__(mcls, name: str, bases: tuple, ns: dict) -> type:
            if not bases:  # NamedTuple itself
                return super().__new__(mcls, name, bases, ns)
            fields = list(ns.get("__annotations__", {}))
            defaults = [ns[f] for f in fields if f in ns]
            cls = namedtuple(name, fields, defaults=defaults, module=ns["__module__"])
            cls.__annotations__ = ns.get("__annotations__", {})
            for key, value in ns.items():
                if key not in fields and key not in ("__module__", "__qualname__", "__annotations__"):
                    setattr(cls, key, value)
            return cls

    class NamedTuple(metaclass=_NamedTupleMeta):
        pass


MAX_PATH = 4096  # the longest path a request may name, in bytes
KINDS = ("absent", "file", "directory", "symlink", "submodule")


class Stat(NamedTuple):
    kind: str
    mode: int
    size: int
    oid: bytes
    mtime: int

    @property
    def digest(self) -> str:
        return self.oid.hex()


class Entry(NamedTuple):
    key: bytes  # full key, "/dir/name"
    kind: str
    mode: int


class GetEnd(NamedTuple):
    size: int  # the whole file's size
    offset: int  # where the bytes sent start (clamped)
    length: int  # how many bytes were sent


# -- version 2: the arguments and results of writes --------------------------------
class CommitArgs(NamedTuple):
    """What a commit says: "" = the default message / author; `expected` = the
    head the client expects (20 bytes), None = whatever it is."""

    message: str = ""
    author: str = ""
    expected: bytes | None = None


class PutArgs(NamedTuple):
    size: int  # the bytes the CHUNKs will carry
    mode: int = 0o100644
    commit: CommitArgs | None = None  # outside a batch only


class RenameArgs(NamedTuple):
    dest: bytes
    commit: CommitArgs | None = None  # outside a batch only


class Begun(NamedTuple):
    """begin's result: the head the batch starts from."""

    head: bytes  # 20-byte commit id
    generation: int


class Committed(NamedTuple):
    """A commit's result (and a single write's): `committed` False = the tree
    did not change, nothing was written (`commit` is then 20 zero bytes)."""

    committed: bool
    commit: bytes
    generation: int
    free: int

    @property
    def commit_id(self) -> str | None:
        return self.commit.hex() if self.committed else None


class Put(NamedTuple):
    """put's result: the blob's id, and the commit when the put was its own batch."""

    blob: bytes
    commit: Committed | None = None


class LogEntry(NamedTuple):
    commit: bytes  # 20-byte id
    time: int  # committer time, seconds
    tz: int  # its offset in minutes
    author: str
    message: str


# -- answers: what the service gives back for one request -------------------------
class Result(NamedTuple):
    """A complete answer: `value` is the op's END result (None for ping)."""

    value: object


class Failure(NamedTuple):
    """The request failed: an error name of PROTOCOL.md and one line."""

    code: str
    message: str


class Body(NamedTuple):
    """A get's answer: the bytes, pulled lazily, then the END record.

    `chunks` may yield one Failure (and then stop) when reading fails midway.
    `end` None means a whole file: its size is what was sent.
    """

    chunks: Iterator[bytes | Failure]
    end: GetEnd | None
    op: str = "get"  # objects: the same stream, its END the u64 of bytes sent


class Listing(NamedTuple):
    """A list's answer: the entries, pulled lazily (may end with one Failure)."""

    entries: Iterator[Entry | Failure]


class History(NamedTuple):
    """A log's answer: the commits, newest first, pulled lazily (may end with one Failure)."""

    entries: Iterator[LogEntry | Failure]


class Upload:
    """A put's answer: where its CHUNKs go, as they arrive (never all in memory).

    The connection calls `write` with each piece, then `finish` once the
    declared size has arrived (its Answer is the reply), or `abort` when the
    client cancels or goes away. `write` answers a Failure to stop the put
    (the remaining CHUNKs are then read and dropped)."""

    def write(self, data: bytes) -> Failure | None:
        raise NotImplementedError

    def finish(self) -> Result | Failure:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


Answer = Result | Failure | Body | Listing | History | Upload


# -- version 2: push and pull through the appliance (sync.py) ----------------------
class ImportArgs(NamedTuple):
    """An import: a pack of `size` bytes (CHUNKs), made the head `head` if the head is
    still `expected`; `synced` (commit, "URL BRANCH") recorded in the same root."""

    size: int
    expected: bytes
    head: bytes
    synced: tuple[bytes, str] | None = None


class ObjectsArgs(NamedTuple):
    """objects: `ids`, each whole, or (`stored`) a whole one of the PACK as its entry."""

    ids: list[bytes]
    stored: bool = False


class SyncedArgs(NamedTuple):
    """set_synced: record `commit` as `remote`'s tip if the head is still `expected`."""

    expected: bytes
    commit: bytes
    remote: str
