"""`docteur push` and `docteur pull` over every transport make supports, on loopback: make
-> put -> push, checked by git on the remote; a clone pushes directly -> pull fast-forwards."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from docteur.guest.objects import MODE_EXEC, MODE_FILE
from tests.support.git import git, needs_git
from tests.support.sync import TRANSPORTS, clone, commit_and_push, ref, remote_files, seed_remote, served
from tests.support.writes import committed, docteur, head_files

pytestmark = needs_git


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_push_then_pull(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    srv = tmp_path / "srv"
    srv.mkdir()
    bare = seed_remote(srv)
    first = ref(bare)
    image = tmp_path / "site.img"
    with served(kind, bare, monkeypatch) as url:
        docteur("make", "--capacity", "16M", url, image)
        script = tmp_path / "run.sh"
        script.write_bytes(b"#!/bin/sh\necho pushed\n")
        script.chmod(0o755)
        mine = committed(docteur("put", image, "/bin/run.sh", script, "-m", "a script"))
        pushed = docteur("push", image)
        assert pushed.stdout.decode().split() == [mine.hex()]
        # Only what the remote lacks: the commit, the root and bin/ trees, the blob.
        assert b", 4 objects sent" in pushed.stderr, pushed.stderr
        assert ref(bare) == mine.hex()
        git("fsck", "--strict", "--no-dangling", cwd=bare)
        work = clone(bare, tmp_path / "work")
        assert (work / "bin" / "run.sh").read_bytes() == b"#!/bin/sh\necho pushed\n"
        assert remote_files(bare, mine.hex())["bin/run.sh"][0] == MODE_EXEC
        assert git("rev-parse", "HEAD~1", cwd=work).decode().strip() == first
        # Pushing again sends nothing and changes nothing.
        again = docteur("push", image)
        assert again.stdout.decode().split() == [mine.hex()] and b"up to date" in again.stderr
        # Someone else moves the branch; pull fast-forwards the image to it.
        theirs = commit_and_push(
            work, {"a.txt": b"changed\n", "docs/deep": None, "new/d.txt": b"delta\n"}, "by git"
        )
        pulled = docteur("pull", image)
        # The image records the remote's tip: the next push has nothing to do.
        assert docteur("push", image).stdout.decode().split() == [theirs]
    lines = pulled.stdout.decode().splitlines()
    assert lines == [
        "change /a.txt",
        "remove /docs/deep/c.txt",
        "add /new/d.txt",
        f"head {theirs}",
    ], lines
    head, files = head_files(image)
    assert head.hex() == theirs
    assert files == remote_files(bare, theirs)
    assert files["new/d.txt"] == (MODE_FILE, b"delta\n")
    assert ref(bare) == theirs


@pytest.mark.parametrize("kind", ["git", "http"])
def test_pull_completes_a_thin_pack(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small edit of a big file comes as a delta against the image's copy of it (a thin
    pack); the new generation holds it whole, and reads back as git has it."""
    srv = tmp_path / "srv"
    srv.mkdir()
    bare = seed_remote(srv)
    work = clone(bare, tmp_path / "work")
    text = b"".join(b"line %d of a long text file\n" % i for i in range(4000))
    commit_and_push(work, {"long.txt": text}, "a long file")
    image = tmp_path / "site.img"
    with served(kind, bare, monkeypatch) as url:
        docteur("make", "--capacity", "16M", url, image)
        theirs = commit_and_push(work, {"long.txt": text + b"one more line\n"}, "one more line")
        pulled = docteur("--log-format", "json", "-v", "pull", image)
    events = [json.loads(line) for line in pulled.stderr.decode().splitlines() if line.startswith("{")]
    received = [e for e in events if e.get("event") == "received"]
    assert received and received[0]["thin_bases"] >= 1, events
    head, files = head_files(image)
    assert head.hex() == theirs and files == remote_files(bare, theirs)
