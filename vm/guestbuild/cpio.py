"""A reproducible cpio "newc" writer for the initramfs.

Written here rather than with cpio(1) so that device nodes need no root and
the bytes depend only on the content: entries are sorted, owned by root, and
every mtime is fixed; the gzip header carries mtime 0 and no file name.
"""

from __future__ import annotations

import gzip
import io
import stat
from dataclasses import dataclass, field

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    path: str  # inside the archive, no leading "/"
    mode: int  # full st_mode (type bits included)
    data: bytes = b""  # file content, or the target of a symlink
    rdev: tuple[int, int] = (0, 0)  # (major, minor) of a device node


@dataclass
class Archive:
    """Entries keyed by path; parent directories are added implicitly."""

    entries: dict[str, Entry] = field(default_factory=dict)

    def add(self, entry: Entry) -> None:
        parts = entry.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            self.entries.setdefault(parent, Entry(parent, stat.S_IFDIR | 0o755))
        self.entries[entry.path] = entry

    def file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add(Entry(path.lstrip("/"), stat.S_IFREG | mode, data))

    def symlink(self, path: str, target: str) -> None:
        self.add(Entry(path.lstrip("/"), stat.S_IFLNK | 0o777, target.encode()))

    def directory(self, path: str, mode: int = 0o755) -> None:
        self.add(Entry(path.lstrip("/"), stat.S_IFDIR | mode))

    def chardev(self, path: str, major: int, minor: int, mode: int = 0o666) -> None:
        self.add(Entry(path.lstrip("/"), stat.S_IFCHR | mode, rdev=(major, minor)))

    def cpio(self, mtime: int = 0) -> bytes:
        out = io.BytesIO()
        # Sorted paths put every directory before its content.
        for ino, path in enumerate(sorted(self.entries), start=1):
            _write(out, self.entries[path], ino, mtime)
        _write(out, Entry(_TRAILER, 0), 0, 0)
        # The kernel reads newc in 512-byte blocks like cpio(1) writes it.
        out.write(b"\0" * (-out.tell() % 512))
        return out.getvalue()

    def gzip(self, mtime: int = 0, level: int = 6) -> bytes:
        buf = io.BytesIO()
        # filename="" and mtime=0 keep the gzip header content-only.
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=level) as gz:
            gz.write(self.cpio(mtime))
        return buf.getvalue()


def _write(out: io.BytesIO, entry: Entry, ino: int, mtime: int) -> None:
    name = entry.path.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        ino, entry.mode, 0, 0, nlink, mtime, len(entry.data),
        0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
    )  # fmt: skip
    out.write(_MAGIC + b"".join(b"%08X" % f for f in fields))
    out.write(name)
    out.write(b"\0" * (-out.tell() % 4))
    out.write(entry.data)
    out.write(b"\0" * (-out.tell() % 4))
