"""`docteur run --target unix [--rw] IMAGE --socket S` as a user starts it, for the tests of
writes through the protocol: its socket, the guest server it started (to kill -9 it), and
what it leaves behind."""

from __future__ import annotations

import os
import select
import shutil
import signal
import tempfile
import time
import uuid
from pathlib import Path

from tests.support.cli import kill_all, marked_processes, start_cli

READY_TIMEOUT = 120.0


class Served:
    """Started at construction, ready once `docteur run` printed its serving line."""

    def __init__(self, image: Path, *, rw: bool = True) -> None:
        self.dir = tempfile.mkdtemp(prefix="dtw", dir="/tmp")  # socket paths must stay short
        self.sock = os.path.join(self.dir, "s")
        self.mark = uuid.uuid4().hex
        flags = ["--rw"] if rw else []
        self.proc = start_cli("run", "--target", "unix", *flags, image, "--socket", self.sock,
                              mark=self.mark)  # fmt: skip
        assert self.proc.stdout is not None
        line = _read_line(self.proc.stdout.fileno(), READY_TIMEOUT)
        if self.sock not in line:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise RuntimeError(f"docteur run did not serve: {line!r} {err.decode(errors='replace')}")

    def guest_pid(self) -> int:
        """The guest server `docteur run` started (the disk's writer)."""
        with open(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children") as f:
            children = [int(p) for p in f.read().split()]
        assert len(children) == 1, children
        return children[0]

    def kill_guest(self) -> None:
        """kill -9 of the writer, as a crash of the appliance."""
        os.kill(self.guest_pid(), signal.SIGKILL)

    def wait(self, timeout: float = 60.0) -> tuple[int, str]:
        """`docteur run`'s exit status and stderr once it ended."""
        _, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err.decode(errors="replace")

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait()

    def leftovers(self, patience: float = 10.0) -> list[str]:
        """What a finished `docteur run` must not leave: processes (given `patience` seconds to
        end: a child told to stop by its parent's death), files in its socket's directory."""
        deadline = time.monotonic() + patience
        while marked_processes(self.mark) and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = marked_processes(self.mark)
        kill_all(pids)
        return [f"process {pid}" for pid in pids] + [f"file {name}" for name in os.listdir(self.dir)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
        kill_all(marked_processes(self.mark))
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Served:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_line(fd: int, timeout: float) -> str:
    """One line from a pipe, or what came before the deadline / EOF."""
    deadline = time.monotonic() + timeout
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        byte = os.read(fd, 1)
        if not byte:
            break
        data += byte
    return data.decode(errors="replace")
