"""Benchmarks of push and pull (issue 10) against git itself, on loopback (a bare
repository reached as a path: the same `git receive-pack` / `git upload-pack` serve both).
Rows:

- `docteur push` of an image made from the bench repository plus one new 1 MiB file, vs
  `git push` of the same commit from a clone (goal ≤ 1.5×)
- `docteur pull` of 100 new remote commits vs `git fetch` + `git merge --ff-only` in a
  clone (goal ≤ 1.5×)
- the same push and pull with `--socket`, through a running `docteur run --target unix --rw`
  (the guest reads and writes the disk, the host talks to git), vs the same git commands
  (`python -m tests.bench.bench_sync socket` runs only these two)
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tests.bench.bench_image import BENCH, DOCTEUR, ENV, Row, _run, ensure_repo

WORK = BENCH / "sync"
RUNS = 3


def _fresh_remote(repo: Path, path: Path) -> None:
    """`path`: a bare clone of the bench repository (local: hard links, so cheap)."""
    shutil.rmtree(path, ignore_errors=True)
    _run("git", "clone", "-q", "--bare", repo, path)


def _copy(image: Path, name: str) -> Path:
    copy = WORK / name
    _run("cp", "--sparse=always", image, copy)
    return copy


def _push_setup(repo: Path) -> tuple[Path, Path, str, Path]:
    """(remote, base image: the remote's tip + one new 1 MiB file, that commit, a bare clone
    holding the very same commit for git push)."""
    remote = WORK / "push-remote.git"
    _fresh_remote(repo, remote)
    base_img = WORK / "push-base.img"
    base_img.unlink(missing_ok=True)  # the other row's (make refuses to replace an image with writes)
    _run(*DOCTEUR, "make", "--capacity", "512M", remote, base_img)
    big = WORK / "big.bin"
    big.write_bytes(random.Random(1).randbytes(1 << 20))
    _run(*DOCTEUR, "put", base_img, "/big.bin", big, "-m", "one big file")
    # The clone git pushes from holds the very same commit (fetched from an export).
    exported = WORK / "export.git"
    shutil.rmtree(exported, ignore_errors=True)
    _run(*DOCTEUR, "export", base_img, exported)
    commit = _run("git", "rev-parse", "main", cwd=exported).decode().strip()
    clone = WORK / "push-clone.git"
    shutil.rmtree(clone, ignore_errors=True)
    _run("git", "clone", "-q", "--bare", repo, clone)
    _run("git", "fetch", "-q", exported, "main", cwd=clone)
    return remote, base_img, commit, clone


def _push_row(repo: Path, socket: bool = False) -> Row:
    remote, base_img, commit, clone = _push_setup(repo)
    ours = theirs = float("inf")
    for i in range(RUNS):
        _fresh_remote(repo, remote)
        image = _copy(base_img, f"push{i}.img")
        with _target(image, socket) as target:
            start = time.perf_counter()
            _run(*DOCTEUR, "push", *target)
            ours = min(ours, time.perf_counter() - start)
        assert _run("git", "rev-parse", "main", cwd=remote).decode().strip() == commit
        image.unlink()
        _fresh_remote(repo, remote)
        start = time.perf_counter()
        _run("git", "push", "-q", remote, f"{commit}:refs/heads/main", cwd=clone)
        theirs = min(theirs, time.perf_counter() - start)
    if socket:
        return ("push --socket (unix appliance): + one 1 MiB file vs git push", ours, theirs, "≤ 2×")
    return ("push: image + one new 1 MiB file vs git push (loopback)", ours, theirs, "≤ 1.5×")


@contextlib.contextmanager
def _target(image: Path, socket: bool) -> Iterator[list[str]]:
    """What push and pull are given: the image, or `--socket S` of a `docteur run --target
    unix --rw` serving it (started and stopped outside the timing)."""
    if not socket:
        yield [str(image)]
        return
    where = tempfile.mkdtemp(prefix="dtb", dir="/tmp")  # socket paths must stay short
    sock = os.path.join(where, "s")
    proc = subprocess.Popen([*DOCTEUR, "run", "--target", "unix", "--rw", image, "--socket", sock],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if sock not in line:
            raise RuntimeError(f"docteur run did not serve: {line!r}")
        yield ["--socket", sock]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
        shutil.rmtree(where, ignore_errors=True)


def _pull_row(repo: Path, socket: bool = False) -> Row:
    remote = WORK / "pull-remote.git"
    _fresh_remote(repo, remote)
    before = WORK / "pull-before.git"  # the remote as it was: what each git clone starts from
    _fresh_remote(repo, before)
    base_img = WORK / "pull-base.img"
    _run(*DOCTEUR, "make", "--capacity", "512M", remote, base_img)
    work = WORK / "pull-work"
    shutil.rmtree(work, ignore_errors=True)
    _run("git", "clone", "-q", remote, work)
    files = sorted(p for p in (work / "src").rglob("*") if p.is_file())
    rng = random.Random(100)
    for i in range(100):
        target = rng.choice(files)
        with open(target, "ab") as f:
            f.write(b"# edit %d\n" % i)
        _run("git", "commit", "-q", "-a", "-m", f"edit {i}", cwd=work)
    _run("git", "push", "-q", "origin", "HEAD:main", cwd=work)
    tip = _run("git", "rev-parse", "HEAD", cwd=work).decode().strip()
    ours = theirs = float("inf")
    for i in range(RUNS):
        image = _copy(base_img, f"pull{i}.img")
        with _target(image, socket) as target:
            start = time.perf_counter()
            out = _run(*DOCTEUR, "pull", *target)
            ours = min(ours, time.perf_counter() - start)
        assert out.decode().splitlines()[-1] == f"head {tip}"
        image.unlink()
        clone = WORK / f"pull-clone{i}"
        shutil.rmtree(clone, ignore_errors=True)
        _run("git", "clone", "-q", before, clone)
        _run("git", "remote", "set-url", "origin", remote, cwd=clone)
        start = time.perf_counter()
        _run("git", "fetch", "-q", "origin", cwd=clone)
        _run("git", "merge", "-q", "--ff-only", "origin/main", cwd=clone)
        theirs = min(theirs, time.perf_counter() - start)
        shutil.rmtree(clone)
    if socket:
        return ("pull --socket (unix appliance): 100 commits vs git fetch + merge", ours, theirs, "≤ 2×")
    return ("pull: 100 new remote commits vs git fetch + merge --ff-only", ours, theirs, "≤ 1.5×")


def rows(only_socket: bool = False) -> list[Row]:
    repo = ensure_repo()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    kinds = (True,) if only_socket else (False, True)
    out = [row for socket in kinds for row in (_push_row(repo, socket), _pull_row(repo, socket))]
    shutil.rmtree(WORK, ignore_errors=True)
    return out


if __name__ == "__main__":
    for row in rows(only_socket="socket" in sys.argv[1:]):
        print(f"{row[0]}: {row[1]:.3f} s vs {row[2]:.3f} s = {row[1] / row[2]:.2f}× (goal {row[3]})")
