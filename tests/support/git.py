"""The one git runner: a fixed identity, dates and configuration, so that ids are stable."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

GIT = shutil.which("git")
needs_git = pytest.mark.skipif(GIT is None, reason="git is not installed")

AUTHOR = ("A U Thor", "author@example.com")
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": AUTHOR[0],
    "GIT_AUTHOR_EMAIL": AUTHOR[1],
    "GIT_COMMITTER_NAME": AUTHOR[0],
    "GIT_COMMITTER_EMAIL": AUTHOR[1],
    "GIT_AUTHOR_DATE": "1700000000 +0100",
    "GIT_COMMITTER_DATE": "1700000000 +0100",
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}

Arg = str | os.PathLike[str]


def git_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GIT_ENV)
    env.update(extra)
    return env


def git_try(*args: Arg, cwd: Arg | None = None, input: bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run git when its failure is an outcome the test looks at (`git fsck`, ...)."""
    return subprocess.run(["git", *map(os.fspath, args)], cwd=cwd, input=input, capture_output=True,
                          env=env or git_env(), check=False)  # fmt: skip


def git(*args: Arg, cwd: Arg | None = None, input: bytes | None = None,
        env: dict[str, str] | None = None) -> bytes:
    """Run git; return stdout; fail the test with git's stderr on error."""
    proc = git_try(*args, cwd=cwd, input=input, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"git {' '.join(map(str, args))}: {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def rev(repo: Path, what: str = "HEAD") -> str:
    return git("rev-parse", what, cwd=repo).decode().strip()


def ls_tree(repo: Path, rev: str = "HEAD") -> list[tuple[int, str, bytes, bytes]]:
    """(mode, type, raw oid, path) of every entry under `rev`, trees included (-r -t)."""
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
    """Object bodies by raw id, with one `git cat-file --batch`."""
    data = git("cat-file", "--batch", cwd=repo, input=b"".join(o.hex().encode() + b"\n" for o in oids))
    out, pos = {}, 0
    for oid in oids:
        nl = data.index(b"\n", pos)
        size = int(data[pos:nl].split()[2])
        out[oid] = data[nl + 1 : nl + 1 + size]
        pos = nl + 1 + size + 1
    return out
