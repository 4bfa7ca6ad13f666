"""`docteur push --socket` and `docteur pull --socket`: the image is a running appliance.

The host does the network side with builder/sync/'s push and pull, unchanged; this
`SocketImage` answers what they ask of an image through the appliance's protocol
(vm/sync.py): the head and the remote's record (`sync_info`), objects by id (`objects`,
the commits and trees a history walk reads are kept), and takes the result as one
request (`import` of a pack, `set_synced`), each with the head it was computed from as
compare-and-swap. It lives here, where builder/ and vm/ may both be imported.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zlib
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import TypeVar

from dulwich.pack import UnpackedObject

from docteur.builder.errors import BuildError
from docteur.builder.sync.received import Received
from docteur.builder.sync.sending import sent_records
from docteur.builder.sync.state import SyncState
from docteur.cli.progress import Progress
from docteur.guest.errors import NotFound
from docteur.guest.objects import COMMIT, TREE, sha1
from docteur.guest.pack import PACK_HEADER
from docteur.guest.packwrite import entry_header
from docteur.vm import sync as vsync
from docteur.vm.client import Client, new_runner

T = TypeVar("T")
SENT_AHEAD = 8 << 20  # bytes of a push's objects read from the appliance ahead of dulwich


async def _collect(items: AsyncIterator[T]) -> list[T]:
    return [item async for item in items]


async def _take(records: AsyncIterator[tuple[bytes, str | None, bytes, bool]],
                limit: int) -> list[tuple[bytes, str | None, bytes, bool]]:  # fmt: skip
    """The next records, up to `limit` bytes of bodies (at least one; none at the end)."""
    out, size = [], 0
    async for record in records:  # a break leaves the generator where it is, to go on
        out.append(record)
        size += len(record[2])
        if size >= limit:
            break
    return out


class SocketImage:
    """An appliance's disk as builder/sync/image.py's SyncImage."""

    def __init__(self, runner: object, client: Client, disk: str, path: str):
        self.runner = runner
        self.client = client
        self.disk = disk
        self.name = f"{path} (disk {disk})"
        info = self._run(vsync.sync_info(client, disk))
        self._head = bytes.fromhex(info["head"])
        self._generation = int(info["generation"])
        self._record = info.get("remote", "")
        self._synced = bytes.fromhex(info["synced"]) if info.get("synced") else None
        writable = info.get("writable", "yes")
        self.read_only = None if writable == "yes" else writable
        # Commits and trees read (a walk reads them again and again), and absent ids.
        self._kept: dict[bytes, tuple[str, bytes] | None] = {}
        self._work: str | None = None

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return self.runner.run(coro)  # type: ignore[attr-defined]

    @property
    def head_commit(self) -> bytes:
        return self._head

    @property
    def generation(self) -> int:
        return self._generation

    def sync_state(self) -> SyncState:
        return SyncState(self._record, self._synced)

    def _load(self, oids: list[bytes], stored: bool = False) -> list[tuple[bytes, str | None, bytes, bool]]:
        records = self._run(_collect(vsync.read_objects(self.client, oids, self.disk, stored)))
        for oid, kind, body, entry in records:
            if kind is None or (kind in (COMMIT, TREE) and not entry):
                self._kept[oid] = None if kind is None else (kind, body)
        return records

    def __contains__(self, oid: bytes) -> bool:
        if oid not in self._kept:
            _, kind, _, _ = self._load([oid])[0]
            return kind is not None
        return self._kept[oid] is not None

    def read_object(self, oid: bytes) -> tuple[str, bytes]:
        if oid in self._kept:
            got = self._kept[oid]
        else:
            _, kind, body, _ = self._load([oid])[0]
            got = None if kind is None else (kind, body)
        if got is None:
            raise NotFound(f"object {oid.hex()} is not in {self.name}")
        return got

    def records(self, oids: list[bytes], bar: Progress) -> Iterator[UnpackedObject]:
        return sent_records(self._read_many(oids), len(oids), bar)

    def _read_many(self, oids: list[bytes]) -> Iterator[tuple[bytes, str, bytes, bool]]:
        """The objects a push sends, as PACK entries, a batch of ids a request; taken from
        the reply SENT_AHEAD bytes at a time (never a whole batch of big files at once)."""
        records = vsync.read_objects(self.client, oids, self.disk, stored=True)
        try:
            while got := self._run(_take(records, SENT_AHEAD)):
                for oid, kind, body, stored in got:
                    if kind is None:
                        raise BuildError(f"object {oid.hex()} is not in {self.name}")
                    yield oid, kind, body, stored
        finally:  # (abandoned by a failing push: its loop may be gone or busy, let it be)
            with contextlib.suppress(RuntimeError):
                self._run(records.aclose())

    def set_synced(self, commit: bytes, record: str) -> int:
        done = self._run(vsync.set_synced(self.client, self._head, commit, record, self.disk))
        self._generation = done.generation
        self._record, self._synced = record, commit
        return done.generation

    def adopt(self, received: Received | None, extra: Iterable[tuple[str, bytes]], head: bytes,
              synced: tuple[bytes, str] | None) -> int:  # fmt: skip
        """One import: the server's pack as it came (the guest completes it where thin),
        with a merge's trees and commit (`extra`) appended to it."""
        extra = list(extra)
        with self.scratch() as work:
            if received is not None and not extra:
                pack = received.path
            else:
                pack = os.path.join(work, "import.pack")
                _joined_pack(pack, received.path if received is not None else None, extra)
            done = self._run(vsync.import_pack(self.client, pack, self._head, head, synced, self.disk))
        self._head, self._generation = head, done.generation
        if synced is not None:
            self._synced, self._record = synced
        return done.generation

    @contextlib.contextmanager
    def scratch(self) -> Iterator[str]:
        if self._work is not None:  # the pull's, still open
            yield self._work
            return
        with tempfile.TemporaryDirectory(prefix="docteur-sync-") as work:
            self._work = work
            try:
                yield work
            finally:
                self._work = None


def _joined_pack(path: str, received: str | None, extra: list[tuple[str, bytes]]) -> None:
    """A git pack at `path`: the entries of the pack `received` byte for byte (at the same
    offsets, so that its OFS_DELTAs still point right; its thin bases stay for the guest
    to find), then `extra`'s objects whole; a new count and trailer."""
    h = sha1(b"", 1 << 30)
    with open(path, "wb") as out:

        def put(data: bytes) -> None:
            h.update(data)
            out.write(data)

        version, count = 2, 0
        if received is not None:
            with open(received, "rb") as f:
                head = f.read(PACK_HEADER.size)
                magic, version, count = PACK_HEADER.unpack(head)
                if magic != b"PACK":
                    raise BuildError(f"{received}: not a git pack")
                left = os.fstat(f.fileno()).st_size - PACK_HEADER.size - 20  # its trailer dropped
                put(PACK_HEADER.pack(b"PACK", version, count + len(extra)))
                while left > 0:
                    piece = f.read(min(left, 1 << 20))
                    if not piece:
                        raise BuildError(f"{received}: the pack ends early")
                    put(piece)
                    left -= len(piece)
        else:
            put(PACK_HEADER.pack(b"PACK", version, len(extra)))
        for kind, body in extra:
            put(entry_header(kind, len(body)) + zlib.compress(body, 1))
        out.write(h.digest())


@contextlib.contextmanager
def socket_image(path: str, disk: str, timeout: float) -> Iterator[SocketImage]:
    """The disk `disk` of the appliance serving `path`, as an image push and pull take."""
    from docteur.vm.targets.serving import check_path_length

    check_path_length(path)
    with new_runner() as runner:
        client = runner.run(Client.open_unix(path, timeout=timeout, disk=disk))
        try:
            yield SocketImage(runner, client, disk, path)
        finally:
            with contextlib.suppress(Exception):
                runner.run(client.close())

