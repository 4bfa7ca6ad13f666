"""Run directories of the appliances: /tmp/dct-XXXXXXXX, one per running VM.

Each appliance keeps its console log and QEMU's stderr in a short private
directory, /tmp/dct-XXXXXXXX, removed when it stops. A kill -9 of the host
process cannot remove it; so every directory holds `owner.lock`, flock'ed by
its owner for as long as it runs (the lock goes with the process, whatever kills
it), and each new appliance first removes the directories whose lock it can take.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

RUNDIR_BASE = "/tmp"
RUNDIR_PREFIX = "dct-"
OWNER_LOCK = "owner.lock"
UNLOCKED_GRACE = 60.0  # seconds a directory without a lock is left alone (being created)


def make_rundir(base: str = RUNDIR_BASE) -> tuple[Path, int]:
    """Clean stale run directories, then create ours; returns it and the lock's fd
    (keep it open while the directory is in use; close it after removing it)."""
    with contextlib.suppress(OSError):
        clean_stale_rundirs(base)
    path = Path(tempfile.mkdtemp(prefix=RUNDIR_PREFIX, dir=base))
    # Locked before it gets its name: a cleaner never sees an unlocked owner.lock.
    fd = os.open(path / ".owner.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(path / ".owner.tmp", path / OWNER_LOCK)
    except BaseException:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path, fd


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


def clean_stale_rundirs(base: str = RUNDIR_BASE, grace: float = UNLOCKED_GRACE) -> list[str]:
    """Remove our run directories whose owner is gone; returns what was removed.

    Stale: its owner.lock can be locked (the owner died), or it has none (an older
    docteur's, or a creation that crashed) and is older than `grace`. Either way, a
    directory that some process still has a file open in is kept."""
    removed = []
    uid = os.getuid()
    with os.scandir(base) as it:
        entries = [e for e in it if e.name.startswith(RUNDIR_PREFIX)]
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or st.st_uid != uid:
                continue
            fd = os.open(os.path.join(entry.path, OWNER_LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.time() - st.st_mtime < grace or _open_in(entry.path):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner is running
        else:
            if not _open_in(entry.path):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
        finally:
            os.close(fd)
    return removed
