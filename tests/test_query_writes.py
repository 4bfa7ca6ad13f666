"""`docteur query --socket S put/rm/mv/log` and the console's batches, as a user types them,
against `docteur run --target unix --rw`; git (`docteur export`, `git fsck`, `git log`) reads
the result."""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cli import DOCTEUR, fails, fails_in_one_line, run_cli
from tests.support.git import git, needs_git
from tests.support.served import Served
from tests.support.terminal import read_until
from tests.support.vm import needs_vm
from tests.support.writes import DATE, committed, docteur, git_head_files, made

pytestmark = needs_git

FILES = {"a.txt": b"a\n", "old.txt": b"old\n", "docs/b.txt": b"b\n"}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, Served]]:
    image = made(tmp_path, FILES, capacity="64M")
    with Served(image) as server:
        yield image, server


def data(files: dict[str, tuple[int, bytes]]) -> dict[str, bytes]:
    return {path: body for path, (_, body) in files.items()}


def test_put_rm_mv_log_each_one_commit_git_agrees(served, tmp_path: Path) -> None:
    image, server = served
    q = ["query", "--socket", server.sock]
    page = tmp_path / "page.html"
    page.write_bytes(b"<p>page</p>\n" * 1000)
    script = tmp_path / "run.sh"
    script.write_bytes(b"#!/bin/sh\necho hi\n")
    commits = [
        committed(run_cli(*q, "put", "/site/page.html", page, "-m", "add the page",
                          "--author", "Ann <ann@example.org>")),
        committed(run_cli(*q, "put", "/bin/run.sh", script, "-x", "-m", "a script")),
        committed(run_cli(*q, "put", "/stdin.bin", "-", input=bytes(range(256)) * 4096)),
        committed(run_cli(*q, "rm", "/old.txt")),
    ]
    mv = run_cli(*q, "mv", "/a.txt", "/docs", "-m", "move a")
    commits.append(committed(mv))
    assert mv.stderr.decode().startswith("generation 5, ") and mv.stderr.count(b"\n") == 1
    # The same bytes again: no commit, said on stderr, nothing on stdout.
    same = run_cli(*q, "put", "/bin/run.sh", script, "-x")
    assert same.returncode == 0 and same.stdout == b"" and b"nothing changed" in same.stderr
    log = run_cli(*q, "log").stdout.decode().splitlines()
    assert [line.split()[:2] for line in log] == [
        [str(n), c.hex()] for n, c in zip(range(5, 0, -1), reversed(commits), strict=True)
    ] + [["0", log[-1].split()[1]]]
    assert log[0].endswith(" move a") and log[1].endswith(" rm /old.txt")
    assert log[-1].split()[2].startswith("2024-01-01T00:00:00")  # docteur make -d DATE
    assert server.stop()[0] == 0 and server.leftovers() == []
    # What `docteur log IMAGE` says about the file, and what git says about the export.
    assert docteur("log", image).stdout.decode().splitlines() == log
    repo = tmp_path / "export.git"
    docteur("export", image, repo)
    git("fsck", "--strict", "--no-dangling", cwd=repo)
    hashes = git("log", "--format=%H", cwd=repo).decode().split()
    assert hashes[:5] == [c.hex() for c in reversed(commits)]
    assert git("log", "-1", "--format=%an <%ae>|%s", commits[0].hex(), cwd=repo) == \
        b"Ann <ann@example.org>|add the page\n"  # fmt: skip
    head, files = git_head_files(image, tmp_path / "check.git")
    assert head == commits[-1]
    assert data(files) == {"site/page.html": page.read_bytes(), "bin/run.sh": script.read_bytes(),
                           "stdin.bin": bytes(range(256)) * 4096, "docs/a.txt": b"a\n",
                           "docs/b.txt": b"b\n"}  # fmt: skip
    assert files["bin/run.sh"][0] == 0o100755 and files["site/page.html"][0] == 0o100644


def test_put_from_a_file_redirected_to_stdin(served, tmp_path: Path) -> None:
    image, server = served
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(251)) * 20000)
    with big.open("rb") as f:
        commit = committed(run_cli("query", "--socket", server.sock, "put", "/big.bin", "-", stdin=f))
    server.stop()
    head, files = git_head_files(image, tmp_path / "c.git")
    assert head == commit and files["big.bin"][1] == big.read_bytes()


def test_write_errors_are_one_line(served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, server = served
    q = ["query", "--socket", server.sock]
    file = tmp_path / "f.txt"
    file.write_bytes(b"f\n")
    first = run_cli(*q, "log").stdout.split()[1].decode()
    # In a child, as a user runs it; then the same funnel in this process (faster).
    fails_in_one_line(run_cli(*q, "rm", "/missing"), "/missing")
    for args, needle in [
        (["put", "/x", tmp_path / "missing"], "cannot read"),
        (["put", "/x", tmp_path], "directory"),
        (["put", "/docs", file], "directory"),
        (["put", "/a.txt/x", file], "file"),
        (["put", "/a/../x", file], ".."),
        (["put", "/x", file, "--mode", "644"], "invalid choice"),
        (["put", "/x"], "FILE"),
        (["mv", "/docs", "/docs/sub"], "inside itself"),
        (["mv", "/a.txt"], "DEST"),
        (["put", "/x", file, "--author", "nobody"], "author"),
        (["put", "/x", file, "--expect", "abc"], "40 hex digits"),
        (["put", "/x", file, "--expect", "0" * 40], "not the expected"),
        (["begin"], "only in the console"),
        (["commit", "-m", "x"], "only in the console"),
        (["abort"], "only in the console"),
    ]:
        assert needle in fails(capsys, *q, *args), args
    # Nothing was written by any of them.
    assert run_cli(*q, "log").stdout.split()[1].decode() == first
    server.stop()
    # Without --rw: read-only, in one line.
    with Served(image, rw=False) as ro:
        assert "read-only" in fails(capsys, "query", "--socket", ro.sock, "rm", "/a.txt")
        assert run_cli("query", "--socket", ro.sock, "get", "/a.txt").stdout == b"a\n"


def test_console_in_a_pipe_batches_and_reads_its_writes(served, tmp_path: Path) -> None:
    image, server = served
    note = tmp_path / "note.txt"
    note.write_bytes(b"note\n")
    commands = (f"begin\nput /n/note.txt {note}\nget /n/note.txt\nrm /old.txt\nmv /a.txt /z.txt\n"
                "exists /old.txt\nls /n\nput /x -\nrm /z.txt -m no\ndisk docteur\nbegin\n"
                "commit -m 'one batch' --author 'B <b@example.org>'\nlog\ncommit\n").encode()  # fmt: skip
    console = run_cli("query", "--socket", server.sock, input=commands)
    assert console.returncode == 1, console.stderr  # five commands were refused
    out = console.stdout.decode().splitlines()  # no banner in a pipe
    assert out[0].startswith("batch open on disk docteur from ")
    assert out[1:4] == ["note", "absent", "100644 file      /n/note.txt"]
    assert out[4] == "error: put FILE: - (stdin) holds the console's commands here; give a file"
    assert out[5] == "error: rm inside a batch: -m/--author/--expect go on `commit`"
    assert out[6] == "error: a batch is open on disk docteur: commit or abort it first"
    assert out[7] == "error: a batch is already open on disk docteur (commit or abort it)"
    commit = bytes.fromhex(out[8])
    assert out[9].split()[:2] == ["1", commit.hex()] and out[9].endswith(" one batch")
    assert out[10].split()[0] == "0"  # the commit docteur make wrote
    assert out[11:] == ["error: commit: no open batch (begin one)"]
    # Leaving with an open batch aborts it, and says so.
    left = run_cli("query", "--socket", server.sock, input=f"begin\nput /gone {note}\n".encode())
    assert b"aborted: nothing written" in left.stdout and left.returncode == 1
    server.stop()
    head, files = git_head_files(image, tmp_path / "c.git")
    assert head == commit
    assert data(files) == {"n/note.txt": b"note\n", "z.txt": b"a\n", "docs/b.txt": b"b\n"}
    assert git("log", "-1", "--format=%an <%ae>|%s", "main", cwd=tmp_path / "c.git") == \
        b"B <b@example.org>|one batch\n"  # fmt: skip


def test_run_console_writes_and_a_forgotten_commit_fails(tmp_path: Path) -> None:
    """`docteur run --target unix --rw IMAGE` with commands piped in: results only; exit 1 when a
    batch is left open (aborted: what the script meant to write was not written)."""
    image = made(tmp_path, FILES, capacity="16M")

    def piped(commands: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*DOCTEUR, "run", "--target", "unix", "--rw", str(image)],
                              input=commands, capture_output=True, timeout=300)  # fmt: skip

    ok = piped(b"begin\nput /x /dev/null\ncommit -m empty-file\nget /x\n")
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.decode().splitlines()
    assert lines[0].startswith("batch open") and len(lines[1]) == 40 and len(lines) == 2
    forgot = piped(b"begin\nrm /a.txt\n")
    assert forgot.returncode == 1
    assert forgot.stdout.decode().splitlines()[-1].startswith("error: the open batch on disk docteur")
    lines = docteur("log", image).stdout.decode().splitlines()
    assert len(lines) == 2 and lines[0].endswith(" empty-file")
    assert DATE[:10] in lines[1]


@needs_vm
@pytest.mark.vm
def test_microvm_console_batch_then_query_through_the_port(tmp_path: Path) -> None:
    """The same console on the microVM (`docteur run --rw IMAGE`): the client negotiates
    version 2 on the serial port; the batch is one commit that git reads back."""
    image = made(tmp_path, FILES, capacity="32M")
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * 12289)  # 3 MiB and a bit: a dozen chunks
    commands = f"begin\nput /big.bin {big}\nrm /old.txt\nsize /big.bin\ncommit -m 'in the vm'\n"
    proc = subprocess.run([*DOCTEUR, "run", "--rw", str(image)], input=commands.encode(),
                          capture_output=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("batch open on disk docteur") and lines[1] == str(big.stat().st_size)
    head, files = git_head_files(image, tmp_path / "c.git")
    assert head.hex() == lines[2]
    assert data(files) == {"a.txt": b"a\n", "docs/b.txt": b"b\n", "big.bin": big.read_bytes()}


def test_console_on_a_terminal_shows_the_batch_and_aborts_it_on_ctrl_d(served, tmp_path: Path) -> None:
    image, server = served
    main, sub = pty.openpty()
    env = {**os.environ, "HOME": str(tmp_path)}  # the console's history file goes there
    proc = subprocess.Popen([*DOCTEUR, "query", "--socket", server.sock],
                            stdin=sub, stdout=sub, stderr=sub, env=env)  # fmt: skip
    os.close(sub)
    seen = bytearray()
    try:
        read_until(main, b"docteur:docteur> ", seen)
        os.write(main, b"begin\n")
        read_until(main, b"docteur:docteur [batch]> ", seen)
        os.write(main, b"rm /a.txt\nexists /a.txt\n")
        read_until(main, b"absent\r\ndocteur:docteur [batch]> ", seen)
        os.write(main, b"\x04")  # Ctrl-D
        assert proc.wait(60) == 0, bytes(seen)
        read_until(main, b"the open batch on disk docteur is aborted: nothing written", seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    server.stop()
    assert data(git_head_files(image, tmp_path / "c.git")[1]) == FILES
