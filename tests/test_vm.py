"""The appliance under TCG: real boots, so few of them (~3-4 s each)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from docteur.vm.runtime.appliance import Appliance, BootError
from tests.support.cli import DOCTEUR
from tests.support.corrupt import corrupt
from tests.support.git import cat_blobs, git, ls_tree, needs_git
from tests.support.images import image_of
from tests.support.protocol import GuestError, RawStream
from tests.support.repos import make_repo
from tests.support.vm import needs_vm, process_gone

pytestmark = [pytest.mark.vm, needs_vm, needs_git]


@pytest.fixture(scope="module")
def repo_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("vmrepo")
    repo = make_repo(tmp / "repo")
    return repo, image_of(repo, tmp / "repo.img")


async def test_every_file_identical_to_git_and_clean_power_off(
    repo_image: tuple[Path, Path],
) -> None:
    repo, image = repo_image
    rows = ls_tree(repo, "HEAD")
    blobs = [(mode, oid, path) for mode, kind, oid, path in rows if kind == "blob"]
    expected = cat_blobs(repo, [oid for _, oid, _ in blobs])
    async with Appliance(blocks={"docteur": image}, verify="full", timeout=90, make_client=None) as vm:
        client = RawStream(vm)
        for mode, oid, path in blobs:
            if mode == 0o120000:
                continue  # a symlink: its target is a blob too, checked via stat below
            data = await asyncio.wait_for(client.get(b"/" + path), 30)
            assert data == expected[oid], path
        pid = vm.proc.pid  # type: ignore[union-attr]
    assert vm.shutdown_reason == "guest-shutdown" and vm.clean_shutdown
    assert vm.returncode == 0
    assert process_gone(pid) and not vm.rundir.exists()  # type: ignore[union-attr]


async def test_two_disks(repo_image: tuple[Path, Path], tmp_path: Path) -> None:
    repo, image = repo_image
    other = tmp_path / "other"
    other.mkdir()
    git("init", "-q", "-b", "main", other)
    (other / "README.md").write_text("the other disk\n")
    git("add", "-A", cwd=other)
    git("commit", "-q", "-m", "other", cwd=other)
    other_img = image_of(other, tmp_path / "other.img")
    blocks = {"docteur": image, "second": other_img}
    async with Appliance(blocks=blocks, verify="pack", make_client=None) as vm:
        assert vm.greeting is not None and set(vm.greeting.disks) == {"docteur", "second"}
        client = RawStream(vm)
        assert await client.get(b"/README.md") == (repo / "README.md").read_bytes()
        assert await client.get(b"/README.md", disk="second") == b"the other disk\n"
        with pytest.raises(GuestError):
            await client.get(b"/absent")


def _mid_pack(image: Path) -> int:
    """An offset in the middle of the PACK data."""
    return image.stat().st_size // 3


@pytest.mark.parametrize("verify", ["full", "pack"])
async def test_corrupt_image_refused(repo_image: tuple[Path, Path], tmp_path: Path,
                                     verify: str) -> None:  # fmt: skip
    bad = corrupt(repo_image[1], _mid_pack(repo_image[1]), dest=tmp_path / "bad.img")
    t0 = time.monotonic()
    with pytest.raises(BootError, match="refuses to serve") as info:
        async with Appliance(blocks={"docteur": bad}, verify=verify, timeout=60):
            pass
    assert info.value.log_tail  # the guest log comes with the error
    assert time.monotonic() - t0 < 60


async def test_corrupt_image_unverified_fails_on_read(repo_image: tuple[Path, Path],
                                                     tmp_path: Path) -> None:  # fmt: skip
    """verify=none boots, but a damaged object still fails its SHA-1 when read."""
    repo, image = repo_image
    bad = corrupt(image, _mid_pack(image), dest=tmp_path / "bad.img")
    rows = ls_tree(repo, "HEAD")
    failures = 0
    async with Appliance(blocks={"docteur": bad}, verify="none", make_client=None) as vm:
        client = RawStream(vm)
        for _mode, kind, _oid, path in rows:
            if kind != "blob":
                continue
            try:
                await asyncio.wait_for(client.get(b"/" + path), 30)
            except GuestError as exc:
                assert exc.code in ("integrity", "image", "not_found"), exc
                failures += 1
    assert failures >= 1


async def test_not_an_image(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(BootError, match="refuses to serve") as info:
        async with Appliance(blocks={"docteur": junk}, verify="none"):
            pass
    assert str(junk) in str(info.value) and "/dev/vd" not in str(info.value)  # the user's file


def test_cli_guest_refusal_is_one_line(tmp_path: Path) -> None:
    """The guest says what is wrong with the image: that line alone, naming the host file
    (the console log only with -v)."""
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"not an image" * 100)
    proc = subprocess.run([*DOCTEUR, "run", str(junk), "--verify", "pack", "--filename", "/x"],
                          capture_output=True, timeout=120)  # fmt: skip
    err = proc.stderr.decode()
    assert proc.returncode == 1 and proc.stdout == b""
    assert err.count("\n") == 1 and err.startswith("docteur: error: the guest refuses"), err
    assert f"{junk}: not a docteur image" in err and "/dev/vd" not in err, err


async def test_kill9_mid_transfer(tmp_path: Path) -> None:
    repo = tmp_path / "big"
    repo.mkdir()
    git("init", "-q", "-b", "main", repo)
    (repo / "big.bin").write_bytes(os.urandom(24 << 20))
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "big", cwd=repo)
    image = image_of(repo, tmp_path / "big.img")
    from docteur.vm.client import ConnectionLost, Timeout

    vm = Appliance(blocks={"docteur": image}, verify="none")
    async with vm:
        pid = vm.proc.pid  # type: ignore[union-attr]
        killed_at = 0.0
        with pytest.raises(ConnectionLost) as info:
            async for _chunk in vm.client.stream("/big.bin"):
                if not killed_at:
                    os.kill(pid, signal.SIGKILL)
                    killed_at = time.monotonic()
        assert not isinstance(info.value, Timeout)
        assert killed_at and time.monotonic() - killed_at < 1.0
    assert vm.shutdown_reason != "guest-shutdown"
    assert process_gone(pid)
    assert vm.rundir is not None and not vm.rundir.exists()


def test_cli_filename(repo_image: tuple[Path, Path]) -> None:
    repo, image = repo_image
    ok = subprocess.run([*DOCTEUR, "run", str(image), "--filename", "/README.md"],
                        capture_output=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == (repo / "README.md").read_bytes()
    missing = subprocess.run([*DOCTEUR, "run", str(image), "--filename", "/absent"],
                             capture_output=True, timeout=120)  # fmt: skip
    assert missing.returncode != 0 and missing.stdout == b""
    assert b"no such file" in missing.stderr and b"Traceback" not in missing.stderr


def test_cli_socket_serves_several_clients(repo_image: tuple[Path, Path], tmp_path: Path) -> None:
    """`docteur run --socket` multiplexes clients over the one serial port; SIGTERM
    powers the guest off and removes the socket."""
    repo, image = repo_image
    sock = tmp_path / "s.sock"
    server = subprocess.Popen([*DOCTEUR, "run", str(image), "--socket", str(sock)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert server.stdout is not None
        ready = server.stdout.readline()
        assert str(sock).encode() in ready, server.stderr.read() if server.stderr else ""
        query = [*DOCTEUR, "query", "--socket", str(sock), "get"]
        names = ("/README.md", "/data.bin", "/README.md")
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        queries = [subprocess.Popen([*query, name], **pipes) for name in names]
        outs = [q.communicate(timeout=60) for q in queries]
        assert [q.returncode for q in queries] == [0, 0, 0], outs
        assert outs[0][0] == outs[2][0] == (repo / "README.md").read_bytes()
        assert outs[1][0] == (repo / "data.bin").read_bytes()
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
        assert not sock.exists()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def test_large_file_through_client(tmp_path: Path) -> None:
    """A file far bigger than every buffer on the way, through the runtime's client.

    A virtio port takes every non-blocking write whole, so a server whose poll
    loop waits for input alone once its output queue is empty stalls here
    (seen: ~1 MB then nothing): it must keep producing while a reply is pending."""
    repo = tmp_path / "large"
    repo.mkdir()
    git("init", "-q", "-b", "main", repo)
    data = os.urandom(12 << 20)
    (repo / "large.bin").write_bytes(data)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "large", cwd=repo)
    image = image_of(repo, tmp_path / "large.img")
    async with Appliance(blocks={"docteur": image}, verify="pack") as vm:
        got = await asyncio.wait_for(vm.client.get("/large.bin"), 60)
        assert got == data


async def test_guest_panic_and_boot_timeout_are_clear(repo_image: tuple[Path, Path]) -> None:
    """A kernel panic ends QEMU (panic=-1, -no-reboot) with the log tail in the
    error; a boot timeout kills QEMU. Nothing is left behind either way."""
    image = repo_image[1]
    vm = Appliance(blocks={"docteur": image}, extra_args=["rdinit=/nope"])
    with pytest.raises(BootError, match="guest reset") as info:
        async with vm:
            pass
    assert "Kernel panic" in info.value.log_tail
    assert vm.shutdown_reason == "guest-reset"
    assert process_gone(vm.proc.pid) and not vm.rundir.exists()  # type: ignore[union-attr]

    vm = Appliance(blocks={"docteur": image}, timeout=0.5)
    with pytest.raises(BootError, match=r"timed out after 0\.5 s"):
        async with vm:
            pass
    assert process_gone(vm.proc.pid) and not vm.rundir.exists()  # type: ignore[union-attr]


async def test_cancelled_boot_leaves_nothing(repo_image: tuple[Path, Path]) -> None:
    vm = Appliance(blocks={"docteur": repo_image[1]})

    async def boot() -> None:
        async with vm:
            await asyncio.sleep(60)

    task = asyncio.create_task(boot())
    await asyncio.sleep(1.0)  # QEMU is up, the guest still booting
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert vm.proc is not None and process_gone(vm.proc.pid)
    assert vm.rundir is not None and not vm.rundir.exists()


def test_cli_socket_reports_a_dead_guest(repo_image: tuple[Path, Path], tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    server = subprocess.Popen([*DOCTEUR, "run", str(repo_image[1]), "--socket", str(sock)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert server.stdout is not None and server.stdout.readline()
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        assert len(children) == 1  # QEMU
        os.kill(int(children[0]), signal.SIGKILL)
        _, err = server.communicate(timeout=30)
        assert server.returncode == 1
        assert b"the guest stopped: QEMU killed by signal 9\n" in err  # nothing dangling after it
        assert not sock.exists() and process_gone(int(children[0]))
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


async def test_paused_guest_fails_fast(repo_image: tuple[Path, Path]) -> None:
    """A VM that QEMU stops (as a KVM internal error does) is a boot failure at once,
    not a wait for the boot timeout."""
    vm = Appliance(blocks={"docteur": repo_image[1]}, timeout=60)

    async def pause_soon() -> None:
        while vm.qmp is None or vm.qmp.runstate.name != "RUNNING":
            await asyncio.sleep(0.05)
        await vm.qmp.execute("stop")

    pauser = asyncio.create_task(pause_soon())
    t0 = time.monotonic()
    with pytest.raises(BootError, match=r"QEMU stopped the guest \(paused\)"):
        async with vm:
            pass
    assert time.monotonic() - t0 < 10
    await pauser
    assert process_gone(vm.proc.pid)  # type: ignore[union-attr]


def test_cli_qemu_failure_says_why_in_one_line(repo_image: tuple[Path, Path]) -> None:
    """QEMU refuses to start (here: no memory for the guest): its own reason on the line,
    never the traceback of QMP's ConnectError (a race: tried a few times)."""
    for _ in range(3):
        proc = subprocess.run([*DOCTEUR, "run", str(repo_image[1]), "--memory", "100000000",
                               "--filename", "/README.md"], capture_output=True, timeout=60)  # fmt: skip
        err = proc.stderr.decode()
        assert proc.returncode == 1 and err.count("\n") == 1, err
        assert "QEMU exited with status 1: " in err and "qemu-system" not in err, err


def test_cli_socket_interrupted_during_boot_stops_at_once(repo_image: tuple[Path, Path],
                                                          tmp_path: Path) -> None:  # fmt: skip
    """SIGTERM (or Ctrl-C) before the guest is ready: no full boot first, no "serving"
    line, exit 143, QEMU reaped, no socket left."""
    sock = tmp_path / "s.sock"
    server = subprocess.Popen([*DOCTEUR, "run", str(repo_image[1]), "--socket", str(sock)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        children: list[str] = []
        while not children and time.monotonic() < deadline:  # QEMU started: the boot is on
            time.sleep(0.05)
            children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
        time.sleep(0.05)  # (a TCG boot takes seconds; even KVM needs more than this)
        server.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        out, err = server.communicate(timeout=30)
        assert time.monotonic() - t0 < 2.5, "waited for the boot to finish"
        assert server.returncode == 143 and out == b"", (out, err)
        assert err.decode().strip() == "docteur: error: terminated"
        assert not sock.exists() and process_gone(int(children[0]))
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_kill9_of_docteur_run_leaves_a_run_directory_the_next_start_removes(
    repo_image: tuple[Path, Path], tmp_path: Path
) -> None:
    """kill -9 of `docteur run`: QEMU dies with it (PDEATHSIG); its run directory, locked
    by the dead process, is removed by the next appliance start (rundir.make_rundir)."""
    from docteur.cli.owned import OWNER_LOCK
    from docteur.vm.runtime import rundir as rundirs

    server = subprocess.Popen([*DOCTEUR, "run", str(repo_image[1]), "--socket", str(tmp_path / "s")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        rundir = None
        while rundir is None and time.monotonic() < deadline:
            time.sleep(0.05)
            for lock in Path(rundirs.RUNDIR_BASE).glob(f"{rundirs.RUNDIR_PREFIX}*/{OWNER_LOCK}"):
                with contextlib.suppress(OSError):
                    if lock.read_text().strip() == str(server.pid):
                        rundir = lock.parent
        assert rundir is not None, "no run directory owned by docteur run"
        children: list[str] = []
        while not children and time.monotonic() < deadline:  # QEMU started
            children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
            time.sleep(0.02)
        assert children
        assert str(rundir) not in rundirs.clean_stale_rundirs()  # its owner runs: kept
        server.kill()
        server.wait(10)
        deadline = time.monotonic() + 10
        while not process_gone(int(children[0])) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_gone(int(children[0]))  # QEMU died with its parent
        assert rundir.is_dir()  # nobody could remove it...
        path, fd = rundirs.make_rundir()  # ...until the next appliance starts
        os.close(fd)
        shutil.rmtree(path)
        assert not rundir.exists()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
