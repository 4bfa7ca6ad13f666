"""Direct I/O reads of big objects and of the PACK (the guest's block-device path).

In the VM the image is a block device and big reads use O_DIRECT; here the
image is a file, so PackReader._direct is pointed at an O_DIRECT descriptor of
it (skipped where the file system refuses O_DIRECT), and the sizes that select
the path are made small.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import docteur.guest.image as image_mod
import docteur.guest.pack as pack_mod
import docteur.guest.verify as verify_mod
from docteur.guest.errors import IntegrityError
from docteur.guest.image import Image
from docteur.guest.pack import PackReader
from docteur.guest.verify import verify_pack
from tests.support.corrupt import corrupt
from tests.support.git import git
from tests.support.images import packed_image


@pytest.fixture
def direct(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """Force the direct path; returns the list of descriptors it opened."""
    probe = tmp_path / "probe"
    probe.write_bytes(b"\0" * 4096)
    try:
        os.close(os.open(probe, os.O_RDONLY | os.O_DIRECT))
    except OSError:
        pytest.skip("no O_DIRECT on this file system")
    opened: list[int] = []

    def _direct(self: PackReader) -> int:
        if self._direct_fd is None:
            self._direct_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_DIRECT)
            opened.append(self._direct_fd)
        return self._direct_fd

    monkeypatch.setattr(PackReader, "_direct", _direct)
    monkeypatch.setattr(pack_mod, "_DIRECT_READ", 1 << 16)  # buffer and threshold
    monkeypatch.setattr(image_mod, "STREAM_THRESHOLD", 1000)  # two-pass streaming
    monkeypatch.setattr(verify_mod, "_CHUNK", 1 << 16)
    return opened


def _big(history_repo: Path) -> tuple[bytes, bytes]:
    oid = git("rev-parse", "HEAD:big.bin", cwd=history_repo).strip().decode()
    return bytes.fromhex(oid), (history_repo / "big.bin").read_bytes()


def test_big_blob_read_directly(history_repo: Path, tmp_path: Path, direct: list[int]) -> None:
    oid, expected = _big(history_repo)
    image = packed_image(history_repo, tmp_path / "disk.img", history=True, ref_deltas=True)
    with Image.open(str(image)) as img:
        assert b"".join(img.open_blob(oid).chunks(chunk_size=10_000)) == expected
        for offset, length in ((0, 1), (4095, 4098), (65_530, 70_000), (299_990, 100)):
            got = b"".join(img.open_blob(oid).chunks(offset, length, chunk_size=4096))
            assert got == expected[offset : offset + length]
        # Two streams at once each have their own buffer.
        a, b = img.open_blob(oid).chunks(chunk_size=8192), img.open_blob(oid).chunks(1, None, 8192)
        got_a: list[bytes] = []
        got_b: list[bytes] = []
        while True:  # interleaved, piece by piece
            x, y = next(a, None), next(b, None)
            if x is None and y is None:
                break
            got_a += [x] if x is not None else []
            got_b += [y] if y is not None else []
        assert b"".join(got_a) == expected and b"".join(got_b) == expected[1:]
        verify_pack(img)
    assert direct, "the direct path was not taken"


def test_direct_reads_still_catch_corruption(history_repo: Path, tmp_path: Path, direct: list[int]) -> None:
    oid, expected = _big(history_repo)
    image = packed_image(history_repo, tmp_path / "disk.img", history=True, ref_deltas=True)
    at = image.read_bytes().find(expected[100_000:100_064])  # stored in the pack as is (incompressible)
    assert at > 0
    corrupt(image, at + 7, mask=1)
    with Image.open(str(image)) as img:
        with pytest.raises(IntegrityError, match="PACK checksum"):
            verify_pack(img)
        with pytest.raises(IntegrityError):
            b"".join(img.open_blob(oid).chunks())
    assert direct
