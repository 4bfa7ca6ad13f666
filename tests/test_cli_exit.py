"""Exit statuses of every command: a closed stdout is 141 (128 + SIGPIPE), silent,
as a shell pipeline's writer (`docteur query ... ls / | head -1`)."""

from __future__ import annotations

import errno
import os
import subprocess

from docteur.cli.errors import describe_os_error
from tests.support.cli import DOCTEUR
from tests.support.servers import serving


def _into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[bytes]:
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte
    try:
        return subprocess.run([*DOCTEUR, *args], stdout=write, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write)


def test_a_closed_stdout_is_141_and_silent_for_every_command(gen) -> None:
    image = str(gen[1])
    with serving({"docteur": gen[1]}) as sock:
        procs = [
            _into_a_closed_pipe("verify", image),
            _into_a_closed_pipe("run", "--target", "unix", image, "--filename", "/big.bin"),
            _into_a_closed_pipe("query", "--socket", sock, "ls", "/"),
            _into_a_closed_pipe("query", "--socket", sock, "get", "/big.bin"),
        ]
    for proc in procs:
        assert (proc.returncode, proc.stderr) == (141, b""), proc.args


def test_timeouts_must_be_positive_seconds() -> None:
    for args in (["make", "--timeout", "0", "src", "img"], ["run", "x.img", "--filename", "/a",
                 "--timeout", "-1"], ["query", "--socket", "s", "--timeout", "nan", "ls"]):  # fmt: skip
        proc = subprocess.run([*DOCTEUR, *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "--timeout: must be a positive number of seconds" in proc.stderr


def test_disk_full_is_said_one_way() -> None:
    """ENOSPC and EDQUOT read "disk full" (the funnel's and the builder's wording), other
    system errors name what failed."""
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/x")) == "disk full: /x"
    assert describe_os_error(OSError(errno.EDQUOT, "Disk quota exceeded"), "writing a.img") == (
        "disk full: writing a.img")  # fmt: skip
    assert describe_os_error(OSError(errno.EACCES, "Permission denied", "/y")) == "/y: Permission denied"
