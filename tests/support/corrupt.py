"""Damage an image file on purpose."""

from __future__ import annotations

import shutil
from pathlib import Path


def corrupt(image: Path, offset: int, value: bytes | None = None, *, mask: int = 0xFF,
            dest: Path | None = None) -> Path:  # fmt: skip
    """XOR the byte at `offset` with `mask`, or write `value` there; in place (the same
    inode, as a write to a served file would be), or into a copy at `dest`. The damaged file."""
    if dest is not None:
        shutil.copyfile(image, dest)
        image = dest
    with image.open("r+b") as f:
        if value is None:
            f.seek(offset)
            value = bytes([f.read(1)[0] ^ mask])
        f.seek(offset)
        f.write(value)
    return image
