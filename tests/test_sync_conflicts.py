"""Push and pull never lose a commit: diverged histories, overlapping changes, a hook that
refuses, a remote whose history was rewritten, a crash between the server's acceptance
and the image's bookkeeping. The remote takes non-fast-forward updates
(receive.denyNonFastForwards=false): only docteur's own checks keep it from being rewound,
and its branch is compared before and after every failing case."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.support.cli import start_cli
from tests.support.git import git, needs_git
from tests.support.store import head_root
from tests.support.sync import clone, commit_and_push, hook, ref, remote_files, seed_remote
from tests.support.writes import committed, docteur, head_files

pytestmark = needs_git


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(bare remote, image made from it, a clone of it)."""
    (tmp_path / "srv").mkdir()
    bare = seed_remote(tmp_path / "srv")
    git("config", "receive.denyNonFastForwards", "false", cwd=bare)
    image = tmp_path / "site.img"
    docteur("make", "--capacity", "16M", f"file://{bare}", image)
    return bare, image, clone(bare, tmp_path / "work")


def refused(image: Path, bare: Path, *args: str) -> str:
    """Run docteur ARGS: exit 1, one error line, neither the image nor the remote changed."""
    before, tip = image.read_bytes(), ref(bare)
    proc = docteur(*args, check=False)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("docteur: error: ")]
    assert len(lines) == 1, err
    assert image.read_bytes() == before, "the image changed"
    assert ref(bare) == tip, "the remote's branch moved"
    return lines[0]


def synced(image: Path) -> bytes:
    return head_root(image).synced


def test_diverged_push_is_refused_pull_conflicts_and_merge_joins(setup: tuple[Path, Path, Path]) -> None:
    bare, image, work = setup
    theirs = commit_and_push(work, {"docs/b.txt": b"theirs\n", "theirs.txt": b"t\n"}, "remote side")
    mine = committed(docteur("put", image, "/mine.txt", "-", input=b"m\n"))
    line = refused(image, bare, "push", str(image))
    assert "push refused: refs/heads/main" in line and "pull first" in line, line
    line = refused(image, bare, "pull", str(image))
    assert "conflict: the image has 1 commit" in line and "which has 1 the image lacks" in line, line
    # Two more on the remote: the counts follow.
    commit_and_push(work, {"x1.txt": b"1\n"}, "x1")
    theirs = commit_and_push(work, {"x2.txt": b"2\n"}, "x2")
    line = refused(image, bare, "pull", str(image))
    assert "the image has 1 commit" in line and "which has 3 the image lacks" in line, line
    merged = docteur("pull", "--merge", "--author", "Merger <m@example.com>", image)
    lines = merged.stdout.decode().splitlines()
    assert lines[:-1] == ["change /docs/b.txt", "add /theirs.txt", "add /x1.txt", "add /x2.txt"], lines
    head, files = head_files(image)
    assert lines[-1] == f"head {head.hex()}"
    expected = dict(remote_files(bare, theirs))
    expected["mine.txt"] = (0o100644, b"m\n")
    assert files == expected
    # git accepts the merge: an export of the image is fsck-clean, the parents are right.
    out = image.parent / "export.git"
    docteur("export", image, out)
    git("fsck", "--strict", "--no-dangling", cwd=out)
    parents = git("rev-list", "--parents", "-n1", "main", cwd=out).decode().split()
    assert parents == [head.hex(), mine.hex(), theirs]
    assert (
        git("log", "-1", "--format=%an <%ae>", "main", cwd=out).decode().strip() == "Merger <m@example.com>"
    )
    # And the push of the merge is a fast-forward the remote takes.
    assert docteur("push", image).stdout.decode().split() == [head.hex()]
    assert ref(bare) == head.hex() and synced(image) == head
    git("fsck", "--strict", "--no-dangling", cwd=bare)


def test_overlapping_changes_are_a_conflict(setup: tuple[Path, Path, Path]) -> None:
    bare, image, work = setup
    commit_and_push(work, {"a.txt": b"theirs\n"}, "remote edits a")
    committed(docteur("put", image, "/a.txt", "-", input=b"mine\n"))
    line = refused(image, bare, "pull", "--merge", str(image))
    assert "conflict: both sides changed /a.txt" in line, line
    # The same change on both sides is no conflict; a file on one side where the other
    # writes inside a directory is.
    commit_and_push(work, {"a.txt": b"mine\n", "docs/deep/c.txt": None, "docs/deep": b"a file\n"}, "file")
    committed(docteur("put", image, "/docs/deep/new.txt", "-", input=b"new\n"))
    line = refused(image, bare, "pull", "--merge", str(image))
    assert "conflict: both sides changed /docs/deep" in line and "a.txt" not in line, line
    refused(image, bare, "push", str(image))


def test_a_rejecting_hook_fails_the_push_with_its_message(setup: tuple[Path, Path, Path]) -> None:
    bare, image, _ = setup
    hook(bare, "pre-receive", 'echo "pushes are frozen until Monday" >&2\nexit 1\n')
    committed(docteur("put", image, "/mine.txt", "-", input=b"m\n"))
    line = refused(image, bare, "push", str(image))
    assert "push rejected: refs/heads/main" in line and "pre-receive hook declined" in line, line
    assert "pushes are frozen until Monday" in line, line
    (bare / "hooks" / "pre-receive").unlink()
    docteur("push", image)


def test_a_rewritten_remote_is_refused_both_ways(setup: tuple[Path, Path, Path]) -> None:
    bare, image, work = setup
    first = ref(bare)
    pushed = committed(docteur("put", image, "/one.txt", "-", input=b"1\n"))
    docteur("push", image)
    # Rewound: the branch goes back to where the clone is (force-pushed by git).
    git("push", "-q", "--force", "origin", "HEAD:main", cwd=work)
    assert ref(bare) == first
    line = refused(image, bare, "pull", str(image))
    assert "was rewritten (force-pushed)" in line and pushed.hex() in line, line
    committed(docteur("put", image, "/two.txt", "-", input=b"2\n"))
    line = refused(image, bare, "push", str(image))
    assert "was rewound since the last sync" in line, line
    # Rewritten: another commit where the tip was.
    git("commit", "-q", "--allow-empty", "-m", "other history", cwd=work)
    git("push", "-q", "--force", "origin", "HEAD:main", cwd=work)
    assert "was rewritten (force-pushed)" in refused(image, bare, "pull", str(image))
    assert "pull first" in refused(image, bare, "push", str(image))


def test_a_push_killed_after_the_server_took_it_is_finished_by_the_next(
    setup: tuple[Path, Path, Path],
) -> None:
    bare, image, _ = setup
    first = bytes.fromhex(ref(bare))
    mine = committed(docteur("put", image, "/mine.txt", "-", input=b"m\n"))
    git("config", "core.logAllRefUpdates", "always", cwd=bare)  # every update of main, logged
    pidfile = image.parent / "docteur.pid"
    # post-receive runs once the ref is updated, before the server's last packet: docteur
    # is still waiting for it, its bookkeeping not done.
    hook(
        bare, "post-receive", f'while [ ! -s "{pidfile}" ]; do sleep 0.05; done\nkill -9 $(cat "{pidfile}")\n'
    )
    proc = start_cli("push", image)
    pidfile.write_text(str(proc.pid))
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert ref(bare) == mine.hex()  # the server took it
    assert synced(image) == first  # the image did not record it
    (bare / "hooks" / "post-receive").unlink()
    again = docteur("push", image)
    assert again.stdout.decode().split() == [mine.hex()] and b"up to date" in again.stderr
    assert ref(bare) == mine.hex() and synced(image) == mine
    # The branch was updated once, by the killed push.
    updates = git("reflog", "show", "--format=%H", "refs/heads/main", cwd=bare).decode().split()
    assert updates == [mine.hex()], updates
    git("fsck", "--strict", "--no-dangling", cwd=bare)
