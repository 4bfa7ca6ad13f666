"""A plain directory becomes one commit, the way the original docteur makes it.

Author and committer `Dr. Greenthumb <noreply@cypress.hill>`, the `-d` date
(or now) at +0000, no parent and no message at all (not even the blank
line), so the same directory and date give the same commit id. Unlike the
original, executables keep mode 100755 and symlinks are stored as 120000
entries holding their target, never followed.

Objects go to a scratch bare repository as loose objects, then
`git pack-objects` packs them with deltas; without git, an undeltified
pack is written with dulwich (and a warning says so).
"""

from __future__ import annotations

import hashlib
import os
import stat
import zlib

from dulwich.object_store import DiskObjectStore

from docteur.cli.errors import describe_os_error, is_disk_full
from docteur.cli.log import get_logger
from docteur.cli.progress import Progress
from docteur.guest.objects import (
    BLOB,
    COMMIT,
    MODE_EXEC,
    MODE_FILE,
    MODE_LINK,
    MODE_TREE,
    TREE,
    Commit,
    Signature,
    Tree,
    TreeEntry,
    object_header,
    object_id,
)

from .defaults import AUTHOR_EMAIL, AUTHOR_NAME
from .errors import BuildError
from .fetch import PackFiles, pack_objects, write_plain_pack
from .gittools import git_path
from .walk import directory_entries, parse_date
from .walk import display as _display

log = get_logger("docteur.directory")
# Files above this size are hashed and stored in chunks instead of read whole.
_BIG_FILE = 8 << 20
_CHUNK = 1 << 20


def _scratch_error(exc: OSError, where: str) -> BuildError:
    """Writing the scratch copy failed: say so (not "cannot read" the user's file)."""
    if is_disk_full(exc):
        return BuildError(describe_os_error(exc, f"no room for the scratch copy in {where}"))
    return BuildError(f"cannot write the scratch copy in {where}: {exc.strerror or exc}")


class LooseStore:
    """Write-once loose objects in `<repo>/objects` (zlib level 1: they are scratch)."""

    def __init__(self, repo: str) -> None:
        self.repo = repo
        self.objects = os.path.join(repo, "objects")
        for sub in ("objects/pack", "objects/info", "refs/heads", "refs/tags"):
            os.makedirs(os.path.join(repo, sub), exist_ok=True)
        with open(os.path.join(repo, "HEAD"), "w") as f:
            f.write("ref: refs/heads/main\n")
        self.order: list[tuple[bytes, bytes]] = []  # (hex id, path) in walk order
        self._seen: set[bytes] = set()

    def add(self, kind: str, body: bytes, path: bytes) -> bytes:
        oid = object_id(kind, body)
        hexid = oid.hex().encode()
        if not self._is_new(hexid, path):
            return oid
        c = zlib.compressobj(1)
        try:
            with open(self._path(hexid), "wb") as f:
                f.write(c.compress(object_header(kind, len(body))))
                f.write(c.compress(body))
                f.write(c.flush())
        except OSError as e:
            raise _scratch_error(e, self.repo) from None
        return oid

    def add_file(self, path: bytes, size: int, rel: bytes) -> bytes:
        """Store a big file as a blob in chunks: memory stays flat whatever its size."""
        tmp = os.path.join(self.objects, "incoming")
        h = hashlib.sha1(object_header(BLOB, size))
        c = zlib.compressobj(1)
        seen = 0
        with open(path, "rb") as src:  # (an error here is the caller's "cannot read")
            try:
                out = open(tmp, "wb")  # noqa: SIM115 - closed below
            except OSError as e:
                raise _scratch_error(e, self.repo) from None
            with out:
                out.write(c.compress(object_header(BLOB, size)))
                while chunk := src.read(_CHUNK):
                    seen += len(chunk)
                    h.update(chunk)
                    try:
                        out.write(c.compress(chunk))
                    except OSError as e:
                        raise _scratch_error(e, self.repo) from None
                try:
                    out.write(c.flush())
                    out.flush()
                except OSError as e:
                    raise _scratch_error(e, self.repo) from None
        if seen != size:
            os.unlink(tmp)
            raise BuildError(f"{_display(path)}: changed size while being read")
        oid = h.digest()
        hexid = oid.hex().encode()
        if not self._is_new(hexid, rel):
            os.unlink(tmp)
            return oid
        os.replace(tmp, self._path(hexid))
        return oid

    def _is_new(self, hexid: bytes, path: bytes) -> bool:
        """Note an object in walk order; False when it is stored already."""
        if hexid in self._seen:
            return False
        self._seen.add(hexid)
        self.order.append((hexid, path))
        return True

    def _path(self, hexid: bytes) -> str:
        """The object's loose file; its fan-out directory is made."""
        d = os.path.join(self.objects, hexid[:2].decode())
        os.makedirs(d, exist_ok=True)
        return os.path.join(d, hexid[2:].decode())


def _read_tree(
    store: LooseStore, top: bytes, rel: bytes, bar: Progress, skip: frozenset[bytes] = frozenset()
) -> bytes | None:
    """Store the tree of `top/rel`; None when it holds nothing (git keeps no empty dirs)."""
    here = os.path.join(top, rel) if rel else top
    entries: list[TreeEntry] = []
    for name, path, st in directory_entries(here, skip):
        sub = rel + b"/" + name if rel else name
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFLNK:
            oid = store.add(BLOB, os.readlink(path), sub)
            entries.append(TreeEntry(MODE_LINK, name, oid))
        elif fmt == stat.S_IFDIR:
            tid = _read_tree(store, top, sub, bar, skip)
            if tid is not None:
                entries.append(TreeEntry(MODE_TREE, name, tid))
        else:
            try:
                if st.st_size > _BIG_FILE:
                    oid = store.add_file(path, st.st_size, sub)
                else:
                    with open(path, "rb") as f:
                        oid = store.add(BLOB, f.read(), sub)
            except OSError as e:
                raise BuildError(f"{_display(path)}: cannot read: {e.strerror}") from None
            mode = MODE_EXEC if st.st_mode & stat.S_IXUSR else MODE_FILE
            entries.append(TreeEntry(mode, name, oid))
            bar.advance()
    if not entries:
        return None
    return store.add(TREE, Tree.from_entries(entries).as_raw(), rel)


def directory_commit(store: LooseStore, top: str, timestamp: int, skip: tuple[str, ...] = ()) -> bytes:
    """Store every object of `top` (but the paths in `skip`) and its commit; return the
    commit's raw id."""
    skip_b = frozenset(os.fsencode(os.path.realpath(p)) for p in skip)
    with Progress("reading", unit="files") as bar:
        tree = _read_tree(store, os.fsencode(top), b"", bar, skip_b)
    if tree is None:
        raise BuildError(f"{top}: empty directory, nothing to put in an image")
    return store.add(COMMIT, snapshot_commit(tree, timestamp).as_raw(), b"")


def snapshot_commit(tree: bytes, timestamp: int) -> Commit:
    """The commit the original docteur makes for a directory: no parent, no message."""
    who = Signature.make(AUTHOR_NAME, AUTHOR_EMAIL, timestamp, "+0000")
    return Commit(tree=tree, parents=(), author=who, committer=who, message=None)


def pack_directory(top: str, date: str | None, workdir: str, image: str | None = None) -> PackFiles:
    """One commit of `top`, packed in `workdir`; `image` and `workdir` are left out of it
    (both may lie inside `top`)."""
    timestamp = parse_date(date)
    store = LooseStore(os.path.join(workdir, "dir.git"))
    commit = directory_commit(store, top, timestamp, (workdir,) if image is None else (image, workdir))
    # Commit first, then trees and blobs: the order git itself writes them in.
    order = [store.order[-1], *store.order[:-1]]
    out = os.path.join(workdir, "dir")
    if git_path():
        return pack_objects(store.repo, out, b"".join(_line(h, p) for h, p in order), commit, len(order))
    objstore = DiskObjectStore(store.objects)
    return write_plain_pack([objstore[h] for h, _ in order], out, commit)


def _line(hexid: bytes, path: bytes) -> bytes:
    # The path is only a hint for delta search; a newline in it would split the line.
    return hexid + b" " + path.replace(b"\n", b"?") + b"\n" if path else hexid + b"\n"
