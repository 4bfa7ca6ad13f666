"""Crash-state testing of the generation store: record writes, rebuild every crash state.

The model is SQLite's crash VFS and dm-log-writes/CrashMonkey: everything before
the last completed flush is durable; of the writes since, any subset may have
reached the disk, in any order; the write in flight may be torn at 512-byte
sectors, each sector old, new, zeros or garbage. `crash_states` turns a recorded
list of operations into those states; a state is the list of (offset, bytes)
pieces to apply, in order, to the image as it was before the batch. A VM-side
recording (QEMU's blklogwrites) can be turned into the same operation list.

Also: a device that fails on a chosen write or flush, and git as the oracle of
what a commit holds (the image's PACK/IDX pairs copied into a bare repository).
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

from docteur.guest.device import Device, FileDevice
from docteur.guest.generations import Store
from docteur.guest.objects import MODE_FILE, MODE_TREE, TREE, Tree, TreeEntry, iter_tree
from docteur.guest.packwrite import PackWriter
from tests.gitfixtures import git

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
        self.ops: list[Op] = []

    def pread(self, n: int, off: int) -> bytes:
        return self.inner.pread(n, off)

    def _raw_pwrite(self, data: bytes | memoryview, off: int) -> None:
        self.ops.append(("write", off, bytes(data)))
        self.inner._raw_pwrite(data, off)

    def _raw_flush(self) -> None:
        self.ops.append(("flush",))
        self.inner._raw_flush()


class FaultyDevice(FileDevice):
    """A real image file whose `fail_write`-th write or `fail_flush`-th flush (from 1)
    fails with EIO, as a dying disk would report it."""

    def __init__(self, path: str, fail_write: int = 0, fail_flush: int = 0):
        super().__init__(path, writable=True)
        self.fail_write, self.fail_flush = fail_write, fail_flush
        self.writes = self.flushes = 0

    def _raw_pwrite(self, data: bytes | memoryview, off: int) -> None:
        self.writes += 1
        if self.writes == self.fail_write:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super()._raw_pwrite(data, off)

    def _raw_flush(self) -> None:
        self.flushes += 1
        if self.flushes == self.fail_flush:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        super()._raw_flush()


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


# -- trees -----------------------------------------------------------------------------
def write_tree(writer: PackWriter, files: dict[str, bytes]) -> bytes:
    """Add the blobs and trees of `files` (path -> bytes) to `writer`; the root tree's id."""
    top: dict = {}
    for path, data in files.items():
        node = top
        *dirs, name = path.strip("/").split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = data

    def build(node: dict) -> bytes:
        entries = []
        for name, value in node.items():
            if isinstance(value, dict):
                entries.append(TreeEntry(MODE_TREE, name.encode(), build(value)))
            else:
                entries.append(TreeEntry(MODE_FILE, name.encode(), writer.add("blob", value)))
        return writer.add(TREE, Tree.from_entries(entries).as_raw())

    return build(top)


def store_files(store: Store, commit: bytes) -> dict[str, tuple[int, bytes]]:
    """path -> (mode, bytes) of a commit, read through the store (every object hash-checked)."""
    out: dict[str, tuple[int, bytes]] = {}

    def walk(tree: bytes, prefix: str) -> None:
        kind, body = store.read_object(tree)
        assert kind == TREE
        for entry in iter_tree(body):
            path = prefix + entry.name.decode()
            if entry.mode == MODE_TREE:
                walk(entry.id, path + "/")
            else:
                out[path] = (entry.mode, store.read_object(entry.id)[1])

    walk(store.commit_object(commit).tree, "")
    return out


# -- git as the oracle --------------------------------------------------------------------
def export_packs(image: str, repo: Path) -> bytes:
    """Copy every live PACK/IDX of the image into a bare repository; the head commit id."""
    if not repo.exists():
        git("init", "-q", "--bare", repo)
    pack_dir = repo / "objects" / "pack"
    with FileDevice(image) as dev, Store.open(dev) as store:
        lay = store.layout
        spans = [(28, lay.pack_end - 28, lay.idx_offset, lay.idx_end - lay.idx_offset)]
        spans += [(e.pack_offset, e.pack_length, e.idx_offset, e.idx_length) for e in store.extents]
        for pack_off, pack_len, idx_off, idx_len in spans:
            pack = dev.pread(pack_len, pack_off)
            name = f"pack-{pack[-20:].hex()}"
            (pack_dir / f"{name}.pack").write_bytes(pack)
            (pack_dir / f"{name}.idx").write_bytes(dev.pread(idx_len, idx_off))
        head = store.head_commit
    git("update-ref", "refs/heads/main", head.hex(), cwd=repo)
    return head


def git_files(repo: Path, commit: bytes) -> dict[str, tuple[int, bytes]]:
    """path -> (mode, bytes) of `commit` as git reads it."""
    listing = git("ls-tree", "-r", "-z", "--full-tree", commit.hex(), cwd=repo)
    out: dict[str, tuple[int, bytes]] = {}
    items = [line for line in listing.split(b"\0") if line]
    ids = "\n".join(line.split(b"\t")[0].split()[2].decode() for line in items) + "\n"
    proc = subprocess.run(
        ["git", "cat-file", "--batch"], cwd=repo, input=ids.encode(), capture_output=True, check=True
    )
    data, pos = proc.stdout, 0
    for line in items:
        meta, path = line.split(b"\t", 1)
        mode = int(meta.split()[0], 8)
        header_end = data.index(b"\n", pos)
        size = int(data[pos:header_end].split()[2])
        out[path.decode()] = (mode, data[header_end + 1 : header_end + 1 + size])
        pos = header_end + 1 + size + 1
    return out
