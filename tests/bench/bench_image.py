"""Benchmarks of the image builder against git itself, on a generated repository.

The repository (≥ 50 MB pack, thousands of files, some history) is generated
once with `git fast-import` and cached under build/bench/. Rows:

- `docteur verify` vs `git verify-pack -v` on the same pack   (goal ≤ 1.0×)
- directory image size vs `git gc --aggressive` pack of the same tree (goal ≤ 1.05×)
- `docteur make` from a local repo vs `git clone --depth 1 --no-local` (goal ≤ 1.5×)
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "build" / "bench"
REPO = BENCH / "repo.git"
TREE = BENCH / "tree"
DOCTEUR = [sys.executable, "-m", "docteur.cli"]
GENERATOR_VERSION = "1"  # bump to regenerate the cached repository
ENV = dict(
    os.environ,
    GIT_CONFIG_NOSYSTEM="1",
    GIT_CONFIG_GLOBAL=os.devnull,
    GIT_AUTHOR_NAME="Bench",
    GIT_AUTHOR_EMAIL="bench@example.com",
    GIT_COMMITTER_NAME="Bench",
    GIT_COMMITTER_EMAIL="bench@example.com",
    LC_ALL="C",
)

Row = tuple[str, float, float, str]


def _run(*args: str | os.PathLike[str], cwd: Path | None = None, input: bytes | None = None) -> bytes:
    proc = subprocess.run(list(map(os.fspath, args)), cwd=cwd, input=input, env=ENV,
                          capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0:3]}: {proc.stderr.decode(errors='replace')[-500:]}")
    return proc.stdout


def _text_file(rng: random.Random, pool: list[bytes], lines: int) -> bytes:
    return b"".join(rng.choice(pool) for _ in range(lines))


def _fast_import_stream(rng: random.Random) -> bytes:
    """Three commits: a source-like tree of ~4000 files plus binaries, then edits."""
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10)))
             for _ in range(3000)]
    pool = [
        b"    " * rng.randint(0, 3) + b" ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))
        + b"\n"
        for _ in range(20000)
    ]
    files: dict[bytes, bytes] = {}
    for d in range(40):
        for f in range(100):
            files[b"src/pkg%02d/mod%03d.py" % (d, f)] = _text_file(rng, pool, rng.randint(50, 700))
    for i in range(60):
        files[b"assets/blob%02d.bin" % i] = rng.randbytes(rng.randint(200_000, 900_000))
    out = []
    mark = 0

    def commit(changes: dict[bytes, bytes], when: int, message: bytes) -> None:
        nonlocal mark
        out.append(b"commit refs/heads/main\n")
        out.append(b"committer Bench <bench@example.com> %d +0000\n" % when)
        out.append(b"data %d\n%s\n" % (len(message), message))
        for path, body in sorted(changes.items()):
            out.append(b"M 100644 inline %s\ndata %d\n%s\n" % (path, len(body), body))

    commit(files, 1_700_000_000, b"initial import")
    for n in range(2):
        changed = {}
        for path in rng.sample(sorted(p for p in files if p.startswith(b"src/")), 400):
            lines = files[path].splitlines(keepends=True)
            at = rng.randrange(len(lines))
            lines[at : at + 3] = [rng.choice(pool) for _ in range(4)]
            files[path] = changed[path] = b"".join(lines)
        commit(changed, 1_700_000_000 + 3600 * (n + 1), b"edit round %d" % (n + 1))
    return b"".join(out)


def ensure_repo() -> Path:
    stamp = BENCH / f"generated-v{GENERATOR_VERSION}"
    if stamp.exists() and REPO.is_dir() and TREE.is_dir():
        return REPO
    shutil.rmtree(BENCH, ignore_errors=True)
    BENCH.mkdir(parents=True)
    print("bench: generating the repository (once, cached in build/bench)", file=sys.stderr)
    _run("git", "init", "-q", "--bare", "-b", "main", REPO)
    _run("git", "fast-import", "--quiet", cwd=REPO, input=_fast_import_stream(random.Random(42)))
    _run("git", "repack", "-a", "-d", "-q", cwd=REPO)
    TREE.mkdir()
    archive = _run("git", "archive", "--format=tar", "HEAD", cwd=REPO)
    _run("tar", "-x", "-C", TREE, input=archive)
    stamp.write_text("ok\n")
    return REPO


def _best(fn: Callable[[], object], runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _pack_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("objects/pack/*.pack"))


def rows() -> list[Row]:
    repo = ensure_repo()
    work = BENCH / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    out: list[Row] = []
    image = work / "repo.img"

    # make from a local repository vs a shallow clone that really packs (--no-local).
    def make() -> None:
        _run(*DOCTEUR, "make", f"file://{repo}", image)

    def clone() -> None:
        shutil.rmtree(work / "clone", ignore_errors=True)
        _run("git", "clone", "-q", "--bare", "--depth", "1", "--no-local", f"file://{repo}",
             work / "clone")

    t_make, t_clone = _best(make), _best(clone)
    pack_mb = image.stat().st_size / 1e6
    out.append((f"docteur make file:// ({pack_mb:.0f} MB image) vs git clone --depth 1 --no-local",
                t_make, t_clone, "≤ 1.5×"))

    # verify: the whole check vs git's own pack verification of the same PACK.
    pack = work / "verify.pack"
    data = image.read_bytes()
    idx_offset = int.from_bytes(data[20:28], "little")
    pack.write_bytes(data[28:idx_offset].rstrip(b"\0"))
    del data
    _run("git", "index-pack", "-o", work / "verify.idx", pack)
    t_verify = _best(lambda: _run(*DOCTEUR, "verify", "-q", image))
    t_git = _best(lambda: _run("git", "verify-pack", "-v", work / "verify.idx"))
    out.append(("docteur verify vs git verify-pack -v (s)", t_verify, t_git, "≤ 1.0×"))

    # size: a plain directory's image vs the best git does with the same tree.
    dir_image = work / "dir.img"
    _run(*DOCTEUR, "make", "-d", "2024-01-01T00:00:00Z", TREE, dir_image)
    gc_repo = work / "gc"
    _run("git", "init", "-q", gc_repo)
    _run("git", "--git-dir", gc_repo / ".git", "--work-tree", TREE, "add", "-A", ".", cwd=TREE)
    _run("git", "--git-dir", gc_repo / ".git", "--work-tree", TREE, "commit", "-q", "-m", "x",
         cwd=TREE)
    _run("git", "gc", "-q", "--aggressive", "--prune=now", cwd=gc_repo)
    gc_size = _pack_size(gc_repo / ".git")
    out.append(("directory image size vs git gc --aggressive pack (MB)",
                dir_image.stat().st_size / 1e6, gc_size / 1e6, "≤ 1.05×"))
    shutil.rmtree(work / "clone", ignore_errors=True)
    shutil.rmtree(gc_repo, ignore_errors=True)
    return out


if __name__ == "__main__":
    for row in rows():
        print(row)
