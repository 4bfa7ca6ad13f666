"""`docteur make`: a source in, a docteur image out, atomically.

Everything is written in a scratch directory beside IMAGE (scratch.py), the
image last, synced and renamed over IMAGE at the very end: a failure or
Ctrl-C leaves no image, no temporary file, and an existing IMAGE as it was;
the next make removes what a kill -9 leaves.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

from docteur.cli.errors import describe_os_error, is_disk_full
from docteur.cli.log import get_logger
from docteur.cli.progress import Progress
from docteur.guest.layout import DEFAULT_BLOCK_SIZE, write_image

from .defaults import DEFAULT_TIMEOUT
from .directory import pack_directory
from .errors import BuildError
from .fetch import PackFiles, fetch
from .scratch import scratch_dir
from .source import parse_source

log = get_logger("docteur.make")


@dataclass(frozen=True)
class Summary:
    image: str
    commit: bytes
    objects: int
    size: int
    source: str


def make(
    source: str,
    image: str,
    *,
    ref: str | None = None,
    date: str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    timeout: float = DEFAULT_TIMEOUT,
    capacity: int | None = None,
) -> Summary:
    if block_size <= 0:
        raise BuildError(f"bad block size {block_size}: give a positive size (512, 4096, ...)")
    if not (math.isfinite(timeout) and timeout > 0):
        raise BuildError(f"bad timeout {timeout:g}: give a positive number of seconds")
    _check_destination(image, capacity)
    src = parse_source(source)
    if src.kind == "directory" and ref is not None:
        log.warning("-b is ignored for a plain directory", ref=ref)
    if src.is_git and date is not None:
        log.warning("-d only applies to a plain directory; ignored", date=date)
    with contextlib.ExitStack() as stack:
        try:
            work = stack.enter_context(scratch_dir(image))
        except OSError as e:
            raise _write_error(e, os.path.abspath(image)) from None
        try:
            if src.is_git:
                files = fetch(src, ref, work, timeout)
            else:
                files = pack_directory(src.location, date, work, image=image)
        except OSError as e:
            if is_disk_full(e):
                where = os.path.dirname(work)
                raise BuildError(describe_os_error(e, f"no room for the scratch copy in {where}")) from None
            raise
        origin = src.location if src.is_git else None
        size = write_atomically(image, files, block_size, work, capacity, origin)
    log.info("image written", image=image, commit=files.commit.hex(), objects=files.objects, size=size)
    return Summary(image, files.commit, files.objects, size, src.display)


def _check_destination(image: str, capacity: int | None) -> None:
    if os.path.isdir(image):
        raise BuildError(f"{image}: is a directory")
    _check_replaced_image(image, capacity)
    parent = os.path.dirname(os.path.abspath(image))
    if not os.path.isdir(parent):
        raise BuildError(f"{image}: no such directory {parent}")
    if not os.access(parent, os.W_OK):
        raise BuildError(f"{image}: cannot write in {parent}: permission denied")


def _check_replaced_image(image: str, capacity: int | None) -> None:
    """An image already at IMAGE: `--capacity` does not add room to it (grow does), and
    no make replaces commits written into it (they would be lost)."""
    from docteur.guest.device import FileDevice
    from docteur.guest.errors import DocteurError
    from docteur.guest.generations import Store

    try:
        with FileDevice(image) as dev, Store.open(dev) as store:
            writable, generation, written = store.writable, store.generation, bool(store.extents)
    except DocteurError:
        return  # no image there (or not one): replaced as before
    if written:  # a root-only generation (the recorded remote) holds no commit
        raise BuildError(
            f"{image} holds writes (generation {generation}) that replacing it would lose: "
            "docteur export them, or remove the image first"
        )
    if capacity is not None and not writable:
        raise BuildError(
            f"{image} is an existing read-only image: docteur grow {image} SIZE adds room to it "
            "(remove it first to make a new one)"
        )


def write_atomically(
    image: str, files: PackFiles, block_size: int, workdir: str, capacity: int | None = None,
    origin: str | None = None,
) -> int:
    """Write the image in `workdir` (beside IMAGE, so on its filesystem), sync it, give
    it room for writes when `capacity` says so (remembering the `origin` URL it came
    from), and rename it over IMAGE. Returns the
    size of the first generation."""
    image = os.path.abspath(image)
    parent = os.path.dirname(image)
    with open(files.idx, "rb") as f:
        idx = f.read()
    tmp = os.path.join(workdir, "image")
    try:
        # 0666 less the umask: what a plain open() gives a new IMAGE.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except OSError as e:
        raise _write_error(e, image) from None
    try:
        with os.fdopen(fd, "wb") as out, open(files.pack, "rb") as pack:
            total = os.fstat(pack.fileno()).st_size + len(idx)
            with Progress("writing", total=total) as bar:
                size = write_image(
                    out, files.commit, pack, idx, block_size, on_bytes=lambda n: bar.update(min(n, total))
                )
            out.flush()
            os.fsync(out.fileno())
        if capacity is not None:
            from docteur.guest.capacity import prepare

            prepare(tmp, capacity)
            if origin is not None:  # push and pull's default remote and branch
                from .sync.state import record_origin

                record_origin(tmp, origin, files.ref, files.commit)
        os.replace(tmp, image)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _write_error(e, image) from None
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return size


def _write_error(e: OSError, image: str) -> BuildError:
    """Writing the image failed: the line names IMAGE, never the temporary file
    (the user never asked for that one)."""
    if is_disk_full(e):
        return BuildError(describe_os_error(e, f"writing {image}"))
    return BuildError(f"cannot write {image}: {e.strerror or e}")
