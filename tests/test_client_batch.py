"""The client's writes (`Client.batch`, put/remove/rename/log) against a real
`docteur run --target unix --rw IMAGE --socket S`; git reads the result."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from docteur.vm.client import (
    AlreadyPresentError,
    BadContentError,
    BusyError,
    Client,
    ConflictError,
    DictionaryExpectedError,
    InvalidPathError,
    NoBatchError,
    NoSpaceError,
    NotFoundError,
    ReadOnlyError,
    RenameSourcePrefixError,
    RequestError,
    ValueExpectedError,
    VersionError,
)
from tests.support.cli import fails_in_one_line, run_cli
from tests.support.git import git, needs_git
from tests.support.served import Served
from tests.support.writes import docteur, git_head_files, made

pytestmark = needs_git

FILES = {"a.txt": b"a\n", "old.txt": b"old\n", "docs/b.txt": b"b\n", "docs/c.txt": b"c\n"}
MIB = 1 << 20


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Served]]:
    image = made(tmp_path, FILES, capacity="128M")
    with Served(image) as server:
        yield image, server


async def chunks(seed: int, total: int, piece: int = MIB) -> AsyncIterator[bytes]:
    """`total` pseudo-random bytes, made as they are asked for (never all in memory)."""
    rng = random.Random(seed)
    for start in range(0, total, piece):
        yield rng.randbytes(min(piece, total - start))


def expected_bytes(seed: int, total: int, piece: int = MIB) -> bytes:
    rng = random.Random(seed)
    return b"".join(rng.randbytes(min(piece, total - s)) for s in range(0, total, piece))


def files_of(image: Path, tmp: Path, name: str) -> tuple[bytes, dict[str, tuple[int, bytes]]]:
    return git_head_files(image, tmp / name)


async def test_a_batch_is_one_commit_and_reads_its_own_writes(served, tmp_path: Path) -> None:
    image, server = served
    big = 24 * MIB
    async with await Client.open_unix(server.sock) as client, \
            await Client.open_unix(server.sock) as other:  # fmt: skip
        assert client.version == 2 and other.version == 2
        head = bytes.fromhex((await client.info())["commit"])
        async with client.batch(message="deploy\n\nthe body", author="Ops <ops@example.org>") as b:
            assert b.head == head
            assert len(await b.put("/index.html", b"<h1>hi</h1>\n")) == 20
            await b.put("/big.bin", chunks(1, big), size=big)
            await b.put("/spooled.bin", chunks(2, 3 * MIB + 5))  # size unknown: spooled first
            await b.put("/bin/run.sh", b"#!/bin/sh\necho hi\n", mode=0o100755)
            await b.put("/link", b"index.html", mode=0o120000)
            await b.remove("/old.txt")
            await b.rename("/a.txt", "/docs")  # into the directory
            # Read your writes: this connection sees the batch...
            assert await b.get("/index.html") == b"<h1>hi</h1>\n"
            assert await b.get("/big.bin", 5 * MIB, 10) == expected_bytes(1, big)[5 * MIB : 5 * MIB + 10]
            assert await b.size("/spooled.bin") == 3 * MIB + 5
            assert (await b.stat("/bin/run.sh")).mode == 0o100755
            assert await b.exists("/link") == "symlink"
            assert await b.exists("/old.txt") == "absent"
            names = sorted(e.key for e in await b.list("/docs"))
            assert names == [b"/docs/a.txt", b"/docs/b.txt", b"/docs/c.txt"]
            # ... the other one the last commit.
            assert await other.get("/old.txt") == b"old\n"
            with pytest.raises(NotFoundError):
                await other.get("/index.html")
            assert (await other.info())["commit"] == head.hex()
        result = b.result
        assert result is not None and result.generation == b.generation + 1
        assert (await other.info())["commit"] == result.commit.hex()
        assert await other.get("/spooled.bin") == expected_bytes(2, 3 * MIB + 5)
        [entry, first] = await other.log(limit=2)
        assert entry.commit == result.commit and first.commit == head
        assert entry.message == "deploy\n\nthe body\n"  # as git stores it: one final newline
        assert entry.author == "Ops <ops@example.org>"
    # git's view: one new commit on top, exactly these files.
    got_head, files = files_of(image, tmp_path, "check.git")
    assert got_head == result.commit
    assert {p: d for p, (_, d) in files.items()} == {
        "index.html": b"<h1>hi</h1>\n", "big.bin": expected_bytes(1, big),
        "spooled.bin": expected_bytes(2, 3 * MIB + 5), "bin/run.sh": b"#!/bin/sh\necho hi\n",
        "link": b"index.html", "docs/a.txt": b"a\n", "docs/b.txt": b"b\n", "docs/c.txt": b"c\n",
    }  # fmt: skip
    assert files["bin/run.sh"][0] == 0o100755 and files["link"][0] == 0o120000
    repo = tmp_path / "check.git"
    git("fsck", "--strict", "--no-dangling", cwd=repo)
    log = git("log", "--format=%H %an <%ae> %s", "main", cwd=repo).decode().splitlines()
    assert log[0] == f"{result.commit.hex()} Ops <ops@example.org> deploy"
    assert log[1].startswith(head.hex())


async def test_an_exception_inside_the_block_aborts_it(served, tmp_path: Path) -> None:
    image, server = served
    async with await Client.open_unix(server.sock) as client:
        head = (await client.info())["commit"]
        with pytest.raises(KeyError):
            async with client.batch(message="never") as b:
                await b.put("/new.txt", b"new\n")
                await b.remove("/a.txt")
                raise KeyError("the caller's own failure")
        assert b.result is None and not b.open
        assert (await client.info())["commit"] == head
        assert len(await client.log()) == 1
        with pytest.raises(NotFoundError):
            await client.get("/new.txt")
        # The disk is free again at once, and the aborted batch cannot be written to.
        with pytest.raises(NoBatchError):
            await b.put("/x", b"x")
        async with client.batch() as again:
            await again.put("/later.txt", b"later\n")
        assert again.result is not None
    assert {p for p in files_of(image, tmp_path, "c.git")[1]} == {*FILES, "later.txt"}


async def test_one_batch_per_disk_busy_for_the_others(served) -> None:
    _, server = served
    async with await Client.open_unix(server.sock) as one, await Client.open_unix(server.sock) as two:
        async with one.batch() as b:
            await b.put("/mine.txt", b"1\n")
            with pytest.raises(BusyError):
                await two.batch().begin()
            with pytest.raises(BusyError):
                await two.put("/theirs.txt", b"2\n")
            with pytest.raises(RequestError, match="open on disk docteur"):
                await one.put("/direct.txt", b"3\n")  # would silently join the batch
            assert await two.exists("/mine.txt") == "absent"
        assert await two.get("/mine.txt") == b"1\n"
        # A connection that goes away with an open batch aborts it: the disk is free.
        three = await Client.open_unix(server.sock)
        await three.batch().begin()
        await three.close()
        assert (await two.put("/after.txt", b"4\n")) is not None


async def test_expected_head_conflicts_once_the_head_moved(served, tmp_path: Path) -> None:
    image, server = served
    async with await Client.open_unix(server.sock) as client:
        first = bytes.fromhex((await client.info())["commit"])
        moved = await client.put("/one.txt", b"1\n", expected_head=first, message="one")
        assert moved is not None
        with pytest.raises(ConflictError):
            await client.put("/two.txt", b"2\n", expected_head=first)
        with pytest.raises(ConflictError):
            async with client.batch(expected_head=first) as b:
                await b.remove("/a.txt")
        assert not b.open  # a failed commit ends the batch
        assert (await client.info())["commit"] == moved.commit.hex()
        assert await client.get("/a.txt") == b"a\n"
        # An unchanged tree makes no commit: None, the head stays.
        assert await client.put("/one.txt", b"1\n") is None
        async with client.batch() as b:
            await b.put("/a.txt", b"changed\n")
            await b.put("/a.txt", b"a\n")
        assert b.result is None
        assert [e.commit for e in await client.log()] == [moved.commit, first]
        assert [e.commit for e in await client.log(limit=1)] == [moved.commit]
    assert files_of(image, tmp_path, "c.git")[0] == moved.commit


async def test_failed_operations_leave_the_batch_usable(served, tmp_path: Path) -> None:
    image, server = served

    async def short() -> AsyncIterator[bytes]:
        yield b"only this"

    async with await Client.open_unix(server.sock) as client:
        async with client.batch(message="survivor") as b:
            with pytest.raises(InvalidPathError):
                await b.put("/a/../b", b"x")
            with pytest.raises(ValueExpectedError):
                await b.put("/docs", b"x", size=1)
            with pytest.raises(NotFoundError):
                await b.remove("/missing")
            with pytest.raises(RenameSourcePrefixError):
                await b.rename("/docs", "/docs/inner")
            with pytest.raises(DictionaryExpectedError):
                await b.put("/a.txt/inner", b"x")
            await b.put("/other/z.txt", b"z\n")
            await b.put("/docs/other/y.txt", b"y\n")
            with pytest.raises(AlreadyPresentError):  # into /docs, onto its /docs/other: no merge
                await b.rename("/other", "/docs")
            await b.remove("/other")
            await b.remove("/docs/other")
            with pytest.raises(BadContentError):
                await b.put("/short.bin", short(), size=100)  # cancelled mid-content
            # A put refused at once is not sent on to its end (64 chunks, one each 10 ms).
            pulled = []

            async def slow() -> AsyncIterator[bytes]:
                async for chunk in chunks(3, 64 * MIB):
                    pulled.append(len(chunk))
                    yield chunk
                    await asyncio.sleep(0.01)

            with pytest.raises(InvalidPathError):
                await b.put("/x/./y", slow(), size=64 * MIB)
            assert len(pulled) < 64
            await b.put("/kept.txt", b"kept\n")
        assert b.result is not None
    files = files_of(image, tmp_path, "c.git")[1]
    assert {p: d for p, (_, d) in files.items()} == {**FILES, "kept.txt": b"kept\n"}


@pytest.mark.slow  # moves 96 MiB
async def test_a_put_streams_at_the_servers_pace(served) -> None:
    """Tens of MiB from an async iterator: the client holds a few chunks at a time."""
    _, server = served
    total = 48 * MIB
    async with await Client.open_unix(server.sock) as client:
        tracemalloc.start()
        try:
            result = await client.put("/stream.bin", chunks(4, total), size=total)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result is not None
        assert peak < 12 * MIB, peak  # without back-pressure the whole put would queue up
        assert await client.digest("/stream.bin") == _blob_id(expected_bytes(4, total))
        # Of unknown size: spooled to a file to learn it, never held in memory either.
        tracemalloc.start()
        try:
            result = await client.put("/spooled.bin", chunks(5, total))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result is not None and peak < 12 * MIB, peak
        assert await client.digest("/spooled.bin") == _blob_id(expected_bytes(5, total))


def _blob_id(data: bytes) -> str:
    import hashlib

    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


async def test_without_rw_every_write_is_read_only(tmp_path: Path) -> None:
    image = made(tmp_path, FILES, capacity="16M")
    with Served(image, rw=False) as server:
        async with await Client.open_unix(server.sock) as client:
            assert client.hello is not None
            assert client.hello.fields.get("writable.docteur") == "read-only attach"
            for write in (client.put("/x", b"x"), client.remove("/a.txt"),
                          client.rename("/a.txt", "/b.txt"), client.batch().begin()):  # fmt: skip
                with pytest.raises(ReadOnlyError, match="read-only"):
                    await write
            assert await client.get("/a.txt") == b"a\n"  # reads go on
            assert len(await client.log()) == 1


async def test_a_version_1_session_reads_and_refuses_writes_in_one_line(served) -> None:
    _, server = served
    async with await Client.open_unix(server.sock, version=1) as client:
        assert client.version == 1 and client.hello is not None and client.hello.version == 1
        assert await client.get("/a.txt") == b"a\n"
        for write in (client.put("/x", b"x"), client.log(), client.batch().begin()):
            with pytest.raises(VersionError, match="protocol 1: no writes"):
                await write


def test_the_cli_sees_what_the_client_wrote(served, tmp_path: Path) -> None:
    """`docteur log` on the served image's file agrees with the protocol's log (after stop)."""
    image, server = served
    from docteur.vm.client import run

    async def write() -> bytes:
        async with await Client.open_unix(server.sock) as client:
            result = await client.put("/n.txt", b"n\n", message="note")
            assert result is not None
            return result.commit

    commit = run(write())
    assert server.stop()[0] == 0
    assert server.leftovers() == []
    lines = docteur("log", image).stdout.decode().splitlines()
    assert lines[0].split()[:2] == ["1", commit.hex()] and lines[0].endswith(" note")
    assert not os.path.exists(server.sock)


# The last commit whose guest speaks only protocol 1 (its greeting has no `versions`).
V1_GUEST = "3d8aab1ae8ff36f7bdf5030a5a42ad54d95905c6"


@pytest.fixture
def v1_server(tmp_path: Path) -> Iterator[str]:
    """That guest, from this repository's history, serving an image on a unix socket."""
    import docteur.guest

    root = Path(docteur.guest.__file__).parent.parent
    if subprocess.run(["git", "-C", root, "cat-file", "-e", f"{V1_GUEST}^{{commit}}"],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("no git history here to take the protocol-1 guest from")
    old = tmp_path / "old" / "docteur"
    old.mkdir(parents=True)
    (old / "__init__.py").write_bytes(b"")
    tar = subprocess.run(["git", "-C", root, "archive", V1_GUEST, "guest"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", old], input=tar.stdout, check=True)
    image = made(tmp_path, FILES, capacity="16M")
    sock = tempfile.mkdtemp(prefix="dt1", dir="/tmp") + "/s"
    # -S: no site-packages, so `docteur` is the old tree alone (the guest needs only the stdlib).
    log = tmp_path / "guest.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-S", "-m", "docteur.guest", "--block",
                                 f"docteur={image}", "--listen", sock], stderr=err,
                                env={**os.environ, "PYTHONPATH": str(old.parent)})  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b"listening on" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
        yield sock
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(os.path.dirname(sock), ignore_errors=True)


async def test_a_protocol_1_server_serves_reads_and_refuses_writes_in_one_line(v1_server: str) -> None:
    async with await Client.open_unix(v1_server) as client:
        assert client.version == 1 and "versions" not in client.hello.fields  # type: ignore[union-attr]
        assert await client.get("/docs/b.txt") == b"b\n"
        assert [e.key for e in await client.list("/docs")] == [b"/docs/b.txt", b"/docs/c.txt"]
        with pytest.raises(VersionError, match="server speaks protocol 1: no writes"):
            await client.put("/x", b"x")
        with pytest.raises(VersionError, match="protocol 1"):
            async with client.batch():
                pass
        assert await client.exists("/x") == "absent"


async def test_a_batch_bigger_than_the_free_space_is_no_space(tmp_path: Path) -> None:
    image = made(tmp_path, FILES, capacity="4M")
    with Served(image) as server:
        async with await Client.open_unix(server.sock) as client:
            head = (await client.info())["commit"]
            with pytest.raises(NoSpaceError):
                async with client.batch() as b:
                    await b.put("/fits.txt", b"fits\n")
                    await b.put("/huge.bin", chunks(6, 8 * MIB), size=8 * MIB)
            assert not b.open and (await client.info())["commit"] == head
            assert await client.exists("/fits.txt") == "absent"
            assert await client.put("/small.txt", b"small\n") is not None  # the space is back


async def test_a_commit_refused_for_its_author_keeps_the_batch(served, tmp_path: Path) -> None:
    image, server = served
    async with await Client.open_unix(server.sock) as client, \
            await Client.open_unix(server.sock) as other:  # fmt: skip
        b = client.batch()
        await b.begin()
        await b.put("/kept.txt", b"kept\n")
        with pytest.raises(RequestError, match="author"):
            await b.commit("msg", author="nobody")
        assert b.open and await b.get("/kept.txt") == b"kept\n"
        result = await b.commit("msg", author="Some One <one@example.org>")
        assert result is not None and not b.open
        # In a block: the refused commit's batch is aborted on the way out, the disk freed.
        with pytest.raises(RequestError, match="author"):
            async with client.batch(author="nobody") as b:
                await b.put("/lost.txt", b"lost\n")
        assert not b.open
        async with other.batch() as b2:  # not busy: nothing was left open
            await b2.remove("/a.txt")
    files = files_of(image, tmp_path, "c.git")[1]
    assert "kept.txt" in files and "lost.txt" not in files and "a.txt" not in files


def test_query_put_to_a_protocol_1_server_is_one_line(v1_server: str, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"f\n")
    proc = run_cli("query", "--socket", v1_server, "put", "/f", tmp_path / "f")
    fails_in_one_line(proc, "the server speaks protocol 1: no writes (put)")
    assert run_cli("query", "--socket", v1_server, "get", "/a.txt").stdout == b"a\n"


async def test_a_cancelled_put_leaves_the_batch_and_the_connection_usable(served, tmp_path: Path) -> None:
    image, server = served
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield bytes(MIB)
            started.set()
            await asyncio.sleep(0.01)

    async with await Client.open_unix(server.sock) as client:
        async with client.batch(message="after a cancel") as b:
            task = asyncio.create_task(b.put("/never.bin", endless(), size=1 << 40))
            await started.wait()
            task.cancel()  # Ctrl-C in the console does this
            with pytest.raises(asyncio.CancelledError):
                await task
            await b.put("/after.txt", b"after\n")  # the same connection goes on
            assert await b.exists("/never.bin") == "absent"
            assert await b.get("/after.txt") == b"after\n"
        assert b.result is not None
    files = files_of(image, tmp_path, "c.git")[1]
    assert {p: d for p, (_, d) in files.items()} == {**FILES, "after.txt": b"after\n"}
