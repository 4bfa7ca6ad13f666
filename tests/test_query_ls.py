"""`docteur query ls` never lets a name break a line: quoted as git quotes it (core.quotePath),
or raw and NUL-terminated with -z."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.cli import DOCTEUR
from tests.support.git import git
from tests.support.images import packed_image
from tests.support.servers import serving

NAMES = [b"plain.txt", b"new\nline", b'quo"te', b"back\\slash", b"tab\there", b"caf\xc3\xa9",
         b"\x01ctl", b"del\x7f", b"bell\x07\x08\x0b\x0c\r", b"with space"]  # fmt: skip


def _repo(path: Path) -> Path:
    work = path / "work"
    work.mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=work)
    for name in NAMES:
        (work / name.decode("utf-8", "surrogateescape")).write_bytes(b"x\n")
    git("add", "-A", cwd=work)
    git("-c", "user.name=T", "-c", "user.email=t@t", "commit", "-q", "-m", "odd names", cwd=work)
    return work


def test_ls_quotes_names_as_git_does_and_z_is_raw(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    image = packed_image(repo, tmp_path / "odd.img")
    # git's own output is the oracle: its default quoting, and -z raw.
    quoted = git("ls-tree", "--name-only", "HEAD", cwd=repo).decode().splitlines()
    raw = git("ls-tree", "-z", "--name-only", "HEAD", cwd=repo).split(b"\0")[:-1]
    assert sorted(raw) == sorted(NAMES) and len(quoted) == len(NAMES)
    assert any(q.startswith('"') for q in quoted)
    with serving({"docteur": image}) as sock:
        out = subprocess.run([*DOCTEUR, "query", "--socket", sock, "ls", "/"], capture_output=True,
                             timeout=60)  # fmt: skip
        z = subprocess.run([*DOCTEUR, "query", "--socket", sock, "ls", "-z", "/"], capture_output=True,
                           timeout=60)  # fmt: skip
    assert out.returncode == 0 and z.returncode == 0, (out.stderr, z.stderr)
    lines = out.stdout.decode("ascii").split("\n")  # ASCII only: every odd byte escaped
    assert lines[-1] == "" and len(lines) == len(NAMES) + 1, lines
    shown = [line.split(" ", 2)[2].lstrip() for line in lines[:-1]]
    # our paths are absolute: git's "name" is our "/name", inside the quotes if any
    assert shown == [f'"/{q[1:]}' if q.startswith('"') else f"/{q}" for q in quoted]
    entries = z.stdout.split(b"\0")
    assert entries[-1] == b"" and len(entries) == len(NAMES) + 1
    assert [e.split(b" ", 2)[2].lstrip() for e in entries[:-1]] == [b"/" + r for r in raw]
    assert all(e.startswith(b"100644 file ") for e in entries[:-1])
