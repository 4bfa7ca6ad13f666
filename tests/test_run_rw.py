"""`docteur run --rw` before any boot: the drive QEMU is given, and an image another process
uses refused in one docteur line (QEMU's own lock error included), for both targets."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from docteur.guest.defaults import RW_PARAM
from docteur.vm.runtime import qemu
from docteur.vm.runtime.locks import lock_refusal
from docteur.vm.runtime.rundir import RUNDIR_BASE, RUNDIR_PREFIX
from tests.support.cli import fails, fails_in_one_line, run_cli, start_cli
from tests.support.git import needs_git
from tests.support.writes import made

QEMU = qemu.shutil.which(qemu.QEMU)
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")
pytestmark = [needs_git]

# A process that holds an image as a docteur writer (`docteur put`) or reader (a server)
# until its stdin closes.
_HOLDER = """
import os, sys
from docteur.guest.device import lock_reader, lock_writer
fd = os.open(sys.argv[1], os.O_RDWR)
(lock_writer if sys.argv[2] == "writer" else lock_reader)(fd, sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


@contextmanager
def held(image: Path, how: str) -> Iterator[int]:
    """The image locked by another process, as a writer or a reader; yields its pid."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(image), how],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"held\n"
        yield proc.pid
    finally:
        proc.communicate(timeout=30)


def _launch(image: Path, writable: bool) -> qemu.Launch:
    return qemu.Launch(kernel=Path("vmlinuz"), initrd=Path("initrd"), blocks={"docteur": image},
                       console_log=Path("console.log"), qmp_fd=3, port_fd=4, writable=writable)  # fmt: skip


def _drive(argv: list[str]) -> str:
    return argv[argv.index("-drive") + 1]


def _qemu_attaches(launch: qemu.Launch) -> subprocess.CompletedProcess[bytes]:
    """QEMU attaching the launch's disk (the microvm machine, stopped before it boots),
    then quitting."""
    assert QEMU is not None
    disk = launch.disk_args(0, "docteur", launch.blocks["docteur"])
    return subprocess.run([QEMU, "-M", "microvm", "-S", "-nodefaults", "-display", "none",
                           "-monitor", "stdio", *disk],
                          input=b"quit\n", capture_output=True, timeout=60, check=False)  # fmt: skip


def test_the_writable_drive_flushes_and_reports_errors(tmp_path: Path) -> None:
    image = made(tmp_path, {"a.txt": b"a\n"})
    argv = _launch(image, writable=True).argv("qemu")
    assert _drive(argv) == f"id=d0,file={image},if=none,format=raw,readonly=off,cache=none"
    assert "virtio-blk-device,drive=d0,serial=docteur,werror=report,rerror=report" in argv
    assert f"{RW_PARAM}=docteur" in argv[argv.index("-append") + 1].split()
    assert "unsafe" not in " ".join(argv)
    # Without --rw, the command line is the read-only one it always was.
    ro = _launch(image, writable=False).argv("qemu")
    i = ro.index("-drive")
    assert ro[i : i + 4] == ["-drive", f"id=d0,file={image},if=none,readonly=on,format=raw",
                             "-device", "virtio-blk-device,drive=d0,serial=docteur"]  # fmt: skip
    assert RW_PARAM not in ro[ro.index("-append") + 1]


@needs_qemu
@pytest.mark.parametrize(("writable", "holder", "said"), [
    (True, "reader", "is being served by another process (pid {pid}): stop it before writing"),
    (True, "writer", "is being written by another process (pid {pid})"),
    (False, "writer", "is being written by another process (pid {pid})"),
])  # fmt: skip
def test_qemus_lock_error_becomes_one_docteur_line(tmp_path: Path, writable: bool, holder: str,
                                                   said: str) -> None:  # fmt: skip
    """Another process taking the image between our check and QEMU's start: QEMU's refusal
    is recognised and said as the check says it."""
    image = made(tmp_path, {"a.txt": b"a\n"})
    launch = _launch(image, writable)
    assert _qemu_attaches(launch).returncode == 0
    with held(image, holder) as pid:
        proc = _qemu_attaches(launch)
        assert proc.returncode != 0
        stderr = proc.stderr.decode()
        assert lock_refusal(stderr, {"docteur": image}, writable) == f"{image} " + said.format(pid=pid)
    assert lock_refusal("qemu-system-x86_64: cannot set up guest memory 'pc.ram'", {"docteur": image},
                        writable) is None  # fmt: skip


def _rundirs() -> set[str]:
    return {p.name for p in Path(RUNDIR_BASE).iterdir() if p.name.startswith(RUNDIR_PREFIX)}


@pytest.mark.parametrize("target", ["microvm", "unix"])
@pytest.mark.parametrize(("rw", "holder", "said"), [
    (["--rw"], "reader", "is being served by another process (pid {pid}): stop it before writing"),
    (["--rw"], "writer", "is being written by another process (pid {pid})"),
    ([], "writer", "is being written by another process (pid {pid})"),
])  # fmt: skip
def test_run_on_an_image_in_use_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            target: str, rw: list[str], holder: str,
                                            said: str) -> None:  # fmt: skip
    """A second `run --rw`, a `run --rw` on an image another run serves, a read-only run on an
    image being written: refused before anything starts (no VM, no run directory)."""
    image = made(tmp_path, {"a.txt": b"a\n"})
    before = _rundirs()
    with held(image, holder) as pid:
        line = fails(capsys, "run", "--target", target, *rw, image, "--filename", "/a.txt")
    prefix = "disk docteur: " if target == "unix" else ""
    assert line == f"docteur: error: {prefix}{image} " + said.format(pid=pid)
    assert _rundirs() <= before


def test_rw_on_an_image_without_room_says_it_is_served_read_only(tmp_path: Path) -> None:
    """An image made without --capacity cannot take writes: `run --rw` says so once, then
    serves it (its writes answer read_only), on a socket and in the console alike."""
    image = made(tmp_path, {"a.txt": b"a\n"}, capacity=None)
    said = "docteur: disk docteur is served read-only: no write area"
    sock = tmp_path / "s"
    server = start_cli("run", "--target", "unix", "--rw", image, "--socket", sock)
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == f"docteur: serving docteur on {sock}\n".encode()
        put = run_cli("query", "--socket", sock, "put", "/b.txt", "-", input=b"b")
        fails_in_one_line(put, "read-only")
    finally:
        server.terminate()
        _out, err = server.communicate(timeout=60)
    assert err.decode().splitlines()[0] == said
    console = run_cli("run", "--target", "unix", "--rw", image, input=b"get /a.txt\n")
    assert console.returncode == 0 and console.stdout == b"a\n", console.err
    assert console.err.splitlines() == [said]
    plain = run_cli("run", "--target", "unix", image, input=b"get /a.txt\n")  # no --rw: no word
    assert plain.returncode == 0 and plain.stderr == b""
