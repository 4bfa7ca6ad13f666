"""`docteur run IMAGE` with neither --filename nor --socket: the query console on the booted
guest, commands from a pipe (results only, exit 1 if one failed) or typed on a terminal."""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import DOCTEUR
from tests.support.git import cat_blobs, ls_tree
from tests.support.terminal import read_until
from tests.support.vm import needs_vm

PROMPT = b"docteur:docteur> "


def readme(repo: Path) -> bytes:
    oid = next(o for _, _, o, p in ls_tree(repo) if p == b"README.md")
    return cat_blobs(repo, [oid])[oid]


def piped(*args: str, commands: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*DOCTEUR, "run", *args], input=commands, capture_output=True, timeout=300)


def test_unix_console_in_a_pipe(gen) -> None:
    repo, image = gen
    ok = piped("--target", "unix", str(image), commands=b"get /README.md\nexists /bin/run.sh\n")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == readme(repo) + b"file\n"  # results only: no banner, no prompt
    bad = piped("--target", "unix", str(image), commands=b"get /nope\nsize /bin/run.sh\n")
    assert bad.returncode == 1, bad.stderr
    assert bad.stdout == b"error: '/nope': no such file or directory in disk 'docteur'\n18\n"


@needs_vm
@pytest.mark.vm
@pytest.mark.slow
def test_microvm_console_in_a_pipe_powers_off_cleanly(gen) -> None:
    repo, image = gen
    proc = piped("-v", str(image), commands=b"get /README.md\nstat /nope\nexists /sub/module\n")
    assert proc.returncode == 1, proc.stderr  # stat /nope failed
    err = proc.stderr.decode()
    assert proc.stdout == (readme(repo) + b"error: '/nope': no such file or directory in disk "
                           b"'docteur'\nsubmodule\n")  # fmt: skip
    assert "qemu exited" in err and "reason=guest-shutdown" in err and "status=0" in err, err


def test_unix_console_on_a_terminal(gen, tmp_path: Path) -> None:
    """On a terminal: banner, prompt, results, history, and Ctrl-D leaves with status 0."""
    image = gen[1]
    main, sub = pty.openpty()
    env = {**os.environ, "HOME": str(tmp_path)}  # the console's history file goes there
    proc = subprocess.Popen([*DOCTEUR, "run", "--target", "unix", str(image)],
                            stdin=sub, stdout=sub, stderr=sub, env=env)  # fmt: skip
    os.close(sub)
    seen = bytearray()
    try:
        read_until(main, PROMPT, seen)
        assert b"type help" in seen
        os.write(main, b"size /bin/run.sh\n")
        read_until(main, b"18\r\n" + PROMPT, seen)
        os.write(main, b"\x04")  # Ctrl-D
        assert proc.wait(60) == 0, bytes(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    assert (tmp_path / ".docteur_history").read_text().splitlines()[-1] == "size /bin/run.sh"


def test_run_without_image_is_still_a_usage_error() -> None:
    proc = subprocess.run([*DOCTEUR, "run", "--target", "unix"], capture_output=True, timeout=60)
    assert proc.returncode != 0 and b"no image" in proc.stderr and b"Traceback" not in proc.stderr
