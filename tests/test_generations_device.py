"""The device layer under the store: direct I/O with aligned buffers, and a real block device."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from docteur.guest.device import BLOCK, FileDevice
from docteur.guest.generations import Store
from tests.support.git import needs_git
from tests.support.store import AUTHOR, FIRST_FILES, open_store, store_files, writable_image, write_tree

pytestmark = needs_git

FILES = {**FIRST_FILES, "direct.bin": os.urandom(3 * BLOCK + 17), "d/e.txt": b"deep\n"}


def _commit_and_check(path: str, image: Path, direct: bool | None = None) -> None:
    """A batch written through `path` with direct I/O; `image` (the file) then holds it."""
    with FileDevice(path, writable=True, direct=direct) as dev, Store.open(dev) as store:
        assert dev._direct_fd >= 0  # the writes below go through O_DIRECT
        writer = store.begin()
        commit, gen = store.commit(writer, write_tree(writer, FILES), "direct", AUTHOR, when=5)
        # Unaligned reads through the aligned buffer give the bytes the page cache gives.
        idx = store.extents[0].idx_offset
        with open(image, "rb") as f:
            for off, n in ((0, 28), (5, BLOCK), (BLOCK - 3, 2 * BLOCK + 9), (idx + 1, 100)):
                f.seek(off)
                assert dev.pread(n, off) == f.read(n)
    dev2, store2 = open_store(image)
    with dev2, store2:
        assert (store2.head_commit, store2.generation) == (commit, gen)
        assert {p: d for p, (_, d) in store_files(store2, commit).items()} == FILES


def test_direct_io_on_an_image_file(tmp_path: Path) -> None:
    """The path a block device takes (aligned buffers, O_DIRECT), on a file."""
    image = writable_image(tmp_path)
    _commit_and_check(str(image), image, direct=True)


def _losetup(image: Path) -> str | None:
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        return None
    proc = subprocess.run(
        ["losetup", "-f", "--show", str(image)], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else None


def test_a_real_block_device(tmp_path: Path) -> None:
    image = writable_image(tmp_path)
    loop = _losetup(image)
    if loop is None:
        pytest.skip("needs root and a free loop device")
    try:
        with FileDevice(loop) as dev:
            assert dev.is_block and dev.size == image.stat().st_size
        _commit_and_check(loop, image)
    finally:
        subprocess.run(["losetup", "-d", loop], check=True)
