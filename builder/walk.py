"""What a directory puts in an image, and the `-d` date: the parts of a directory
snapshot that `docteur commit DIR` shares with `docteur make` (light: no dulwich)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime

from docteur.cli.log import get_logger

from .errors import BuildError
from .scratch import is_scratch_name

log = get_logger("docteur.directory")

_KINDS = {
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}


def parse_date(text: str | None) -> int:
    """Seconds since the epoch from an RFC 3339 date (UTC when no offset); now when None."""
    if text is None:
        return int(datetime.now(UTC).timestamp())
    try:
        dt = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise BuildError(f"bad date {text!r}: expected RFC 3339, e.g. 2024-01-31T12:00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def display(path: bytes) -> str:
    return os.fsdecode(path)


def directory_entries(
    here: bytes, skip: frozenset[bytes] = frozenset()
) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
    """(name, path, lstat) of what directory `here` puts in an image, sorted by name.

    Left out: a nested `.git` (git refuses such entries; it is another repository),
    docteur's scratch directories, and the paths in `skip` (the image being written,
    when it sits inside the directory). A FIFO, socket or device is refused: only
    files, directories and symlinks (never followed) go in an image."""
    try:
        with os.scandir(here) as it:
            names = sorted(e.name for e in it)
    except OSError as e:
        raise BuildError(f"{display(here)}: cannot list: {e.strerror}") from None
    for name in names:
        path = os.path.join(here, name)
        if name == b".git":
            log.warning("skipping a nested .git", path=display(path))
            continue
        if is_scratch_name(os.fsdecode(name)):
            continue
        if skip and any(name == os.path.basename(s) for s in skip) and os.path.realpath(path) in skip:
            log.warning("skipping the image itself", path=display(path))
            continue
        try:
            st = os.lstat(path)
        except OSError as e:
            raise BuildError(f"{display(path)}: {e.strerror}") from None
        fmt = stat.S_IFMT(st.st_mode)
        if fmt not in (stat.S_IFLNK, stat.S_IFDIR, stat.S_IFREG):
            kind = _KINDS.get(fmt, "special file")
            raise BuildError(
                f"{display(path)}: a {kind}; only files, directories and symlinks can go in an image"
            )
        yield name, path, st
