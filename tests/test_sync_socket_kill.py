"""kill -9 of the appliance's writer while it imports a pull's pack: the image verifies and
holds the head before or the head after, never a mix (the import's data, flush, root
record, flush is the same commit point as a batch's)."""

from __future__ import annotations

import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

from docteur.guest.values import ImportArgs
from docteur.vm.client import Client, ClientError
from tests.support.git import git, needs_git
from tests.support.served import Served
from tests.support.sync import clone, commit_and_push, ref, remote_files, seed_remote
from tests.support.writes import docteur, head_files

pytestmark = needs_git
PIECE = 1 << 16


async def _pieces(pack: bytes, kill_at: int, kill) -> AsyncIterator[bytes]:  # type: ignore[no-untyped-def]
    """The pack in PIECE-byte pieces; the writer is killed after `kill_at` of them
    (after the last: while the guest checks the pack and commits it)."""
    count = 0
    for at in range(0, len(pack), PIECE):
        if count == kill_at:
            kill()
        yield pack[at : at + PIECE]
        count += 1
    if count <= kill_at:
        kill()


async def _import_until_killed(sock: str, pack: bytes, old: bytes, new: bytes, kill_at: int,
                               kill) -> bool:  # type: ignore[no-untyped-def]  # fmt: skip
    """True when the import was answered (the kill came after its commit point)."""
    client = await Client.open_unix(sock)
    try:
        await client.upload("import", b"", _pieces(pack, kill_at, kill), len(pack),
                            lambda n: ImportArgs(n, old, new, None), client.disk, "pack")  # fmt: skip
    except ClientError:
        return False
    finally:
        await client.close()
    return True


async def test_kill_9_during_an_import_leaves_the_old_or_the_new_head(tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    srv.mkdir()
    bare = seed_remote(srv)
    pristine = tmp_path / "pristine.img"
    docteur("make", "--capacity", "32M", bare, pristine)
    old = bytes.fromhex(ref(bare))
    _, files = head_files(pristine)
    before = {path: data for path, (_, data) in files.items()}
    work = clone(bare, tmp_path / "work")
    noise = random.Random(10).randbytes(3 << 20)  # incompressible: the pack is ~50 pieces
    new = bytes.fromhex(commit_and_push(work, {"big.bin": noise, "a.txt": b"changed\n"}, "big"))
    after = {path: data for path, (_, data) in remote_files(bare, new.hex()).items()}
    revs = f"{new.hex()}\n^{old.hex()}\n".encode()
    pack = git("pack-objects", "--revs", "--thin", "--stdout", "-q", cwd=bare, input=revs)
    pieces = -(-len(pack) // PIECE)
    outcomes = []
    for kill_at in (1, pieces // 2, pieces):  # early, halfway, once every byte is sent
        image = tmp_path / f"kill{kill_at}.img"
        shutil.copyfile(pristine, image)
        with Served(image) as server:
            answered = await _import_until_killed(server.sock, pack, old, new, kill_at, server.kill_guest)
            status, err = server.wait()
            assert status == 1 and err.count("\n") == 1 and "stopped" in err, err
            assert server.leftovers() == []
        verified = docteur("verify", image, check=False)
        assert verified.returncode == 0, verified.stderr
        head, got = head_files(image)
        now = {path: data for path, (_, data) in got.items()}
        assert head in (old, new) and now == (before if head == old else after), kill_at
        if kill_at < pieces:  # content still missing: nothing can have been committed
            assert head == old and not answered
        if answered:
            assert head == new
        outcomes.append("new" if head == new else "old")
    assert outcomes[:2] == ["old", "old"]
    print(f"kill -9 once every byte was sent: the {outcomes[2]} head")

