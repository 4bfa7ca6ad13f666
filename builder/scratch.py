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
import os
import re
import shutil
from collections.abc import Iterator

from docteur.cli import owned
from docteur.cli.log import get_logger

log = get_logger("docteur.scratch")
MARK = ".docteur-"
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
    path, fd = owned.create(parent, f".{name}{MARK}")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def sweep(parent: str, grace: float = owned.UNLOCKED_GRACE) -> list[str]:
    """Remove the scratch directories in `parent` left by makes that died; return them."""
    removed = owned.sweep(parent, is_scratch_name, grace)
    if removed:
        log.info("removed the scratch of makes that died", paths=removed)
    return removed
