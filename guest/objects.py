"""Git objects as small value types with exact serialisation.

Each type parses the raw object body (`from_raw`) and writes it back
byte for byte (`as_raw`); `object_id` hashes a body the way git does.
"""

from __future__ import annotations

import sys
from collections import namedtuple

from .errors import IntegrityError

try:
    from _sha1 import sha1 as _builtin_sha1
except ImportError:  # a Python built without it
    from hashlib import sha1 as _builtin_sha1

COMMIT, TREE, BLOB, TAG = "commit", "tree", "blob", "tag"
# Type numbers as they appear in a PACK entry header.
TYPE_NUMBERS = {1: COMMIT, 2: TREE, 3: BLOB, 4: TAG}
TYPE_CODES = {name: num for num, name in TYPE_NUMBERS.items()}  # what a PACK writer needs

MODE_TREE = 0o040000
MODE_FILE = 0o100644
MODE_EXEC = 0o100755
MODE_LINK = 0o120000
MODE_GITLINK = 0o160000


# Inputs from this size on are hashed by OpenSSL when the guest has it: ~115 MB/s
# under TCG against ~50 MB/s for Python's builtin SHA-1, but loading libcrypto
# costs ~40 ms in the VM, which only big inputs repay (a small image boots
# without it).
BIG_HASH = 4 << 20
_openssl_sha1: object = None  # None: not looked for yet; False: absent


def sha1(data: bytes | memoryview = b"", size: int = 0):  # type: ignore[no-untyped-def]
    """A SHA-1 object (hashlib's interface) for `data` and `size` bytes in all.

    OpenSSL's whenever it is loaded already (always on the host, where it is
    ~8x faster than the builtin one), else only for big inputs.
    """
    global _openssl_sha1
    if _openssl_sha1 or max(size, len(data)) >= BIG_HASH or "_hashlib" in sys.modules:
        if _openssl_sha1 is None:
            try:
                from _hashlib import openssl_sha1

                _openssl_sha1 = openssl_sha1
            except ImportError:
                _openssl_sha1 = False
        if _openssl_sha1:
            return _openssl_sha1(data)  # type: ignore[operator]
    return _builtin_sha1(data)


def object_header(kind: str, size: int) -> bytes:
    return b"%s %d\0" % (kind.encode(), size)


def object_id(kind: str, body: bytes) -> bytes:
    """Raw SHA-1 of a Git object (header + body)."""
    h = sha1(object_header(kind, len(body)), len(body))
    h.update(body)
    return h.digest()


def kind_of_mode(mode: int) -> str:
    """What a tree entry is: 'directory', 'file', 'symlink' or 'submodule'."""
    fmt = mode & 0o170000
    if fmt == MODE_TREE:
        return "directory"
    if fmt == MODE_LINK:
        return "symlink"
    if fmt == MODE_GITLINK:
        return "submodule"
    return "file"


# Value types are namedtuples: the dataclasses module drags `inspect` into
# the guest's imports, which costs boot time under TCG.
class Signature(namedtuple("Signature", "raw")):
    """`Name <email> 1234567890 +0200`, kept exactly as written."""

    __slots__ = ()

    @property
    def name_raw(self) -> bytes:
        """The bytes before ` <`."""
        return self.raw.partition(b" <")[0]

    @property
    def email_raw(self) -> bytes:
        """The bytes between ` <` and the next `>`."""
        return self.raw.partition(b" <")[2].partition(b">")[0]

    @property
    def name(self) -> str:
        return self.name_raw.decode("utf-8", "replace")

    @property
    def email(self) -> str:
        return self.email_raw.decode("utf-8", "replace")

    @property
    def timestamp(self) -> int:
        """Seconds since the epoch; 0 when unreadable."""
        try:
            return int(self.raw.rsplit(b"> ", 1)[1].split()[0])
        except (IndexError, ValueError):
            return 0

    @property
    def tz_offset(self) -> str:
        try:
            return self.raw.rsplit(b"> ", 1)[1].split()[1].decode()
        except (IndexError, UnicodeDecodeError):
            return "+0000"

    @property
    def tz_minutes(self) -> int:
        """The offset as minutes east of UTC; 0 when unreadable."""
        tz = self.tz_offset
        try:
            minutes = int(tz[1:3]) * 60 + int(tz[3:5])
        except ValueError:
            return 0
        return -minutes if tz.startswith("-") else minutes

    @property
    def who(self) -> str:
        """`Name <email>`, without the time."""
        head, sep, _ = self.raw.rpartition(b"> ")
        return (head + b">" if sep else self.raw).decode("utf-8", "replace")

    @classmethod
    def make(cls, name: str, email: str, timestamp: int, tz: str = "+0000") -> Signature:
        return cls(f"{name} <{email}> {timestamp} {tz}".encode())


class TreeEntry(namedtuple("TreeEntry", "mode name id")):
    """One tree entry; `id` is the raw 20-byte object id."""

    __slots__ = ()

    @property
    def kind(self) -> str:
        return kind_of_mode(self.mode)


def _tree_sort_key(entry: TreeEntry) -> bytes:
    # git sorts directories as if their name ended with '/'.
    return entry.name + b"/" if entry.mode == MODE_TREE else entry.name


class Tree(namedtuple("Tree", "entries")):
    """A tree: its entries in git's order."""

    __slots__ = ()

    @classmethod
    def from_entries(cls, entries: list[TreeEntry]) -> Tree:
        return cls(tuple(sorted(entries, key=_tree_sort_key)))

    def as_raw(self) -> bytes:
        return b"".join(b"%o %s\0%s" % (e.mode, e.name, e.id) for e in self.entries)

    @classmethod
    def from_raw(cls, body: bytes) -> Tree:
        return cls(tuple(iter_tree(body)))

    def get(self, name: bytes) -> TreeEntry | None:
        for entry in self.entries:
            if entry.name == name:
                return entry
        return None


def tree_entry_bounds(body: bytes, pos: int) -> tuple[int, int]:
    """(space, nul) of the tree entry `MODE NAME\0ID` at byte `pos` of a tree body:
    its name is body[space+1:nul], its id the 20 bytes after nul; the next entry
    starts at nul + 21. The one tree-entry parser (treeview.Tree indexes with it)."""
    space = body.find(b" ", pos)
    nul = body.find(b"\0", space + 1)
    if space < 0 or nul < 0 or nul + 21 > len(body):
        raise IntegrityError(f"malformed tree entry at byte {pos}")
    return space, nul


def tree_entry_at(body: bytes, pos: int) -> tuple[TreeEntry, int]:
    """The tree entry that starts at byte `pos` of a tree body, and where the next one starts."""
    space, nul = tree_entry_bounds(body, pos)
    try:
        mode = int(body[pos:space], 8)
    except ValueError:
        raise IntegrityError(f"malformed tree mode at byte {pos}") from None
    return TreeEntry(mode, bytes(body[space + 1 : nul]), bytes(body[nul + 1 : nul + 21])), nul + 21


def iter_tree(body: bytes):
    """Yield the entries of a tree body without building the whole list."""
    pos, end = 0, len(body)
    while pos < end:
        entry, pos = tree_entry_at(body, pos)
        yield entry


def _split_headers(body: bytes, what: str) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """Parse `key value` lines (with continuation lines) up to a blank line.

    Returns the headers and the message, None when there is no blank line
    at all (the original docteur writes directory commits that way).
    """
    headers: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos < len(body):
        nl = body.find(b"\n", pos)
        if nl < 0:
            nl = len(body)
        line = body[pos:nl]
        pos = nl + 1
        if line == b"":
            return headers, body[pos:]
        if line.startswith(b" ") and headers:
            key, value = headers[-1]
            headers[-1] = (key, value + b"\n" + line[1:])
            continue
        key, sep, value = line.partition(b" ")
        if not sep:
            raise IntegrityError(f"malformed {what} header line {line[:40]!r}")
        headers.append((key, value))
    return headers, None


def _join_headers(headers: list[tuple[bytes, bytes]], message: bytes | None) -> bytes:
    out = b"".join(k + b" " + v.replace(b"\n", b"\n ") + b"\n" for k, v in headers)
    return out if message is None else out + b"\n" + message


class Commit(namedtuple("Commit", "tree parents author committer message extra", defaults=((),))):
    """`tree` and `parents` are raw ids; `message` None means no blank line after
    the headers at all; `extra` keeps other headers (gpgsig, encoding...) in order."""

    __slots__ = ()

    def as_raw(self) -> bytes:
        headers = [(b"tree", self.tree.hex().encode())]
        headers += [(b"parent", p.hex().encode()) for p in self.parents]
        headers += [(b"author", self.author.raw), (b"committer", self.committer.raw)]
        headers += list(self.extra)
        return _join_headers(headers, self.message)

    @classmethod
    def from_raw(cls, body: bytes) -> Commit:
        headers, message = _split_headers(body, "commit")
        tree = None
        parents: list[bytes] = []
        author = committer = None
        extra: list[tuple[bytes, bytes]] = []
        for key, value in headers:
            if key == b"tree" and tree is None:
                tree = _parse_hex(value, "commit tree")
            elif key == b"parent":
                parents.append(_parse_hex(value, "commit parent"))
            elif key == b"author" and author is None:
                author = Signature(value)
            elif key == b"committer" and committer is None:
                committer = Signature(value)
            else:
                extra.append((key, value))
        if tree is None or author is None or committer is None:
            raise IntegrityError("commit lacks a tree, an author or a committer")
        return cls(tree, tuple(parents), author, committer, message, tuple(extra))


def _parse_hex(value: bytes, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raw = b""
    if len(raw) != 20:
        raise IntegrityError(f"malformed {what} id {value[:40]!r}")
    return raw
