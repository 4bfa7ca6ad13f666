"""Writes through the real server process (`python -m docteur.guest --listen --rw`), over
its unix socket, with git's CLI as the oracle of what the image holds afterwards."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from docteur.guest.protocol import End, Error
from docteur.guest.values import CommitArgs, Committed, PutArgs, RenameArgs
from tests.support.git import cat_blobs, git, ls_tree
from tests.support.guestproc import GuestProcess
from tests.support.v2 import FILES, call, put, upgraded_socket, writable_image
from tests.support.writes import docteur, head_files

AUTHOR = "Ops <ops@example.com>"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("served-writes")


@pytest.fixture
def image(base: Path, tmp_path: Path) -> Path:
    return writable_image(base, tmp_path, capacity="64M")


def git_files(repo: Path) -> dict[str, tuple[int, bytes]]:
    rows = [(mode, oid, path) for mode, kind, oid, path in ls_tree(repo) if kind != "tree"]
    bodies = cat_blobs(repo, [oid for _, oid, _ in rows])
    return {path.decode(): (mode, bodies[oid]) for mode, oid, path in rows}


def test_a_batch_through_the_server_is_one_commit_that_git_reads_back(image: Path, tmp_path: Path) -> None:
    rng = random.Random(7)
    written = {
        "index.html": (0o100644, b"<h1>hi</h1>\n"),
        "assets/big.bin": (0o100644, rng.randbytes((5 << 20) + 123)),
        "bin/tool": (0o100755, b"#!/bin/sh\necho tool\n"),
        "link": (0o120000, b"index.html"),
        "empty.txt": (0o100644, b""),
        "naïve/ünï.txt": (0o100644, "ü\n".encode()),
    }
    with GuestProcess(image, rw=True) as served:
        raw = upgraded_socket(served.sock)
        assert raw.codec.hello is not None and raw.codec.hello.fields["writable.docteur"] == "yes"
        first = bytes.fromhex(raw.codec.hello.fields["disk.docteur"])
        begun = call(raw, "begin")
        assert isinstance(begun, End) and begun.result.head == first  # type: ignore[union-attr]
        for path, (mode, data) in written.items():
            assert isinstance(put(raw, b"/" + path.encode(), data, mode), End), path
        assert isinstance(call(raw, "remove", b"/d"), End)
        assert isinstance(call(raw, "rename", b"/README.md", RenameArgs(b"/docs/README.md")), End)
        other = upgraded_socket(served.sock)
        assert isinstance(call(other, "get", b"/index.html"), Error)  # not committed yet
        done = call(raw, "commit", args=CommitArgs("deploy", AUTHOR))
        assert isinstance(done, End) and isinstance(done.result, Committed) and done.result.committed
        body, last = other.until_end(other.request("get", b"/assets/big.bin"))
        assert isinstance(last, End) and body == written["assets/big.bin"][1]  # everybody's now
        raw.close()
        other.close()
    repo = tmp_path / "out.git"
    docteur("export", image, repo)
    git("fsck", "--full", cwd=repo)
    assert git("rev-parse", "HEAD", cwd=repo).decode().strip() == done.result.commit.hex()
    log = git("log", "--format=%H %an <%ae>|%s", cwd=repo).decode().splitlines()
    assert log == [f"{done.result.commit.hex()} {AUTHOR}|deploy",
                   f"{first.hex()} Dr. Greenthumb <noreply@cypress.hill>|"]  # fmt: skip
    want = {"run.sh": (0o100644, FILES["run.sh"]), "x/e/c.txt": (0o100644, FILES["x/e/c.txt"]),
            "docs/README.md": (0o100644, FILES["README.md"]), **written}  # fmt: skip
    assert git_files(repo) == want


CLIENT = """
import sys, time
from tests.support.v2 import upgraded_socket, call
from docteur.guest.values import PutArgs
raw = upgraded_socket(sys.argv[1])
call(raw, "begin")
rid = raw.request("put", b"/half", args=PutArgs(1 << 20))
raw.send(raw.codec.chunk(rid, bytes(1 << 18)))
print("ready", flush=True)
time.sleep(120)
"""


def test_a_client_killed_mid_batch_aborts_it(image: Path) -> None:
    before = head_files(image)
    with GuestProcess(image, rw=True) as served:
        client = subprocess.Popen([sys.executable, "-c", CLIENT, served.sock], stdout=subprocess.PIPE,
                                  cwd=Path(__file__).parent.parent)  # fmt: skip
        try:
            assert client.stdout is not None and client.stdout.readline() == b"ready\n"
            raw = upgraded_socket(served.sock)
            assert call(raw, "begin").code == "busy"  # type: ignore[union-attr]
        finally:
            client.send_signal(signal.SIGKILL)
            client.wait(30)
        deadline = time.monotonic() + 60
        while isinstance(last := call(raw, "begin"), Error) and time.monotonic() < deadline:
            assert last.code == "busy"
            time.sleep(0.05)
        assert isinstance(last, End), last
        assert isinstance(call(raw, "abort"), End)
        raw.close()
    assert head_files(image) == before


def test_the_server_killed_after_a_commit_restarts_at_it(image: Path) -> None:
    served = GuestProcess(image, rw=True)
    try:
        raw = upgraded_socket(served.sock)
        done = put(raw, b"/acked.txt", b"acked\n", commit=CommitArgs("acked"))
        assert isinstance(done, End)
        call(raw, "begin")
        rid = raw.request("put", b"/never", args=PutArgs(1 << 22))
        raw.send(raw.codec.chunk(rid, bytes(1 << 18)))
        os.kill(served.proc.pid, signal.SIGKILL)
    finally:
        served.close()
    head, files = head_files(image)
    assert head == done.result.commit.commit  # type: ignore[union-attr]
    assert {p: d for p, (_, d) in files.items()} == {**FILES, "acked.txt": b"acked\n"}
    with GuestProcess(image, rw=True) as again:  # the writer lock went with the process
        raw = upgraded_socket(again.sock)
        assert isinstance(call(raw, "begin"), End)
        raw.close()


def test_a_big_put_leaves_the_server_memory_flat(base: Path, tmp_path: Path) -> None:
    image = writable_image(base, tmp_path, capacity="200M", name="roomy.img")
    block = random.Random(11).randbytes(1 << 20)  # barely compresses: 128 MiB reach the disk
    with GuestProcess(image, rw=True) as served:
        raw = upgraded_socket(served.sock)
        assert isinstance(call(raw, "ping"), End)
        before = served.peak_rss_mib()
        rid = raw.request("put", b"/big.bin", args=PutArgs(128 << 20, 0o100644, CommitArgs("big")))
        for _ in range(128):
            for at in range(0, len(block), 1 << 18):
                raw.send(raw.codec.chunk(rid, block[at : at + (1 << 18)]))
        _, last = raw.until_end(rid)
        assert isinstance(last, End) and last.result.commit.committed, last  # type: ignore[union-attr]
        grown = served.peak_rss_mib() - before
        _, size = raw.until_end(raw.request("size", b"/big.bin"))
        assert isinstance(size, End) and size.result == 128 << 20
        raw.close()
    assert grown < 40, f"the server's peak memory grew {grown:.0f} MiB during a 128 MiB put"


@pytest.mark.parametrize(("args", "why"), [
    (["--rw=nope"], "--rw names no disk given with --block: nope"),
    (["--rw="], "--rw= wants disk names (NAME,...)"),
])  # fmt: skip
def test_bad_rw_arguments_are_one_line(image: Path, args: list[str], why: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "docteur.guest", "--block", f"docteur={image}", *args,
                           "--stdio"], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == b""
    assert proc.stderr.decode().splitlines()[0] == f"docteur-guest: {why}"


def test_rw_on_an_image_someone_serves_fails_the_boot_with_one_line(image: Path) -> None:
    with GuestProcess(image) as reader, GuestProcess(image, rw=True) as writer:
        raw = upgraded_socket(writer.sock)
        hello = raw.codec.hello
        assert hello is not None and hello.fields["status"] == "error"
        assert "is being served by another process" in hello.fields["error"]
        raw.close()
        assert reader.proc.poll() is None


def test_the_vm_kernel_parameter_makes_the_named_disks_writable() -> None:
    """PID 1 turns `docteur.rw=NAME,...` (defaults.RW_PARAM, which the host passes) into
    the server's --rw; the server then writes exactly those disks."""
    from docteur.guest.defaults import RW_PARAM
    from docteur.guest.pid1 import argv_for
    from docteur.guest.server import Args

    disks = {"docteur": "/dev/vda", "logs": "/dev/vdb"}
    key = RW_PARAM.removeprefix("docteur.")
    argv = argv_for(disks, "/dev/vport0p1", {key: "logs", "verify": "none"})
    args = Args(argv)
    assert args.device == "/dev/vport0p1" and args.verify == "none"
    assert args.writable([tuple(b.split("=", 1)) for b in args.block]) == {"logs"}  # type: ignore[misc]
    plain = Args(argv_for(disks, "/dev/vport0p1", {}))
    assert plain.writable([("docteur", "/dev/vda"), ("logs", "/dev/vdb")]) == set()
