"""Big blobs are inflated as raw deflate, without zlib's Adler-32 (pack.inflate_chunks
adler=False): the SHA-1 against the id checks the very bytes, before any is sent. The
zlib header is still checked as zlib checks it, and a damaged entry is never served."""

from __future__ import annotations

import random
import zlib
from pathlib import Path

import pytest

from docteur.guest.boot import boot
from docteur.guest.errors import IntegrityError
from docteur.guest.image import STREAM_THRESHOLD, Image
from docteur.guest.protocol import End, Error
from tests.support.corrupt import corrupt
from tests.support.git import cat_blobs, git
from tests.support.images import packed_image
from tests.support.protocol import ask
from tests.support.repos import generate_repo


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, bytes, int, int]:
    """(image, id of /big.bin, its content, image offset of its zlib header, and of its
    Adler-32 trailer): a blob above STREAM_THRESHOLD, so served in two passes."""
    base = tmp_path_factory.mktemp("rawinflate")
    repo = generate_repo(base / "r.git", files=3, commits=1, big=STREAM_THRESHOLD + 777)
    image = packed_image(repo, base / "r.img")
    oid = bytes.fromhex(git("rev-parse", "HEAD:big.bin", cwd=repo).decode().strip())
    content = cat_blobs(repo, [oid])[oid]
    with Image.open(str(image)) as img:
        reader, offset = img.locate(oid)
        entry = reader.entry(offset)
        start = reader.base + entry.data_offset
        # Where zlib's stream of the entry ends: its last 4 bytes are the Adler-32.
        raw = image.read_bytes()[start : reader.base + reader.end]
        d = zlib.decompressobj()
        assert d.decompress(raw) == content and d.eof
        trailer = start + len(raw) - len(d.unused_data) - 4
    return image, oid, content, start, trailer


def _fcheck(cmf: int, flg: int) -> int:
    """`flg` with its check bits set so that (cmf, flg) is a multiple of 31 (RFC 1950)."""
    flg &= 0xE0
    return flg | (31 - (cmf << 8 | flg) % 31) % 31


def test_raw_inflate_gives_the_same_bytes(big: tuple[Path, bytes, bytes, int, int]) -> None:
    image, oid, content, _, _ = big
    with Image.open(str(image)) as img:
        reader, offset = img.locate(oid)
        entry = reader.entry(offset)
        for chunk in (1000, 1 << 16, 1 << 20):
            assert b"".join(reader.inflate_chunks(entry, chunk, adler=False)) == content
        assert b"".join(img.open_blob(oid).chunks(chunk_size=1 << 18)) == content
        assert b"".join(img.open_blob(oid).chunks(12345, 1 << 20)) == content[12345 : 12345 + (1 << 20)]


@pytest.mark.parametrize(
    "header",
    [
        bytes([0x77, _fcheck(0x77, 0x00)]),  # not deflate (method 7)
        bytes([0x88, _fcheck(0x88, 0x00)]),  # a window bigger than deflate's 32 KiB
        bytes([0x78, _fcheck(0x78, 0x20)]),  # a preset dictionary (FDICT)
        bytes([0x78, _fcheck(0x78, 0x80) ^ 1]),  # a wrong check
    ],
    ids=["method", "window", "fdict", "check"],
)
def test_a_bad_zlib_header_is_refused(
    big: tuple[Path, bytes, bytes, int, int], tmp_path: Path, header: bytes
) -> None:
    """zlib would refuse each of these headers; the raw inflate, which skips the header
    itself, refuses them too: an integrity error naming the image, and no byte served."""
    image, oid, _, start, _ = big
    bad = corrupt(image, start, header, dest=tmp_path / "bad.img")
    with Image.open(str(bad)) as img, pytest.raises(IntegrityError, match="bad zlib data"):
        img.open_blob(oid)
    service = boot([("docteur", str(bad))], "none")
    try:
        body, last = ask(service, "get", b"/big.bin")
        assert body == b"" and isinstance(last, Error) and last.code == "integrity"
        assert str(bad) in last.message
    finally:
        service.disks["docteur"].image.close()


def test_a_damaged_big_blob_is_never_served(big: tuple[Path, bytes, bytes, int, int], tmp_path: Path) -> None:
    """A flipped byte in the middle of the deflate data: refused on the first read with
    nothing sent (its SHA-1 is taken before the first byte), and on every read after."""
    image, _, content, start, _ = big
    bad = corrupt(image, start + len(content) // 2, mask=0x10, dest=tmp_path / "bad.img")
    service = boot([("docteur", str(bad))], "none")
    try:
        for _ in range(2):
            body, last = ask(service, "get", b"/big.bin")
            assert body == b"" and isinstance(last, Error) and last.code == "integrity"
    finally:
        service.disks["docteur"].image.close()


def test_a_damaged_adler_trailer_alone_serves_the_right_bytes(
    big: tuple[Path, bytes, bytes, int, int], tmp_path: Path
) -> None:
    """The Adler-32 is not read for a big blob: its bytes hash to the id, so they are
    served, exactly (the boot's `pack` check still catches the damage to the PACK)."""
    image, _, content, _, trailer = big
    bad = corrupt(image, trailer + 1, mask=0x01, dest=tmp_path / "bad.img")
    service = boot([("docteur", str(bad))], "none")
    try:
        body, last = ask(service, "get", b"/big.bin")
        assert isinstance(last, End) and body == content
    finally:
        service.disks["docteur"].image.close()
    assert boot([("docteur", str(bad))], "pack").boot_error


@pytest.fixture(scope="module")
def deflated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[bytes, bytes]]:
    """An image of big blobs that deflate compresses: text (compressed from the start),
    random then text (compressed after ~2 MiB of stored blocks), text then random."""
    base = tmp_path_factory.mktemp("deflated")
    repo = base / "r"
    repo.mkdir()
    git("init", "-q", "-b", "main", cwd=repo)
    rng = random.Random(7)

    def text(n: int) -> bytes:  # a different text each time: no deltas between the blobs
        return b"".join(b"%d: line %d of text\n" % (rng.randrange(10**9), i) for i in range(n))

    files = {
        "text.txt": text(250_000),
        "noise-text.bin": rng.randbytes(2 << 20) + text(150_000),
        "text-noise.bin": text(40_000) + rng.randbytes(4 << 20),
    }
    for name, data in files.items():
        assert len(data) > STREAM_THRESHOLD
        (repo / name).write_bytes(data)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "deflated", cwd=repo)
    image = packed_image(repo, base / "r.img")
    ids = [bytes.fromhex(git("rev-parse", f"HEAD:{n}", cwd=repo).decode().strip()) for n in files]
    return image, dict(zip(ids, files.values(), strict=True))


def test_compressed_big_blobs(deflated: tuple[Path, dict[bytes, bytes]]) -> None:
    """Raw inflate to the end of a compressed stream (whose Adler-32 zlib then leaves
    unread), whole and in ranges, through the image's two passes."""
    image, blobs = deflated
    with Image.open(str(image)) as img:
        for oid, content in blobs.items():
            reader, offset = img.locate(oid)
            entry = reader.entry(offset)
            assert not entry.is_delta
            chunks = list(reader.inflate_chunks(entry, 1 << 18, adler=False))
            assert max(map(len, chunks)) <= 1 << 18 and b"".join(chunks) == content
            assert b"".join(img.open_blob(oid).chunks(chunk_size=1 << 18)) == content
            at = (3 << 20) - 7
            assert b"".join(img.open_blob(oid).chunks(at, 1 << 20)) == content[at : at + (1 << 20)]
