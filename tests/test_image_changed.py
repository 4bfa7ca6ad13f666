"""An image rewritten in place while a server serves it: an integrity error, never its bytes.

The server remembers what it checked (ids already hashed, the whole image after
a `full` boot, delta bases, trees). After `cp other.img served.img` that memory
describes another file: a real server process must notice and say so, naming
the image, rather than serve the new bytes as if they had been checked.
"""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import pytest

from docteur.guest.idx import build_idx
from docteur.guest.image import Image
from docteur.guest.layout import PACK_OFFSET, write_image
from docteur.guest.objects import sha1
from docteur.guest.verify import verify_full
from docteur.vm.client import Client, IntegrityError
from tests.support.corrupt import corrupt
from tests.support.git import git
from tests.support.guestproc import GuestProcess
from tests.support.images import packed_image

SIZE = 3000


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes, bytes]:
    """(image A, image B, content of /x, content of /y): B holds the same commit as A
    with the entries of /x and /y swapped in the PACK (and its IDX and trailer made
    to match), so B is a valid image whose offset of /x holds /y."""
    base = tmp_path_factory.mktemp("changed")
    work = base / "work"
    work.mkdir()
    rng = random.Random(5)
    x, y = rng.randbytes(SIZE), rng.randbytes(SIZE)  # incompressible: same entry length
    (work / "x").write_bytes(x)
    (work / "y").write_bytes(y)
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("-c", "user.name=T", "-c", "user.email=t@example.com", "commit", "-qm", "two", cwd=work)
    a = packed_image(work, base / "a.img")
    data = a.read_bytes()
    with Image.open(str(a)) as img:
        ids = {c: bytes.fromhex(git("rev-parse", f"HEAD:{c}", cwd=work).decode().strip()) for c in "xy"}
        entries = {oid: (crc, off) for oid, crc, off in img.index.entries()}
        spans = [*sorted(off for _, off in entries.values()), img.layout.pack_end - PACK_OFFSET - 20]
        span = {off: spans[spans.index(off) + 1] - off for off in spans[:-1]}
        pack_end = img.layout.pack_end
    (crc_x, off_x), (crc_y, off_y) = entries[ids["x"]], entries[ids["y"]]
    assert span[off_x] == span[off_y], "the two entries must have the same length"
    pack = bytearray(data[PACK_OFFSET:pack_end])
    n = span[off_x]
    pack[off_x : off_x + n], pack[off_y : off_y + n] = pack[off_y : off_y + n], pack[off_x : off_x + n]
    pack[-20:] = sha1(bytes(pack[:-20])).digest()
    entries[ids["x"]], entries[ids["y"]] = (crc_x, off_y), (crc_y, off_x)
    idx = build_idx([(oid, crc, off) for oid, (crc, off) in entries.items()], bytes(pack[-20:]))
    b = base / "b.img"
    with b.open("wb") as out:
        write_image(out, data[:20], io.BytesIO(bytes(pack)), idx)
    with Image.open(str(b)) as img:
        verify_full(img)  # B is a valid image in its own right
    assert b.stat().st_size == a.stat().st_size
    return a, b, x, y


def _overwrite(target: Path, data: bytes) -> None:
    """What `cp new.img served.img` does: the same inode, truncated and rewritten."""
    with target.open("r+b") as f:
        f.truncate(0)
        f.write(data)


@pytest.mark.parametrize("mode", ["pack", "full", "none"])
@pytest.mark.parametrize("how", ["another image", "a flipped byte"])
async def test_a_rewritten_image_is_an_integrity_error(
    images: tuple[Path, Path, bytes, bytes], tmp_path: Path, mode: str, how: str
) -> None:
    a, b, x, y = images
    served = tmp_path / "served.img"
    shutil.copyfile(a, served)
    with Image.open(str(a)) as img:
        x_entry = PACK_OFFSET + img.index.lookup(
            next(oid for oid, _, _ in img.index.entries() if img.read_object(oid)[1] == x)
        )
    server = GuestProcess(served, verify=mode)
    try:
        async with await Client.open_unix(server.sock, timeout=60) as client:
            assert await client.get("/x") == x  # checked, and remembered as checked
            assert await client.get("/y") == y
            if how == "another image":
                _overwrite(served, b.read_bytes())
            else:
                corrupt(served, x_entry + 40, mask=0x41)  # inside /x's deflate data
            for path in ("/x", "/y"):
                with pytest.raises(IntegrityError) as caught:
                    await client.get(path)
                message = str(caught.value)
                assert str(served) in message and "while served" in message, message
            with pytest.raises(IntegrityError):  # and it stays so, whatever the cache holds
                await client.list("/")
    finally:
        server.close()


def test_a_blob_rewritten_while_it_streams(tmp_path: Path) -> None:
    """A big blob is hashed, then inflated again as it is sent: a write between or
    during those passes ends the stream in ImageChanged, not in the new bytes."""
    from docteur.guest.errors import ImageChanged
    from tests.support.repos import generate_repo

    repo = generate_repo(tmp_path / "big.git", files=3, commits=1, big=(4 << 20) + 999)
    image = packed_image(repo, tmp_path / "big.img")
    oid = bytes.fromhex(git("rev-parse", "HEAD:big.bin", cwd=repo).decode().strip())
    with Image.open(str(image)) as img:
        blob = img.open_blob(oid)  # hashed: the id is right
        chunks = blob.chunks(chunk_size=1 << 16)
        first = next(chunks)
        assert first and len(first) < blob.size
        corrupt(image, img.layout.pack_end - 1000, mask=0x41)  # anywhere: not the file checked
        with pytest.raises(ImageChanged, match=str(image)):
            b"".join(chunks)
        with pytest.raises(ImageChanged):  # for good
            img.open_blob(oid)
