"""`docteur push --socket` and `docteur pull --socket`: the same push and pull through a
running `docteur run --target unix --rw` (the host talks to git, the guest writes the
disk), against a bare repository served by git daemon; git is the oracle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from docteur.vm.client import run
from tests.support.git import git, needs_git
from tests.support.served import Served
from tests.support.sync import clone, commit_and_push, ref, remote_files, seed_remote, served
from tests.support.writes import committed, docteur, head_files

pytestmark = needs_git


@pytest.fixture(params=["bare", "git"])
def remote(request: pytest.FixtureRequest, tmp_path: Path,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:  # fmt: skip
    """(bare repository, its URL): a path, or git daemon on loopback."""
    srv = tmp_path / "srv"
    srv.mkdir()
    bare = seed_remote(srv)
    with served(request.param, bare, monkeypatch) as url:
        yield bare, url


def _query(server: Served, *args: str | Path, check: bool = True):  # type: ignore[no-untyped-def]
    return docteur("query", "--socket", server.sock, *args, check=check)


def test_push_then_pull_through_the_appliance(remote: tuple[Path, str], tmp_path: Path) -> None:
    bare, url = remote
    first = ref(bare)
    image = tmp_path / "site.img"
    docteur("make", "--capacity", "16M", url, image)
    page = tmp_path / "page.txt"
    page.write_bytes(b"through the appliance\n")
    with Served(image) as server:
        mine = committed(_query(server, "put", "/new/page.txt", page, "-m", "a page"))
        pushed = docteur("push", "--socket", server.sock)
        assert pushed.stdout.decode().split() == [mine.hex()]
        assert b", 4 objects sent" in pushed.stderr, pushed.stderr
        assert ref(bare) == mine.hex()
        git("fsck", "--strict", "--no-dangling", cwd=bare)
        work = clone(bare, tmp_path / "work")
        assert (work / "new" / "page.txt").read_bytes() == b"through the appliance\n"
        assert git("rev-parse", "HEAD~1", cwd=work).decode().strip() == first
        again = docteur("push", "--socket", server.sock)
        assert b"up to date" in again.stderr
        # A clone moves the branch; pull --socket fast-forwards the served disk.
        text = b"".join(b"line %d\n" % i for i in range(3000))
        theirs = commit_and_push(work, {"a.txt": b"changed\n", "docs/deep": None, "big.txt": text},
                                 "by git")  # fmt: skip
        pulled = docteur("pull", "--socket", server.sock)
        lines = pulled.stdout.decode().splitlines()
        assert lines == ["change /a.txt", "add /big.txt", "remove /docs/deep/c.txt", f"head {theirs}"]
        # The appliance serves it at once, every file as git has it.
        for path, (_, data) in remote_files(bare, theirs).items():
            assert _query(server, "get", f"/{path}").stdout == data, path
        # A small edit comes as a thin pack (a delta against the disk's copy).
        theirs = commit_and_push(work, {"big.txt": text + b"one more\n"}, "one more line")
        docteur("pull", "--socket", server.sock)
        assert _query(server, "get", "/big.txt").stdout == text + b"one more\n"
        assert b"up to date" in docteur("push", "--socket", server.sock).stderr
    head, files = head_files(image)
    assert head.hex() == theirs and files == remote_files(bare, theirs)


def test_diverged_is_a_conflict_and_merge_joins(remote: tuple[Path, str], tmp_path: Path) -> None:
    bare, url = remote
    image = tmp_path / "site.img"
    docteur("make", "--capacity", "16M", url, image)
    work = clone(bare, tmp_path / "work")
    theirs = commit_and_push(work, {"theirs.txt": b"theirs\n"}, "by git")
    mine_file = tmp_path / "m.txt"
    mine_file.write_bytes(b"mine\n")
    with Served(image) as server:
        mine = committed(_query(server, "put", "/mine.txt", mine_file))
        before = image.read_bytes()
        refused = docteur("push", "--socket", server.sock, check=False)
        assert refused.returncode == 1 and b"push refused" in refused.stderr
        assert refused.stderr.count(b"\n") == 1 and ref(bare) == theirs
        conflict = docteur("pull", "--socket", server.sock, check=False)
        assert conflict.returncode == 1 and conflict.stderr.count(b"\n") == 1
        assert b"conflict: the image has 1 commit" in conflict.stderr
        assert image.read_bytes() == before
        merged = docteur("pull", "--socket", server.sock, "--merge")
        head = merged.stdout.decode().splitlines()[-1].split()[1]
        docteur("push", "--socket", server.sock)
    assert ref(bare) == head
    git("fsck", "--strict", "--no-dangling", cwd=bare)
    parents = git("rev-list", "--parents", "-n1", head, cwd=bare).decode().split()[1:]
    assert parents == [mine.hex(), theirs]
    _, files = head_files(image)
    assert files == remote_files(bare, head) and files["mine.txt"][1] == b"mine\n"


def test_read_only_and_busy_appliance(remote: tuple[Path, str], tmp_path: Path) -> None:
    bare, url = remote
    image = tmp_path / "site.img"
    docteur("make", "--capacity", "16M", url, image)
    page = tmp_path / "page.txt"
    page.write_bytes(b"read-only\n")
    with Served(image) as server:
        mine = committed(_query(server, "put", "/page.txt", page))
    before = image.read_bytes()
    with Served(image, rw=False) as server:
        # A push only reads the disk: it goes ahead, and the image records nothing.
        pushed = docteur("push", "--socket", server.sock)
        assert pushed.stdout.decode().split() == [mine.hex()] and ref(bare) == mine.hex()
        assert b"not recorded" in pushed.stderr and b"read-only" in pushed.stderr, pushed.stderr
        # A pull is refused before it fetches, in one line.
        out = docteur("pull", "--socket", server.sock, check=False)
        assert out.returncode == 1 and out.stderr.count(b"\n") == 1, out.stderr
        assert b"cannot be pulled into: read-only attach" in out.stderr
    assert image.read_bytes() == before
    with Served(image) as server:
        from docteur.vm.client import Client

        async def held() -> bytes:
            client = await Client.open_unix(server.sock)
            try:
                async with client.batch():
                    return docteur("pull", "--socket", server.sock, check=False).stderr
            finally:
                await client.close()

        err = run(held())
        assert err.count(b"\n") == 1 and b"cannot be pulled into: busy" in err, err
    assert image.read_bytes() == before


def test_usage(tmp_path: Path) -> None:
    out = docteur("push", "--socket", str(tmp_path / "s"), "a", "b", check=False)
    assert out.returncode != 0 and b"takes no IMAGE" in out.stderr
    out = docteur("pull", tmp_path / "x.img", "--disk", "other", check=False)
    assert out.returncode != 0 and out.stderr.count(b"\n") == 1 and b"--disk goes with --socket" in out.stderr
    out = docteur("pull", "--socket", str(tmp_path / "nobody"), check=False)
    assert out.returncode == 1 and out.stderr.count(b"\n") == 1 and b"cannot connect" in out.stderr


def test_a_merge_import_is_the_fetched_pack_with_the_merge_appended(tmp_path: Path) -> None:
    """The pack a merge imports: the fetched one's entries byte for byte (its OFS_DELTAs
    still pointing right), the merge's objects after them; git's index-pack --strict takes it."""
    from docteur.cli.syncsocket import _joined_pack
    from docteur.guest.objects import object_id

    work = tmp_path / "w"
    git("init", "-q", work)
    text = b"".join(b"line %d\n" % i for i in range(500))
    for i in range(3):
        (work / "f.txt").write_bytes(text + b"edit %d\n" % i)
        git("add", "f.txt", cwd=work)
        git("-c", "user.name=A", "-c", "user.email=a@b", "commit", "-q", "-m", f"c{i}", cwd=work)
    fetched = tmp_path / "fetched.pack"
    fetched.write_bytes(git("pack-objects", "--revs", "--stdout", "-q", "--delta-base-offset",
                            cwd=work, input=b"HEAD\n"))  # fmt: skip
    extra = [("blob", b"merged\n"), ("blob", b"another\n")]
    for received in (str(fetched), None):
        joined = tmp_path / "joined.pack"
        _joined_pack(str(joined), received, extra)
        repo = tmp_path / f"check{received is None}.git"
        git("init", "-q", "--bare", repo)
        git("index-pack", "--strict", "--stdin", cwd=repo, input=joined.read_bytes())
        listed = git("verify-pack", "-v", *(repo / "objects" / "pack").glob("*.idx")).decode()
        for kind, body in extra:
            assert object_id(kind, body).hex() in listed
        if received is not None:
            assert "chain length = 1" in listed, listed  # the fetched deltas, still deltas
            assert git("rev-parse", "HEAD", cwd=work).decode().strip() in listed
