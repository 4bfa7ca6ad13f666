"""`docteur run --rw` of the microVM as a user drives it (TCG boots): the image locked against
every other user while it runs, writes over `--socket` from several clients, and the last
commit kept by a clean power-off (SIGTERM to `docteur run`, leaving the console)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from docteur.guest.objects import MODE_FILE
from docteur.vm.client import BusyError, Client, NoBatchError
from tests.support.cli import fails_in_one_line, run_cli, start_cli
from tests.support.git import needs_git
from tests.support.store import open_store
from tests.support.vm import needs_vm, process_gone
from tests.support.writes import head_files, made

pytestmark = [pytest.mark.vm, needs_vm, needs_git]

FIRST = {"a.txt": b"first\n"}


def _serving(server: subprocess.Popen[bytes], sock: Path) -> int:
    """Wait for the ready line; QEMU's pid."""
    assert server.stdout is not None
    line = server.stdout.readline().decode()
    assert line == f"docteur: serving docteur on {sock}\n", line
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    assert len(children) == 1
    return int(children[0])


async def _two_clients(sock: Path) -> None:
    """One client's batch is its own over the shared serial port: the other's begin and
    writes are busy, its commit no_batch; the batch dies with its client."""
    owner = await Client.open_unix(str(sock))
    other = await Client.open_unix(str(sock))
    try:
        batch = owner.batch(message="never")
        await batch.begin()
        await batch.put("/aborted.txt", b"the owner leaves before committing\n")
        with pytest.raises(BusyError):
            await other.batch(message="second").begin()
        with pytest.raises(BusyError):
            await other.put("/other.txt", b"not now", message="other")
        await owner.close()  # leaves with its batch open: aborted
        b = other.batch(message="after")
        # The disk is free again once the relay has read the owner's end (its own reader
        # of that socket, which may run after our next request arrives): busy until then.
        deadline = asyncio.get_running_loop().time() + 30
        while True:
            try:
                await b.begin()
                break
            except BusyError:
                assert asyncio.get_running_loop().time() < deadline, "the owner's batch outlived it"
                await asyncio.sleep(0.05)
        await b.put("/b.txt", b"second client\n")
        await b.commit()
        with pytest.raises(NoBatchError):
            await b.commit()
        assert b.result is not None and b.result.committed
    finally:
        await other.close()


def test_rw_socket_locks_the_image_serves_writes_and_sigterm_keeps_them(tmp_path: Path) -> None:
    image = made(tmp_path, FIRST)
    sock = tmp_path / "s.sock"
    server = start_cli("run", "--rw", image, "--socket", sock)
    try:
        qemu = _serving(server, sock)
        in_use = (str(image), f"is being written by another process (pid {qemu})")
        fails_in_one_line(run_cli("run", "--rw", image, "--filename", "/a.txt"), *in_use)
        fails_in_one_line(run_cli("run", image, "--filename", "/a.txt"), *in_use)  # read-only
        fails_in_one_line(run_cli("run", "--target", "unix", image, "--filename", "/a.txt"), *in_use)
        fails_in_one_line(run_cli("put", image, "/x.txt", "-", input=b"x"), *in_use)  # host writer

        note = tmp_path / "note.txt"
        note.write_bytes(b"added through the VM\n")
        put = run_cli("query", "--socket", sock, "put", "/notes/a.txt", note, "-m", "add a")
        assert put.returncode == 0, put.err
        first = bytes.fromhex(put.out.strip())
        asyncio.run(_two_clients(sock))
        log = run_cli("query", "--socket", sock, "log")
        assert log.returncode == 0 and len(log.out.splitlines()) == 3, log.out

        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=60)
        assert server.returncode == 0, err
        assert process_gone(qemu) and not sock.exists()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    _head, files = head_files(image)
    assert files == {"a.txt": (MODE_FILE, b"first\n"), "notes/a.txt": (MODE_FILE, b"added through the VM\n"),
                     "b.txt": (MODE_FILE, b"second client\n")}  # fmt: skip
    dev, store = open_store(image)
    with dev, store:
        assert store.commit_object().parents == (first,) and store.generation == 2


def test_leaving_the_console_keeps_the_last_commit(tmp_path: Path) -> None:
    image = made(tmp_path, FIRST)
    page = tmp_path / "page.html"
    page.write_bytes(b"<p>console</p>\n")
    script = f"begin\nput /page.html {page}\nrm /a.txt\ncommit -m 'from the console'\nquit\n"
    run = run_cli("run", "--rw", image, input=script.encode(), timeout=180)
    assert run.returncode == 0, run.err
    head, files = head_files(image)
    assert files == {"page.html": (MODE_FILE, b"<p>console</p>\n")}
    assert head.hex() in run.out
