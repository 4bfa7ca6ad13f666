"""Remotes for `docteur push` and `docteur pull`: a bare repository served writable on
loopback by every transport make supports, and git clones that move it directly."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.git import git, rev
from tests.support.oracle import git_files
from tests.support.servers import run_git_daemon, run_http_git, ssh_standin
from tests.support.tls import TLSMaterial, tls_material

TRANSPORTS = ("file", "bare", "git", "http", "https", "ssh")
SEED = {"a.txt": b"alpha\n", "docs/b.txt": b"bravo\n", "docs/deep/c.txt": b"charlie\n"}


def seed_remote(base: Path, name: str = "site.git", history: int = 2) -> Path:
    """A bare repository `base/name` on branch main, `history` commits of SEED's files
    (the first commits hold an `old.txt` the last removes: older history than an image
    made at depth 1 has)."""
    work = base / f"{name}-seed"
    git("init", "-q", "-b", "main", work)
    for i in range(history):
        for path, data in SEED.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_bytes(data * (i + 1))
        old = work / "old.txt"
        if i < history - 1:
            old.write_bytes(b"from the old days\n")
        elif old.exists():
            old.unlink()
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", f"seed {i}", cwd=work)
    bare = base / name
    git("clone", "-q", "--bare", work, bare)
    return bare


@contextlib.contextmanager
def served(kind: str, bare: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The URL of `bare` (a repository directly under its parent) over `kind`, its server
    running, taking pushes."""
    base = bare.parent
    if kind == "file":
        yield f"file://{bare}"
    elif kind == "bare":
        yield str(bare)
    elif kind == "git":
        with run_git_daemon(base, writable=True) as url:
            yield f"{url}/{bare.name}"
    elif kind == "http":
        with run_http_git(base, writable=True) as url:
            yield f"{url}/{bare.name}"
    elif kind == "https":
        where = base.parent / "tls"
        where.mkdir(exist_ok=True)
        tls = tls_material(where)
        monkeypatch.setenv("GIT_SSL_CAINFO", str(tls.ca))
        with run_http_git(base, tls=TLSMaterial.server_context(tls.good), writable=True) as url:
            yield f"{url}/{bare.name}"
    elif kind == "ssh":
        script = ssh_standin(base.parent)
        monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
        monkeypatch.setenv("GIT_SSH", str(script))
        yield f"ssh://git@example.org{bare}"
    else:
        raise ValueError(kind)


def clone(bare: Path, where: Path) -> Path:
    git("clone", "-q", bare, where)
    return where


def commit_and_push(work: Path, files: dict[str, bytes | None], message: str, *extra: str) -> str:
    """Write (None: remove) `files` in the clone `work`, commit, `git push` it; the new commit."""
    git("pull", "-q", "--ff-only", cwd=work)
    for path, data in files.items():
        target = work / path
        if data is None:
            git("rm", "-q", "-r", path, cwd=work)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        git("add", path, cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    git("push", "-q", *extra, "origin", "HEAD:main", cwd=work)
    return rev(work)


def remote_files(bare: Path, commit: str) -> dict[str, tuple[int, bytes]]:
    return git_files(bare, bytes.fromhex(commit))


def ref(bare: Path, name: str = "refs/heads/main") -> str:
    return rev(bare, name)


def hook(bare: Path, name: str, script: str) -> None:
    path = bare / "hooks" / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
