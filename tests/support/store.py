"""The generation store's helpers: images to write to, one-call commits, trees from a dict,
reading a commit back, and a device that fails when told to."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from docteur.guest.capacity import prepare
from docteur.guest.device import FileDevice
from docteur.guest.generations import Store
from docteur.guest.objects import MODE_FILE, MODE_TREE, TREE, Tree, TreeEntry, iter_tree
from docteur.guest.packwrite import PackWriter
from docteur.guest.roots import Root
from tests.support.images import image_of

AUTHOR = "Gen Test <gen@example.com>"
FIRST_FILES = {"readme.txt": b"first generation\n", "sub/old.txt": b"old\n"}


def plain_image(root: Path, files: dict[str, bytes] = FIRST_FILES) -> Path:
    """A read-only image made by `docteur make` from a directory holding `files`."""
    src = root / "src"
    for path, data in files.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    return image_of(src, root / "plain.img", date="2024-01-01T00:00:00Z")


def writable_image(root: Path, capacity: int = 8 << 20) -> Path:
    image = plain_image(root)
    prepare(str(image), capacity)
    return image


def commit_files(
    image: Path, files: dict[str, bytes], message: str = "batch", when: int = 1, check: str = "cheap"
) -> tuple[bytes, int]:
    """Commit `files` as the whole tree of a new generation; (commit id, generation)."""
    with FileDevice(str(image), writable=True) as dev, Store.open(dev, check) as store:
        writer = store.begin()
        return store.commit(writer, write_tree(writer, files), message, AUTHOR, when=when)


def open_store(image: Path, check: str = "cheap") -> tuple[FileDevice, Store]:
    dev = FileDevice(str(image))
    return dev, Store.open(dev, check)


def head_root(image: Path) -> Root:
    """The root record of `image`'s head generation (its sync record: `synced`, `remote`)."""
    dev, store = open_store(image)
    with dev, store:
        assert store.head is not None
        return store.head


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
    """path -> (mode, bytes) of a commit, read through the store (every object
    hash-checked); a name that is not UTF-8 keeps its bytes (surrogateescape)."""
    out: dict[str, tuple[int, bytes]] = {}

    def walk(tree: bytes, prefix: str) -> None:
        kind, body = store.read_object(tree)
        assert kind == TREE
        for entry in iter_tree(body):
            path = prefix + os.fsdecode(entry.name)
            if entry.mode == MODE_TREE:
                walk(entry.id, path + "/")
            else:
                out[path] = (entry.mode, store.read_object(entry.id)[1])

    walk(store.commit_object(commit).tree, "")
    return out


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
