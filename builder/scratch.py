"""The scratch directory of one `docteur make`: `.IMAGE.docteur-XXXXXXXX/` beside IMAGE.

It holds everything the build writes before the image exists: the fetched pack,
the scratch repositories, and the image itself, renamed over IMAGE at the very
end (the same directory, so the same filesystem). It goes when make ends, however
it ends, but for a kill -9. So its owner holds a lock on `owner.lock` inside for
as long as it runs (the kernel drops the lock with the process, whatever kills
it), and each make first removes the scratch directories beside its image whose
lock it can take: their owner is dead. A live make's directory is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator

from docteur.cli.log import get_logger

log = get_logger("docteur.scratch")
MARK = ".docteur-"
OWNER_LOCK = "owner.lock"
# A directory without its lock yet is being created (the lock follows at once):
# stale only when older than this.
UNLOCKED_GRACE = 60.0
_NAME = re.compile(r"^\..+" + re.escape(MARK) + r"[a-z0-9_]{8}$")  # what mkdtemp makes of it


def is_scratch_name(name: str) -> bool:
    return _NAME.match(name) is not None


@contextlib.contextmanager
def scratch_dir(image: str) -> Iterator[str]:
    """A fresh, locked scratch directory beside `image`, removed on the way out.
    Raises OSError when none can be made there (no write permission, a full disk)."""
    parent, name = os.path.split(os.path.abspath(image))
    with contextlib.suppress(OSError):  # sweeping is a courtesy: never a reason to fail
        sweep(parent)
    path = tempfile.mkdtemp(prefix=f".{name}{MARK}", dir=parent)
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
        os.rename(os.path.join(path, ".owner.tmp"), os.path.join(path, OWNER_LOCK))
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def sweep(parent: str, grace: float = UNLOCKED_GRACE) -> list[str]:
    """Remove the scratch directories in `parent` left by makes that died; return them."""
    removed = []
    uid = os.getuid()
    with os.scandir(parent) as it:
        candidates = [e for e in it if is_scratch_name(e.name)]
    for entry in candidates:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_dir(follow_symlinks=False) or st.st_uid != uid:
            continue
        try:
            fd = os.open(os.path.join(entry.path, OWNER_LOCK), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.time() - st.st_mtime > grace:
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
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
        finally:
            os.close(fd)
    if removed:
        log.info("removed the scratch of makes that died", paths=removed)
    return removed
