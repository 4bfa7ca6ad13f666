"""An image with several generations (files added, changed, removed, renamed), git's view
of it, and a check that a server serves exactly the head: shared by the unix-socket and
the microVM tests of the read path."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import NamedTuple

from docteur.guest.capacity import prepare
from docteur.guest.device import FileDevice
from docteur.guest.generations import Store
from docteur.guest.objects import kind_of_mode
from docteur.vm.client import Client
from tests.support.git import git
from tests.support.oracle import export_packs, git_files
from tests.support.store import AUTHOR, plain_image, write_tree

FIRST = {
    "readme.txt": b"first generation\n",
    "keep/same.txt": b"never changed\n",
    "sub/old.txt": b"removed in generation 2\n",
    "docs/a.md": b"# renamed to b.md in generation 2\n",
}
BIG = random.Random(8).randbytes((5 << 20) + 123)  # streamed from its extent, not held whole


def _batches() -> list[dict[str, bytes]]:
    g1 = {**FIRST, "readme.txt": b"changed in generation 1\n", "new/added.txt": b"added in 1\n"}
    g2 = {k: v for k, v in g1.items() if k not in ("sub/old.txt", "docs/a.md")}
    g2["docs/b.md"] = FIRST["docs/a.md"]
    g3 = {**g2, "new/added.txt": b"changed in 3\n", "big.bin": BIG, "deep/a/b/c/d.txt": b"deep\n"}
    g4 = {k: v for k, v in g3.items() if k != "new/added.txt"}
    g4["new/renamed.txt"] = g3["new/added.txt"]
    g4["keep2.txt"] = b"added in 4\n"
    return [g1, g2, g3, g4]


BATCHES = _batches()
# Commit times and zones of generations 1..4 (generation 2 east of UTC).
WHEN = [(1_710_000_000 + 1000 * i, "+0130" if i == 2 else "+0000") for i in range(1, 5)]


class History(NamedTuple):
    plain: Path  # the first generation alone, as `docteur make` writes it
    image: Path  # the same, prepared for writes, with generations 1..4
    repo: Path  # a bare repository holding every object of the image (the oracle)
    commits: list[bytes]  # generation 0..4's commit ids


def build_history(root: Path) -> History:
    plain = plain_image(root, FIRST)
    image = root / "gens.img"
    shutil.copyfile(plain, image)
    prepare(str(image), 32 << 20)
    commits = []
    with FileDevice(str(image)) as dev, Store.open(dev) as store:
        commits.append(store.head_commit)
    for files, (when, tz) in zip(BATCHES, WHEN, strict=True):
        with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
            writer = store.begin()
            tree = write_tree(writer, files)
            commits.append(
                store.commit(writer, tree, f"generation {len(commits)}", AUTHOR, when=when, tz=tz)[0]
            )
    repo = root / "oracle.git"
    assert export_packs(str(image), repo) == commits[-1]
    return History(plain, image, repo, commits)


# -- git's view -----------------------------------------------------------------------
def _tz_minutes(tz: str) -> int:
    minutes = int(tz[1:3]) * 60 + int(tz[3:5])
    return -minutes if tz.startswith("-") else minutes


def git_last_modified(repo: Path, commit: bytes, path: str) -> tuple[int, int]:
    """(seconds, zone in minutes) of the newest commit that changed `path`, per git log."""
    out = git("log", "-1", "--format=%ct %ci", commit.hex(), "--", path or ".", cwd=repo).decode().split()
    return int(out[0]), _tz_minutes(out[-1])


def git_dirs(repo: Path, commit: bytes) -> dict[str, list[tuple[str, int]]]:
    """'/dir/' -> [(full key, mode)] of every directory of `commit`, in git's order."""
    out = git("ls-tree", "-r", "-t", "-z", commit.hex(), cwd=repo)
    dirs: dict[str, list[tuple[str, int]]] = {"/": []}
    for rec in out.split(b"\0"):
        if not rec:
            continue
        meta, raw = rec.split(b"\t", 1)
        path = raw.decode()
        mode = int(meta.split()[0], 8)
        parent = "/" + path.rsplit("/", 1)[0] + "/" if "/" in path else "/"
        dirs[parent].append(("/" + path, mode))
        if meta.split()[1] == b"tree":
            dirs["/" + path + "/"] = []
    return dirs


async def check_served(
    client: Client, repo: Path, commit: bytes, removed: list[str], disk: str = "docteur"
) -> None:
    """Every file, listing, size, digest, stat and last_modified served on `disk` is git's
    for `commit`; the `removed` paths are absent."""
    files = git_files(repo, commit)
    assert files, "git sees no files"
    for path, (mode, data) in files.items():
        key = "/" + path
        assert await client.get(key, disk=disk) == data, key
        assert await client.size(key, disk=disk) == len(data), key
        oid = git("rev-parse", f"{commit.hex()}:{path}", cwd=repo).decode().strip()
        assert await client.digest(key, disk=disk) == oid, key
        when = git_last_modified(repo, commit, path)
        assert await client.last_modified(key, disk=disk) == when, key
        st = await client.stat(key, disk=disk)
        assert (st.kind, st.mode, st.size, st.mtime) == (kind_of_mode(mode), mode, len(data), when[0]), key
    for directory, entries in git_dirs(repo, commit).items():
        listed = await client.list(directory, disk=disk)
        assert [(e.key.decode(), e.mode) for e in listed] == entries, directory
        assert await client.last_modified(directory, disk=disk) == git_last_modified(
            repo, commit, directory.strip("/")
        ), directory
    for path in removed:
        assert await client.exists(path, disk=disk) == "absent", path
