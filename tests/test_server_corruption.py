"""A corrupted image gives errors, never wrong bytes: flip bytes all over one and ask."""

from __future__ import annotations

from pathlib import Path

import pytest

from docteur.guest.boot import boot
from docteur.guest.image import Image
from docteur.guest.layout import PACK_OFFSET
from docteur.guest.protocol import End, Entry, Error, decode_entries
from tests.support.git import cat_blobs, ls_tree
from tests.support.images import packed_image
from tests.support.protocol import ask
from tests.support.repos import generate_repo


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("corrupt")
    repo = generate_repo(base / "small.git", files=40, commits=2, big=(4 << 20) + 12345)
    return repo, packed_image(repo, base / "small.img")


@pytest.mark.slow  # every answer of the image, for some 100 corrupted copies
def test_every_answer_is_exact_or_an_error(small: tuple[Path, Path], tmp_path: Path) -> None:
    repo, image = small
    rows = ls_tree(repo)
    blobs = [(oid, b"/" + path) for mode, kind, oid, path in rows if kind == "blob"]
    contents = cat_blobs(repo, [oid for oid, _ in blobs])
    dirs = {b"/"} | {b"/" + path for _, kind, _, path in rows if kind == "tree"}
    listing = {d: sorted((b"/" + p, m) for m, _, _, p in rows
                         if (b"/" + p).rsplit(b"/", 1)[0] + b"/" == d.rstrip(b"/") + b"/")
               for d in dirs}  # fmt: skip
    good = image.read_bytes()
    with Image.open(str(image)) as img:
        pack_end, idx_offset = img.layout.pack_end, img.layout.idx_offset
        object_offsets = sorted(PACK_OFFSET + off for _, _, off in img.index.entries())
    # Spread over the whole image, plus the first bytes of objects (their headers).
    positions = sorted(set(range(0, len(good), len(good) // 90)) | set(object_offsets[::4]))
    corrupt = tmp_path / "corrupt.img"
    errors = exact = 0
    for pos in positions:
        data = bytearray(good)
        data[pos] ^= 0x5A
        corrupt.write_bytes(data)
        if PACK_OFFSET <= pos < pack_end or idx_offset <= pos:
            refused = boot([("docteur", str(corrupt))], "pack").boot_error
            assert refused and f"{corrupt}: " in refused, (pos, refused)  # the error names it
        service = boot([("docteur", str(corrupt))], "none")
        try:
            for oid, path in blobs:
                body, last = ask(service, "get", path)
                if isinstance(last, End):
                    assert body == contents[oid], (pos, path)
                    exact += 1
                else:
                    assert body == b"", (pos, path)  # checked before the first byte
                    if last.code in ("integrity", "image"):
                        assert str(corrupt) in last.message, (pos, path, last.message)
                    errors += 1
                body, last = ask(service, "digest", path)
                assert isinstance(last, Error) or last.result == oid.hex(), (pos, path)
            for d, want in listing.items():
                body, last = ask(service, "list", d)
                if isinstance(last, End):
                    got: list[Entry] = decode_entries(body)
                    assert sorted((e.key, e.mode) for e in got) == want, (pos, d)
        finally:
            for disk in service.disks.values():
                disk.image.close()
    assert errors and exact
