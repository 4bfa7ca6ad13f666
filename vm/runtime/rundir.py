"""Run directories of the appliances: /tmp/dct-XXXXXXXX, one per running VM.

Each appliance keeps its console log and QEMU's stderr in a short private
directory, /tmp/dct-XXXXXXXX, removed when it stops. A kill -9 of the host
process cannot remove it; so every directory holds `owner.lock`, flock'ed by
its owner for as long as it runs (the lock goes with the process, whatever kills
it), and each new appliance first removes the directories whose lock it can take.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from docteur.cli import owned

RUNDIR_BASE = "/tmp"
RUNDIR_PREFIX = "dct-"


def make_rundir(base: str = RUNDIR_BASE) -> tuple[Path, int]:
    """Clean stale run directories, then create ours; returns it and the lock's fd
    (keep it open while the directory is in use; close it after removing it)."""
    with contextlib.suppress(OSError):
        clean_stale_rundirs(base)
    path, fd = owned.create(base, RUNDIR_PREFIX)
    return Path(path), fd


def _open_in(directory: str) -> bool:
    """Does any process hold a file of `directory` open (QEMU its console log)?"""
    prefix = directory.rstrip("/") + "/"
    me = str(os.getpid())  # we hold its owner.lock while we check
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                        return True
    return False


def clean_stale_rundirs(base: str = RUNDIR_BASE, grace: float = owned.UNLOCKED_GRACE) -> list[str]:
    """Remove our run directories whose owner is gone; returns what was removed.

    Stale: its owner.lock can be locked (the owner died), or it has none (an older
    docteur's, or a creation that crashed) and is older than `grace`. Either way, a
    directory that some process still has a file open in is kept."""
    return owned.sweep(base, lambda name: name.startswith(RUNDIR_PREFIX), grace, in_use=_open_in)
