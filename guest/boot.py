"""Opening and verifying the disks at boot.

A failure is kept as one line (what and where): the server then serves
nothing but that error.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection

from .errors import DocteurError
from .image import Image, open_checked
from .protocol import DEFAULT_DISK, VERSION
from .service import Service
from .treeview import Disk, generation_fields

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .writer import DiskWriter


def log(message: str) -> None:
    print(f"docteur-guest: {message}", file=sys.stderr, flush=True)


def parse_block(spec: str) -> tuple[str, str]:
    """`NAME=PATH` or a bare `PATH` (named `docteur`)."""
    name, sep, path = spec.partition("=")
    if not sep:
        return DEFAULT_DISK, spec
    if not name or not path:
        raise ValueError(f"--block wants NAME=PATH, got {spec!r}")
    return name, path


def check(image: Image, mode: str) -> None:
    """The boot check of `mode` (see defaults.VERIFY_MODES); raises on a bad image."""
    if mode == "none":
        return
    from . import verify as checks  # only when asked: keeps `none` boots lean

    if mode == "full":
        checks.verify_full(image)
    else:
        checks.verify_pack(image)


def boot(blocks: list[tuple[str, str]], mode: str, writable: Collection[str] = ()) -> Service:
    """Open and verify every disk (those named in `writable` for writing too);
    never raises for a bad image."""
    disks: dict[str, Disk] = {}
    writers: dict[str, DiskWriter] = {}  # the disks served writable
    fields = {"status": "ok", "verify": mode, "protocol": str(VERSION)}
    error: str | None = None
    for name, path in blocks:
        fields[f"disk.{name}"] = ""
        if error is not None:
            continue
        started = time.monotonic()
        image = None
        stage = "cannot open the image"
        try:
            image = open_checked(path, mode, name in writable)
            fields[f"disk.{name}"] = image.commit.hex()
            fields.update(generation_fields(image, f".{name}"))
            for line in image.warnings():
                log(f"disk {name!r}: {line}")
            stage = f"verify {mode} failed"
            check(image, mode)
            disks[name] = Disk(name, image)
            if name in writable:
                from .writer import DiskWriter  # the write side: only with --rw

                writers[name] = DiskWriter(disks[name], None if image.store.writable else "no write area")
        except (DocteurError, OSError, ValueError) as exc:
            error = f"disk {name!r} ({path}): {stage}: {exc}"
            if image is not None:
                image.close()
            continue
        took = time.monotonic() - started
        fields[f"verified.{name}"] = f"{mode} ok in {took:.3f} s"
        served = f", generation {image.generation}" if image.has_generations else ""
        log(f"disk {name!r}: {path}, commit {image.commit.hex()}{served}, verify {mode} ok ({took:.3f} s)")
    if not blocks:
        error = "no disk given (--block NAME=PATH)"
    if error is not None:
        log(f"BOOT FAILED: {error}")
        fields["status"] = "error"
        fields["error"] = error
        for disk in disks.values():
            disk.image.close()
        disks, writers = {}, {}
    return Service(disks, fields, error, writers)
