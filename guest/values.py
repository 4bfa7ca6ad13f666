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


class Listing(NamedTuple):
    """A list's answer: the entries, pulled lazily (may end with one Failure)."""

    entries: Iterator[Entry | Failure]


Answer = Result | Failure | Body | Listing
