"""Damaged generations fall back to the one before, with a warning; failing disks stop the writer."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from docteur.guest.capacity import prepare
from docteur.guest.device import DeviceFailed, FileDevice
from docteur.guest.errors import IntegrityError
from docteur.guest.generations import Store
from docteur.guest.roots import SLOT_SIZE, Extent
from tests.support.corrupt import corrupt
from tests.support.git import needs_git
from tests.support.store import (
    AUTHOR,
    FIRST_FILES,
    FaultyDevice,
    commit_files,
    open_store,
    plain_image,
    store_files,
    writable_image,
    write_tree,
)

pytestmark = needs_git

TREES = [{**FIRST_FILES, "gen.txt": b"generation %d\n" % i} for i in (1, 2, 3)]


@pytest.fixture
def three(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """An image with generations 1..3; the commit ids, oldest first."""
    image = writable_image(tmp_path)
    return image, [commit_files(image, files, when=i)[0] for i, files in enumerate(TREES)]


def _newest(image: Path) -> tuple[int, Extent]:
    """(slot offset, extent) of the newest generation."""
    dev, store = open_store(image)
    with dev, store:
        assert store.head is not None and store.area is not None
        slot = store.slots.index(store.head)
        return store.area.slot_offset(slot), store.extents[0]


def _serves(image: Path, generation: int, commit: bytes, files: dict, check: str = "cheap") -> list[str]:
    dev, store = open_store(image, check)
    with dev, store:
        assert (store.generation, store.head_commit) == (generation, commit)
        assert {p: d for p, (_, d) in store_files(store, commit).items()} == files
        return store.warnings()


def _damage_root(image: Path, slot: int, extent: Extent) -> None:
    corrupt(image, slot + 200, mask=0x40)


def _damage_pack(image: Path, slot: int, extent: Extent) -> None:
    corrupt(image, extent.pack_offset + extent.pack_length // 2, mask=0x40)


def _damage_pack_trailer(image: Path, slot: int, extent: Extent) -> None:
    corrupt(image, extent.pack_offset + extent.pack_length - 5, mask=0x40)


def _damage_idx(image: Path, slot: int, extent: Extent) -> None:
    corrupt(image, extent.idx_offset + 8 + 4 * 200, mask=0x40)  # the fanout table


@pytest.mark.parametrize(
    ("damage", "check", "why"),
    [
        (_damage_root, "cheap", "checksum mismatch"),
        (_damage_pack, "pack", "PACK at byte .*: checksum mismatch"),
        (_damage_pack_trailer, "cheap", "trailer does not match"),
        (_damage_idx, "cheap", "IDX at byte .*: checksum mismatch"),
    ],
)
def test_a_damaged_newest_generation_falls_back_to_the_previous(
    three: tuple[Path, list[bytes]],
    damage: Callable[[Path, int, Extent], None],
    check: str,
    why: str,
) -> None:
    image, commits = three
    slot, extent = _newest(image)
    damage(image, slot, extent)
    (warning,) = _serves(image, 2, commits[1], TREES[1], check)
    assert warning.startswith("warning: generation 3 skipped (")
    assert warning.endswith("); serving generation 2")

    assert re.search(why, warning), warning
    # The next batch goes on top of what is served, and the warning is gone. Its number
    # follows the highest root whose checksum holds (a garbled record claims nothing).
    commit, gen = commit_files(image, {"after.txt": b"x\n"}, when=9, check=check)
    assert gen == (3 if damage is _damage_root else 4)
    assert _serves(image, gen, commit, {"after.txt": b"x\n"}) == []
    dev, store = open_store(image)
    with dev, store:
        assert store.commit_object().parents == (commits[1],)


def test_a_damaged_pack_body_is_caught_when_read_even_by_a_cheap_open(
    three: tuple[Path, list[bytes]],
) -> None:
    image, commits = three
    slot, extent = _newest(image)
    _damage_pack(image, slot, extent)
    dev, store = open_store(image)
    with dev, store, pytest.raises(Exception, match=r"zlib|hash|does not"):
        # The cheap open adopts generation 3; reading its new objects fails loudly, never wrong bytes.
        assert store.generation == 3
        store_files(store, commits[2])


def test_all_roots_damaged_serves_the_first_generation(three: tuple[Path, list[bytes]]) -> None:
    image, _ = three
    dev, store = open_store(image)
    with dev, store:
        area, first = store.area, store.layout.commit
        assert area is not None
        slots = [area.slot_offset(i) for i, r in enumerate(store.slots) if r is not None]
    for offset in slots:
        corrupt(image, offset + SLOT_SIZE - 1, mask=0x40)
    warnings = _serves(image, 0, first, FIRST_FILES)
    assert [w.split(" (")[0] for w in warnings] == [f"warning: generation {g} skipped" for g in (3, 2, 1)]
    assert all(w.endswith("serving generation 0") for w in warnings)


def test_a_damaged_area_header_serves_the_first_generation_read_only(three: tuple[Path, list[bytes]]) -> None:
    image, _ = three
    dev, store = open_store(image)
    with dev, store:
        assert store.area is not None
        header, first = store.area.offset, store.layout.commit
    corrupt(image, header + 40, mask=0x40)
    (warning,) = _serves(image, 0, first, FIRST_FILES)
    assert "write area header" in warning and "checksum" in warning
    dev, store = open_store(image)
    with dev, store:
        assert not store.writable


def test_roots_of_an_earlier_write_area_are_never_adopted(tmp_path: Path) -> None:
    """Same first generation, same place, but a new area (new uid): the old ring's
    records belong to another history."""
    image = writable_image(tmp_path / "a")
    commit_files(image, TREES[0])
    dev, store = open_store(image)
    with dev, store:
        assert store.area is not None
        ring, size = store.area.ring, store.area.slots * store.area.slot_size
    with open(image, "rb") as f:
        f.seek(ring)
        old_ring = f.read(size)
    again = plain_image(tmp_path / "b")
    prepare(str(again), 8 << 20)
    with open(again, "r+b") as f:
        f.seek(ring)
        f.write(old_ring)
    dev, store = open_store(again)
    with dev, store:
        assert store.generation == 0 and store.warnings() == [] and store.free_space() > 0


# -- failing disks -------------------------------------------------------------------------------
@pytest.mark.parametrize(("fail_write", "fail_flush"), [(1, 0), (2, 0), (3, 0), (0, 1), (0, 2)])
def test_an_io_error_fails_the_commit_and_stops_the_writer(
    three: tuple[Path, list[bytes]], tmp_path: Path, fail_write: int, fail_flush: int
) -> None:
    image, commits = three
    before = tmp_path / "before.img"
    shutil.copyfile(image, before)
    with FaultyDevice(str(image), fail_write, fail_flush) as dev, Store.open(dev) as store:
        writer = store.begin()
        tree = write_tree(writer, {"lost.txt": b"never acknowledged\n"})
        with pytest.raises(DeviceFailed, match=r"failed: .*Input/output error"):
            store.commit(writer, tree, "doomed", AUTHOR, when=7)
        assert store.generation == 3 and store.head_commit == commits[2]  # nothing moved in memory
        # fsyncgate: whatever the cache holds now is unknown, so the device writes no more.
        for attempt in (lambda: store.begin(), lambda: dev.flush(), lambda: dev.pwrite(bytes(4096), 0)):
            with pytest.raises(
                DeviceFailed, match=r"stopped writing after an I/O error .*restart to write again"
            ):
                attempt()
    dev2, store2 = open_store(image)
    with dev2, store2:
        if fail_flush == 2:
            # The root was written, only its flush failed: not acknowledged, the disk may
            # hold either state (here the page cache kept it), never a mix.
            assert store2.generation in (3, 4)
        else:
            assert (store2.generation, store2.head_commit) == (3, commits[2])
        assert store2.warnings() == []
    # A restart (a new device) writes again.
    commit, gen = commit_files(image, {"later.txt": b"after restart\n"}, when=8)
    assert gen in (4, 5) and _serves(image, gen, commit, {"later.txt": b"after restart\n"}) == []


def test_devices_refuse_unaligned_writes(tmp_path: Path) -> None:
    image = writable_image(tmp_path)
    with FileDevice(str(image), writable=True) as dev:
        with pytest.raises(ValueError, match="unaligned"):
            dev.pwrite(b"x" * 4096, 100)
        with pytest.raises(ValueError, match="unaligned"):
            dev.pwrite(b"x" * 100, 4096)


@pytest.mark.parametrize("mode", ["pack", "full"])
def test_verify_checks_every_live_extent(three: tuple[Path, list[bytes]], mode: str) -> None:
    """Damage in an older generation's PACK (which a cheap open does not read) is found."""
    image, _ = three
    dev, store = open_store(image)
    with dev, store:
        store.verify(mode)
        oldest = store.extents[-1]
    corrupt(image, oldest.pack_offset + 12 + 3, mask=0x40)  # inside the first entry
    dev, store = open_store(image)
    with dev, store:
        assert store.generation == 3
        # "pack" finds the checksum wrong; "full" finds the object first.
        why = "checksum mismatch" if mode == "pack" else "PACK entry at 12: bad zlib data"
        with pytest.raises(IntegrityError, match=rf"PACK at byte {oldest.pack_offset}: {why}"):
            store.verify(mode)
