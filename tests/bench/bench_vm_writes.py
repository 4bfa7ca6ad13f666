"""Benchmarks of writes through the running appliance (issue 9). Rows:

- `put` of a 64 MiB file into the microVM, request to its durable END, in MB/s, vs raw
  bulk throughput of the same virtio-serial port (bench_vm's measurement; goal ≥ 0.5×)
- the same put through `docteur run --target unix --rw` (s) vs `git hash-object -w` of the
  same file (goal ≤ 1.5×)
- single 1 KiB puts, each its own durable commit, through the unix target (commits/s) vs
  `git commit` of one changed file in a loop (goal ≥ 1×)

The file is source-like text (bench_writes' generator): it compresses as code does. Each
run writes into a fresh copy of a small image made with room for it.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

from docteur.vm.client import Client
from docteur.vm.runtime.appliance import Appliance
from tests.bench.bench_image import BENCH, DOCTEUR, ENV, Row, _run
from tests.bench.bench_vm import CACHE, raw_throughput
from tests.bench.bench_writes import _text

WORK = BENCH / "vm-writes"
BIG = 64 << 20
SMALL_COMMITS = 200
RUNS = 2


def _base_image() -> Path:
    image = WORK / "base.img"
    if not image.exists():
        src = WORK / "src"
        src.mkdir(parents=True, exist_ok=True)
        (src / "README.md").write_bytes(b"# writes bench\n")
        _run(*DOCTEUR, "make", "--capacity", "256M", "-d", "2024-01-01T00:00:00Z", src, image)
    return image


def _fresh(name: str) -> Path:
    copy = WORK / name
    _run("cp", "--sparse=always", _base_image(), copy)
    return copy


async def _vm_put(data: bytes) -> float:
    """MB/s of one put of `data` into the microVM (its own commit)."""
    image = _fresh("vm.img")
    try:
        async with Appliance(blocks={"docteur": image}, writable=True, verify="none", timeout=120) as vm:
            start = time.perf_counter()
            result = await vm.client.put("/big.bin", data, message="big")
            took = time.perf_counter() - start
            assert result is not None and result.committed
        return len(data) / took / 1e6
    finally:
        image.unlink()


class UnixTarget:
    """`docteur run --target unix --rw IMAGE --socket S` on a fresh copy, until closed."""

    def __init__(self) -> None:
        self.image = _fresh("unix.img")
        self.dir = tempfile.mkdtemp(prefix="dtw", dir="/tmp")
        self.sock = os.path.join(self.dir, "s")
        self.proc = subprocess.Popen([*DOCTEUR, "run", "--target", "unix", "--rw", str(self.image),
                                      "--socket", self.sock], env=ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(b"docteur: serving"):
            self.close()
            raise RuntimeError(f"docteur run --target unix --rw did not start: {line!r}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.communicate(timeout=60)
        self.image.unlink(missing_ok=True)
        os.rmdir(self.dir)


async def _unix_put(sock: str, data: bytes) -> float:
    async with await Client.open_unix(sock, timeout=300) as client:
        start = time.perf_counter()
        result = await client.put("/big.bin", data, message="big")
        took = time.perf_counter() - start
        assert result is not None and result.committed
        return took


async def _unix_small(sock: str, count: int) -> float:
    """Commits/s of `count` single 1 KiB puts, each durable when answered."""
    rng = random.Random(1)
    async with await Client.open_unix(sock, timeout=60) as client:
        start = time.perf_counter()
        for i in range(count):
            result = await client.put("/notes/small.txt", rng.randbytes(1024), message=f"small {i}")
            assert result is not None and result.committed
        return count / (time.perf_counter() - start)


def _git_hash_object(big: Path) -> float:
    repo = WORK / "hash.git"
    _run("rm", "-rf", repo)
    _run("git", "init", "-q", "--bare", repo)
    start = time.perf_counter()
    _run("git", "hash-object", "-w", big, cwd=repo)
    return time.perf_counter() - start


def _git_commits(count: int) -> float:
    """Commits/s of `git commit` of one changed 1 KiB file, in a loop."""
    repo = WORK / "small"
    _run("rm", "-rf", repo)
    _run("git", "init", "-q", "-b", "main", repo)
    note = repo / "small.txt"
    note.write_bytes(b"\n")
    _run("git", "add", "small.txt", cwd=repo)
    rng = random.Random(1)
    start = time.perf_counter()
    for i in range(count):
        note.write_bytes(rng.randbytes(1024))
        _run("git", "commit", "-q", "-m", f"small {i}", "small.txt", cwd=repo)
    return count / (time.perf_counter() - start)


def rows() -> list[Row]:
    from docteur.cli.log import configure

    configure("console", 0)  # the appliance's info events would mix into the table
    WORK.mkdir(parents=True, exist_ok=True)
    CACHE.mkdir(parents=True, exist_ok=True)  # the raw-port initramfs goes there
    data = _text(random.Random(64), BIG)
    big = WORK / "big.txt"
    big.write_bytes(data)
    run = asyncio.run
    raw = max(run(raw_throughput()) for _ in range(RUNS))
    vm_put = max(run(_vm_put(data)) for _ in range(RUNS))
    unix_put, small = float("inf"), 0.0
    for _ in range(RUNS):
        target = UnixTarget()
        try:
            unix_put = min(unix_put, run(_unix_put(target.sock, data)))
            small = max(small, run(_unix_small(target.sock, SMALL_COMMITS)))
        finally:
            target.close()
    hash_object = min(_git_hash_object(big) for _ in range(RUNS))
    git_commits = max(_git_commits(SMALL_COMMITS) for _ in range(RUNS))
    return [
        ("put 64 MiB into the microVM vs raw port (MB/s)", vm_put, raw, "≥ 0.5×"),
        ("put 64 MiB via --target unix vs git hash-object -w (s)", unix_put, hash_object, "≤ 1.5×"),
        ("1 KiB puts, one durable commit each, --target unix vs git commit (commits/s)",
         small, git_commits, "≥ 1×"),
    ]  # fmt: skip
