"""`docteur push --socket` and `docteur pull --socket` through a real microVM (`docteur run
--rw --socket`, one TCG boot): the host talks to git, the guest writes the disk; git is
the oracle, and the image a clean power-off leaves verifies."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from docteur.vm.client import Client
from tests.support.cli import CLIRun, run_cli, start_cli
from tests.support.git import git, needs_git
from tests.support.sync import clone, commit_and_push, ref, remote_files, seed_remote
from tests.support.vm import needs_vm
from tests.support.writes import docteur, head_files

pytestmark = [pytest.mark.vm, needs_vm, needs_git]


async def _with_a_batch_open(sock: Path, commands: list[tuple[str | Path, ...]]) -> list[CLIRun]:
    client = await Client.open_unix(str(sock))
    try:
        async with client.batch():
            return [await asyncio.to_thread(run_cli, *command) for command in commands]
    finally:
        await client.close()


def test_push_and_pull_through_the_microvm(tmp_path: Path) -> None:
    srv = tmp_path / "srv"
    srv.mkdir()
    bare = seed_remote(srv)
    image = tmp_path / "site.img"
    docteur("make", "--capacity", "16M", bare, image)
    sock = tmp_path / "s.sock"
    page = tmp_path / "page.txt"
    page.write_bytes(b"written by the guest, pushed by the host\n")
    server = start_cli("run", "--rw", image, "--socket", sock)
    try:
        assert server.stdout is not None
        line = server.stdout.readline().decode()
        assert line == f"docteur: serving docteur on {sock}\n", line
        put = run_cli("query", "--socket", sock, "put", "/page.txt", page, "-m", "a page")
        assert put.returncode == 0, put.err
        mine = put.out.strip()
        pushed = run_cli("push", "--socket", sock)
        assert pushed.returncode == 0 and pushed.out.split() == [mine], pushed.err
        assert ref(bare) == mine
        git("fsck", "--strict", "--no-dangling", cwd=bare)
        work = clone(bare, tmp_path / "work")
        assert (work / "page.txt").read_bytes() == page.read_bytes()
        text = b"".join(b"line %d\n" % i for i in range(2000))
        theirs = commit_and_push(work, {"big.txt": text, "docs/deep": None}, "by git")
        pulled = run_cli("pull", "--socket", sock)
        assert pulled.returncode == 0, pulled.err
        assert pulled.out.splitlines() == ["add /big.txt", "remove /docs/deep/c.txt", f"head {theirs}"]
        got = run_cli("query", "--socket", sock, "get", "/big.txt")
        assert got.returncode == 0 and got.out == text.decode()
        again = run_cli("push", "--socket", sock)
        assert again.returncode == 0 and "up to date" in again.err, again.err
        # Another client's batch (the relay shares the guest's one session): a pull is
        # refused in one line before it fetches, a push (a read) still answers.
        held = asyncio.run(_with_a_batch_open(sock, [("pull", "--socket", sock), ("push", "--socket", sock)]))
        assert held[0].returncode == 1 and held[0].err.count("\n") == 1, held[0].err
        assert "cannot be pulled into: busy" in held[0].err
        assert held[1].returncode == 0 and "up to date" in held[1].err, held[1].err
        server.send_signal(signal.SIGTERM)
        _out, err = server.communicate(timeout=120)
        assert server.returncode == 0, err
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    assert docteur("verify", image).returncode == 0
    head, files = head_files(image)
    assert head.hex() == theirs and files == remote_files(bare, theirs)
