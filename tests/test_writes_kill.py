"""kill -9 of a writing `docteur put` / `docteur commit` at random moments: afterwards the
image opens clean and holds exactly the last acknowledged commit or the new one, per git."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.cli import DOCTEUR
from tests.support.git import needs_git
from tests.support.writes import committed, docteur, git_head_files, made, write_files

pytestmark = [needs_git, pytest.mark.slow]

KILLS = 20
BIG = 5 << 20


def _content(i: int) -> dict[str, bytes]:
    rng = random.Random(i)
    return {"big.bin": rng.randbytes(BIG), "small.txt": b"round %d\n" % i}


def _command(i: int, image: Path, work: Path) -> list[str]:
    """Round i: a put of a new 5 MiB file, or a commit of a directory holding one."""
    files = _content(i)
    if i % 2:
        source = write_files(work / f"dir{i}", files)
        return [*DOCTEUR, "commit", str(image), str(source), "-m", f"round {i}"]
    (work / f"big{i}.bin").write_bytes(files["big.bin"])
    return [*DOCTEUR, "put", str(image), "/big.bin", str(work / f"big{i}.bin"), "-m", f"round {i}"]


def _expected(i: int, before: dict[str, bytes]) -> dict[str, bytes]:
    files = _content(i)
    return files if i % 2 else {**before, "big.bin": files["big.bin"]}


def test_kill_9_of_a_writing_command_at_random_moments(tmp_path: Path) -> None:
    image = made(tmp_path, {"small.txt": b"first\n"}, capacity="256M")
    work = tmp_path / "work"
    work.mkdir()
    # How long a round takes, so that the kills fall before, inside and after the write.
    start = time.monotonic()
    acked = committed(docteur("put", image, "/big.bin", "-", input=_content(-1)["big.bin"]))
    span = time.monotonic() - start
    states = {acked: {"small.txt": b"first\n", "big.bin": _content(-1)["big.bin"]}}
    rng = random.Random(20)
    outcomes = {"acknowledged": 0, "new": 0, "finished": 0}
    for i in range(KILLS):
        expected_new = _expected(i, states[acked])
        proc = subprocess.Popen(_command(i, image, work), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip
        time.sleep(rng.uniform(0.05, span * 1.1))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=300)
        head, files = git_head_files(image, tmp_path / f"check{i}.git")
        if out.strip():  # it finished and said so before the kill: acknowledged
            assert head.hex() == out.decode().strip()
            outcomes["finished"] += 1
        elif head == acked:
            outcomes["acknowledged"] += 1
        else:
            outcomes["new"] += 1
        got = {path: data for path, (_, data) in files.items()}
        assert got == (states[acked] if head == acked else expected_new), f"round {i}"
        if head != acked:
            states[head] = expected_new
            acked = head
        # The image opens without a warning: the lock died with the writer.
        assert docteur("log", image).stderr == b""
    print(f"kill -9 outcomes over {KILLS} rounds: {outcomes}")
    assert outcomes["acknowledged"] + outcomes["new"] > 0  # some kills hit a running write
