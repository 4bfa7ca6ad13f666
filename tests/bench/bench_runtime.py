"""Guest runtime benchmark rows (`make bench`), peers measured in the same run.

- files/s and MB/s served over a unix socket (the guest server as a host
  process, the asyncio client, pipelined) vs `git cat-file --batch` reading the
  same blobs from the repository;
- peak RSS of the server having served every file of a 100 000-file image;
- boot verification time in each mode vs `sha1sum` of the image.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from docteur.guest.boot import boot
from docteur.vm.client import Client, run
from tests.support.git import ls_tree
from tests.support.guestproc import GuestProcess
from tests.support.images import packed_image
from tests.support.repos import generate_repo

Row = tuple[str, float, float, str]


def _git_cat_file(repo: Path, oids: list[bytes]) -> tuple[float, int]:
    start = time.perf_counter()
    out = subprocess.run(
        ["git", "cat-file", "--batch"], cwd=repo, capture_output=True, check=True,
        input=b"".join(o.hex().encode() + b"\n" for o in oids),
    ).stdout
    return time.perf_counter() - start, len(out)


async def _get_all(sock: str, paths: list[bytes], window: int = 256) -> tuple[float, int]:
    async with await Client.open_unix(sock, timeout=120) as client:
        start = time.perf_counter()
        total = 0
        for i in range(0, len(paths), window):
            got = await asyncio.gather(*(client.get(p) for p in paths[i : i + window]))
            total += sum(map(len, got))
        return time.perf_counter() - start, total


def _blobs(repo: Path) -> tuple[list[bytes], list[bytes]]:
    rows = [(o, b"/" + p) for _, kind, o, p in ls_tree(repo) if kind == "blob"]
    return [o for o, _ in rows], [p for _, p in rows]


def _throughput(base: Path) -> list[Row]:
    repo = generate_repo(base / "gen.git", files=3000, commits=2, big=64 << 20)
    image = packed_image(repo, base / "gen.img")
    oids, paths = _blobs(repo)
    small = [(o, p) for o, p in zip(oids, paths, strict=True) if p != b"/big.bin"]
    big = [(o, p) for o, p in zip(oids, paths, strict=True) if p == b"/big.bin"]
    served = GuestProcess(image, verify="none")
    try:
        t_files, _ = run(_get_all(served.sock, [p for _, p in small]))
        t_big, n_big = run(_get_all(served.sock, [p for _, p in big]))
    finally:
        served.close()
    g_files, _ = _git_cat_file(repo, [o for o, _ in small])
    g_big, _ = _git_cat_file(repo, [o for o, _ in big])
    n = len(small)
    mb = n_big / 1e6
    return [
        (f"get, files/s ({n} small files, unix socket)", n / t_files, n / g_files,
         "vs git cat-file --batch (info)"),
        ("get, MB/s (one 64 MiB file, unix socket)", mb / t_big, mb / g_big,
         "vs git cat-file --batch (info)"),
    ]  # fmt: skip


def _memory_and_boot(base: Path) -> list[Row]:
    repo = generate_repo(base / "many.git", files=100_000, commits=1, big=1 << 20)
    image = packed_image(repo, base / "many.img")
    _, paths = _blobs(repo)
    served = GuestProcess(image, verify="pack")
    try:
        run(_get_all(served.sock, paths))
        rss = served.peak_rss_mib()
    finally:
        served.close()
    rows: list[Row] = [
        ("peak RSS serving every file of a 100 000-file image (MiB)", rss, 64.0, "≤ 64 MiB")
    ]
    start = time.perf_counter()
    subprocess.run(["sha1sum", str(image)], check=True, capture_output=True)
    t_sha = time.perf_counter() - start
    size = image.stat().st_size / 1e6
    for mode in ("none", "pack", "full"):
        start = time.perf_counter()
        service = boot([("docteur", str(image))], mode)
        took = time.perf_counter() - start
        assert service.boot_error is None, service.boot_error
        for disk in service.disks.values():
            disk.image.close()
        rows.append((f"boot verify {mode} (s), {size:.0f} MB image", took, t_sha,
                     "vs sha1sum of the image (info)"))  # fmt: skip
    return rows


def rows() -> list[Row]:
    base = Path(tempfile.mkdtemp(prefix="docteur-bench-runtime-"))
    try:
        return _throughput(base) + _memory_and_boot(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    for row in rows():
        print(row)
