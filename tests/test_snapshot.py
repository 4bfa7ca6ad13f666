"""Snapshot start (vm/runtime/snapshot.py, guest/resume.py): the state saved after a cold
boot, restored instead of booting while the images and the guest are the same ones."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from docteur.guest.boot import boot
from docteur.guest.protocol import Request
from docteur.guest.values import Failure, Result
from docteur.vm.runtime import snapshot
from docteur.vm.runtime.appliance import Appliance
from tests.support.git import cat_blobs, ls_tree, needs_git
from tests.support.images import image_of
from tests.support.repos import make_repo
from tests.support.vm import needs_vm, process_gone

READ_ONLY_ARGV = ["qemu", "-drive", "id=d0,file=x,if=none,readonly=on,format=raw"]


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return snapshot.store_dir()


@pytest.fixture(scope="module")
def repo_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("snaprepo")
    repo = make_repo(tmp / "repo")
    return repo, image_of(repo, tmp / "repo.img")


def _request(op: str, path: bytes = b"") -> Request:
    return Request(1, op, "docteur", path)


# -- the guest's side ------------------------------------------------------------------
@needs_git
def test_restored_is_said_only_after_a_snapshot_and_on_the_same_disk(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r.git", bare=True, history=1)
    image = image_of(repo, tmp_path / "a.img")
    service = boot([("docteur", str(image))], "pack")
    try:
        answer = service.handle(_request("restored"))
        assert isinstance(answer, Failure) and "no snapshot" in answer.message
        assert isinstance(service.handle(_request("snapshot")), Result)
        assert isinstance(service.handle(_request("restored")), Result)
        assert service.greeting()["restored"] == "yes"
        assert service.handle(_request("info")).value["restored"] == "yes"  # type: ignore[union-attr]
        # The disk under the served image changes (its IDX trailer): a restore must not pass.
        layout = service.disks["docteur"].image.layout
        with open(image, "r+b") as f:
            f.seek(layout.idx_end - 1)
            last = f.read(1)
            f.seek(layout.idx_end - 1)
            f.write(bytes([last[0] ^ 0xFF]))
        answer = service.handle(_request("restored"))
        assert isinstance(answer, Failure) and answer.code == "integrity"
        assert "not the disk verified" in answer.message
        refused = service.handle(_request("get", b"/README.md"))
        assert isinstance(refused, Failure) and refused.code == "boot_failed"
        assert service.greeting()["status"] == "error"
    finally:
        for disk in service.disks.values():
            disk.image.close()


# -- the store -------------------------------------------------------------------------
def _entry(image: Path, guest: list[Path], argv: list[str] = READ_ONLY_ARGV) -> snapshot.Entry:
    entry = snapshot.entry_for({"docteur": image}, guest, argv)
    assert entry is not None
    return entry


def _save(entry: snapshot.Entry, size: int = 1000) -> None:
    tmp = entry.temporary()
    tmp.write_bytes(b"s" * size)
    entry.commit(tmp)


@needs_git
def test_keys_follow_the_images_and_the_guest(tmp_path: Path, cache: Path) -> None:
    repo = make_repo(tmp_path / "r.git", bare=True, history=1)
    image = image_of(repo, tmp_path / "a.img")
    guest = [tmp_path / "vmlinuz", tmp_path / "initrd"]
    for g in guest:
        g.write_bytes(b"guest")
    first = _entry(image, guest)
    assert _entry(image, guest).key == first.key  # the same appliance: the same snapshot
    assert _entry(image, guest, [*READ_ONLY_ARGV, "-m", "256"]).key != first.key
    _save(first)
    assert first.usable() and first.still_valid()
    os.utime(image)  # a touch changes the image's times: another key, the old one stale
    assert _entry(image, guest).key != first.key and not first.still_valid()
    snapshot.sweep()
    assert not first.state.exists() and not first.meta.exists()
    second = _entry(image, guest)
    _save(second)
    guest[1].write_bytes(b"rebuilt")  # a new guest build: stale too
    snapshot.sweep()
    assert not second.state.exists()
    # A writable drive, or a file that is no image: no snapshot at all.
    writable = ["qemu", "-drive", "id=d0,file=x,if=none,readonly=off,format=raw"]
    assert snapshot.entry_for({"docteur": image}, guest, writable) is None
    assert snapshot.entry_for({"docteur": guest[0]}, guest, READ_ONLY_ARGV) is None


@needs_git
def test_the_store_is_bounded_and_keeps_no_leftovers(tmp_path: Path, cache: Path) -> None:
    repo = make_repo(tmp_path / "r.git", bare=True, history=1)
    guest = [tmp_path / "vmlinuz"]
    guest[0].write_bytes(b"guest")
    entries = []
    for i in range(4):
        entry = _entry(image_of(repo, tmp_path / f"{i}.img"), guest)
        _save(entry, size=1000)
        os.utime(entry.meta, (1_000_000 + i, 1_000_000 + i))  # used in this order
        entries.append(entry)
    snapshot.sweep(max_count=3)
    assert [e.usable() for e in entries] == [False, True, True, True]  # the least recently used went
    snapshot.sweep(max_bytes=2500)
    assert [e.usable() for e in entries] == [False, False, True, True]
    # What an interrupted save leaves (its process gone), and a state without metadata.
    dead = cache / f".{entries[3].key}.999999999.tmp"
    dead.write_bytes(b"half")
    orphan = cache / ("0" * 32 + snapshot.STATE)
    orphan.write_bytes(b"x")
    alive = cache / f".{entries[3].key}.{os.getpid()}.tmp"  # a save under way
    alive.write_bytes(b"half")
    snapshot.sweep()
    assert not dead.exists() and not orphan.exists() and alive.exists()


# -- the appliance ---------------------------------------------------------------------
async def _serve(
    image: Path, mode: str, paths: list[bytes], verify: str = "pack"
) -> tuple[Appliance, dict[str, str], list[bytes]]:
    async with Appliance(blocks={"docteur": image}, snapshot=mode, verify=verify, timeout=120) as vm:
        info = await asyncio.wait_for(vm.client.info(), 30)
        got = [await asyncio.wait_for(vm.client.get(p), 30) for p in paths]
    assert vm.clean_shutdown and process_gone(vm.proc.pid)  # type: ignore[union-attr]
    assert not vm.rundir.exists()  # type: ignore[union-attr]
    return vm, info, got


def _states(cache: Path) -> list[Path]:
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no leftover of a save
    return sorted(cache.glob("*" + snapshot.STATE))


@pytest.mark.vm
@needs_vm
@needs_git
@pytest.mark.parametrize("verify", ["pack", "full"])
async def test_a_restored_appliance_says_so_and_serves_the_same_bytes(
    repo_image: tuple[Path, Path], cache: Path, verify: str
) -> None:
    """`full`: the restored guest keeps what its cold boot checked (every id), so it
    serves without hashing again: the bytes must still be git's."""
    repo, image = repo_image
    blobs = [(oid, b"/" + path) for mode, kind, oid, path in ls_tree(repo, "HEAD")
             if kind == "blob" and mode != 0o120000]  # fmt: skip
    expected = cat_blobs(repo, [oid for oid, _ in blobs])
    paths = [p for _, p in blobs]
    cold, info, got = await _serve(image, "auto", paths, verify)
    assert not cold.restored and "restored" not in info
    assert info["verified.docteur"].startswith(f"{verify} ok")
    assert got == [expected[oid] for oid, _ in blobs]
    (state,) = _states(cache)
    warm, info, again = await _serve(image, "auto", paths, verify)
    assert warm.restored and info["restored"] == "yes" and info["status"] == "ok"
    assert info["verified.docteur"].startswith(f"{verify} ok")
    assert warm.greeting is not None and warm.greeting.fields["restored"] == "yes"
    assert again == got
    assert _states(cache) == [state]


@pytest.mark.vm
@needs_vm
@needs_git
async def test_refresh_off_a_changed_image_and_a_broken_snapshot_boot_cold(
    repo_image: tuple[Path, Path], tmp_path: Path, cache: Path
) -> None:
    _, shared = repo_image
    image = tmp_path / "copy.img"
    image.write_bytes(shared.read_bytes())
    paths = [b"/README.md"]
    vm, _, (readme,) = await _serve(image, "off", paths)
    assert not vm.restored and not cache.exists()  # off: nothing saved
    vm, _, _ = await _serve(image, "refresh", paths)
    assert not vm.restored
    (state,) = _states(cache)
    inode = state.stat().st_ino
    vm, _, _ = await _serve(image, "refresh", paths)  # refresh: never restores, saves anew
    assert not vm.restored and _states(cache) == [state] and state.stat().st_ino != inode
    vm, _, _ = await _serve(image, "off", paths)
    assert not vm.restored and _states(cache) == [state]
    # A broken snapshot: the restore fails, the snapshot goes, the run boots cold and saves anew.
    with open(state, "r+b") as f:
        f.truncate(state.stat().st_size // 2)
    vm, info, (got,) = await _serve(image, "auto", paths)
    assert not vm.restored and "restored" not in info and got == readme
    assert _states(cache) == [state] and state.stat().st_size > 0
    vm, _, _ = await _serve(image, "auto", paths)
    assert vm.restored
    # The image changes (the same bytes written again: a new change time): a cold boot,
    # and the old snapshot, which can never be used again, is gone.
    image.write_bytes(image.read_bytes())
    vm, info, (got,) = await _serve(image, "auto", paths)
    assert not vm.restored and "restored" not in info and got == readme
    (new,) = _states(cache)
    assert new != state


@pytest.mark.vm
@needs_vm
@needs_git
def test_docteur_run_restores_on_its_second_run(repo_image: tuple[Path, Path], tmp_path: Path) -> None:
    """The command line (its event loop is uvloop's): the first run saves, the second
    restores and prints the same bytes; --snapshot off boots cold."""
    import subprocess
    import sys

    _, image = repo_image
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}

    def run(*extra: str) -> tuple[bytes, str]:
        proc = subprocess.run([sys.executable, "-m", "docteur.cli", "-v", "run", str(image), "--filename",
                               "/README.md", *extra], env=env, capture_output=True, timeout=300)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return proc.stdout, proc.stderr.decode()

    first, log = run()
    assert "snapshot saved" in log and "restored=False" in log
    second, log = run()
    assert second == first and "restored=True" in log
    third, log = run("--snapshot", "off")
    assert third == first and "restored=False" in log and "snapshot saved" not in log
