"""A command on a pseudo-terminal, as a user at a keyboard runs it."""

from __future__ import annotations

import os
import select
import time


def read_until(fd: int, needle: bytes, seen: bytearray, timeout: float = 60.0) -> None:
    """Read the terminal's side `fd` into `seen` until `needle` is in it (or fail the test)."""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} in {bytes(seen)!r}"
        if select.select([fd], [], [], left)[0]:
            try:
                data = os.read(fd, 65536)
            except OSError:  # the other side closed (EIO)
                data = b""
            assert data, f"EOF before {needle!r} in {bytes(seen)!r}"
            seen += data
