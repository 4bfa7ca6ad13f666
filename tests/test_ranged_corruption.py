"""A ranged `get` is checked like a whole one: exact bytes or an integrity error.

Under `--verify none` nothing was checked at boot, so a corrupted entry header
(its size field), IDX offset or deflate stream is only caught when the object
is read. A range must never be answered from the unchecked header alone (an
empty or short success when the recorded size is smaller than the offset).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur.guest.errors import DocteurError, IntegrityError
from docteur.guest.idx import Index
from docteur.guest.image import Image
from docteur.guest.layout import PACK_OFFSET
from docteur.guest.treeview import Disk
from tests.support.git import cat_blobs, ls_tree
from tests.support.images import packed_image
from tests.support.repos import generate_repo


class Case:
    """The good image's bytes, and where each blob's entry and IDX slot are."""

    def __init__(self, image: Path, repo: Path):
        self.good = image.read_bytes()
        rows = [(oid, b"/" + path) for _, kind, oid, path in ls_tree(repo) if kind == "blob"]
        self.contents = cat_blobs(repo, [oid for oid, _ in rows])
        with Image.open(str(image)) as img:
            self.idx_offset = img.layout.idx_offset
            index: Index = img.index
            self.blobs = []
            for oid, path in rows:
                pos = index.position(oid)
                assert pos is not None
                entry = img.pack.entry(index.offset(pos))
                self.blobs.append((oid, path, pos, entry))
            self.count = index.count


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    base = tmp_path_factory.mktemp("ranged")
    repo = generate_repo(base / "r.git", files=12, commits=3, big=(4 << 20) + 4321)
    return Case(packed_image(repo, base / "r.img"), repo)


def _size_bytes(data: bytes, at: int) -> list[int]:
    """Image offsets of the bytes of the entry header at `at` that hold its size."""
    out = [at]
    while data[at] & 0x80:
        at += 1
        out.append(at)
    return out


@st.composite
def corruption(draw: st.DrawFn, case: Case) -> tuple[int, str, int, int, int, int | None]:
    """(blob index, what is corrupted, image offset, new bytes as an int, offset, length)."""
    which = draw(st.integers(0, len(case.blobs) - 1))
    oid, _, pos, entry = case.blobs[which]
    kind = draw(st.sampled_from(["size", "idx", "deflate"]))
    if kind == "size":
        # Change the size bits only, keeping the continuation bits (the header's length).
        spots = _size_bytes(case.good, PACK_OFFSET + entry.offset)
        at = draw(st.sampled_from(spots))
        value = case.good[at] ^ draw(st.integers(1, 0x0F if at == spots[0] else 0x7F))
    elif kind == "idx":
        # The IDX's 32-bit offset of this blob: another object's, or any value.
        at = case.idx_offset + 8 + 1024 + case.count * 24 + 4 * pos
        others = [e.offset for _, _, p, e in case.blobs if p != pos]
        value = draw(st.sampled_from(others) | st.integers(0, len(case.good)))
    else:
        start = PACK_OFFSET + entry.data_offset
        at = draw(st.integers(start, start + max(0, min(entry.size, 64))))
        value = case.good[at] ^ draw(st.integers(1, 255))
    size = len(case.contents[oid])
    offset = draw(st.integers(0, size + 16))
    length = draw(st.none() | st.integers(0, size + 16))
    return which, kind, at, value, offset, length


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_range_is_exact_or_an_integrity_error(case: Case, tmp_path: Path, data: st.DataObject) -> None:
    which, kind, at, value, offset, length = data.draw(corruption(case))
    oid, path, _, _ = case.blobs[which]
    corrupted = bytearray(case.good)
    if kind == "idx":
        corrupted[at : at + 4] = value.to_bytes(4, "big")
    else:
        corrupted[at] = value
    want = case.contents[oid]
    stop = len(want) if length is None else offset + length
    image = tmp_path / "corrupt.img"
    image.write_bytes(corrupted)
    try:
        img = Image.open(str(image))
    except DocteurError:
        return  # the header or IDX no longer opens: nothing is served at all
    with img:
        try:
            disk = Disk("docteur", img)
        except IntegrityError:
            return  # the commit or its tree is the object that broke
        try:
            end, chunks = disk.get(path, offset, length)
            got = b"".join(chunks)
        except IntegrityError:
            return
        assert got == want[offset:stop], (path, offset, length)
        if end is not None:
            assert (end.size, end.offset, end.length) == (
                len(want), min(offset, len(want)), len(got)
            ), (path, offset, length)


def test_a_range_past_a_shrunk_size_is_an_error(case: Case, tmp_path: Path) -> None:
    """The report's case: the header says fewer bytes than the range's offset."""
    oid, path, _, entry = next(b for b in case.blobs if len(case.contents[b[0]]) > 64
                               and not b[3].is_delta)  # fmt: skip
    data = bytearray(case.good)
    spots = _size_bytes(case.good, PACK_OFFSET + entry.offset)
    data[spots[0]] &= 0xF0  # the low size bits
    for at in spots[1:]:
        data[at] &= 0x80  # keep only the continuation bits: a size of 0
    image = tmp_path / "shrunk.img"
    image.write_bytes(data)
    with Image.open(str(image)) as img:
        disk = Disk("docteur", img)
        assert img.object_info(oid)[1] == 0  # the unchecked header now says 0 bytes
        with pytest.raises(IntegrityError):
            _, chunks = disk.get(path, 40, 10)
            b"".join(chunks)
        with pytest.raises(IntegrityError):
            _, chunks = disk.get(path)
            b"".join(chunks)
