"""`docteur verify`: the guest's own full check, then the original's report."""

from __future__ import annotations

from typing import BinaryIO

from docteur.guest.image import Image
from docteur.guest.verify import verify_full

from .progress import Progress


def verify_image(path: str, out: BinaryIO | None, *, quiet: bool = False) -> None:
    """Raise DocteurError (one-line message) when the image is bad; else print the report."""
    with Image.open(path) as image, Progress("verifying") as bar:
        verify_full(image, progress=bar.update)
        bar.close()
        commit = image.commit_object()
        commit_hex = image.commit.hex()
    if quiet or out is None:
        return
    lines = [
        f"commit\t: {commit_hex}\n".encode(),
        f'author\t: "{commit.author.name}" <{commit.author.email}>\n'.encode(),
        f"root\t: {commit.tree.hex()}\n".encode(),
        b"\n",
    ]
    if commit.message:
        lines.append(commit.message)
    out.write(b"".join(lines))
    out.flush()
