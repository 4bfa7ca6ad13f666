"""guest/batch.py on a counting device: two flushes per batch, nothing written for bad input
or an unchanged tree, paths checked before a blob streams."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from docteur.guest.batch import BadAuthor, Batch, BatchClosed
from docteur.guest.device import FileDevice
from docteur.guest.generations import Store
from docteur.guest.kverrors import DictionaryExpected, InvalidPath, PathNotFound, ValueExpected
from docteur.guest.objects import MODE_EXEC, MODE_FILE, MODE_LINK
from tests.support.crash import RecordingDevice
from tests.support.git import needs_git
from tests.support.store import AUTHOR, FIRST_FILES, open_store, store_files, writable_image

pytestmark = needs_git


class Counting:
    """A store on a recording device: how many writes and flushes a batch costs."""

    def __init__(self, image: Path):
        self.file = FileDevice(str(image), writable=True)
        self.dev = RecordingDevice(self.file)
        self.store = Store.open(self.dev)

    def count(self, kind: str) -> int:
        return sum(1 for op in self.dev.ops if op[0] == kind)

    def close(self) -> None:
        self.store.close()
        self.file.close()


@pytest.fixture
def counting(tmp_path: Path) -> Iterator[Counting]:
    c = Counting(writable_image(tmp_path, 32 << 20))
    yield c
    c.close()


def test_a_batch_is_one_commit_and_two_flushes(counting: Counting) -> None:
    batch = Batch(counting.store)
    big = random.Random(3).randbytes(5 << 20)
    batch.put(b"/a/b/c.txt", b"deep\n")
    batch.put_stream(b"/big.bin", len(big), (big[i : i + 65536] for i in range(0, len(big), 65536)))
    batch.put(b"/run.sh", b"#!/bin/sh\n", MODE_EXEC)
    batch.put(b"/link", b"a/b/c.txt", MODE_LINK)
    batch.rename(b"/readme.txt", b"/a")
    batch.remove(b"/sub")
    commit, generation = batch.commit("one batch", AUTHOR, when=5) or (b"", 0)
    assert generation == 1 and counting.count("flush") == 2
    files = store_files(counting.store, commit)
    assert files == {
        "a/b/c.txt": (MODE_FILE, b"deep\n"), "a/readme.txt": (MODE_FILE, FIRST_FILES["readme.txt"]),
        "big.bin": (MODE_FILE, big), "run.sh": (MODE_EXEC, b"#!/bin/sh\n"), "link": (MODE_LINK, b"a/b/c.txt"),
    }  # fmt: skip
    with pytest.raises(BatchClosed):
        batch.put(b"/late", b"too late\n")


@pytest.mark.parametrize(
    ("path", "error"),
    [(b"/readme.txt/x", DictionaryExpected), (b"/sub", ValueExpected), (b"/a/../b", InvalidPath),
     (b"/a\0b", InvalidPath), (b"//a", InvalidPath), (b"/.git/config", InvalidPath)],
)  # fmt: skip
def test_a_bad_path_is_refused_before_its_blob_streams(counting: Counting, path: bytes, error: type) -> None:
    batch = Batch(counting.store)
    big = random.Random(4).randbytes(6 << 20)  # would spill to the device at once

    def chunks() -> Iterator[bytes]:
        raise AssertionError("the blob was read before the path was checked")
        yield b""

    with pytest.raises(error):
        batch.put_stream(path, len(big), chunks())
    with pytest.raises(error):
        batch.put(path, big)
    assert counting.dev.ops == [] and not batch.changed
    batch.put(b"/ok.txt", b"the batch goes on\n")
    assert batch.commit("after errors", AUTHOR) is not None


def test_an_unchanged_tree_makes_no_commit_and_writes_nothing(counting: Counting) -> None:
    batch = Batch(counting.store)
    batch.put(b"/readme.txt", FIRST_FILES["readme.txt"])  # the same bytes again
    batch.put(b"/new.txt", b"new\n")
    batch.remove(b"/new.txt")
    assert batch.commit("nothing", AUTHOR) is None
    assert counting.dev.ops == [] and counting.store.generation == 0
    batch = Batch(counting.store)
    with pytest.raises(PathNotFound):
        batch.remove(b"/absent")
    with pytest.raises(BadAuthor):
        batch.commit("bad author", "nobody")
    batch.abort()
    with pytest.raises(BatchClosed):
        batch.commit("aborted", AUTHOR)
    assert counting.dev.ops == []


def test_clear_then_puts_replace_the_whole_tree(tmp_path: Path) -> None:
    image = writable_image(tmp_path)
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        batch = Batch(store)
        batch.clear()
        for path, data in FIRST_FILES.items():
            batch.put(b"/" + path.encode(), data)
        assert not batch.changed  # the same files: the same tree
        batch.put(b"/sub/new.txt", b"new\n")
        commit, _ = batch.commit("replace", AUTHOR) or (b"", 0)
    dev, store = open_store(image)
    with dev, store:
        assert {p: d for p, (_, d) in store_files(store, commit).items()} == {
            **FIRST_FILES, "sub/new.txt": b"new\n"}  # fmt: skip
