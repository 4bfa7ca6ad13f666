"""The generation store on real image files: format, history, space, compaction, the writer lock."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from docteur.guest import generations
from docteur.guest.capacity import grow, prepare
from docteur.guest.device import BLOCK, FileDevice, Locked, align_up
from docteur.guest.errors import DocteurError, ImageError
from docteur.guest.generations import ReadOnly, Store, TooManyExtents
from docteur.guest.idx import Index
from docteur.guest.image import Image
from docteur.guest.layout import PACK_OFFSET, read_layout
from docteur.guest.objects import Commit, Tree
from docteur.guest.pack import PackReader
from docteur.guest.packwrite import NoSpace
from docteur.guest.roots import SLOT_SIZE, SLOTS
from tests.support.git import git, needs_git
from tests.support.oracle import export_packs, git_files
from tests.support.store import (
    AUTHOR,
    FIRST_FILES,
    commit_files,
    open_store,
    plain_image,
    store_files,
    writable_image,
    write_tree,
)

pytestmark = needs_git


def _files(listing: dict[str, tuple[int, bytes]]) -> dict[str, bytes]:
    return {path: data for path, (_, data) in listing.items()}


def test_plain_image_is_generation_zero_and_read_only(tmp_path: Path) -> None:
    image = plain_image(tmp_path)
    size = image.stat().st_size
    dev, store = open_store(image)
    with dev, store:
        assert store.generation == 0 and not store.writable and store.extents == ()
        assert store.head_commit == store.layout.commit
        assert store.warnings() == [] and store.free_space() == 0
        assert _files(store_files(store, store.head_commit)) == FIRST_FILES
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store, pytest.raises(ReadOnly):
        store.begin()
    assert image.stat().st_size == size


def test_prepare_appends_after_the_first_generation_only(tmp_path: Path) -> None:
    image = plain_image(tmp_path)
    first = image.read_bytes()
    area = prepare(str(image), 4 << 20)
    assert image.read_bytes()[: len(first)] == first
    assert image.stat().st_size == 4 << 20
    assert area.offset == align_up(len(first)) and area.first_end == len(first)
    assert area.data_start == area.offset + BLOCK + SLOTS * SLOT_SIZE
    dev, store = open_store(image)
    with dev, store:
        assert store.writable and store.generation == 0 and store.warnings() == []
        assert store.free_space() == (4 << 20) - area.data_start
        with pytest.raises(ReadOnly, match="opened for reading only"):
            store.begin()
    # The file is sparse: the room costs (almost) no disk.
    assert image.stat().st_blocks * 512 < 1 << 20


def test_prepare_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    image = plain_image(tmp_path)
    with pytest.raises(DocteurError, match="too small"):
        prepare(str(image), 8192)
    assert image.stat().st_size < 8192 + BLOCK  # nothing happened
    prepare(str(image), 1 << 20)
    with pytest.raises(DocteurError, match="already has room"):
        prepare(str(image), 2 << 20)
    other = tmp_path / "other.img"
    shutil.copyfile(plain_image(tmp_path / "o"), other)
    with open(other, "ab") as f:
        f.write(b"trailing junk")
    with pytest.raises(ImageError, match="not a plain docteur image"):
        prepare(str(other), 1 << 20)


def test_commits_are_git_history_that_git_checks(tmp_path: Path) -> None:
    image = writable_image(tmp_path)
    with FileDevice(str(image)) as dev:
        first_commit = read_layout(dev.fd).commit
    trees = [
        {**FIRST_FILES, "a.txt": b"one\n"},
        {**FIRST_FILES, "a.txt": b"two\n", "d/e/f.txt": b"deep\n"},
        {"only.txt": b"everything else removed\n"},
    ]
    commits = [
        commit_files(image, files, f"batch {i}", when=1_700_000_000 + i) for i, files in enumerate(trees)
    ]
    assert [gen for _, gen in commits] == [1, 2, 3]
    dev, store = open_store(image)
    with dev, store:
        assert store.generation == 3 and len(store.extents) == 3
        log = list(store.log())
        assert [oid for oid, _ in log] == [c for c, _ in reversed(commits)] + [first_commit]
        assert log[0][1].message == b"batch 2\n" and log[0][1].author.raw.startswith(AUTHOR.encode())
        assert log[0][1].author.timestamp == 1_700_000_002
        assert store.head_tree == log[0][1].tree
    repo = tmp_path / "export.git"
    assert export_packs(str(image), repo) == commits[-1][0]
    git("fsck", "--strict", "--no-dangling", cwd=repo)
    hashes = git("log", "--format=%H", "main", cwd=repo).decode().split()
    assert hashes == [c.hex() for c, _ in reversed(commits)] + [first_commit.hex()]
    for (commit, _), files in zip(commits, trees, strict=True):
        assert _files(git_files(repo, commit)) == files


def test_the_writer_skips_objects_the_store_holds(tmp_path: Path) -> None:
    image = writable_image(tmp_path, 32 << 20)
    big = random.Random(1).randbytes(6 << 20)
    commit_files(image, {**FIRST_FILES, "big.bin": big})
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        writer = store.begin()
        new = writer.add("blob", b"new\n")
        # Known already: a whole object and a streamed one (that one spills, then rewinds).
        assert writer.add("blob", FIRST_FILES["readme.txt"]) not in writer
        streamed = writer.add_stream(
            "blob", len(big), (big[i : i + 65536] for i in range(0, len(big), 65536))
        )
        assert streamed not in writer and len(writer.entries) == 1
        with pytest.raises(ValueError, match="changed while it was read"):
            writer.add_stream("blob", 10, iter([b"short"]))
        tree = write_tree(writer, {**FIRST_FILES, "big.bin": big, "new.txt": b"new\n"})
        commit, _ = store.commit(writer, tree, "dedupe", AUTHOR, when=2)
        extent = store.extents[0]
        assert extent.pack_length < 4096 and new in writer
    repo = tmp_path / "dedupe.git"
    export_packs(str(image), repo)
    pack = repo / "objects" / "pack" / f"pack-{extent.pack_checksum.hex()}.idx"
    listing = git("verify-pack", "-v", pack, cwd=repo).decode()
    assert sum(1 for line in listing.splitlines() if " blob " in line) == 1  # only new.txt
    assert _files(git_files(repo, commit))["big.bin"] == big


def test_a_known_stream_rewinds_past_blocks_already_written(tmp_path: Path) -> None:
    """A new big blob spills blocks to the disk; a known one after it spills more, then
    the writer goes back into the middle of the PACK: git must read the result."""
    image = writable_image(tmp_path, 48 << 20)
    rng = random.Random(4)
    known, fresh = rng.randbytes(5 << 20), rng.randbytes(5 << 20)
    commit_files(image, {"known.bin": known})
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        writer = store.begin()
        writer.add_stream("blob", len(fresh), iter([fresh[: 3 << 20], fresh[3 << 20 :]]))
        mark = writer.pos
        writer.add_stream("blob", len(known), iter([known]))
        assert writer.pos == mark and mark % BLOCK and mark > 4 << 20

        def failing() -> Iterator[bytes]:
            yield fresh[::-1]  # spills, then the source breaks
            raise OSError(5, "the source file could not be read")

        with pytest.raises(OSError, match="could not be read"):
            writer.add_stream("blob", 2 * len(fresh), failing())
        assert writer.pos == mark
        files = {"known.bin": known, "fresh.bin": fresh, "small.txt": b"after the rewind\n"}
        commit, _ = store.commit(writer, write_tree(writer, files), "rewind", AUTHOR, when=3)
    repo = tmp_path / "rewind.git"
    export_packs(str(image), repo)
    git("fsck", "--strict", "--no-dangling", cwd=repo)
    assert _files(git_files(repo, commit)) == files


def test_no_space_is_an_error_before_the_root(tmp_path: Path) -> None:
    image = writable_image(tmp_path, 1 << 20)
    commit, _ = commit_files(image, {**FIRST_FILES, "small.txt": b"fits\n"})
    before = image.read_bytes()
    noise = random.Random(2).randbytes(2 << 20)
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        free = store.free_space()
        writer = store.begin()
        with pytest.raises(NoSpace, match="no space"):
            writer.add_stream("blob", len(noise), iter([noise]))
            store.commit(writer, write_tree(writer, {"noise": noise}), "too big", AUTHOR)
        assert store.generation == 1 and store.head_commit == commit
    after = image.read_bytes()
    with FileDevice(str(image)) as dev, Store.open(dev) as store:
        area = store.area
        assert area is not None and store.head_commit == commit and store.free_space() == free
    # Nothing but free space was written: first generation, header and ring are as before.
    assert after[: area.data_start] == before[: area.data_start]
    commit_files(image, {**FIRST_FILES, "again.txt": b"small batches still fit\n"})


def test_space_comes_back_only_when_no_root_can_need_it(tmp_path: Path) -> None:
    image = writable_image(tmp_path, 16 << 20)
    rng = random.Random(3)
    files = dict(FIRST_FILES)
    for i in range(SLOTS + 2):
        files[f"f{i}.bin"] = rng.randbytes(100_000)
        commit_files(image, files, when=i)
        dev, store = open_store(image)
        with dev, store:
            holes = store.holes()
            # Every extent of every root that could still be adopted lies outside the free space.
            for root in store.slots:
                for e in root.extents if root else ():
                    assert all(e.end <= off or off + n <= e.start for off, n in holes)
    dev, store = open_store(image)
    with dev, store:
        free_before, head = store.free_space(), store.head_commit
        area = store.area
        assert area is not None
        ring = (area.ring, area.slots * area.slot_size)
        old_extents = {e for root in store.slots if root for e in root.extents}
    old_ring = _read(image, *ring)
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        gen = store.compact()
        assert len(store.extents) == 1 and store.head_commit == head
        assert sum(r is not None for r in store.slots) == 2  # the two copies of the compacted root
        free_after = store.free_space()
    # History is kept whole, so what comes back is the overhead of nine PACK/IDX pairs
    # (headers, fanout tables, padding to blocks): at least their nine IDX headers.
    assert free_after >= free_before + 9 * 1072
    # A crash before the old slots were cleared: they may still be adopted should both
    # copies of the compacted root be damaged, so their extents are no free space yet.
    crashed = tmp_path / "crashed.img"
    shutil.copyfile(image, crashed)
    new_ring = bytearray(_read(crashed, *ring))
    for i in range(SLOTS):
        at = slice(i * SLOT_SIZE, (i + 1) * SLOT_SIZE)
        if not new_ring[at].strip(b"\0"):
            new_ring[at] = old_ring[at]
    _write(crashed, ring[0], bytes(new_ring))
    dev, store = open_store(crashed)
    with dev, store:
        assert store.generation == gen and len(store.extents) == 1
        for off, n in store.holes():
            assert all(e.end <= off or off + n <= e.start for e in old_extents)
        assert store.free_space() < free_after
    dev, store = open_store(image)
    with dev, store:
        assert store.generation == gen and _files(store_files(store, head)) == files
        assert len(list(store.log())) == SLOTS + 3  # all history kept
    repo = tmp_path / "compacted.git"
    export_packs(str(image), repo)
    git("fsck", "--strict", "--no-dangling", cwd=repo)
    # A batch after compaction reuses the freed space; the compacted root stays the fallback.
    commit_files(image, {**files, "after.txt": b"after compaction\n"}, when=99)


def test_grow_adds_room(tmp_path: Path) -> None:
    image = plain_image(tmp_path)
    first = image.read_bytes()
    free = grow(str(image), 2 << 20)
    assert free > 1 << 20 and image.read_bytes()[: len(first)] == first
    commit, _ = commit_files(image, {"x": b"x\n"})
    assert grow(str(image), 4 << 20) == free + (2 << 20) - _used(image)
    with pytest.raises(DocteurError, match="bigger size"):
        grow(str(image), 1 << 20)
    dev, store = open_store(image)
    with dev, store:
        assert store.head_commit == commit


def _read(image: Path, off: int, n: int) -> bytes:
    with open(image, "rb") as f:
        f.seek(off)
        return f.read(n)


def _write(image: Path, off: int, data: bytes) -> None:
    with open(image, "r+b") as f:
        f.seek(off)
        f.write(data)


def _used(image: Path) -> int:
    dev, store = open_store(image)
    with dev, store:
        return sum(e.end - e.start for e in store.extents)


def test_synced_commit_is_kept_across_generations(tmp_path: Path) -> None:
    image = writable_image(tmp_path)
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        first = store.head_commit
        assert store.set_synced(first, "https://example.com/site.git main") == 1
    dev, store = open_store(image)
    with dev, store:  # a root with no extent: the first generation, marked synced
        assert store.generation == 1 and store.head_commit == first and store.warnings() == []
        assert store.head is not None and store.head.synced == first
    commit, _ = commit_files(image, {"a": b"a\n"})
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        assert store.head is not None and store.head.synced == first
        assert store.set_synced(commit, "https://example.com/site.git main") == 3
    commit_files(image, {"a": b"b\n"})
    dev, store = open_store(image)
    with dev, store:
        assert store.head is not None and store.generation == 4
        assert (store.head.synced, store.head.remote) == (commit, "https://example.com/site.git main")


# -- the writer lock ---------------------------------------------------------------------------
_HOLD = """
import sys, time
from docteur.guest.device import FileDevice
dev = FileDevice(sys.argv[1], writable=True)
print("locked", flush=True)
time.sleep(60)
"""


def test_one_writer_at_a_time_and_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    image = writable_image(tmp_path)
    with FileDevice(str(image), writable=True), pytest.raises(Locked, match="is being written by"):
        FileDevice(str(image), writable=True)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(image)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        with pytest.raises(
            Locked, match=rf"{image} is being written by another process \(pid {holder.pid}\)"
        ):
            commit_files(image, {"x": b"x"})
        with FileDevice(str(image)) as reader, Store.open(reader) as store:  # readers are not blocked
            assert store.generation == 0
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    commit_files(image, {"x": b"x"})  # kill -9 left no stale lock


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
def test_the_lock_conflicts_with_qemu_writing_the_image(tmp_path: Path) -> None:
    """QEMU (file-posix) holds OFD locks on bytes 100 + permission: the writer's lock on
    byte 101 (write) conflicts with a VM that has the image attached writable."""
    image = writable_image(tmp_path)
    args = [
        QEMU, "-machine", "pc,accel=tcg", "-S", "-display", "none", "-nodefaults", "-monitor", "stdio",
        "-drive", f"file={image},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0",
    ]  # fmt: skip
    # docteur first: QEMU cannot take its write lock and gives up.
    with FileDevice(str(image), writable=True):
        proc = subprocess.run(args, input=b"quit\n", capture_output=True, timeout=120)
        assert proc.returncode != 0 and b"Failed to lock byte 101" in proc.stderr
    # QEMU first: the docteur writer is refused, naming QEMU's pid.
    qemu = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_lock(image, qemu)
        with pytest.raises(Locked, match=rf"being written by another process \(pid {qemu.pid}\)"):
            FileDevice(str(image), writable=True)
    finally:
        qemu.kill()
        qemu.wait()


def _wait_for_lock(image: Path, qemu: subprocess.Popen) -> None:
    """Until QEMU holds its lock on byte 101 (it shows in /proc/locks)."""
    tag = f":{image.stat().st_ino} "
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and qemu.poll() is None:
        with open("/proc/locks") as f:
            if any(tag in line and line.split()[-1] == "101" for line in f):
                return
        time.sleep(0.05)
    raise AssertionError("QEMU never locked the image")


def test_a_full_root_record_asks_for_compaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generations, "MAX_EXTENTS", 3)  # 221 in the real format
    image = writable_image(tmp_path)
    commits = [commit_files(image, {"n": b"%d\n" % i}, when=i)[0] for i in range(3)]
    before = image.read_bytes()
    with pytest.raises(TooManyExtents, match=r"3 batches since the last compaction.*run docteur compact"):
        commit_files(image, {"n": b"too many\n"})
    assert image.read_bytes() == before
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        assert store.compact() == 4 and len(store.extents) == 1
    commit, gen = commit_files(image, {"n": b"after compaction\n"}, when=9)
    dev, store = open_store(image)
    with dev, store:
        assert gen == 5 and [c for c, _ in store.log()][:4] == [commit, *commits[::-1]]


def test_a_truncated_write_area_serves_the_first_generation(tmp_path: Path) -> None:
    image = writable_image(tmp_path)
    commit_files(image, {"n": b"lost with the tail\n"})
    dev, store = open_store(image)
    with dev, store:
        assert store.area is not None
        cut, first = store.area.ring + BLOCK, store.layout.commit
    os.truncate(image, cut)
    dev, store = open_store(image)
    with dev, store:
        assert (store.generation, store.head_commit, store.writable) == (0, first, False)
        assert store.warnings() == [
            f"warning: the write area at byte {store.layout.idx_end + (-store.layout.idx_end) % BLOCK} "
            "is truncated; serving generation 0"
        ]


def test_the_read_only_reader_still_sees_the_first_generation(tmp_path: Path) -> None:
    """What is appended lies past the first IDX, where a reader of the original format
    never looks: it keeps serving the first generation, whatever was written after."""
    image = writable_image(tmp_path)
    commit_files(image, {"new.txt": b"invisible to the original reader\n"})
    with FileDevice(str(image)) as dev, Store.open(dev) as store:
        # The original's reading: the header, the PACK at byte 28, the IDX at the header's offset.
        lay = read_layout(dev.fd)
        idx = Index(dev.pread(lay.idx_end - lay.idx_offset, lay.idx_offset))
        old_reader = PackReader(dev.fd, PACK_OFFSET, lay.pack_end, idx)
        assert lay.commit == store.layout.commit != store.head_commit
        tree = Commit.from_raw(old_reader.resolve(old_reader.offset_of(lay.commit))[1]).tree
        kind, body = old_reader.resolve(old_reader.offset_of(tree))
        assert kind == 2 and [e.name for e in Tree.from_raw(body).entries] == [b"readme.txt", b"sub"]
    # The reader of this project serves the head.
    with Image.open(str(image)) as reader:
        assert reader.commit == store.head_commit and reader.generation == 1
