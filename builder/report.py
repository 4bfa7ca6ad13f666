"""`docteur verify`: the guest's own full check, then the original's report.

An image with writes is checked as the guest serves it: its head generation
(each live extent and the first generation), chosen as the guest chooses it; a
generation skipped on the way is one warning line on stderr, and the report is
the head commit's.
"""

from __future__ import annotations

from docteur.cli.log import notice
from docteur.cli.progress import Progress
from docteur.guest.image import open_checked
from docteur.guest.objects import Commit
from docteur.guest.verify import verify_full

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~5 ms of imports: `docteur verify` starts without it
    from typing import BinaryIO


def verify_image(path: str, out: BinaryIO | None, *, quiet: bool = False) -> None:
    """Raise DocteurError (one-line message) when the image is bad; else print the report."""
    with open_checked(path, "full") as image, Progress("verifying", enabled=False if quiet else None) as bar:
        if not quiet:
            for line in image.warnings():
                notice(f"docteur: {line}", "generation skipped", image=path, warning=line)
        verify_full(image, progress=bar.update)
        commit = image.commit_object()
        commit_hex = image.commit.hex()
    if quiet or out is None:
        return
    out.write(report(commit_hex, commit))
    out.flush()


def ocaml_quoted(text: bytes) -> bytes:
    """`text` the way OCaml's `%S` prints it (String.escaped between quotes): the
    original prints the author's name so."""
    escapes = {0x22: b'\\"', 0x5C: b"\\\\", 0x0A: b"\\n", 0x09: b"\\t", 0x0D: b"\\r", 0x08: b"\\b"}
    out = bytearray(b'"')
    for c in text:
        if c in escapes:
            out += escapes[c]
        elif 0x20 <= c <= 0x7E:
            out.append(c)
        else:
            out += b"\\%03d" % c
    return bytes(out + b'"')


def report(commit_hex: str, commit: Commit) -> bytes:
    """Byte for byte what the original's verify prints:

        commit<TAB>: <id>
        author<TAB>: "<name, OCaml-escaped>" <email>
        root<TAB>: <tree>
        <a blank line>
        <the message, then a newline: only when the commit has one>
    """
    name, email = commit.author.name_raw, commit.author.email_raw
    lines = [
        f"commit\t: {commit_hex}\n".encode(),
        b"author\t: " + ocaml_quoted(name) + b" <" + email + b">\n",
        f"root\t: {commit.tree.hex()}\n".encode(),
        b"\n",
    ]
    if commit.message is not None:  # no message at all: a directory's commit
        lines.append(commit.message + b"\n")
    return b"".join(lines)
