"""Helpers for the generation store's tests: a plain image, and one-call commits."""

from __future__ import annotations

from pathlib import Path

from docteur.builder.make import make
from docteur.guest.capacity import prepare
from docteur.guest.device import FileDevice
from docteur.guest.generations import Store
from tests.crashstates import write_tree

AUTHOR = "Gen Test <gen@example.com>"
FIRST_FILES = {"readme.txt": b"first generation\n", "sub/old.txt": b"old\n"}


def plain_image(root: Path, files: dict[str, bytes] = FIRST_FILES) -> Path:
    """A read-only image made by `docteur make` from a directory holding `files`."""
    src = root / "src"
    for path, data in files.items():
        (src / path).parent.mkdir(parents=True, exist_ok=True)
        (src / path).write_bytes(data)
    image = root / "plain.img"
    make(f"file://{src}", str(image), date="2024-01-01T00:00:00Z")
    return image


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
