"""Push and pull on bad input: one clear line, exit 1, the image and the remote unchanged;
credentials are never recorded nor shown; the stall timeout of make applies; an image made
at depth 1 pulls and pushes across its shallow boundary."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.git import git, needs_git
from tests.support.relay import stalling_relay
from tests.support.repos import make_repo
from tests.support.servers import free_port, run_http_git
from tests.support.store import head_root, open_store
from tests.support.sync import clone, commit_and_push, ref, seed_remote
from tests.support.writes import committed, docteur, head_files, made

pytestmark = needs_git
SECRET = "pu5h-Passw0rd"


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    """(bare remote, image made from it at depth 1)."""
    (tmp_path / "srv").mkdir()
    bare = seed_remote(tmp_path / "srv")
    image = tmp_path / "site.img"
    docteur("make", "--capacity", "16M", f"file://{bare}", image)
    return bare, image


def fails(image: Path, *args: str | Path) -> str:
    """docteur ARGS exits 1 with one error line and no traceback; the image unchanged."""
    before = image.read_bytes()
    proc = docteur(*args, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("docteur: error: "), err
    assert SECRET not in err + proc.stdout.decode()
    assert image.read_bytes() == before, "the image changed"
    return lines[0]


def recorded(image: Path) -> str:
    return head_root(image).remote


def test_bad_input_is_one_line(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, image = remote
    committed(docteur("put", image, "/mine.txt", "-", input=b"m\n"))
    tip = ref(bare)
    assert "no ref 'refs/heads/nope'" in fails(image, "pull", image, "-b", "nope")
    assert "bad branch 'a..b'" in fails(image, "push", image, "-b", "a..b")
    port = free_port()
    assert "connection refused" in fails(image, "push", image, f"git://127.0.0.1:{port}/x.git", "-b", "main")
    assert "connection refused" in fails(image, "pull", image, f"git://127.0.0.1:{port}/x.git", "-b", "main")
    assert "no such file or directory" in fails(image, "push", image, tmp_path / "nothing.git", "-b", "main")
    # Another remote, no branch named: the recorded branch belongs to the recorded remote.
    git("init", "-q", "--bare", tmp_path / "other.git")
    assert "no branch recorded for" in fails(image, "push", image, f"file://{tmp_path}/other.git")
    assert ref(bare) == tip
    plain = made(tmp_path, {"a.txt": b"a\n"}, name="dir.img")
    assert "records no remote" in fails(plain, "push", plain)
    assert "records no remote" in fails(plain, "pull", plain)
    readonly = tmp_path / "ro.img"
    docteur("make", f"file://{bare}", readonly)
    assert "has no room for writes" in fails(readonly, "push", readonly, bare, "-b", "main")


def test_credentials_are_used_never_recorded_nor_shown(tmp_path: Path) -> None:
    (tmp_path / "srv").mkdir()
    bare = seed_remote(tmp_path / "srv")
    image = tmp_path / "site.img"
    with run_http_git(bare.parent, credentials=("alice", SECRET), writable=True) as url:
        authed = url.replace("http://", f"http://alice:{SECRET}@") + "/site.git"
        docteur("make", "--capacity", "16M", authed, image)
        assert recorded(image) == f"{url}/site.git main"
        assert SECRET.encode() not in image.read_bytes()
        mine = committed(docteur("put", image, "/mine.txt", "-", input=b"m\n"))
        # The recorded URL has no password: the server refuses, nothing moves.
        assert "authentication failed" in fails(image, "push", image)
        wrong = url.replace("http://", "http://alice:wrong-Passw0rd@") + "/site.git"
        assert "authentication failed" in fails(image, "pull", image, wrong)
        assert ref(bare) != mine.hex()
        # Given again on the command line, they work; the record stays without them.
        pushed = docteur("push", image, authed)
        assert SECRET not in pushed.stderr.decode()
        assert ref(bare) == mine.hex() and recorded(image) == f"{url}/site.git main"


@pytest.mark.parametrize("command", ["push", "pull"])
def test_a_silent_server_times_out(command: str, remote: tuple[Path, Path]) -> None:
    _, image = remote
    with stalling_relay() as relay:
        url = f"git://127.0.0.1:{relay.port}/site.git"
        line = fails(image, command, "--timeout", "1", image, url, "-b", "main")
    assert "timed out" in line and url in line and "1 s" in line, line


def test_pull_across_the_shallow_boundary(remote: tuple[Path, Path], tmp_path: Path) -> None:
    """The remote's new commit brings back a file of the history older than the image:
    the server knows the image lacks it only because the fetch names its shallow commits."""
    bare, image = remote
    # With reachability bitmaps, a server told only "have <first commit>" counts the whole
    # history below it as the client's, old.txt's blob included.
    git("repack", "-q", "-a", "-d", "--write-bitmap-index", cwd=bare)
    old = git("show", "main~1:old.txt", cwd=bare)
    work = clone(bare, tmp_path / "work")
    theirs = commit_and_push(work, {"old.txt": old}, "bring old.txt back")
    out = docteur("pull", image).stdout.decode().splitlines()
    assert out == ["add /old.txt", f"head {theirs}"]
    head, files = head_files(image)
    assert head.hex() == theirs and files["old.txt"] == (0o100644, old)


def test_push_to_another_remote_and_branch(remote: tuple[Path, Path], tmp_path: Path) -> None:
    bare, image = remote
    mine = committed(docteur("put", image, "/mine.txt", "-", input=b"m\n"))
    mirror = tmp_path / "mirror.git"
    git("clone", "-q", "--bare", bare, mirror)
    out = docteur("push", image, mirror, "-b", "refs/heads/mirror")
    assert out.stdout.decode().split() == [mine.hex()]
    assert ref(mirror, "refs/heads/mirror") == mine.hex() and ref(mirror) == ref(bare) != mine.hex()
    git("fsck", "--strict", "--no-dangling", cwd=mirror)
    assert recorded(image) == f"{bare} main"  # the image's own remote stays what it was
    # A remote without the history below the image's first commit cannot take it: one line.
    empty = tmp_path / "empty.git"
    git("init", "-q", "--bare", empty)
    line = fails(image, "push", image, empty, "-b", "main")
    assert "refs/heads/main" in line, line
    assert git("for-each-ref", cwd=empty) == b""


def test_make_records_the_branch_it_fetched(tmp_path: Path) -> None:
    """HEAD is recorded as the branch it points to, -b BRANCH as itself; a tag is no
    branch: nothing is recorded (generation 0), and push then asks for a remote."""
    repo = make_repo(tmp_path / "origin", history=2)
    for args, record in (([], f"{repo} main"), (["-b", "feature"], f"{repo} feature")):
        image = tmp_path / "b.img"
        docteur("make", "--capacity", "8M", *args, repo, image)
        assert recorded(image) == record
        image.unlink()
    tagged = tmp_path / "t.img"
    docteur("make", "--capacity", "8M", "-b", "v1", repo, tagged)
    dev, store = open_store(tagged)
    with dev, store:
        assert store.generation == 0
    assert "records no remote" in fails(tagged, "push", tagged)
