"""Test repositories: a small one with every kind of entry, a generated big one, a long history.

Repositories are made with a fixed identity and dates (support.git), so their ids are stable.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import sys
from pathlib import Path

from tests.support.git import git, git_env

# -- a small repository with every kind of entry ----------------------------------


def populate(root: Path, *, weird_names: bool = True) -> None:
    """Files of every kind docteur keeps: plain, empty, exec, symlinks, hidden, deep."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "README.md").write_text("# hello\n\nA test tree.\n")
    (root / "empty").write_bytes(b"")
    (root / ".hidden").write_text("hidden file\n")
    (root / ".config").mkdir()
    (root / ".config" / "settings.ini").write_text("[a]\nb = c\n")
    run = root / "bin" / "run.sh"
    run.parent.mkdir()
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)
    (root / "link-to-readme").symlink_to("README.md")
    (root / "bin" / "dangling").symlink_to("../nowhere/at/all")
    (root / "bin" / "outside").symlink_to("/etc/passwd")  # stored as a link, never followed
    deep = root.joinpath(*(f"d{i}" for i in range(30)))
    deep.mkdir(parents=True)
    (deep / "deep.txt").write_text("at the bottom\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 64)
    # Similar files, so that the pack has deltas.
    for i in range(5):
        (root / "src").mkdir(exist_ok=True)
        (root / "src" / f"mod{i}.py").write_text(
            "".join(f"def f{j}():\n    return {j}\n\n" for j in range(200)) + f"# {i}\n"
        )
    (root / "name with spaces.txt").write_text("spaces\n")
    (root / "ünïcödé.txt").write_text("utf-8 name\n")
    if weird_names and sys.platform.startswith("linux"):
        name = os.path.join(os.fsencode(root), b"latin1-\xe9t\xe9.txt")
        # Some filesystems refuse non-UTF-8 names: then the tree simply lacks one.
        with contextlib.suppress(OSError), open(name, "wb") as f:
            f.write(b"not utf-8 in the name\n")


def make_repo(path: Path, *, bare: bool = False, history: int = 3) -> Path:
    """A work tree (or a bare clone of one) with history, branches and tags.

    Branches: main (HEAD) and `feature`; tags: `v1` (annotated, on the first
    commit), `light` (lightweight, on the second). Returns the repository path.
    """
    work = path if not bare else path.with_name(path.name + "-work")
    work.mkdir(parents=True, exist_ok=True)
    git("init", "-q", "-b", "main", work)
    git("config", "core.symlinks", "true", cwd=work)
    populate(work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "first commit\n\nwith a body", cwd=work)
    git("tag", "-a", "v1", "-m", "version 1", cwd=work)
    for i in range(1, history):
        (work / "history.txt").write_text(f"change {i}\n" * (i + 1))
        (work / "src" / "mod0.py").write_text(f"# revision {i}\n" + "x = 1\n" * 100)
        git("add", "-A", cwd=work)
        env = git_env(GIT_AUTHOR_DATE=f"{1700000000 + i * 60} +0100",
                      GIT_COMMITTER_DATE=f"{1700000000 + i * 60} +0100")
        git("commit", "-q", "-m", f"commit {i + 1}", cwd=work, env=env)
        if i == 1:
            git("tag", "light", cwd=work)
    git("branch", "feature", "HEAD~1" if history > 1 else "HEAD", cwd=work)
    if bare:
        git("clone", "-q", "--bare", work, path)
        return path
    return work


def without_head(bare: Path, *, keep_branches: tuple[str, ...] = ()) -> Path:
    """Delete the branches of a bare repository (but `keep_branches`): HEAD points at
    nothing, the tags remain. Many mirrors of releases look like this."""
    for line in git("for-each-ref", "--format=%(refname)", "refs/heads/", cwd=bare).decode().split():
        if line.removeprefix("refs/heads/") not in keep_branches:
            git("update-ref", "-d", line, cwd=bare)
    return bare


# -- a generated repository: thousands of files in one `git fast-import` stream ----
WORDS = [
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
]


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
    git("init", "-q", "--bare", "-b", "main", path)
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


def history_repo(repo: Path) -> Path:
    """A work tree whose files change over 40 commits, repacked so that its pack has long
    delta chains (and a 300 kB incompressible big.bin)."""
    git("init", "-q", "-b", "main", repo)
    rng = random.Random(7)
    words = [f"word{i}" for i in range(500)]
    (repo / "big.bin").write_bytes(rng.randbytes(300_000))
    for rev in range(40):
        for n in range(8):
            path = repo / f"dir{n % 3}" / f"file{n}.txt"
            path.parent.mkdir(exist_ok=True)
            lines = [" ".join(rng.choices(words, k=12)) for _ in range(200 + rev)]
            path.write_text("\n".join(lines) + "\n")
        git("add", "-A", cwd=repo)
        git("commit", "-q", "-m", f"revision {rev}\n\nbody {rev}", cwd=repo)
    git("repack", "-adq", "--depth=50", "--window=50", cwd=repo)
    return repo
