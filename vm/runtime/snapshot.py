"""Snapshot start: the appliance's state saved after a cold boot, restored instead of booting.

After a cold boot has verified the disks, the guest is told a snapshot is coming (op
`snapshot`: it notes what its disks hold), paused, and its whole state written by QMP
migration to `$XDG_CACHE_HOME/docteur/snapshots/KEY.state`, beside the guest cache. A
later run with the same KEY starts QEMU with `-incoming` on that file instead of booting,
then tells the guest (op `restored`): the guest drops its page cache and reads its disks'
header, trailers and root records again, comparing them with what it verified, and says
`restored` in its greeting from then on.

KEY is a SHA-256 of everything the saved state depends on: QEMU's binary, the guest
build (kernel and initramfs files), the whole QEMU command line but its file descriptors
and run directory (accelerator, CPU, memory, kernel command line with the verify mode and
the disks' names, drive options), and each image's identity: its path, device, inode,
size, change and modification times, and the checksums of every PACK it serves. Any
change to an image (a write, a rebuild, a touch) or to the guest makes another KEY: a cold
boot. The identity is taken again once the state is saved; a change during the cold boot
discards the snapshot.

Writable disks never take part: a run whose drives are not all read-only neither uses nor
saves a snapshot (a snapshot of one disk state must never run on another).

The directory is bounded (MAX_COUNT snapshots, MAX_BYTES in all, least recently used
removed first) and swept at each save: a snapshot whose images or guest build changed or
vanished can never be used again and is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docteur.cli.errors import HostError
from docteur.guest.errors import DocteurError
from docteur.vm.guestbuild.cache import cache_home

MAX_COUNT = 8
MAX_BYTES = 1 << 30  # a snapshot of a 128 MiB guest is ~50-100 MB
STATE, META = ".state", ".json"
FORMAT = 1  # of the metadata and the key's recipe: bump to orphan older snapshots


class SnapshotError(HostError):
    """A snapshot could not be saved or restored (the run goes on with a cold boot)."""


def store_dir() -> Path:
    return cache_home() / "snapshots"


def file_identity(path: Path) -> list[Any]:
    st = os.stat(path)
    return [str(path), st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns, st.st_mtime_ns]


def image_identity(path: Path) -> list[Any] | None:
    """The image's identity (see the module docstring), or None when it cannot be
    opened (it is being written, or it is not an image: no snapshot then)."""
    from docteur.guest.image import Image

    try:
        before = file_identity(path)
        with contextlib.closing(Image.open(str(path), "cheap")) as image:
            packs = [index.pack_checksum.hex() for _, index, _ in image.store.packs()]
        return [*before, packs] if file_identity(path) == before else None
    except (DocteurError, OSError):
        return None


def stable_argv(argv: list[str], fds: tuple[int, ...], rundir: Path) -> list[str]:
    """The QEMU command line with what differs between two runs of the same appliance
    (descriptor numbers, the run directory) taken out."""
    out = []
    for arg in argv:
        arg = arg.replace(str(rundir), "RUNDIR")
        for fd in fds:
            arg = arg.replace(f"fd={fd}", "fd=N")
        out.append(arg)
    return out


def read_only(argv: list[str]) -> bool:
    """Every -drive of the command line is read-only (and there is one at least); a
    disk given as its own -blockdev (the fault-injection hook) is never snapshotted."""
    drives = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-drive"]
    return bool(drives) and "-blockdev" not in argv and all("readonly=on" in d.split(",") for d in drives)


@dataclass
class Entry:
    """One snapshot of the store: KEY.state and its metadata KEY.json."""

    key: str
    blocks: dict[str, Path]
    images: dict[str, list[Any]]  # name -> image_identity, as taken before the boot
    guest: list[list[Any]]  # file_identity of QEMU, the kernel and the initramfs

    @property
    def state(self) -> Path:
        return store_dir() / (self.key + STATE)

    @property
    def meta(self) -> Path:
        return store_dir() / (self.key + META)

    def usable(self) -> bool:
        return self.state.is_file() and self.meta.is_file()

    def touch(self) -> None:
        """Used now: the least recently used go first when the store is full."""
        with contextlib.suppress(OSError):
            os.utime(self.meta)

    def discard(self) -> None:
        for path in (self.state, self.meta):
            with contextlib.suppress(OSError):
                path.unlink()

    def temporary(self) -> Path:
        """Where the state is written before it is complete (renamed to `state`)."""
        store_dir().mkdir(parents=True, exist_ok=True)
        return store_dir() / f".{self.key}.{os.getpid()}.tmp"

    def still_valid(self) -> bool:
        """The images and the guest are still the ones the key was made of."""
        try:
            return (all(image_identity(self.blocks[n]) == ident for n, ident in self.images.items())
                    and all(file_identity(Path(g[0])) == g for g in self.guest))  # fmt: skip
        except OSError:
            return False

    def commit(self, tmp: Path) -> None:
        """The state in `tmp` is complete: publish it with its metadata, then keep the
        store within its bounds."""
        meta = {"format": FORMAT, "created": time.time(), "images": self.images, "guest": self.guest,
                "blocks": {n: str(p) for n, p in self.blocks.items()}}  # fmt: skip
        tmp_meta = tmp.with_suffix(".meta")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp, self.state)
        os.replace(tmp_meta, self.meta)
        sweep(keep=self.key)


def entry_for(blocks: dict[str, Path], guest_files: list[Path], argv: list[str]) -> Entry | None:
    """The snapshot this appliance would use or save, or None when it cannot have one
    (an image that cannot be identified, a writable drive)."""
    if not read_only(argv):
        return None
    images: dict[str, list[Any]] = {}
    for name, path in blocks.items():
        ident = image_identity(path)
        if ident is None:
            return None
        images[name] = ident
    try:
        guest = [file_identity(p) for p in guest_files]
    except OSError:
        return None
    recipe = json.dumps({"format": FORMAT, "argv": argv, "images": images, "guest": guest})
    return Entry(hashlib.sha256(recipe.encode()).hexdigest()[:32], dict(blocks), images, guest)


def _load(meta: Path) -> Entry | None:
    try:
        data = json.loads(meta.read_text())
        if data.get("format") != FORMAT:
            return None
        blocks = {n: Path(p) for n, p in data["blocks"].items()}
        return Entry(meta.name.removesuffix(META), blocks, data["images"], data["guest"])
    except (OSError, ValueError, KeyError, AttributeError, TypeError):
        return None


def sweep(keep: str | None = None, max_count: int = MAX_COUNT, max_bytes: int = MAX_BYTES) -> None:
    """Remove the stale snapshots, leftovers of interrupted saves, then the least
    recently used beyond the bounds (`keep`, the one just saved, stays)."""
    root = store_dir()
    try:
        names = os.listdir(root)
    except OSError:
        return
    live: list[tuple[float, int, Entry]] = []
    for name in names:
        path = root / name
        if name.startswith("."):  # a save under way, or one a kill -9 interrupted
            pid = name.split(".")[2] if name.count(".") >= 3 else ""
            if not (pid.isdigit() and _alive(int(pid))):
                with contextlib.suppress(OSError):
                    path.unlink()
            continue
        if not name.endswith(META):
            if name.endswith(STATE) and not (root / (name.removesuffix(STATE) + META)).exists():
                with contextlib.suppress(OSError):
                    path.unlink()  # a state without its metadata: never usable
            continue
        entry = _load(path)
        if entry is None or not entry.state.is_file() or not entry.still_valid():
            (entry or Entry(name.removesuffix(META), {}, {}, [])).discard()
            continue
        with contextlib.suppress(OSError):
            live.append((path.stat().st_mtime, entry.state.stat().st_size, entry))
    live.sort(key=lambda t: (t[2].key != keep, -t[0]))  # the kept one first, then newest
    count = total = 0
    for _, size, entry in live:
        count, total = count + 1, total + size
        if entry.key != keep and (count > max_count or total > max_bytes):
            entry.discard()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the appliance's side -------------------------------------------------------------
SNAPSHOT_ID, RESTORED_ID = 0xFFFFFFF1, 0xFFFFFFF2  # request ids of the appliance's own requests
SAVE_TIMEOUT = 120.0  # seconds for QEMU to write the state


class Unusable(SnapshotError):
    """The restore failed (the snapshot is removed): boot cold instead."""


async def _ask(vm: Any, rid: int, op: str) -> None:
    """One request of ours on the guest's port, before any client reads it; raises
    SnapshotError unless it ends well."""
    from docteur.guest import protocol

    vm.writer.write(protocol.encode_request(rid, op))
    await vm.writer.drain()
    while True:  # a greeting may come first (the guest greets every new session, then each GREET)
        header = await vm.reader.readexactly(protocol.HEADER_SIZE)
        ftype, _code, got, length = protocol.HEADER.unpack(header)
        payload = await vm.reader.readexactly(min(length, protocol.MAX_FRAME))
        if ftype != protocol.HELLO:
            break
    if got != rid or ftype not in (protocol.END, protocol.ERROR):
        raise SnapshotError(f"{op}: the guest answered frame type {ftype:#x} for request {got}")
    if ftype == protocol.ERROR:
        raise SnapshotError(f"{op}: {payload.decode(errors='replace')}")


class Plan:
    """What one appliance start does with snapshots: restore one, save one, or neither."""

    def __init__(self, mode: str, blocks: dict[str, Path], guest_files: list[Path]):
        self.mode = mode  # auto, off or refresh (defaults.SNAPSHOT_MODES)
        self.blocks = blocks
        self.guest_files = guest_files
        self.entry: Entry | None = None
        self.incoming: int | None = None  # the state's fd while QEMU loads it

    @property
    def restoring(self) -> bool:
        return self.incoming is not None

    def qemu_args(self, argv: list[str], fds: tuple[int, ...], rundir: Path) -> list[str]:
        """What to add to QEMU's command line (`-incoming`, to restore)."""
        if self.mode == "off":
            return []
        self.entry = entry_for(self.blocks, self.guest_files, stable_argv(argv, fds, rundir))
        if self.mode != "auto" or self.entry is None or not self.entry.usable():
            return []
        try:
            self.incoming = os.open(self.entry.state, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return []
        self.entry.touch()
        return ["-incoming", f"fd:{self.incoming}"]

    @property
    def fds(self) -> tuple[int, ...]:
        """The descriptors QEMU must inherit."""
        return (self.incoming,) if self.incoming is not None and self.incoming >= 0 else ()

    def loaded(self) -> None:
        """QEMU is running with the state's fd: ours can go."""
        if self.incoming is not None:
            os.close(self.incoming)
            self.incoming = -1  # still restoring

    def close(self) -> None:
        if self.incoming is not None and self.incoming >= 0:
            os.close(self.incoming)
            self.incoming = None

    def give_up(self) -> None:
        """The restore failed: never again with this snapshot, and the next start of this
        appliance boots cold (and saves a new one)."""
        if self.entry is not None:
            self.entry.discard()
        self.incoming = None

    async def resume(self, vm: Any) -> None:
        """After `-incoming`: wait for the state to load, run the guest, tell it."""
        from qemu.qmp import QMPError

        assert vm.qmp is not None
        try:
            while (status := (await vm.qmp.execute("query-status"))["status"]) == "inmigrate":
                await asyncio.sleep(0.005)
            if status != "running":
                await vm.qmp.execute("cont")
        except QMPError as exc:  # e.g. QEMU exits: a state it cannot load
            raise SnapshotError(f"QEMU did not load the saved state ({exc})") from None
        await _ask(vm, RESTORED_ID, "restored")

    async def save(self, vm: Any) -> None:
        """After a cold boot that greeted ok: save the state (never fails the run)."""
        entry = self.entry
        if entry is None or self.restoring or self.mode == "off" or not (vm.greeting and vm.greeting.ok):
            return
        started = time.monotonic()
        tmp = entry.temporary()  # a kill -9 leaves it: the next sweep removes it
        try:
            await asyncio.wait_for(_ask(vm, SNAPSHOT_ID, "snapshot"), 10.0)
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                await asyncio.wait_for(self._migrate(vm, out), SAVE_TIMEOUT)
            finally:
                os.close(out)
            if not entry.still_valid():  # an image changed since the boot: not what was verified
                raise SnapshotError("an image changed during the boot")
            entry.commit(tmp)
            log().info("snapshot saved", seconds=round(time.monotonic() - started, 3),
                       size=entry.state.stat().st_size, key=entry.key)  # fmt: skip
        except Exception as exc:  # a snapshot is an optimization: the run goes on without
            log().warning("snapshot not saved", reason=str(exc) or type(exc).__name__)
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    async def _migrate(self, vm: Any, out: int) -> None:
        qmp = vm.qmp
        vm.pausing = True  # our own pause: not a stopped guest
        await qmp.execute("stop")
        try:
            # The file goes to QEMU on one blank byte of QMP's socket (whitespace between
            # commands), kept there until `getfd` names it: qemu.qmp's own fd passing reaches
            # into asyncio's transport, which uvloop's has not.
            socket.send_fds(vm._socks[0], [b" "], [out])
            await qmp.execute("getfd", {"fdname": "snapshot"})
            await qmp.execute("migrate", {"uri": "fd:snapshot"})
            while True:
                status = (await qmp.execute("query-migrate")).get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled", None):
                    raise SnapshotError(f"QEMU's migration {status}")
                await asyncio.sleep(0.01)
        finally:
            await qmp.execute("cont")
            vm.pausing = False


def log() -> Any:
    from docteur.cli.log import get_logger

    return get_logger("docteur.vm")
