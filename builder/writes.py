"""The host's side of writes: files, stdin and directories into a batch; log, compact, export.

Each writing command is one batch (guest/batch.py) under the image's writer lock:
check everything, stream the blobs, commit once. The image changes only at that
commit (data, flush, root, flush); any error before leaves the state as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import BinaryIO

from docteur.cli.log import get_logger
from docteur.guest.batch import Batch, check_author
from docteur.guest.generations import Store
from docteur.guest.objects import MODE_EXEC, MODE_FILE, MODE_LINK, Commit
from docteur.guest.paths import split_path

from .errors import BuildError
from .scratch import scratch_dir
from .stores import readable_store, writable_store
from .walk import directory_entries, parse_date

log = get_logger("docteur.writes")
DEFAULT_BRANCH = "main"
# Files up to this size are read whole (no stream, and a known blob costs no deflate).
_WHOLE = 1 << 20
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Result:
    """What a writing command did: `commit` None when the tree was unchanged."""

    image: str
    commit: bytes | None
    generation: int
    head: bytes


def path_arg(text: str) -> bytes:
    """A path inside the image as given on the command line (the batch checks it);
    undecodable bytes come back as they were typed."""
    return os.fsencode(text)


def _commit(image: str, store: Store, batch: Batch, message: str, author: str, date: str | None) -> Result:
    done = batch.commit(message, author, when=parse_date(date))
    commit, generation = done if done else (None, store.generation)
    return Result(image, commit, generation, store.head_commit)


def _prepare(author: str, date: str | None) -> None:
    """Arguments that need no image, checked before the image is touched."""
    check_author(author)
    parse_date(date)


def put(image: str, path: str, source: str, message: str | None, author: str, date: str | None) -> Result:
    _prepare(author, date)
    target = path_arg(path)
    split_path(target, strict=True)
    with writable_store(image) as store:
        batch = Batch(store)
        with _opened(source, image) as (f, size, mode):
            batch.editor.check_put(target, mode)
            if size <= _WHOLE:
                batch.put(target, _read_exactly(f, size, source), mode)
            else:
                batch.put_stream(target, size, _chunks(f, size, source), mode)
        return _commit(image, store, batch, message or f"put {path}", author, date)


def remove(image: str, path: str, message: str | None, author: str, date: str | None) -> Result:
    _prepare(author, date)
    with writable_store(image) as store:
        batch = Batch(store)
        batch.remove(path_arg(path))
        return _commit(image, store, batch, message or f"rm {path}", author, date)


def move(image: str, source: str, dest: str, message: str | None, author: str, date: str | None) -> Result:
    _prepare(author, date)
    with writable_store(image) as store:
        batch = Batch(store)
        batch.rename(path_arg(source), path_arg(dest))
        return _commit(image, store, batch, message or f"mv {source} {dest}", author, date)


def commit_directory(image: str, top: str, message: str | None, author: str, date: str | None) -> Result:
    """The image's tree becomes `top`'s (the image itself, inside it, left out)."""
    _prepare(author, date)
    if not os.path.isdir(top):
        raise BuildError(f"{top}: " + ("not a directory" if os.path.lexists(top) else "no such directory"))
    with writable_store(image) as store:
        batch = Batch(store)
        batch.clear()
        count = 0
        for rel, full, st in walk_directory(top, skip=(image,)):
            count += 1
            if stat.S_ISLNK(st.st_mode):
                batch.put(rel, os.fsencode(os.readlink(full)), MODE_LINK)
                continue
            mode = MODE_EXEC if st.st_mode & stat.S_IXUSR else MODE_FILE
            try:
                f = open(full, "rb")  # noqa: SIM115 - closed below
            except OSError as e:
                raise BuildError(f"{os.fsdecode(full)}: cannot read: {e.strerror}") from None
            with f:
                if st.st_size <= _WHOLE:
                    batch.put(rel, _read_exactly(f, st.st_size, os.fsdecode(full)), mode)
                else:
                    batch.put_stream(rel, st.st_size, _chunks(f, st.st_size, os.fsdecode(full)), mode)
        if not count:
            raise BuildError(f"{top}: empty directory, nothing to commit (docteur rm removes files)")
        return _commit(image, store, batch, message or f"commit {top}", author, date)


def walk_directory(top: str, skip: tuple[str, ...] = ()) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
    """(image path, file path, lstat) of every file and symlink under `top`, as
    `docteur make` takes a directory (walk.directory_entries' rules)."""
    skipped = frozenset(os.fsencode(os.path.realpath(p)) for p in skip)

    def walk(here: bytes, rel: bytes) -> Iterator[tuple[bytes, bytes, os.stat_result]]:
        for name, full, st in directory_entries(here, skipped):
            if stat.S_ISDIR(st.st_mode):
                yield from walk(full, rel + b"/" + name)
            else:
                yield rel + b"/" + name, full, st

    yield from walk(os.fsencode(top), b"")


# -- reading a FILE or stdin --------------------------------------------------------------
@contextlib.contextmanager
def _opened(source: str, image: str) -> Iterator[tuple[BinaryIO, int, int]]:
    """(file, size, mode) of FILE; "-" is stdin, spooled beside the image when its
    size is unknown (a pipe), the spool removed afterwards."""
    if source == "-":
        fd = sys.stdin.fileno()
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            f = os.fdopen(os.dup(fd), "rb")
            with f:
                yield f, st.st_size - f.tell(), MODE_FILE
            return
        with scratch_dir(image) as work:
            spool = os.path.join(work, "stdin")
            with open(spool, "w+b") as f:
                with os.fdopen(os.dup(fd), "rb") as src:
                    shutil.copyfileobj(src, f, _CHUNK)
                size = f.tell()
                f.seek(0)
                yield f, size, MODE_FILE
        return
    if os.path.isdir(source):
        raise BuildError(f"{source}: a directory (docteur commit takes one)")
    try:
        f = open(source, "rb")  # noqa: SIM115 - closed below
        st = os.fstat(f.fileno())
    except OSError as e:
        raise BuildError(f"{source}: cannot read: {e.strerror}") from None
    with f:
        if not stat.S_ISREG(st.st_mode):
            raise BuildError(f"{source}: not a regular file")
        yield f, st.st_size, MODE_EXEC if st.st_mode & stat.S_IXUSR else MODE_FILE


def _read_exactly(f: BinaryIO, size: int, name: str) -> bytes:
    return b"".join(_chunks(f, size, name))


def _chunks(f: BinaryIO, size: int, name: str) -> Iterator[bytes]:
    """`size` bytes of `f` in pieces; a file that changes size while read is an error."""
    left = size
    try:
        while left:
            piece = f.read(min(_CHUNK, left))
            if not piece:
                raise BuildError(f"{name}: changed size while being read")
            left -= len(piece)
            yield piece
        if f.read(1):
            raise BuildError(f"{name}: changed size while being read")
    except OSError as e:
        raise BuildError(f"{name}: cannot read: {e.strerror}") from None


# -- reading the history -------------------------------------------------------------------
def log_lines(image: str) -> Iterator[str]:
    """`N COMMIT DATE SUBJECT`, newest first: N counts the commits of the image's
    history, 0 the one `docteur make` wrote."""
    with readable_store(image) as store:
        history = list(store.log())
    for n, (oid, commit) in zip(range(len(history) - 1, -1, -1), history, strict=True):
        yield f"{n} {oid.hex()} {commit_date(commit)} {subject(commit)}".rstrip()


def commit_date(commit: Commit) -> str:
    who = commit.committer
    tz = who.tz_offset
    minutes = int(tz[1:3]) * 60 + int(tz[3:5])
    offset = timezone(timedelta(minutes=-minutes if tz.startswith("-") else minutes))
    return datetime.fromtimestamp(who.timestamp, UTC).astimezone(offset).isoformat()


def subject(commit: Commit) -> str:
    text = (commit.message or b"").decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else ""


# -- compaction ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Compacted:
    generation: int
    used_before: int
    used_after: int
    commits: int


def used_bytes(store: Store) -> int:
    """Bytes of the image in use: everything up to the data area, and the extents."""
    if store.area is None:
        return store.layout.image_size
    return store.area.data_start + sum(e.end - e.start for e in store.extents)


def compact(image: str) -> Compacted:
    with writable_store(image) as store:
        before = used_bytes(store)
        generation = store.compact()
        commits = sum(1 for _ in store.log())
        after = used_bytes(store)
        _punch_free(store)
    return Compacted(generation, before, after, commits)


def _punch_free(store: Store) -> None:
    """Give the free spans back to the host's file system (a sparse file again): they
    are referenced by no root record any more, so reading zeros there is right."""
    dev = store.device
    if getattr(dev, "is_block", True):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)  # the interpreter's own libc
    punch = 0x01 | 0x02  # FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE
    for off, n in store.holes():
        if libc.fallocate(dev.fd, punch, ctypes.c_int64(off), ctypes.c_int64(n)) != 0:
            return  # a file system without holes: the space stays allocated, still free


# -- export ---------------------------------------------------------------------------------
def export(image: str, dest: str) -> tuple[bytes, str]:
    """A bare repository at `dest` holding the image's history: (head, branch)."""
    if os.path.lexists(dest):
        raise BuildError(f"{dest}: exists already; export writes a new repository")
    parent = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(parent):
        raise BuildError(f"{dest}: no such directory {parent}")
    with readable_store(image) as store, contextlib.ExitStack() as stack:
        try:
            work = stack.enter_context(scratch_dir(dest))
        except OSError as e:
            raise BuildError(f"cannot write in {parent}: {e.strerror}") from None
        repo = os.path.join(work, "repo.git")
        try:
            branch = _write_repository(store, repo)
            os.rename(repo, dest)
        except OSError as e:
            raise BuildError(f"cannot write {dest}: {e.strerror}") from None
        return store.head_commit, branch


def _write_repository(store: Store, repo: str) -> str:
    remote, _, branch = (store.head.remote if store.head else "").rpartition(" ")
    branch = branch or DEFAULT_BRANCH
    for sub in ("objects/pack", "objects/info", "refs/heads", "refs/tags"):
        os.makedirs(os.path.join(repo, sub))
    config = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
    if remote:
        config += f'[remote "origin"]\n\turl = {remote}\n\tfetch = +refs/heads/*:refs/remotes/origin/*\n'
    _write(repo, "config", config)
    _write(repo, "HEAD", f"ref: refs/heads/{branch}\n")
    _write(repo, f"refs/heads/{branch}", store.head_commit.hex() + "\n")
    if remote and store.head and store.head.synced.strip(b"\0") and store.head.synced in store:
        _write(repo, f"refs/remotes/origin/{branch}", store.head.synced.hex() + "\n")
    lay = store.layout
    spans = [(28, lay.pack_end - 28, lay.idx_offset, lay.idx_end - lay.idx_offset)]
    spans += [(e.pack_offset, e.pack_length, e.idx_offset, e.idx_length) for e in store.extents]
    for pack_off, pack_len, idx_off, idx_len in spans:
        _copy_pack(store, repo, pack_off, pack_len, store.device.pread(idx_len, idx_off))
    # The first commit's parents (a depth-1 fetch) are not in the image: git must know.
    shallow = [oid for oid, c in store.log() if any(p not in store for p in c.parents)]
    if shallow:
        _write(repo, "shallow", "".join(oid.hex() + "\n" for oid in shallow))
    return branch


def _copy_pack(store: Store, repo: str, off: int, length: int, idx: bytes) -> None:
    """One PACK, hashed as it is copied (a damaged one is refused), and its IDX."""
    trailer = store.device.pread(20, off + length - 20)
    name = os.path.join(repo, "objects", "pack", f"pack-{trailer.hex()}")
    h = hashlib.sha1()
    with open(name + ".pack", "wb") as out:
        at, end = off, off + length - 20
        while at < end:
            piece = store.device.pread(min(_CHUNK, end - at), at)
            h.update(piece)
            out.write(piece)
            at += len(piece)
        if h.digest() != trailer:
            raise BuildError(f"PACK at byte {off}: checksum mismatch: the image is damaged (docteur verify)")
        out.write(trailer)
    with open(name + ".idx", "wb") as out:
        out.write(idx)


def _write(repo: str, name: str, text: str) -> None:
    path = os.path.join(repo, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)  # refs/remotes/origin/, a branch a/b
    with open(path, "w") as f:
        f.write(text)
