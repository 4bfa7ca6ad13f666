"""Scratch directories owned by a live process, and the sweep of the dead ones'.

A directory a process writes while it runs (a make's scratch, an appliance's run
directory) cannot be removed by its owner after a kill -9. So the owner holds a
flock on `owner.lock` inside for as long as it runs (the kernel drops it with the
process, whatever kills it), and the next one removes the directories whose lock
it can take: their owner is dead. A live owner's directory is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable

OWNER_LOCK = "owner.lock"
# A directory without its lock yet is being created (the lock follows at once):
# stale only when older than this.
UNLOCKED_GRACE = 60.0


def create(parent: str, prefix: str) -> tuple[str, int]:
    """A fresh directory `parent/prefixXXXXXXXX`, locked by us: (path, the lock's fd).
    Keep the fd open while the directory is in use; close it after removing it."""
    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    try:
        # Locked before it gets its name: a sweeper never finds an unlocked owner.lock
        # (O_CLOEXEC: a child that outlives us must not keep the directory alive).
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(os.path.join(path, ".owner.tmp"), flags, 0o600)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    try:
        with contextlib.suppress(OSError):  # a filesystem without locks: no sweeping it
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(os.path.join(path, ".owner.tmp"), os.path.join(path, OWNER_LOCK))
    except BaseException:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path, fd


def sweep(
    parent: str,
    ours: Callable[[str], bool],
    grace: float = UNLOCKED_GRACE,
    in_use: Callable[[str], bool] = lambda path: False,
) -> list[str]:
    """Remove the directories in `parent` whose name is `ours` and whose owner is dead
    (their lock can be taken, or they have none and are older than `grace`), unless
    `in_use` says something still uses them; return what was removed."""
    removed = []
    uid = os.getuid()
    with os.scandir(parent) as it:
        candidates = [e for e in it if ours(e.name)]
    for entry in candidates:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_dir(follow_symlinks=False) or st.st_uid != uid:
            continue
        try:
            fd = os.open(os.path.join(entry.path, OWNER_LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.time() - st.st_mtime > grace and not in_use(entry.path):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner is alive (or the lock cannot tell: leave it)
        else:
            if not in_use(entry.path):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
        finally:
            os.close(fd)
    return removed
