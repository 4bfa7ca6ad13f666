"""Test images for the guest runtime: generated repositories and git as the oracle.

A repository with thousands of files and some history is written in one
`git fast-import` stream (about a second), then its tip is packed with
`git pack-objects` and wrapped with docteur.guest.layout.write_image.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from docteur.guest import server
from docteur.guest.layout import write_image
from docteur.guest.protocol import ClientCodec

ENV = {
    **os.environ,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "LC_ALL": "C",
}
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def git(*args: str | os.PathLike[str], cwd: Path, input: bytes | None = None) -> bytes:
    proc = subprocess.run(
        ["git", *map(os.fspath, args)], cwd=cwd, input=input, capture_output=True, env=ENV
    )
    if proc.returncode != 0:
        raise AssertionError(f"git {args}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def _quote(path: bytes) -> bytes:
    """A fast-import path, C-quoted when it has to be."""
    if all(32 < b < 127 and b != ord('"') for b in path):
        return path
    out = b"".join(bytes([b]) if 32 <= b < 127 and b not in b'"\\' else b"\\%03o" % b for b in path)
    return b'"' + out + b'"'


_POOL: list[bytes] = []


def _text(rng: random.Random, lines: int) -> bytes:
    if not _POOL:
        _POOL.extend(" ".join(rng.choices(WORDS, k=10)).encode() + b"\n" for _ in range(997))
    return b"".join(rng.choices(_POOL, k=lines))


def generate_repo(path: Path, files: int = 3000, commits: int = 4, big: int = 6 << 20) -> Path:
    """A bare repository: `files` text files in nested directories, plus every kind
    of entry (exec, symlinks, empty, binary, a big file, a submodule, odd names)."""
    rng = random.Random(files * 31 + commits)
    git("init", "-q", "--bare", "-b", "main", path, cwd=path.parent)
    stream = io.BytesIO()
    mark = 0

    def blob(data: bytes) -> int:
        nonlocal mark
        mark += 1
        stream.write(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))
        return mark

    paths = [f"d{i % 17}/s{i % 5}/file{i}.txt".encode() for i in range(files)]
    contents = {p: _text(rng, 5 + i % 40) for i, p in enumerate(paths)}
    special: list[tuple[bytes, bytes, bytes]] = []  # (mode, path, data)
    special += [
        (b"100644", b"README.md", b"# generated\n\nA repository for docteur's tests.\n"),
        (b"100644", b"empty", b""),
        (b"100755", b"bin/run.sh", b"#!/bin/sh\necho hi\n"),
        (b"120000", b"link-to-readme", b"README.md"),
        (b"120000", b"bin/dangling", b"../nowhere"),
        (b"100644", b"data.bin", bytes(range(256)) * 300),
        (b"100644", b"big.bin", rng.randbytes(big)),
        (b"100644", b"name with spaces.txt", b"spaces\n"),
        (b"100644", "ünïcödé.txt".encode(), b"utf-8 name\n"),
        (b"100644", b"latin1-\xe9t\xe9.txt", b"latin-1 name\n"),
        (b"100644", b"a-b", b"sorts before a/\n"),
        (b"100644", b"a.c", b"sorts before a/ too\n"),
        (b"100644", b"a/inner", b"in a directory named a\n"),
    ]
    special += [(b"100644", b"/".join(b"x%d" % i for i in range(20)) + b"/deep.txt", b"deep\n")]
    for n in range(commits):
        if n:
            for p in rng.sample(paths, max(1, files // 10)):
                contents[p] = contents[p] + _text(rng, 2)
        marks = {p: blob(d) for p, d in contents.items()} if n == 0 else {}
        if n:
            changed = [p for p in paths if rng.random() < 0.1]
            marks = {p: blob(contents[p]) for p in changed}
        smarks = [(mode, p, blob(d)) for mode, p, d in special] if n == 0 else []
        when = 1700000000 + n * 3600
        msg = b"commit %d\n\nwith a body\n" % n
        stream.write(b"commit refs/heads/main\n")
        stream.write(b"committer C O Mitter <c@example.com> %d +0130\n" % when)
        stream.write(b"data %d\n%s" % (len(msg), msg))
        for p, m in marks.items():
            stream.write(b"M 100644 :%d %s\n" % (m, _quote(p)))
        for mode, p, m in smarks:
            stream.write(b"M %s :%d %s\n" % (mode, m, _quote(p)))
        if n == 0:
            stream.write(b"M 160000 %s sub/module\n" % (b"1" * 40))
        stream.write(b"\n")
    git("fast-import", "--quiet", cwd=path, input=stream.getvalue())
    return path


def make_image(repo: Path, dest: Path, rev: str = "HEAD") -> Path:
    """An image of `rev`'s tree (depth 1, like `docteur make`)."""
    head = git("rev-parse", rev, cwd=repo).strip().decode()
    objs = git("rev-list", "--objects", "--no-object-names", "-n1", rev, cwd=repo)
    pack = git("pack-objects", "--stdout", "-q", "--delta-base-offset", cwd=repo, input=objs)
    tmp = dest.with_suffix(".pack")
    tmp.write_bytes(pack)
    git("index-pack", "-o", dest.with_suffix(".idx"), tmp, cwd=repo)
    idx = dest.with_suffix(".idx").read_bytes()
    tmp.unlink()
    dest.with_suffix(".idx").unlink()
    with dest.open("wb") as out:
        write_image(out, bytes.fromhex(head), io.BytesIO(pack), idx)
    return dest


def ls_tree(repo: Path, rev: str = "HEAD") -> list[tuple[int, str, bytes, bytes]]:
    """(mode, type, oid raw, path) of every entry, trees included (-r -t)."""
    out = git("ls-tree", "-r", "-t", "-z", rev, cwd=repo)
    rows = []
    for rec in out.split(b"\0"):
        if not rec:
            continue
        meta, path = rec.split(b"\t", 1)
        mode, kind, oid = meta.split(b" ")
        rows.append((int(mode, 8), kind.decode(), bytes.fromhex(oid.decode()), path))
    return rows


def cat_blobs(repo: Path, oids: list[bytes]) -> dict[bytes, bytes]:
    """Blob bodies by raw id, with one `git cat-file --batch`."""
    data = git(
        "cat-file", "--batch", cwd=repo, input=b"".join(o.hex().encode() + b"\n" for o in oids)
    )
    out, pos = {}, 0
    for oid in oids:
        nl = data.index(b"\n", pos)
        size = int(data[pos:nl].split()[2])
        out[oid] = data[nl + 1 : nl + 1 + size]
        pos = nl + 1 + size + 1
    return out


# -- shared images (built once per test session, whichever module asks first) --
def _once(base: Path, name: str, build) -> Path:
    path = base / name
    if not path.exists():
        tmp = base / (name + ".building")
        build(tmp)
        tmp.rename(path)
    return path


def generated_image(base: Path) -> tuple[Path, Path]:
    """(bare repository, image) of the generated repository."""
    repo = base / "gen.git"
    if not repo.exists():
        generate_repo(repo)
    return repo, _once(base, "gen.img", lambda p: make_image(repo, p))


def self_image(base: Path) -> tuple[Path, Path]:
    """(this checkout, an image of its HEAD)."""
    here = Path(__file__).resolve().parent.parent
    return here, _once(base, "self.img", lambda p: make_image(here, p))


@contextlib.contextmanager
def serving(blocks: dict[str, Path], verify: str = "none") -> Iterator[str]:
    """The guest server in a thread on a fresh unix socket; yields the socket path."""
    where = tempfile.mkdtemp(prefix="dts", dir="/tmp")  # socket paths must stay short
    path = os.path.join(where, "s")
    argv = [a for n, p in blocks.items() for a in ("--block", f"{n}={p}")]
    thread = threading.Thread(
        target=server.main, args=([*argv, "--verify", verify, "--listen", path],), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the guest server did not start")
        time.sleep(0.01)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            shutdown(path)
        thread.join(10)
        shutil.rmtree(where, ignore_errors=True)


def shutdown(path: str) -> None:
    codec = ClientCodec()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(codec.request("shutdown")[1])
        while s.recv(65536):
            pass
