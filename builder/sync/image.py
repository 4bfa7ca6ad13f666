"""What push and pull need of an image, whether it is a file or a running appliance.

push.py and pull.py talk to the remote and decide; an image only answers what it holds
(its head, its record of the remote, its objects) and takes the result (a new head with
the objects that came, a new record). `FileImage` is an image file under the writer's
lock; the appliance's (cli/syncsocket.py) asks a `docteur run --rw` server (PROTOCOL.md,
"Push and pull"), whose guest writes the disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Protocol

from dulwich.pack import UnpackedObject

from docteur.cli.progress import Progress
from docteur.guest.generations import Store, adopt

from ..scratch import scratch_dir
from ..stores import writable_store
from .received import Received
from .sending import records
from .state import SyncState, sync_state


class ObjectSource(Protocol):
    """Objects by id (what the history walks and a thin pack's bases read)."""

    def __contains__(self, oid: bytes) -> bool: ...

    def read_object(self, oid: bytes) -> tuple[str, bytes]: ...


class SyncImage(ObjectSource, Protocol):
    name: str  # for messages
    # Why the image cannot take a new generation now (None: it can): a pull is refused
    # before it fetches, a push goes ahead and records nothing.
    read_only: str | None

    @property
    def head_commit(self) -> bytes: ...

    @property
    def generation(self) -> int: ...

    def sync_state(self) -> SyncState: ...

    def records(self, oids: list[bytes], bar: Progress) -> Iterator[UnpackedObject]:
        """Each of `oids`, in order, as the PACK a push sends holds it (sending.py)."""
        ...

    def set_synced(self, commit: bytes, record: str) -> int:
        """Record `commit` as the tip of `record` (URL BRANCH): a root-only generation."""
        ...

    def adopt(self, received: Received | None, extra: Iterable[tuple[str, bytes]], head: bytes,
              synced: tuple[bytes, str] | None) -> int:  # fmt: skip
        """A new generation whose head is `head`, holding what the image lacked of the
        received objects and of `extra` (a merge's trees and commit), `synced` recorded."""
        ...

    def scratch(self) -> contextlib.AbstractContextManager[str]:
        """A directory for a fetched pack, removed after."""
        ...


class FileImage:
    """An image file, open for writing (its writer lock held) for as long as it is used."""

    def __init__(self, path: str, store: Store):
        self.name = path
        self.store = store
        self.read_only = None  # writable_store refused it otherwise

    @property
    def head_commit(self) -> bytes:
        return self.store.head_commit

    @property
    def generation(self) -> int:
        return self.store.generation

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.store

    def read_object(self, oid: bytes) -> tuple[str, bytes]:
        return self.store.read_object(oid)

    def records(self, oids: list[bytes], bar: Progress) -> Iterator[UnpackedObject]:
        return records(self.store, oids, bar)  # the PACK's own entries, reused

    def sync_state(self) -> SyncState:
        return sync_state(self.store)

    def set_synced(self, commit: bytes, record: str) -> int:
        return self.store.set_synced(commit, record)

    def adopt(self, received: Received | None, extra: Iterable[tuple[str, bytes]], head: bytes,
              synced: tuple[bytes, str] | None) -> int:  # fmt: skip
        writer = self.store.begin()
        if received is not None:
            received.import_into(writer)
        for kind, body in extra:
            writer.add(kind, body)
        return adopt(self.store, writer, head, synced)

    def scratch(self) -> contextlib.AbstractContextManager[str]:
        return scratch_dir(self.name)


@contextlib.contextmanager
def file_image(path: str) -> Iterator[FileImage]:
    with writable_store(path) as store:
        yield FileImage(path, store)
