"""Paths of the key-value view: one parser for reads and writes.

Reads are lenient (`.` is skipped, `..` goes up but not above `/`), as they
have always been. Writes are strict: a path that names something new must
be one git itself would store and check out, so no `.`/`..` segments and no
name git refuses (`.git` in any case, with the NTFS and HFS+ spellings that
fsck flags as `hasDotgit`), and no symlink or directory where fsck forbids one. Every
path a write accepts reads back the same through the lenient rules.
"""

from __future__ import annotations

from .kverrors import InvalidPath, show
from .objects import MODE_LINK, MODE_TREE
from .protocol import MAX_PATH


def split_path(path: bytes, strict: bool = False) -> list[bytes]:
    """Segments of `path`. `/` (or empty) is the root; one leading and one
    trailing `/` are allowed. Lenient (reads): `.` is skipped, `..` goes up
    but not above `/`. Strict (writes): `.`, `..` and names git refuses are
    InvalidPath."""
    if len(path) > MAX_PATH:
        raise InvalidPath(f"path longer than {MAX_PATH} bytes")
    if b"\0" in path:
        raise InvalidPath("path contains a NUL byte")
    body = path[1:] if path.startswith(b"/") else path
    if body.endswith(b"/"):
        body = body[:-1]
    if not body:
        return []
    out: list[bytes] = []
    for seg in body.split(b"/"):
        if seg == b"":
            raise InvalidPath(f"empty segment in {show(path)}")
        if strict:
            if seg in (b".", b".."):
                raise InvalidPath(f"{show(path)}: '.' and '..' segments are refused in a write")
            if is_dotgit(seg):
                raise InvalidPath(f"{show(path)}: git refuses the name {show(seg)}")
        elif seg == b".":
            continue
        elif seg == b"..":
            if not out:
                raise InvalidPath(f"{show(path)} climbs above /")
            out.pop()
            continue
        out.append(seg)
    return out


def join_path(segs: list[bytes] | tuple[bytes, ...]) -> bytes:
    """The absolute path of segments: `/a/b`, `/` for the root."""
    return b"/" + b"/".join(segs)


# Code points HFS+ ignores in names (git's utf8.c), so ".g\u200cit" is ".git" there.
_HFS_IGNORED = dict.fromkeys(
    [0x200C, 0x200D, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF]
)


def _spellings(name: bytes) -> list[str]:
    """What a name may mean to a file system: lowercased, HFS+-ignored code
    points dropped; for NTFS each backslash-separated piece, without an
    alternate data stream (`:x`) and trailing spaces and dots."""
    text = name.decode("utf-8", "surrogateescape").lower()
    out = [text.translate(_HFS_IGNORED)]
    out += [piece.split(":", 1)[0].rstrip(" .") for piece in text.split("\\")]
    return out


def is_dotgit(name: bytes) -> bool:
    """A name git refuses in a tree (verify_path and fsck's hasDotgit)."""
    if name.isascii() and b"git" not in name.lower():  # most names: no spelling can be .git
        return False
    return any(s in (".git", "git~1") for s in _spellings(name))


# Names fsck --strict refuses for some kinds of entry, with their NTFS 8.3
# short forms: as a symlink (all four), as anything but a blob (the first two).
_SPECIAL = {
    ".gitmodules": (("gitmod", "gi7eba"), True),
    ".gitattributes": (("gitatt", "gi7d29"), True),
    ".gitignore": (("gitign", "gi250a"), False),
    ".mailmap": (("mailma", "maba30"), False),
}


def check_new_name(path: bytes, name: bytes, mode: int) -> None:
    """Refuse an entry `name` of `mode` that git fsck would flag: a symlink
    named `.gitmodules` and friends, a directory named `.gitmodules` or
    `.gitattributes`."""
    if mode not in (MODE_LINK, MODE_TREE):
        return
    for s in _spellings(name):
        for full, (shorts, blob_only) in _SPECIAL.items():
            if mode == MODE_TREE and not blob_only:
                continue
            if s == full or any(s.startswith(p + "~") and s[len(p) + 1 :].isdigit() for p in shorts):
                what = "symlink" if mode == MODE_LINK else "directory"
                raise InvalidPath(f"{show(path)}: git refuses a {what} named {full}")
