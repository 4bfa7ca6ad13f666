"""`docteur verify` of a PACK whose objects are checked by two threads (a second CPU,
a PACK over 1 MiB: guest/verify.py): with two objects that do not hash to the ids the
IDX gives, the error names the first in PACK order, as a walk in one thread does,
whichever thread meets its object first."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pytest

from docteur.guest.idx import Index
from docteur.guest.layout import write_image
from tests.support.cli import fails
from tests.support.git import git

_NAMES = 8 + 256 * 4  # where an IDX v2's ids start


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes, bytes]:
    """(head commit, PACK, IDX) of 24 incompressible 60 kB files: whole objects, ~1.4 MB."""
    repo = tmp_path_factory.mktemp("order") / "r"
    git("init", "-q", "-b", "main", repo)
    rng = random.Random(11)
    for n in range(24):
        (repo / f"f{n:02}.bin").write_bytes(rng.randbytes(60_000))
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "files", cwd=repo)
    names = git("rev-list", "--objects", "--no-object-names", "HEAD", cwd=repo)
    pack = git("pack-objects", "--stdout", "-q", "--delta-base-offset", cwd=repo, input=names)
    (repo / "p.pack").write_bytes(pack)
    git("index-pack", "-o", repo / "p.idx", repo / "p.pack", cwd=repo)
    head = bytes.fromhex(git("rev-parse", "HEAD", cwd=repo).decode().strip())
    return head, pack, (repo / "p.idx").read_bytes()


@pytest.mark.parametrize("pair", [(1, 4), (2, 3), (6, 0), (13, 20)])
def test_first_bad_object_in_pack_order(packed: tuple[bytes, bytes, bytes], tmp_path: Path,
                                        pair: tuple[int, int],
                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    head, pack, idx = packed
    index = Index(idx)
    blobs = sorted((index.offset(i), i) for i in range(index.count) if index.oid(i) != head)
    # Blobs of these ranks (in PACK order) get another id in the IDX (its checksum redone).
    data = bytearray(idx)
    for rank in pair:
        at = _NAMES + 20 * blobs[rank][1] + 19
        data[at] ^= 0x01
    data[-20:] = hashlib.sha1(data[:-20]).digest()
    image = tmp_path / "bad.img"
    with image.open("wb") as out:
        write_image(out, head, io.BytesIO(pack), bytes(data))
    first = blobs[min(pair)][0]
    assert f"object at PACK offset {first} hashes to" in fails(capsys, "verify", image)
