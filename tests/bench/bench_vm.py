"""Benchmarks of the microVM appliance under whatever accelerator `auto` picks.

Rows (ratio = docteur / peer):
- boot to the guest's greeting (small image, verify pack) vs a bare boot of the
  same kernel whose /init only writes one byte          (goal ≤ 1.15×)
- snapshot start (the state saved after a first boot, restored) to the greeting vs
  the same bare boot                                     (goal ≤ 0.5×)
- `get` of a 64 MiB file vs raw bulk throughput of the same virtio-serial port,
  written by the guest as fast as it can, in MB/s        (goal ≥ 0.5×); the
  same get again, once the guest knows the blob verified (goal ≥ 0.8×); and the first
  get after a snapshot start whose state was saved after a `--verify full` boot (informative)
- boot with `pack` verification of a ≥ 50 MB image vs `none`   (informative)

Each figure is the median of a few runs; the 64 MiB image is cached in build/bench/vm, and
so are the bare and raw-port initramfs variants (tests/bench/initrds.py), rebuilt each run.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import time
from pathlib import Path

from docteur.guest import protocol
from docteur.vm.runtime import qemu
from docteur.vm.runtime.appliance import DEFAULT_BUILD, Appliance
from tests.bench.initrds import bare_initrd, blast_initrd
from tests.support.git import git
from tests.support.images import image_of

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "bench" / "vm"
GUEST = DEFAULT_BUILD / "guest"
BIG = 64 << 20
RUNS = 3
Row = tuple[str, float, float, str]


def _image(name: str, files: dict[str, bytes]) -> Path:
    image = CACHE / f"{name}.img"
    if image.exists():
        return image
    repo = CACHE / name
    repo.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", cwd=repo)
    for path, data in files.items():
        (repo / path).write_bytes(data)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", name, cwd=repo)
    return image_of(repo, image)


def small_image() -> Path:
    return _image("small", {"README.md": b"# small\n" * 100})


def big_image() -> Path:
    # Random bytes: the pack cannot compress them, so it is > 64 MB too.
    return _image("big", {"README.md": b"# big\n", "big.bin": os.urandom(BIG)})


def bare_boot() -> float:
    """QEMU start to the bare /init's one byte on the console."""
    qmp_host, qmp_qemu = socket.socketpair()
    log = CACHE / "bare-console.log"
    log.write_bytes(b"")
    initrd = CACHE / "bare-initrd.gz"
    initrd.write_bytes(bare_initrd())
    launch = qemu.Launch(kernel=GUEST / "vmlinuz", initrd=initrd, blocks={},
                         console_log=log, qmp_fd=qmp_qemu.fileno(),
                         accel=qemu.choose_accel("auto"))  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(launch.argv(qemu.find_qemu()), pass_fds=[qmp_qemu.fileno()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    qmp_qemu.close()
    try:
        while b"!" not in log.read_bytes():
            if proc.poll() is not None and b"!" not in log.read_bytes():
                raise RuntimeError("bare boot exited without its byte")
            time.sleep(0.002)
        return time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
        qmp_host.close()


async def greeted_boot(image: Path, verify: str, snapshot: str = "off") -> float:
    async with Appliance(blocks={"docteur": image}, verify=verify, timeout=120, snapshot=snapshot) as vm:
        assert vm.boot_seconds is not None
        if snapshot == "auto" and not vm.restored:
            raise RuntimeError("the snapshot start booted cold")
        return vm.boot_seconds


def snapshot_start(image: Path) -> float:
    """QEMU start to the greeting of a restored appliance (its snapshot saved once first,
    in a cache of the bench's own)."""
    os.environ["XDG_CACHE_HOME"] = str(CACHE / "xdg")
    asyncio.run(greeted_boot(image, "pack", "refresh"))
    return _median(lambda: asyncio.run(greeted_boot(image, "pack", "auto")))


async def raw_throughput() -> float:
    """MB/s of the guest writing zeros to the port, first byte to last."""
    initrd = CACHE / "blast-initrd"
    initrd.write_bytes(blast_initrd((GUEST / "initrd").read_bytes()))
    vm = Appliance(blocks={"docteur": small_image()}, greet=False,
                   kernel=GUEST / "vmlinuz", initrd=initrd,
                   extra_args=[f"docteur.blast_mib={BIG >> 20}"])  # fmt: skip
    async with vm:
        assert vm.reader is not None
        first = await asyncio.wait_for(vm.reader.read(1 << 20), 60)
        t0, got = time.monotonic(), len(first)
        while got < BIG:
            chunk = await asyncio.wait_for(vm.reader.read(1 << 20), 30)
            if not chunk:
                break
            got += len(chunk)
        if got < BIG:  # the blast /init failed: say so, never a figure of 0
            raise RuntimeError(f"the raw-port guest sent {got} of {BIG} bytes")
        return got / (time.monotonic() - t0) / 1e6


async def _get(vm: Appliance, codec: protocol.ClientCodec) -> float:
    """MB/s of one protocol `get` of the 64 MiB file, request to END."""
    assert vm.reader is not None and vm.writer is not None
    _rid, frame = codec.request("get", "docteur", b"/big.bin")
    t0 = time.monotonic()
    vm.writer.write(frame)
    got = 0
    while True:
        try:
            data = await asyncio.wait_for(vm.reader.read(1 << 20), 20)
        except TimeoutError:
            raise RuntimeError(f"get stalled after {got} bytes (guest server)") from None
        if not data:
            raise RuntimeError("the port closed during the get")
        for ev in codec.receive(data):
            if isinstance(ev, protocol.Data):
                got += len(ev.data)
            elif isinstance(ev, (protocol.End, protocol.Error)):
                if got != BIG:
                    raise RuntimeError(f"get returned {got} bytes: {ev}")
                return got / (time.monotonic() - t0) / 1e6


async def _gets(image: Path, count: int, verify: str = "none", snapshot: str = "off") -> list[float]:
    """MB/s of `count` gets of the 64 MiB file in one start (`snapshot` auto: a restored one)."""
    async with Appliance(blocks={"docteur": image}, verify=verify, timeout=120, snapshot=snapshot,
                         make_client=None) as vm:  # fmt: skip
        if snapshot == "auto" and not vm.restored:
            raise RuntimeError("the snapshot start booted cold")
        codec = protocol.ClientCodec()
        codec.receive(vm.hello)
        return [await _get(vm, codec) for _ in range(count)]


async def get_throughput(image: Path) -> tuple[float, float]:
    """The first get (the guest hashes the blob before its first byte) and a second
    one (already verified: inflate and transfer only), in one boot."""
    first, again = await _gets(image, 2)
    return first, again


async def restored_get(image: Path) -> float:
    """MB/s of the first get after a snapshot start whose state was saved after a
    `--verify full` boot: every id was checked before the state was saved, and the
    restored guest keeps that (its disks compared first), so a first read costs a repeat's."""
    (first,) = await _gets(image, 1, "full", "auto")
    return first


def snapshot_get(image: Path) -> float:
    """The state saved once after a full verification (a slow cold boot), then restored."""
    os.environ["XDG_CACHE_HOME"] = str(CACHE / "xdg")
    asyncio.run(greeted_boot(image, "full", "refresh"))
    return _median(lambda: asyncio.run(restored_get(image)))


def _median(fn, *args: object) -> float:  # type: ignore[no-untyped-def]
    return statistics.median(fn(*args) for _ in range(RUNS))


def rows() -> list[Row]:
    from docteur.cli.log import configure

    configure("console", 0)  # the appliance's info events would mix into the table
    CACHE.mkdir(parents=True, exist_ok=True)
    small, big = small_image(), big_image()
    run = asyncio.run
    boot = _median(lambda: run(greeted_boot(small, "pack")))
    bare = _median(bare_boot)
    restored = snapshot_start(small)
    raw = _median(lambda: run(raw_throughput()))
    get_what = "get 64 MiB over virtio-serial vs raw port (MB/s)"
    try:
        gets = [run(get_throughput(big)) for _ in range(RUNS)]
        get, again = (statistics.median(g[i] for g in gets) for i in (0, 1))
    except RuntimeError as exc:  # keep the other rows; say why this one is 0
        get, again, get_what = 0.0, 0.0, f"{get_what} FAILED: {exc}"
    try:
        after_full = snapshot_get(big)
    except RuntimeError as exc:
        after_full, get_what = 0.0, f"{get_what} (after a full snapshot FAILED: {exc})"
    pack = _median(lambda: run(greeted_boot(big, "pack")))
    none = _median(lambda: run(greeted_boot(big, "none")))
    size = big.stat().st_size / 1e6
    return [
        ("microvm boot to greeting vs bare boot (s)", boot, bare, "≤ 1.15×"),
        ("snapshot start to greeting vs bare boot (s)", restored, bare, "≤ 0.5×"),
        (get_what, get, raw, "≥ 0.5×"),
        ("  same file again, already verified (MB/s)", again, raw, "≥ 0.8×"),
        ("  first get after a snapshot start saved after --verify full (MB/s)", after_full, raw, "info"),
        (f"boot verify=pack vs none, {size:.0f} MB image (s)", pack, none, "info"),
    ]
