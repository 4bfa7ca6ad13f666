"""Crash-state testing of the generation store: record writes, rebuild every crash state.

The model is SQLite's crash VFS and dm-log-writes/CrashMonkey: everything before
the last completed flush is durable; of the writes since, any subset may have
reached the disk, in any order; the write in flight may be torn at 512-byte
sectors, each sector old, new, zeros or garbage. `crash_states` turns a recorded
list of operations into those states; a state is the list of (offset, bytes)
pieces to apply, in order, to the image as it was before the batch. A VM-side
recording (QEMU's blklogwrites) can be turned into the same operation list.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from docteur.guest.device import Device, FileDevice
from docteur.guest.generations import Store
from docteur.guest.objects import MODE_FILE
from tests.support.store import store_files, write_tree

SECTOR = 512
Write = tuple[int, bytes]
Op = tuple  # ("write", offset, data) or ("flush",)


class RecordingDevice(Device):
    """Passes everything to `inner` and records every write and flush in order."""

    def __init__(self, inner: FileDevice):
        self.inner = inner
        self.fd = inner.fd
        self.size = inner.size
        self.name = inner.name
        self.writable = inner.writable
        self.ops: list[Op] = []

    def pread(self, n: int, off: int) -> bytes:
        return self.inner.pread(n, off)

    def _raw_pwrite(self, data: bytes | memoryview, off: int) -> None:
        self.ops.append(("write", off, bytes(data)))
        self.inner._raw_pwrite(data, off)

    def _raw_flush(self) -> None:
        self.ops.append(("flush",))
        self.inner._raw_flush()


# -- QEMU's blklogwrites log (dm-log-writes format) -----------------------------------------
LOG_WRITES_MAGIC = 0x6A736677736872
LOG_FLUSH, LOG_FUA, LOG_DISCARD, LOG_MARK = 1, 2, 4, 8


def read_log_writes(path: Path) -> list[Op]:
    """The operations a blklogwrites log records, as RecordingDevice records them.

    Little-endian throughout: sector 0 holds magic, version, entry count (updated at
    each flush) and the log's sector size; from sector 1 on, each entry is one sector
    (sector, sector count, flags, data length) followed by the written data. FUA,
    discards and marks never come from the store (virtio-blk has no FUA), so they
    are refused rather than modelled."""
    data = path.read_bytes()
    magic, version, count, sector = struct.unpack_from("<QQQI", data)
    if magic != LOG_WRITES_MAGIC or version != 1:
        raise ValueError(f"{path}: not a dm-log-writes log (version 1)")
    ops: list[Op] = []
    pos = sector
    for i in range(count):
        first, sectors, flags, _ = struct.unpack_from("<QQQQ", data, pos)
        pos += sector
        if flags & (LOG_FUA | LOG_DISCARD | LOG_MARK):
            raise ValueError(f"{path}: entry {i} has flags {flags:#x}, which the store never issues")
        if flags & LOG_FLUSH:
            ops.append(("flush",))
            continue
        size = sectors * sector
        ops.append(("write", first * sector, data[pos : pos + size]))
        pos += size
    return ops


# -- crash states ------------------------------------------------------------------
def _sample(n: int, limit: int, rng: random.Random) -> list[int]:
    if n <= limit:
        return list(range(n))
    return sorted({0, n - 1, *rng.sample(range(1, n - 1), limit - 2)})


def crash_states(
    ops: list[Op], *, seed: int = 8, subset_limit: int = 10, sectors: int = 8
) -> Iterator[tuple[str, list[Write], bool]]:
    """(label, pieces, acknowledged) for every crash state of `ops`.

    `acknowledged` is true only for the state after the final flush (the batch
    returned). Epochs of more than `subset_limit` writes get 64 sampled subsets;
    writes of more than `sectors` sectors get that many sampled tear points."""
    rng = random.Random(seed)
    epochs: list[list[Write]] = [[]]
    for op in ops:
        if op[0] == "flush":
            epochs.append([])
        else:
            epochs[-1].append((op[1], op[2]))
    durable: list[Write] = []
    for e, epoch in enumerate(epochs):
        n = len(epoch)
        for k in range(n + 1):
            if k < n or e == len(epochs) - 1:
                yield f"epoch {e} prefix {k}", durable + epoch[:k], False
        # Any subset may have landed (the device reorders what it caches).
        masks = range(1, 1 << n) if n <= subset_limit else [rng.getrandbits(n) for _ in range(64)]
        for mask in masks:
            chosen = [w for i, w in enumerate(epoch) if mask >> i & 1]
            if len(chosen) not in (0, n) and chosen != epoch[: len(chosen)]:
                yield f"epoch {e} subset {mask:b}", durable + chosen, False
        # The write in flight, torn at a sector: before it new, at it old/zeros/garbage,
        # after it old (in order) or new (reordered).
        for k, (off, data) in enumerate(epoch):
            count = len(data) // SECTOR
            for s in _sample(count, sectors, rng):
                cut = s * SECTOR
                for variant in ("old", "zeros", "garbage"):
                    bad = (
                        b""
                        if variant == "old"
                        else bytes(SECTOR)
                        if variant == "zeros"
                        else rng.randbytes(SECTOR)
                    )
                    head = [(off, data[:cut])] + ([(off + cut, bad)] if bad else [])
                    yield (
                        f"epoch {e} write {k} torn at sector {s} ({variant})",
                        durable + epoch[:k] + head,
                        False,
                    )
                    rest = [(off + cut + SECTOR, data[cut + SECTOR :])]
                    yield (
                        f"epoch {e} write {k} sector {s} {variant}, others new",
                        durable + epoch[:k] + head + rest,
                        False,
                    )
        durable = durable + epoch
    yield "acknowledged", durable, True


class WorkImage:
    """An image file that crash states are applied to and undone from a snapshot."""

    def __init__(self, before: Path, work: Path):
        self.before = before
        self.path = work
        self._snap = os.open(before, os.O_RDONLY)
        self._fd = os.open(work, os.O_RDWR)

    def apply(self, pieces: list[Write]) -> None:
        for off, data in pieces:
            if data:
                os.pwrite(self._fd, data, off)

    def key(self, pieces: list[Write]) -> bytes:
        """A digest of the bytes the pieces touched, as they are now (same key, same image)."""
        spans: list[list[int]] = []
        for start, end in sorted((off, off + len(data)) for off, data in pieces if data):
            if spans and start <= spans[-1][1]:
                spans[-1][1] = max(spans[-1][1], end)
            else:
                spans.append([start, end])
        h = hashlib.sha1()
        for start, end in spans:
            h.update(b"%d:%d:" % (start, end))
            h.update(os.pread(self._fd, end - start, start))
        return h.digest()

    def undo(self, pieces: list[Write]) -> None:
        for off, data in pieces:
            if data:
                os.pwrite(self._fd, os.pread(self._snap, len(data), off), off)

    def close(self) -> None:
        os.close(self._snap)
        os.close(self._fd)


# -- checking every state ---------------------------------------------------------------
Files = dict[str, bytes]
# One state in this many (and the first of each outcome) also gets a new batch written.
RECOVERY_EVERY = 97


class Batch(NamedTuple):
    """What a recorded batch may end in: `old` or `new` (head commit, generation);
    `expected` maps each commit to its files; `first` is the first generation's bytes."""

    first: bytes
    expected: dict[bytes, Files]
    old: tuple[bytes, int]
    new: tuple[bytes, int]


def check_crash_states(before: Path, ops: list[Op], batch: Batch, scratch: Path) -> int:
    """Rebuild every crash state of `ops` on a copy of `before` (the image before the
    batch) and check it; returns the number of distinct states checked."""
    work = scratch / "work.img"
    shutil.copyfile(before, work)
    state = WorkImage(before, work)
    seen: set[int] = set()
    checked: set[bytes] = set()  # states that end in the same bytes are checked once
    count = 0
    try:
        for label, pieces, acked in crash_states(ops):
            state.apply(pieces)
            try:
                key = state.key(pieces)
                if key in checked and not acked:
                    continue
                checked.add(key)
                gen = _check_state(work, batch, acked)
                if gen not in seen or count % RECOVERY_EVERY == 0:
                    seen.add(gen)
                    _check_recovery(work, scratch / "recovered.img", batch.expected)
                count += 1
            except AssertionError as exc:
                raise AssertionError(f"crash state {label}: {exc}") from None
            finally:
                state.undo(pieces)
    finally:
        state.close()
    assert seen == {batch.old[1], batch.new[1]}, "both outcomes must occur among the crash states"
    return count


def as_files(listing: dict[str, tuple[int, bytes]]) -> Files:
    assert all(mode == MODE_FILE for mode, _ in listing.values())
    return {path: data for path, (_, data) in listing.items()}


def _check_state(work: Path, batch: Batch, acked: bool) -> int:
    with open(work, "rb") as f:
        assert f.read(len(batch.first)) == batch.first, "the first generation's bytes changed"
    with FileDevice(str(work)) as dev, Store.open(dev) as store:
        got = (store.head_commit, store.generation)
        assert got in (batch.old, batch.new), (
            f"head {got[0].hex()} (generation {got[1]}) is neither old nor new"
        )
        if acked:
            assert got == batch.new, "an acknowledged commit was lost"
        assert as_files(store_files(store, store.head_commit)) == batch.expected[store.head_commit]
        return store.generation


def _check_recovery(work: Path, scratch: Path, expected: dict[bytes, Files]) -> None:
    """Another batch on the recovered image works, and lands on top of what was recovered."""
    shutil.copyfile(work, scratch)
    with FileDevice(str(scratch), writable=True) as dev, Store.open(dev) as store:
        head, gen = store.head_commit, store.generation
        files = {**expected[head], "after-crash.txt": os.urandom(8).hex().encode()}
        writer = store.begin()
        tree = write_tree(writer, files)
        commit, new_gen = store.commit(writer, tree, "after", "R <r@example.com>", when=1)
    with FileDevice(str(scratch)) as dev, Store.open(dev) as store:
        assert (store.head_commit, store.generation) == (commit, new_gen)
        assert new_gen > gen
        assert store.commit_object().parents == (head,)
        assert as_files(store_files(store, commit)) == files
        assert not store.warnings()
