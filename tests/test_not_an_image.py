"""Only a regular file or a block device is an image: anything else is refused at once.

Opening a FIFO for reading waits for a writer forever; a directory or a
character device is no image either. `docteur verify` and `docteur run`
(both targets open images through the core) answer one line naming the path.
Each command runs under a timeout: a regression fails, it does not hang.
"""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import pytest

from docteur.guest.errors import ImageError
from docteur.guest.image import Image
from tests.support.cli import DOCTEUR

TIMEOUT = 30


@pytest.fixture(params=["fifo", "directory", "char device"])
def not_an_image(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, str]:
    """(path, the words the error must say)."""
    if request.param == "fifo":
        path = tmp_path / "disk.img"
        os.mkfifo(path)
        return path, "is a FIFO, not an image"
    if request.param == "directory":
        return tmp_path, "is a directory, not an image"
    return Path(os.devnull), "is a character device, not an image"


def _one_line(proc: subprocess.CompletedProcess[str], path: Path, words: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(path) in lines[0] and words in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_the_core_refuses_it(not_an_image: tuple[Path, str]) -> None:
    path, words = not_an_image
    outcome: list[BaseException | None] = []

    def opening() -> None:
        try:
            Image.open(str(path)).close()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=opening, daemon=True)
    thread.start()
    thread.join(TIMEOUT)
    if thread.is_alive():  # blocked in open(): release it (a writer appears), then fail
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail(f"opening {path} blocked")
    assert isinstance(outcome[0], ImageError) and words in str(outcome[0]), outcome


def test_verify_refuses_it(not_an_image: tuple[Path, str]) -> None:
    path, words = not_an_image
    proc = subprocess.run([*DOCTEUR, "verify", str(path)], capture_output=True, text=True,
                          timeout=TIMEOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    _one_line(proc, path, words)


def test_run_unix_refuses_it(not_an_image: tuple[Path, str], tmp_path: Path) -> None:
    path, words = not_an_image
    proc = subprocess.run([*DOCTEUR, "run", "--target", "unix", str(path), "--filename", "/x"],
                          capture_output=True, text=True, timeout=TIMEOUT,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    _one_line(proc, path, words)


def test_the_guest_server_refuses_it(not_an_image: tuple[Path, str]) -> None:
    """The server itself (what runs in the VM and behind --target unix) boots into
    the error instead of waiting on the path."""
    path, words = not_an_image
    proc = subprocess.run(
        [*DOCTEUR[:1], "-m", "docteur.guest", "--block", f"docteur={path}", "--stdio"],
        input=b"", capture_output=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert words in proc.stderr.decode() and str(path) in proc.stderr.decode()
