"""Who else uses an image: one docteur line instead of QEMU's lock error.

QEMU locks the image files it attaches (OFD locks on bytes 100+ and 200+, see
docteur.guest.device), and so do docteur's own readers and writers, with the same
bytes: a `docteur run --rw` refuses to start on an image another VM, a guest server
or `docteur put` uses, and a read-only run on an image being written. The host
checks before QEMU starts, with the writer's or the reader's locks taken and
dropped at once; should the other process start in between, QEMU's own refusal is
recognised (lock_refusal) and said the same way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from docteur.cli.errors import HostError
from docteur.guest.device import Locked, lock_reader, lock_writer

# QEMU 7.2: `Failed to get "write" lock` / `Failed to get shared "write" lock`, then
# `Is another process using the image [PATH]?`; or `Failed to lock byte 101` (another
# process holds the byte exclusively, as docteur's writer does).
_QEMU_LOCK = re.compile(r'Failed to (?:get (?:shared )?"[a-z ]+" lock|lock byte \d+)')
_QEMU_IMAGE = re.compile(r"Is another process using the image \[(.*)\]\?")


class ImageInUse(HostError):
    """The image is locked by another process (a VM, a guest server, docteur put)."""


def check_free(path: Path, writable: bool) -> None:
    """Raise ImageInUse unless `path` can be attached: writable, nobody else reads or
    writes it; read-only, nobody writes it."""
    try:
        fd = os.open(path, (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC)
    except OSError as exc:
        if writable and exc.errno in (13, 30):  # EACCES, EROFS
            raise ImageInUse(f"{path}: cannot be opened for writing ({exc.strerror}): drop --rw") from None
        return  # the image check reports what is wrong with it
    try:
        (lock_writer if writable else lock_reader)(fd, str(path))
    except Locked as exc:
        raise ImageInUse(str(exc)) from None
    finally:
        os.close(fd)  # our locks go with the open file description


def lock_refusal(qemu_stderr: str, blocks: dict[str, Path], writable: bool) -> str | None:
    """The docteur line for QEMU's refusal to lock an image, if that is what it said."""
    if not _QEMU_LOCK.search(qemu_stderr):
        return None
    named = _QEMU_IMAGE.search(qemu_stderr)
    paths = [Path(named.group(1))] if named else list(blocks.values())
    for path in paths:
        try:
            check_free(path, writable)
        except ImageInUse as exc:
            return str(exc)
    # The other process is gone by now; still QEMU's word, in one line.
    where = named.group(1) if named else ", ".join(map(str, blocks.values()))
    return f"{where} was in use by another process when the VM started"
