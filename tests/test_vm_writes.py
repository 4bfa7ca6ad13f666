"""Writes through the microVM (TCG): a batch with a 64 MiB file across a power-off, the
image's history as git sees it, and kill -9 of QEMU in the middle of a batch.

Every boot costs seconds: few tests, each checking much. The faults below the guest
(blkdebug, blklogwrites) are in test_vm_writes_faults.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from docteur.guest.objects import MODE_EXEC, MODE_FILE, MODE_LINK
from docteur.vm.client import ConnectionLost, ReadOnlyError
from docteur.vm.runtime.appliance import Appliance
from tests.support.git import git, needs_git
from tests.support.oracle import git_files
from tests.support.store import open_store
from tests.support.vm import needs_vm, process_gone
from tests.support.writes import docteur, head_files, made

pytestmark = [pytest.mark.vm, needs_vm, needs_git]

BIG = 64 << 20
FIRST = {"README.md": b"# site\n", "old.txt": b"to be removed\n", "dir/keep.txt": b"moved\n"}
AUTHOR = "Ops <ops@example.com>"


async def _pieces(data: bytes, step: int = 1 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), step):
        yield data[start : start + step]


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_a_batch_survives_power_off_and_exports_as_one_commit(tmp_path: Path) -> None:
    image = made(tmp_path, FIRST, capacity="200M")
    first_head, _ = head_files(image)
    big = os.urandom(BIG)  # incompressible: the pack carries all of it
    page = b"<h1>deployed</h1>\n"
    async with Appliance(blocks={"docteur": image}, writable=True, timeout=90) as vm:
        assert vm.greeting is not None and vm.greeting.fields["writable.docteur"] == "yes"
        async with vm.client.batch(message="deploy", author=AUTHOR) as b:
            await b.put("/big.bin", _pieces(big), size=BIG)  # streamed, never whole in a frame
            await b.put("/site/index.html", page)
            await b.put("/bin/run.sh", b"#!/bin/sh\necho run\n", mode=MODE_EXEC)
            await b.put("/link", b"site/index.html", mode=MODE_LINK)
            await b.remove("/old.txt")
            await b.rename("/dir/keep.txt", "/kept.txt")
            assert await b.get("/site/index.html") == page  # read your writes
            assert await b.exists("/old.txt") == "absent"
        assert b.result is not None and b.result.committed and b.result.generation == 1
        commit = b.result.commit
    assert vm.clean_shutdown and vm.returncode == 0  # powered off by the guest

    expected = {
        "README.md": (MODE_FILE, FIRST["README.md"]), "kept.txt": (MODE_FILE, b"moved\n"),
        "big.bin": (MODE_FILE, big), "site/index.html": (MODE_FILE, page),
        "bin/run.sh": (MODE_EXEC, b"#!/bin/sh\necho run\n"), "link": (MODE_LINK, b"site/index.html"),
    }  # fmt: skip
    # Booted again, read-only: the commit is the head, every file identical, writes refused.
    async with Appliance(blocks={"docteur": image}, timeout=90) as vm:
        assert vm.greeting is not None and vm.greeting.disks["docteur"] == commit.hex()
        for path, (_mode, data) in expected.items():
            if path != "link":
                assert await vm.client.get("/" + path) == data, path
        assert (await vm.client.stat("/link")).mode == MODE_LINK
        assert await vm.client.exists("/old.txt") == "absent"
        with pytest.raises(ReadOnlyError, match="read-only"):
            await vm.client.put("/x.txt", b"x")

    repo = tmp_path / "export.git"
    docteur("export", image, repo)
    git("fsck", "--strict", "--no-dangling", cwd=repo)
    assert git("rev-parse", "HEAD", cwd=repo).decode().strip() == commit.hex()
    assert git("rev-parse", "HEAD^", cwd=repo).decode().strip() == first_head.hex()  # one commit
    assert git("log", "-1", "--format=%an <%ae>%n%s", cwd=repo).decode() == f"{AUTHOR}\ndeploy\n"
    assert git_files(repo, commit) == expected


# Where QEMU is killed: while a put's content flows, or after the commit REQUEST went out
# (its END not waited for), at once or a moment later (the guest may be anywhere in its
# commit: data, flush, root, flush).
MOMENTS = ["content", "commit", "commit+50ms", "commit+400ms"]


@pytest.mark.parametrize("moment", MOMENTS)
async def test_kill_9_of_qemu_mid_batch(tmp_path: Path, moment: str) -> None:
    """After a kill -9 of QEMU the image holds the last acknowledged commit or the batch's,
    with exact content; no process, socket or run directory is left."""
    image = made(tmp_path, FIRST)
    fds = _open_fds()
    second = {"new.txt": os.urandom(3000), "dir/keep.txt": b"changed\n"}
    content = os.urandom(4 << 20)
    vm = Appliance(blocks={"docteur": image}, writable=True, timeout=90)
    async with vm:
        assert vm.proc is not None
        pid = vm.proc.pid
        acked = await vm.client.put("/acked.txt", b"acknowledged\n", message="first")
        assert acked is not None

        async def killing(data: bytes) -> AsyncIterator[bytes]:
            async for piece in _pieces(data, 256 << 10):
                yield piece
                if moment == "content":
                    os.kill(pid, signal.SIGKILL)

        b = vm.client.batch(message="second")
        lost, answered = False, None
        try:
            async with b:
                for path, data in second.items():
                    await b.put("/" + path, data)
                if moment == "content":
                    await b.put("/big.bin", killing(content), size=len(content))
                commit = asyncio.create_task(b.commit())
                await asyncio.sleep(0)  # the commit REQUEST is written
                delay = moment.partition("+")[2]
                await asyncio.sleep(int(delay.removesuffix("ms")) / 1000 if delay else 0)
                os.kill(pid, signal.SIGKILL)
                answered = await commit  # its END may have come before the kill
        except ConnectionLost:
            lost = True
        assert lost or (moment != "content" and answered is not None)
    assert not vm.clean_shutdown and process_gone(pid)
    assert vm.rundir is not None and not vm.rundir.exists()
    assert _open_fds() == fds  # the QMP and port sockets closed too

    head, files = head_files(image)
    before = {p: (MODE_FILE, d) for p, d in FIRST.items()} | {"acked.txt": (MODE_FILE, b"acknowledged\n")}
    if head == acked.commit:
        assert answered is None, "an acknowledged commit was lost"
        assert files == before
    else:  # the batch's commit reached its commit point before the kill
        assert moment != "content", "a batch that never committed is the head"
        assert answered is None or head == answered.commit
        assert files == before | {p: (MODE_FILE, d) for p, d in second.items()}
        dev, store = open_store(image)
        with dev, store:
            assert store.commit_object().parents == (acked.commit,)
            assert store.generation == acked.generation + 1
