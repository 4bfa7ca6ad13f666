"""Crash-state enumeration: every way a batch can be cut short recovers to the old or the new commit.

Each batch runs through a RecordingDevice on a real image file; every crash state
of its writes (tests/support/crash.py) is rebuilt on a copy of the image and opened.
Git, reading the image's own PACK/IDX files, is the oracle of what each commit holds.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from docteur.guest.capacity import prepare
from docteur.guest.device import FileDevice
from docteur.guest.generations import Store
from tests.support.crash import Batch, Files, RecordingDevice, as_files, check_crash_states
from tests.support.git import needs_git
from tests.support.oracle import export_packs, git_files
from tests.support.store import plain_image, write_tree

pytestmark = needs_git

BIG = 5 << 20
# Below this many states the test would not be checking what it claims to.
MIN_STATES = 1000
AUTHOR = "Crash Test <crash@example.com>"
WHEN = 1_800_000_000


def _small(files: Files) -> Files:
    return {**files, "hello.txt": b"hello, generations\n"}


def _deep(files: Files) -> Files:
    return {**files, "a/b/c/d/e/f/g/deep.txt": b"deep\n", "a/b/side.txt": b"side\n"}


def _many(files: Files) -> Files:
    kept = {p: d for p, d in files.items() if not p.startswith("sub/")}
    return {**kept, **{f"sub/f{i:03}.txt": b"file %d\n" % i for i in range(150)}}


def _rename_and_remove(files: Files) -> Files:
    out = {p: d for p, d in files.items() if not p.startswith("a/")}
    out["moved/big.bin"] = out.pop("big.bin")
    return out


BATCHES: list[tuple[str, Callable[[Files], Files] | None]] = [
    ("one small file", _small),
    ("deep paths", _deep),
    ("a 5 MiB blob", None),  # streamed, see _run_batch
    ("a directory replaced by many files", _many),
    ("rename and recursive remove", _rename_and_remove),
    ("a root-only generation (synced)", None),
    ("compaction", None),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Files]:
    files = {"readme.txt": b"first generation\n", "sub/old.txt": b"replaced by many files\n"}
    return plain_image(tmp_path_factory.mktemp("crash"), files), files


def test_every_crash_state_recovers_old_or_new(base: tuple[Path, Files], tmp_path: Path) -> None:
    first_image, files = base
    image = tmp_path / "img"
    shutil.copyfile(first_image, image)
    first_bytes = first_image.read_bytes()
    prepare(str(image), 24 << 20)
    repo = tmp_path / "oracle.git"
    expected: dict[bytes, Files] = {}
    head = export_packs(str(image), repo)
    expected[head] = files
    assert as_files(git_files(repo, head)) == files
    rng = random.Random(8)
    big = rng.randbytes(BIG)
    total = 0
    for name, change in BATCHES:
        before = tmp_path / "before.img"
        shutil.copyfile(image, before)
        with FileDevice(str(image), writable=True) as dev:
            rec = RecordingDevice(dev)
            with Store.open(rec) as store:
                old_head, old_gen = store.head_commit, store.generation
                if name == "compaction":
                    new_files = files
                    new_gen = store.compact()
                    new_head = store.head_commit
                elif name.startswith("a root-only"):
                    new_files, new_head = files, old_head
                    new_gen = store.set_synced(old_head, "https://example.com/site.git main")
                else:
                    writer = store.begin()
                    if change is None:
                        new_files = {**files, "big.bin": big}
                        pieces = (big[i : i + (1 << 20)] for i in range(0, BIG, 1 << 20))
                        writer.add_stream("blob", BIG, pieces)
                    else:
                        new_files = change(files)
                        # A blob the store holds already, streamed again: the writer rewinds.
                        if "moved/big.bin" in new_files:
                            writer.add("blob", b"spill first\n")
                            writer.add_stream("blob", BIG, iter([new_files["moved/big.bin"]]))
                    tree = write_tree(writer, new_files)
                    new_head, new_gen = store.commit(writer, tree, name, AUTHOR, when=WHEN + total)
        ops = rec.ops
        # A batch: data, flush, root, flush. Compaction clears the older roots after that.
        flushes = 3 if name == "compaction" else 2
        assert [op[0] for op in ops].count("flush") == flushes, f"{name}: {flushes} flushes expected"
        assert all(op[1] >= len(first_bytes) for op in ops if op[0] == "write")
        assert new_gen == old_gen + 1
        export_packs(str(image), repo)
        assert as_files(git_files(repo, new_head)) == new_files, f"{name}: git disagrees with the batch"
        expected[new_head] = new_files

        batch = Batch(first_bytes, expected, (old_head, old_gen), (new_head, new_gen))
        try:
            count = check_crash_states(before, ops, batch, tmp_path)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from None
        print(f"{name}: {count} distinct crash states")
        total += count
        files = new_files
    print(f"crash states checked: {total}")
    assert total >= MIN_STATES
