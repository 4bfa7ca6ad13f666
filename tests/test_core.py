"""The guest core (layout, IDX, PACK reader, verification) against git itself."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from docteur.guest.errors import DocteurError, ImageError, IntegrityError, NotFound
from docteur.guest.idx import Index, build_idx, idx_size
from docteur.guest.image import Image
from docteur.guest.layout import read_layout
from docteur.guest.objects import Commit, Tree, object_id
from docteur.guest.verify import verify_full, verify_pack
from tests.support.corrupt import corrupt
from tests.support.git import git
from tests.support.images import packed_image


@pytest.fixture
def image_path(history_repo: Path, tmp_path: Path) -> Path:
    """Every object of the history, git's PACK and IDX kept beside (disk.pack, disk.idx)."""
    return packed_image(history_repo, tmp_path / "disk.img", history=True, ref_deltas=True, keep=True)


def test_layout_follows_the_original(image_path: Path) -> None:
    data = image_path.read_bytes()
    idx_offset = int.from_bytes(data[20:28], "little")
    pack = image_path.with_suffix(".pack").read_bytes()
    assert data[28 : 28 + len(pack)] == pack
    assert idx_offset % 512 == 0 and 0 < idx_offset - (28 + len(pack)) <= 512
    assert not data[28 + len(pack) : idx_offset].strip(b"\0")
    idx = image_path.with_suffix(".idx").read_bytes()
    assert data[idx_offset : idx_offset + len(idx)] == idx
    assert len(data) % 512 == 0 and 0 < len(data) - idx_offset - len(idx) <= 512
    with image_path.open("rb") as f:
        layout = read_layout(f.fileno())
    assert layout.pack_end == 28 + len(pack)


def test_build_idx_is_byte_identical_to_git(image_path: Path) -> None:
    idx = Index(image_path.with_suffix(".idx").read_bytes())
    assert build_idx(list(idx.entries()), idx.pack_checksum) == idx.data


def test_idx_size_is_the_length_git_writes(image_path: Path) -> None:
    """The one IDX size formula, against git's IDX and against 64-bit offsets."""
    data = image_path.with_suffix(".idx").read_bytes()
    assert idx_size(Index(data).count) == len(data)
    entries = [(bytes([i]) * 20, i, off) for i, off in enumerate((12, 1 << 31, 1 << 33, 99))]
    big = build_idx(entries, b"\0" * 20)
    assert idx_size(4, 2) == len(big) and Index(big).offset(1) == 1 << 31


def test_every_object_reads_back_as_git_has_it(history_repo: Path, image_path: Path) -> None:
    listing = git("rev-list", "--objects", "--all", cwd=history_repo).splitlines()
    oids = [line.split(b" ")[0].decode() for line in listing]
    batch = git("cat-file", "--batch", cwd=history_repo, input="\n".join(oids).encode() + b"\n")
    with Image.open(str(image_path)) as img:
        verify_full(img)
        pos = 0
        for oid in oids:
            header_end = batch.index(b"\n", pos)
            _, kind, size = batch[pos:header_end].split()
            body = batch[header_end + 1 : header_end + 1 + int(size)]
            pos = header_end + 1 + int(size) + 1
            raw = bytes.fromhex(oid)
            assert img.read_object(raw) == (kind.decode(), body)
            assert img.object_info(raw) == (kind.decode(), int(size))
            if kind == b"blob":
                assert b"".join(img.open_blob(raw).chunks(chunk_size=4096)) == body
                assert b"".join(img.open_blob(raw).chunks(100, 333)) == body[100:433]
            if kind == b"tree":
                assert Tree.from_raw(body).as_raw() == body
            if kind == b"commit":
                assert Commit.from_raw(body).as_raw() == body
        commit = img.commit_object()
        assert commit.message.startswith(b"revision 39")
        assert object_id("commit", commit.as_raw()) == img.commit


def test_large_blob_streams_in_bounded_pieces(history_repo: Path, image_path: Path) -> None:
    oid = git("rev-parse", "HEAD:big.bin", cwd=history_repo).strip().decode()
    expected = (history_repo / "big.bin").read_bytes()
    import docteur.guest.image as image_mod

    old = image_mod.STREAM_THRESHOLD
    image_mod.STREAM_THRESHOLD = 1000  # force the two-pass streaming path
    try:
        with Image.open(str(image_path)) as img:
            pieces = list(img.open_blob(bytes.fromhex(oid)).chunks(chunk_size=10_000))
            assert max(len(p) for p in pieces) <= 10_000
            assert b"".join(pieces) == expected
            assert b"".join(img.open_blob(bytes.fromhex(oid)).chunks(299_990, 100)) == expected[299_990:]
    finally:
        image_mod.STREAM_THRESHOLD = old


def test_unknown_object_is_not_found(image_path: Path) -> None:
    with Image.open(str(image_path)) as img, pytest.raises(NotFound):
        img.read_object(b"\x01" * 20)


@pytest.mark.parametrize("blob", [b"", b"short", b"x" * 100])
def test_not_an_image(tmp_path: Path, blob: bytes) -> None:
    path = tmp_path / "junk"
    path.write_bytes(blob)
    with pytest.raises(ImageError, match="not a docteur image"):
        Image.open(str(path))


def test_corruption_anywhere_is_detected_by_full_verify(image_path: Path) -> None:
    """Flip one byte at many positions: full verification fails every time, with one line."""
    data = image_path.read_bytes()
    rng = random.Random(1)
    layout_end = len(data)
    positions = [0, 19, 20, 27, 28, 40, *rng.sample(range(28, layout_end), 60)]
    for pos in positions:
        corrupt = bytearray(data)
        corrupt[pos] ^= 0x5A
        image_path.write_bytes(corrupt)
        with pytest.raises(DocteurError) as info, Image.open(str(image_path)) as img:
            verify_full(img)
        message = str(info.value)
        assert message and "\n" not in message, (pos, message)
    image_path.write_bytes(data)


def test_pack_verification_catches_pack_bytes(image_path: Path) -> None:
    corrupt(image_path, 200, mask=1)
    with Image.open(str(image_path)) as img, pytest.raises(IntegrityError, match="PACK checksum"):
        verify_pack(img)


def test_reads_check_each_object_without_boot_verification(history_repo: Path, tmp_path: Path) -> None:
    """With no boot check at all, a damaged object is an error, never wrong bytes."""
    image_path = packed_image(history_repo, tmp_path / "disk.img", ref_deltas=True)
    data = image_path.read_bytes()
    oids = [
        line.split()[2].decode()
        for line in git("ls-tree", "-r", "HEAD", cwd=history_repo).splitlines()
    ]
    truth = {oid: git("cat-file", "blob", oid, cwd=history_repo) for oid in oids}
    rng = random.Random(3)
    with image_path.open("rb") as f:
        pack_end = read_layout(f.fileno()).pack_end
    for pos in rng.sample(range(40, pack_end - 20), 80):
        corrupt = bytearray(data)
        corrupt[pos] ^= 0xFF
        image_path.write_bytes(corrupt)
        with Image.open(str(image_path)) as img:
            for oid, body in truth.items():
                try:
                    got = b"".join(img.open_blob(bytes.fromhex(oid)).chunks())
                except DocteurError:
                    continue
                assert got == body, (pos, oid)
