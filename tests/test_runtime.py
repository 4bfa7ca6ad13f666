"""End to end over a unix socket: every path of real repositories served as git has it."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from pathlib import Path

import pytest

from docteur.guest.objects import kind_of_mode
from docteur.vm.client import (
    BootFailedError,
    Client,
    InvalidPathError,
    NoSuchDiskError,
    NotADirectory,
    NotAFileError,
    NotFoundError,
)
from tests.support.corrupt import corrupt
from tests.support.git import cat_blobs, git, ls_tree
from tests.support.images import self_image
from tests.support.servers import serving


@pytest.fixture(scope="module")
def mine(runtime_base: Path) -> tuple[Path, Path]:
    return self_image(runtime_base)


@pytest.fixture(scope="module")
def socket_path(gen: tuple[Path, Path], mine: tuple[Path, Path]):
    with serving({"docteur": gen[1], "self": mine[1]}, verify="pack") as path:
        yield path


async def check_against_git(client: Client, repo: Path, disk: str) -> int:
    """Every entry of `git ls-tree -r -t HEAD`: content, list, size, digest, kind."""
    rows = ls_tree(repo)
    blobs = [(mode, oid, path) for mode, kind, oid, path in rows if kind == "blob"]
    contents = cat_blobs(repo, [oid for _, oid, _ in blobs])
    children: dict[bytes, list[tuple[bytes, int]]] = defaultdict(list)
    for mode, _, _, path in rows:
        parent = b"/" + path.rsplit(b"/", 1)[0] + b"/" if b"/" in path else b"/"
        children[parent].append((b"/" + path, mode))

    async def one_blob(mode: int, oid: bytes, path: bytes) -> None:
        key = b"/" + path
        assert await client.get(key, disk=disk) == contents[oid], key
        assert await client.size(key, disk=disk) == len(contents[oid])
        assert await client.digest(key, disk=disk) == oid.hex()
        assert await client.exists(key, disk=disk) == kind_of_mode(mode)

    # Pipelined: many requests in flight on one connection.
    for start in range(0, len(blobs), 200):
        await asyncio.gather(*(one_blob(*b) for b in blobs[start : start + 200]))
    for _, kind, oid, path in rows:
        if kind == "tree":
            children.setdefault(b"/" + path + b"/", [])
            assert await client.digest(b"/" + path, disk=disk) == oid.hex()
        elif kind == "commit":
            with pytest.raises(NotAFileError):
                await client.get(b"/" + path, disk=disk)
            assert await client.exists(b"/" + path, disk=disk) == "submodule"
    for directory, expected in children.items():
        got = await client.list(directory, disk=disk)
        assert sorted((e.key, e.mode) for e in got) == sorted(expected), directory
        assert all(e.kind == kind_of_mode(e.mode) for e in got)
    return len(blobs)


async def test_generated_repository_served_as_git_has_it(socket_path, gen) -> None:
    async with await Client.open_unix(socket_path) as client:
        count = await check_against_git(client, gen[0], "docteur")
    assert count > 3000


async def test_this_repository_served_as_git_has_it(socket_path, mine) -> None:
    async with await Client.open_unix(socket_path, disk="self") as client:
        assert await check_against_git(client, mine[0], "self") > 10
        readme = await client.get("/README.md")
    assert readme


async def test_hello_info_and_stat(socket_path, gen) -> None:
    repo = gen[0]
    async with await Client.open_unix(socket_path) as client:
        assert client.hello is not None and client.hello.ok
        assert set(client.hello.disks) == {"docteur", "self"}
        info = await client.info()
        assert info["commit"] == git("rev-parse", "HEAD", cwd=repo).decode().strip()
        assert info["committer_time"] == str(1700000000 + 3 * 3600)
        assert "commit 3" in info["message"]
        st = await client.stat("/bin/run.sh")
        assert (st.kind, st.mode, st.size) == ("file", 0o100755, 18)
        assert st.mtime == 1700000000 + 3 * 3600
        assert await client.last_modified("/README.md") == (st.mtime, 90)
        link = await client.stat("/link-to-readme")
        assert (link.kind, link.size) == ("symlink", len(b"README.md"))
        assert await client.get("/link-to-readme") == b"README.md"  # the target, not followed
        root = await client.stat("/")
        assert root.kind == "directory" and root.size == 0
        keys = {e.key for e in await client.list("/")}
        assert {b"/README.md", b"/bin", b"/sub", b"/a", b"/a-b", b"/a.c"} <= keys


async def test_ranged_get_is_clamped(socket_path, gen) -> None:
    oid = next(o for m, k, o, p in ls_tree(gen[0]) if p == b"big.bin")
    big = cat_blobs(gen[0], [oid])[oid]
    async with await Client.open_unix(socket_path) as client:
        for offset, length in [(0, 10), (5, 1 << 20), (len(big) - 3, 100), (len(big) + 5, 10),
                               (123457, 0), (1 << 22, None), (0, None)]:  # fmt: skip
            want = big[offset:] if length is None else big[offset : offset + length]
            assert await client.get("/big.bin", offset, length) == want
        data, end = await client.get_with_end("/README.md")
        assert end.size == len(data) and end.offset == 0


async def test_errors_are_typed(socket_path) -> None:
    async with await Client.open_unix(socket_path) as client:
        with pytest.raises(NotFoundError):
            await client.get("/no/such/file")
        with pytest.raises(NotFoundError):
            await client.get("/README.md/below")
        with pytest.raises(NotAFileError):
            await client.get("/bin")
        with pytest.raises(NotADirectory):
            await client.list("/README.md")
        for bad in ["/a//b", "/../x", "/bin/../../x", "a\0b", "/" + "x" * 5000]:
            with pytest.raises(InvalidPathError):
                await client.exists(bad)
        with pytest.raises(NoSuchDiskError):
            await client.get("/README.md", disk="nope")
        assert await client.exists("/nothing") == "absent"
        assert await client.exists("/bin/./run.sh") == "file"
        assert await client.exists("/bin/../README.md") == "file"
        # The connection is still fine after all that.
        assert await client.exists("/README.md") == "file"


async def test_stream_can_be_abandoned(socket_path) -> None:
    async with await Client.open_unix(socket_path) as client:
        async for chunk in client.stream("/big.bin"):
            assert chunk
            break
        assert await client.get("/README.md")
        assert await client.size("/big.bin") == 6 << 20


async def test_boot_failure_is_the_only_answer(runtime_base: Path, gen) -> None:
    bad = corrupt(gen[1], 1000, dest=runtime_base / "corrupt-pack.img")
    with serving({"docteur": bad}, verify="pack") as path:
        async with await Client.open_unix(path) as client:
            assert client.hello is not None and not client.hello.ok
            assert "verify pack failed" in client.hello.fields["error"]
            with pytest.raises(BootFailedError, match="verify pack failed"):
                await client.get("/README.md")
            await client.ping()


async def test_verify_full_boots_a_good_image(gen) -> None:
    with serving({"docteur": gen[1]}, verify="full") as path:
        async with await Client.open_unix(path) as client:
            assert client.hello is not None and client.hello.ok
            assert client.hello.fields["verify"] == "full"
