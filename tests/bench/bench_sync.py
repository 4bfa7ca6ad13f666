"""Benchmarks of push and pull (issue 10) against git itself, on loopback (a bare
repository reached as a path: the same `git receive-pack` / `git upload-pack` serve both).
Rows:

- `docteur push` of an image made from the bench repository plus one new 1 MiB file, vs
  `git push` of the same commit from a clone (goal ≤ 1.5×)
- `docteur pull` of 100 new remote commits vs `git fetch` + `git merge --ff-only` in a
  clone (goal ≤ 1.5×)
"""

from __future__ import annotations

import random
import shutil
import time
from pathlib import Path

from tests.bench.bench_image import BENCH, DOCTEUR, Row, _run, ensure_repo

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


def _push_row(repo: Path) -> Row:
    remote = WORK / "push-remote.git"
    _fresh_remote(repo, remote)
    base_img = WORK / "push-base.img"
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
    ours = theirs = float("inf")
    for i in range(RUNS):
        _fresh_remote(repo, remote)
        image = _copy(base_img, f"push{i}.img")
        start = time.perf_counter()
        _run(*DOCTEUR, "push", image)
        ours = min(ours, time.perf_counter() - start)
        assert _run("git", "rev-parse", "main", cwd=remote).decode().strip() == commit
        image.unlink()
        _fresh_remote(repo, remote)
        start = time.perf_counter()
        _run("git", "push", "-q", remote, f"{commit}:refs/heads/main", cwd=clone)
        theirs = min(theirs, time.perf_counter() - start)
    return ("push: image + one new 1 MiB file vs git push (loopback)", ours, theirs, "≤ 1.5×")


def _pull_row(repo: Path) -> Row:
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
        start = time.perf_counter()
        out = _run(*DOCTEUR, "pull", image)
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
    return ("pull: 100 new remote commits vs git fetch + merge --ff-only", ours, theirs, "≤ 1.5×")


def rows() -> list[Row]:
    repo = ensure_repo()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    out = [_push_row(repo), _pull_row(repo)]
    shutil.rmtree(WORK, ignore_errors=True)
    return out


if __name__ == "__main__":
    for row in rows():
        print(row)
