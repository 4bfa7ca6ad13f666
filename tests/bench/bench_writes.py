"""Benchmarks of writes (issue 8) against git itself. Rows:

- `docteur put` of a 64 MiB file vs `git hash-object -w` + `git commit` of it (goal ≤ 1.5×)
- `docteur commit` of a directory adding 1 000 small files vs `git add -A && git commit` (≤ 2×)
- opening an image with 50 generations vs 1 (the bench repository's image; goal ≤ 1.2×)
- image bytes in use after 100 small batches, before and after `docteur compact`, vs the
  same history packed by `git gc --aggressive` (goal after ≤ 1.1×)
- flushes per batch, counted on a recording device over those 100 batches (goal: 2)
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

from docteur.builder.stores import CHECK
from docteur.builder.writes import used_bytes
from docteur.guest.batch import Batch
from docteur.guest.device import FileDevice
from docteur.guest.generations import Store
from tests.bench.bench_image import BENCH, DOCTEUR, ENV, TREE, Row, _best, _pack_size, _run, ensure_repo
from tests.support.crash import RecordingDevice
from tests.support.guestproc import GuestProcess

WORK = BENCH / "writes"
AUTHOR = "Bench <bench@example.com>"


def _text(rng: random.Random, size: int) -> bytes:
    """Source-like text of `size` bytes (compresses as code does)."""
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10)))
             for _ in range(3000)]  # fmt: skip
    lines = [b" ".join(rng.choice(words) for _ in range(rng.randint(2, 9))) + b"\n" for _ in range(20000)]
    out = bytearray()
    while len(out) < size:
        out += b"".join(rng.choices(lines, k=4096))
    return bytes(out[:size])


def _fresh_copy(image: Path, name: str) -> Path:
    copy = WORK / name
    _run("cp", "--sparse=always", image, copy)
    return copy


def _git_repo(path: Path, base: Path) -> None:
    """A work tree at `path` holding `base`'s files, committed once."""
    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(base, path)
    _run("git", "init", "-q", "-b", "main", path)
    _run("git", "add", "-A", cwd=path)
    _run("git", "commit", "-q", "-m", "base", cwd=path)


def _put_row(base_dir: Path, base_img: Path) -> Row:
    big = WORK / "big.bin"
    big.write_bytes(_text(random.Random(64), 64 << 20))
    runs = iter(range(100))

    def put() -> None:
        image = _fresh_copy(base_img, f"put{next(runs)}.img")
        start = time.perf_counter()
        _run(*DOCTEUR, "put", image, "/big.bin", big, "-m", "big")
        put.took = min(put.took, time.perf_counter() - start)  # type: ignore[attr-defined]
        image.unlink()

    def git() -> None:
        repo = WORK / "gitput"
        _git_repo(repo, base_dir)
        start = time.perf_counter()
        oid = _run("git", "hash-object", "-w", big, cwd=repo).decode().strip()
        _run("git", "update-index", "--add", "--cacheinfo", f"100644,{oid},big.bin", cwd=repo)
        _run("git", "commit", "-q", "-m", "big", cwd=repo)
        git.took = min(git.took, time.perf_counter() - start)  # type: ignore[attr-defined]

    put.took = git.took = float("inf")  # type: ignore[attr-defined]
    for _ in range(3):
        put()
        git()
    return ("docteur put of a 64 MiB file vs git hash-object -w + commit (s)",
            put.took, git.took, "≤ 1.5×")  # type: ignore[attr-defined]  # fmt: skip


def _commit_row(base_dir: Path, base_img: Path) -> Row:
    tree = WORK / "thousand"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(base_dir, tree)
    rng = random.Random(1000)
    for i in range(1000):
        path = tree / f"d{i % 20:02d}" / f"f{i:04d}.txt"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(_text(rng, rng.randint(200, 4000)) if i < 20 else b"file %d\n" % i * (i % 50 + 1))
    took = {"docteur": float("inf"), "git": float("inf")}
    for n in range(3):
        image = _fresh_copy(base_img, f"commit{n}.img")
        start = time.perf_counter()
        _run(*DOCTEUR, "commit", image, tree, "-m", "thousand")
        took["docteur"] = min(took["docteur"], time.perf_counter() - start)
        image.unlink()
        repo = WORK / "gitcommit"
        _git_repo(repo, base_dir)
        for sub in tree.iterdir():
            if sub.is_dir() and not (repo / sub.name).exists():
                shutil.copytree(sub, repo / sub.name)
        start = time.perf_counter()
        _run("git", "add", "-A", cwd=repo)
        _run("git", "commit", "-q", "-m", "thousand", cwd=repo)
        took["git"] = min(took["git"], time.perf_counter() - start)
    return ("docteur commit of a directory adding 1 000 small files vs git add -A && git commit (s)",
            took["docteur"], took["git"], "≤ 2×")  # fmt: skip


def _batches(image: Path, count: int, rng: random.Random, paths: list[bytes]) -> tuple[int, int]:
    """`count` small batches (three files edited each); (flushes, batches) as counted."""
    with FileDevice(str(image), writable=True) as file:
        dev = RecordingDevice(file)
        with Store.open(dev) as store:
            for i in range(count):
                batch = Batch(store)
                for path in rng.sample(paths, 3):
                    body = batch.editor.lookup(path)
                    assert body is not None
                    data = store.read_object(body[1])[1].splitlines(keepends=True)
                    data[rng.randrange(len(data))] = b"# edited in batch %d\n" % i
                    batch.put(path, b"".join(data))
                batch.commit(f"batch {i}", AUTHOR, when=1_700_000_000 + i)
    return sum(1 for op in dev.ops if op[0] == "flush"), count


def _open_time(image: Path, check: str) -> float:
    def once() -> None:
        with FileDevice(str(image)) as dev, Store.open(dev, check) as store:
            store.commit_object()

    return _best(once, runs=10)


def _open_rows() -> list[Row]:
    repo = ensure_repo()
    base = WORK / "repo.img"
    _run(*DOCTEUR, "make", "--capacity", "1G", f"file://{repo}", base)
    paths = [b"/src/pkg00/mod%03d.py" % i for i in range(100)]
    one, fifty = _fresh_copy(base, "one.img"), _fresh_copy(base, "fifty.img")
    _batches(one, 1, random.Random(1), paths)
    _batches(fifty, 50, random.Random(50), paths)
    rows = [(f"open (Store.open {check!r} + head commit) with 50 generations vs 1 (s)",
             _open_time(fifty, check), _open_time(one, check), "info: milliseconds, see boot")
            for check in ("cheap", CHECK)]  # fmt: skip
    rows.append(("boot to listening (guest server process, verify pack), 50 generations vs 1 (s)",
                 *_boot_times(fifty, one), "≤ 1.2×"))  # fmt: skip
    return rows


def _boot_times(*images: Path, runs: int = 12) -> list[float]:
    """Best time of `python -m docteur.guest --listen` from its start to listening (open,
    verify pack of every live generation's PACK and IDX), for each image; the images
    take turns so that a load on the machine hits them alike."""
    best = [float("inf")] * len(images)
    for _ in range(runs):
        for i, image in enumerate(images):
            start = time.perf_counter()
            GuestProcess(image, "pack").close()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def _size_rows(base_dir: Path, hot: int | None, label: str) -> list[Row]:
    """100 batches of three edited files, drawn from every file or from `hot` of them."""
    image = WORK / "hundred.img"
    image.unlink(missing_ok=True)
    _run(*DOCTEUR, "make", "--capacity", "256M", "-d", "2024-01-01T00:00:00Z", base_dir, image)
    paths = [b"/" + os.fsencode(p.relative_to(base_dir)) for p in sorted(base_dir.rglob("*.py"))][:hot]
    flushes, batches = _batches(image, 100, random.Random(100), paths)
    with FileDevice(str(image)) as dev, Store.open(dev) as store:
        before = used_bytes(store)
    _run(*DOCTEUR, "compact", image)
    with FileDevice(str(image)) as dev, Store.open(dev) as store:
        after = used_bytes(store)
    repo = WORK / "hundred.git"
    shutil.rmtree(repo, ignore_errors=True)
    _run(*DOCTEUR, "export", image, repo)
    _run("git", "gc", "-q", "--aggressive", "--prune=now", cwd=repo)
    gc = _pack_size(repo) + sum(p.stat().st_size for p in repo.glob("objects/pack/*.idx"))
    return [
        (f"image bytes in use after 100 small batches ({label}) vs git gc --aggressive (MB)",
         before / 1e6, gc / 1e6, "(before compact)"),
        ("the same after docteur compact vs git gc --aggressive (MB)", after / 1e6, gc / 1e6, "≤ 1.1×"),
        ("flushes per batch (peer: the goal)", flushes / batches, 2.0, "= 2"),
    ]  # fmt: skip


def rows() -> list[Row]:
    ensure_repo()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    # A small site: 5 packages of the bench tree (500 source files).
    base_dir = WORK / "base"
    for i in range(5):
        shutil.copytree(TREE / "src" / f"pkg{i:02d}", base_dir / "src" / f"pkg{i:02d}")
    base_img = WORK / "base.img"
    _run(*DOCTEUR, "make", "--capacity", "512M", "-d", "2024-01-01T00:00:00Z", base_dir, base_img)
    assert ENV  # git runs with the bench's fixed identity
    out = [_put_row(base_dir, base_img), _commit_row(base_dir, base_img), *_open_rows()]
    # Edits spread over the 500 files: most edited files' older version is in the first
    # generation, which no later PACK may delta against (FORMAT.md: self-contained PACKs).
    out += _size_rows(base_dir, None, "3 of 500 files each")
    # A site where the same pages change: compaction's deltas do what git's do.
    out += _size_rows(base_dir, 10, "3 of 10 files each")[:2]
    shutil.rmtree(WORK, ignore_errors=True)
    return out


if __name__ == "__main__":
    for row in rows():
        print(row)
