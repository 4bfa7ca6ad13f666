"""The guest server as a host process: `python -m docteur.guest --listen` on an image.

One helper for every test (and the bench) that needs the real server process: its
pid (for /proc), its stderr kept in a log file, an optional fd limit.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class GuestProcess:
    """Started at construction; ready when the server says it listens (the socket file
    exists from bind(), a moment before listen())."""

    def __init__(
        self, image: Path, verify: str = "pack", *, fd_limit: int | None = None, rw: bool = False
    ):
        self.dir = tempfile.mkdtemp(prefix="dtg", dir="/tmp")  # socket paths must stay short
        self.sock = os.path.join(self.dir, "s")
        self.log = Path(self.dir) / "log"

        def limit() -> None:
            if fd_limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))

        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "docteur.guest", "--block", f"docteur={image}",
                 "--verify", verify, "--listen", self.sock, *(["--rw"] if rw else [])],
                stdout=subprocess.DEVNULL, stderr=err, preexec_fn=limit,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while b"listening on" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log.read_text(errors="replace")
                self.close()
                raise RuntimeError(f"the guest server did not start: {text[-2000:]}")
            time.sleep(0.02)

    def peak_rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> GuestProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
