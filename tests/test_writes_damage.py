"""Through the CLI: damage in the newest generation falls back to the one before with one
warning line; compaction keeps every commit of the log and gives the space back."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from docteur.builder.writes import used_bytes
from tests.support.corrupt import corrupt
from tests.support.git import git, needs_git
from tests.support.store import open_store
from tests.support.writes import committed, docteur, git_head_files, made

pytestmark = needs_git

FILES = {"index.html": b"<p>front</p>\n", "docs/a.txt": b"a\n"}


def _newest(image: Path) -> dict[str, int]:
    dev, store = open_store(image)
    with dev, store:
        assert store.head is not None and store.area is not None
        slot = store.slots.index(store.head)
        e = store.extents[0]
        return {"root": store.area.slot_offset(slot) + 100, "pack": e.pack_offset + 40,
                "idx": e.idx_offset + 1100}  # fmt: skip


@pytest.mark.parametrize("where", ["root", "pack", "idx"])
def test_damage_in_the_newest_generation_falls_back_with_one_warning(tmp_path: Path, where: str) -> None:
    image = made(tmp_path, FILES)
    older = committed(docteur("put", image, "/one.txt", "-", input=b"one\n"))
    newest = committed(docteur("put", image, "/two.txt", "-", input=random.Random(1).randbytes(9000)))
    corrupt(image, _newest(image)[where])
    proc = docteur("log", image)
    lines = proc.stdout.decode().splitlines()
    assert lines[0].split()[1] == older.hex() and newest.hex() not in proc.stdout.decode()
    warning = proc.stderr.decode().splitlines()
    assert len(warning) == 1 and "generation 2 skipped" in warning[0], warning
    assert "serving generation 1" in warning[0]
    # The next write goes on from the generation served.
    after = committed(docteur("put", image, "/three.txt", "-", input=b"three\n"))
    head, files = git_head_files(image, tmp_path / "check.git")
    assert head == after and set(files) == {"index.html", "docs/a.txt", "one.txt", "three.txt"}


def test_every_root_damaged_serves_the_first_generation(tmp_path: Path) -> None:
    image = made(tmp_path, FILES)
    first = docteur("log", image).stdout.split()[1].decode()
    for i in range(3):
        committed(docteur("put", image, f"/n{i}", "-", input=b"%d\n" % i))
    dev, store = open_store(image)
    with dev, store:
        assert store.area is not None
        roots = [store.area.slot_offset(i) + 100 for i, r in enumerate(store.slots) if r is not None]
    for offset in roots:
        corrupt(image, offset)
    proc = docteur("log", image)
    assert proc.stdout.decode().split() == ["0", first, "2024-01-01T00:00:00+00:00"]
    assert len(proc.stderr.decode().splitlines()) == 3  # one per generation skipped


def test_compact_keeps_every_commit_and_gives_space_back(tmp_path: Path) -> None:
    rng = random.Random(5)
    text = [b"line %d of a page that changes a little\n" % i for i in range(3000)]
    image = made(tmp_path, {"page.txt": b"".join(text), **FILES}, capacity="64M")
    for i in range(12):
        text[rng.randrange(len(text))] = b"edited in batch %d\n" % i
        committed(docteur("put", image, "/page.txt", "-", input=b"".join(text)))
    log_before = docteur("log", image).stdout
    dev, store = open_store(image)
    with dev, store:
        used_before, free_before = used_bytes(store), store.free_space()
    disk_before = image.stat().st_blocks * 512
    proc = docteur("compact", image)
    assert b"13 commits kept" in proc.stderr
    assert docteur("log", image).stdout == log_before
    dev, store = open_store(image)
    with dev, store:
        used_after, free_after = used_bytes(store), store.free_space()
        assert len(store.extents) == 1
    assert used_after < used_before / 2 and free_after > free_before
    assert image.stat().st_blocks * 512 < disk_before  # freed spans are holes again
    head, files = git_head_files(image, tmp_path / "check.git")
    assert files["page.txt"][1] == b"".join(text)
    # The figure: the image in use vs a fresh `docteur make` of the head (history included
    # here, none there; the write area's header and root ring are 132 KiB of it).
    fresh = tmp_path / "fresh.img"
    git("branch", "-f", "head", head.hex(), cwd=tmp_path / "check.git")
    docteur("make", f"file://{tmp_path / 'check.git'}", "-b", "head", fresh)
    print(f"compacted: {used_before} -> {used_after} bytes in use; fresh make of the head: "
          f"{fresh.stat().st_size} bytes ({used_after / fresh.stat().st_size:.2f}×)")  # fmt: skip
