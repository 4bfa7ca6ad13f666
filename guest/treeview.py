"""The disk's tree view: paths of the commit's tree -> files (the key-value store clients see).

Paths are resolved by walking trees lazily from the commit's root, with a
cache of recent trees bounded in bytes. A cached tree is its raw body plus
an array of entry offsets (4 bytes an entry), searched by bisection in
git's tree order, and the tree ids of recently used directories are
remembered: memory stays bounded whatever the number of files.

Measured on a 100 000-file image (host): a dict of every path (what the
original does) takes 27 MiB and 2.4 s to build at boot; a compact index of
8-byte path hashes takes 1.3 MiB but still a full tree walk at boot (seconds
under TCG); the lazy walk costs nothing at boot and ~10 µs a lookup.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Iterator

from .errors import DocteurError, ImageChanged, IntegrityError, NotFound
from .image import Image
from .kverrors import show
from .objects import BLOB, MODE_TREE, TREE, Commit, TreeEntry, kind_of_mode, tree_entry_at, tree_entry_bounds
from .paths import split_path
from .values import Entry, GetEnd, Stat

ROOT_MODE = MODE_TREE
DIR_CACHE = 4096  # directories whose tree id is remembered (about 150 bytes each)
# last_modified looks at most this many commits of the head's history, newest first
# (each costs a commit and the trees along the path), and remembers this many paths.
HISTORY_LIMIT = 256
MODIFIED_CACHE = 4096


class NotAFile(DocteurError):
    """get/size of a directory or a submodule."""


class NotADirectory(DocteurError):
    """list of a file."""


class Tree:
    """A tree body with the offsets of its entries, searchable by name."""

    __slots__ = ("body", "offsets", "sorted")

    def __init__(self, body: bytes):
        self.body = body
        self.offsets = array("I")
        self.sorted = True
        pos, end, prev = 0, len(body), b""
        while pos < end:
            space, nul = tree_entry_bounds(body, pos)
            self.offsets.append(pos)
            key = body[space + 1 : nul]
            if body[pos : pos + 2] == b"40":  # a directory sorts as "name/"
                key += b"/"
            if key < prev:
                self.sorted = False
            prev = key
            pos = nul + 21

    def __len__(self) -> int:
        return len(self.offsets)

    def entry(self, i: int) -> TreeEntry:
        """(mode, name, oid) of entry `i`."""
        return tree_entry_at(self.body, self.offsets[i])[0]

    @property
    def cost(self) -> int:
        """Bytes it holds, roughly, for the cache's bound."""
        return len(self.body) + 4 * len(self.offsets) + 100

    def _name_at(self, i: int) -> bytes:
        body, pos = self.body, self.offsets[i]
        space, nul = tree_entry_bounds(body, pos)
        key = body[space + 1 : nul]
        return key + b"/" if body[pos : pos + 2] == b"40" else key

    def lookup(self, name: bytes) -> tuple[int, bytes] | None:
        """(mode, oid) of the entry called `name`."""
        if not self.sorted:
            for i in range(len(self)):
                mode, n, oid = self.entry(i)
                if n == name:
                    return mode, oid
            return None
        lo, hi = 0, len(self.offsets)
        while lo < hi:  # first entry whose sort key is >= name
            mid = (lo + hi) // 2
            if self._name_at(mid) < name:
                lo = mid + 1
            else:
                hi = mid
        # `name` as a file sorts here, as a directory ("name/") a little later:
        # only names that extend `name` with a byte below "/" lie in between.
        limit = name + b"/"
        for i in range(lo, len(self.offsets)):
            mode, n, oid = self.entry(i)
            if n == name:
                return mode, oid
            if self._name_at(i) > limit:
                break
        return None

    def __iter__(self) -> Iterator[TreeEntry]:
        for i in range(len(self)):
            yield self.entry(i)


def clamp(size: int, offset: int, length: int | None) -> tuple[int, int]:
    """(start, count) of a ranged get clamped to a file of `size` bytes (an offset
    past the end sends nothing)."""
    start = min(offset, size)
    return start, size - start if length is None else min(length, size - start)


def key_prefix(path: bytes) -> bytes:
    """What a listing of directory `path` puts before each child's name (`/dir/`)."""
    segs = split_path(path)
    return b"/" + b"/".join(segs) + b"/" if segs else b"/"


class PathView:
    """What every view of a disk (the served commit, a session's open batch) answers
    from `resolve` alone."""

    name: str

    def resolve(self, path: bytes) -> tuple[int, bytes] | None:
        raise NotImplementedError

    def _need(self, path: bytes) -> tuple[int, bytes]:
        found = self.resolve(path)
        if found is None:
            raise NotFound(f"{show(path)}: no such file or directory in disk {self.name!r}")
        return found

    def _need_blob(self, path: bytes) -> tuple[int, bytes]:
        mode, oid = self._need(path)
        kind = kind_of_mode(mode)
        if kind not in ("file", "symlink"):
            raise NotAFile(f"{show(path)} is a {kind}, not a file")
        return mode, oid

    def _need_tree(self, path: bytes) -> bytes:
        mode, oid = self._need(path)
        if mode != MODE_TREE:
            raise NotADirectory(f"{show(path)} is a {kind_of_mode(mode)}, not a directory")
        return oid

    def exists(self, path: bytes) -> str:
        found = self.resolve(path)
        return "absent" if found is None else kind_of_mode(found[0])

    def digest(self, path: bytes) -> bytes:
        return self._need(path)[1]


class Disk(PathView):
    """One image served under a name."""

    def __init__(self, name: str, image: Image, tree_cache_bytes: int = 8 << 20):
        self.name = name
        self.image = image
        self.commit: Commit = image.commit_object()
        self.mtime = self.commit.committer.timestamp
        self._trees: OrderedDict[bytes, Tree] = OrderedDict()
        self._tree_bytes = 0
        self._tree_limit = tree_cache_bytes
        self._dirs: OrderedDict[bytes, bytes] = OrderedDict()  # "a/b" -> tree id
        self._modified: OrderedDict[bytes, Commit] = OrderedDict()  # "a/b" -> commit that changed it

    def head_moved(self) -> None:
        """The image's head moved (this server committed): answer from the new one.
        The trees stay cached (by id); what was found by path is forgotten."""
        self.commit = self.image.commit_object()
        self.mtime = self.commit.committer.timestamp
        self._dirs.clear()
        self._modified.clear()

    # -- trees ----------------------------------------------------------------
    def tree(self, oid: bytes) -> Tree:
        hit = self._trees.get(oid)
        if hit is not None:
            self._trees.move_to_end(oid)
            return hit
        kind, body = self.image.read_object(oid)
        try:
            if kind != TREE:
                raise IntegrityError(f"object {oid.hex()} is a {kind}, a tree was expected")
            tree = Tree(body)
        except IntegrityError as exc:
            raise self.image.named(exc) from None
        if tree.cost <= self._tree_limit // 2:
            self._trees[oid] = tree
            self._tree_bytes += tree.cost
            while self._tree_bytes > self._tree_limit:
                _, old = self._trees.popitem(last=False)
                self._tree_bytes -= old.cost
        return tree

    def resolve(self, path: bytes) -> tuple[int, bytes] | None:
        """(mode, oid) of `path`, None when absent."""
        try:
            self.image.check_unchanged()  # the cached trees are of the file opened
        except ImageChanged:
            self._trees.clear()
            self._dirs.clear()
            self._tree_bytes = 0
            raise
        segs = split_path(path)
        if not segs:
            return ROOT_MODE, self.commit.tree
        try:
            return self._walk(segs)
        except IntegrityError as exc:  # a malformed entry in a tree that hashed right
            raise self.image.named(exc) from None

    def _walk(self, segs: list[bytes]) -> tuple[int, bytes] | None:
        """(mode, oid) of the path `segs` in the head's tree (with the directory cache)."""
        parent = b"/".join(segs[:-1])
        tree_oid = self._dirs.get(parent)
        if tree_oid is not None:
            self._dirs.move_to_end(parent)
        else:
            tree_oid = self.commit.tree
            for seg in segs[:-1]:
                found = self.tree(tree_oid).lookup(seg)
                if found is None or found[0] != MODE_TREE:
                    return None
                tree_oid = found[1]
            self._dirs[parent] = tree_oid
            if len(self._dirs) > DIR_CACHE:
                self._dirs.popitem(last=False)
        return self.tree(tree_oid).lookup(segs[-1])

    def _find_in(self, tree_oid: bytes, segs: list[bytes]) -> tuple[int, bytes] | None:
        """(mode, oid) of the path `segs` in the tree `tree_oid` (any commit's)."""
        mode = ROOT_MODE
        for seg in segs:
            if mode != MODE_TREE:
                return None
            found = self.tree(tree_oid).lookup(seg)
            if found is None:
                return None
            mode, tree_oid = found
        return mode, tree_oid

    # -- operations -------------------------------------------------------------
    def size(self, path: bytes) -> int:
        return self._blob_size(self._need_blob(path)[1])

    def _blob_size(self, oid: bytes) -> int:
        kind, size = self.image.object_info(oid)
        if kind != BLOB:
            raise self.image.named(IntegrityError(f"object {oid.hex()} is a {kind}, a blob was expected"))
        return size

    def stat(self, path: bytes) -> Stat:
        mode, oid = self._need(path)
        kind = kind_of_mode(mode)
        size = self._blob_size(oid) if kind in ("file", "symlink") else 0
        return Stat(kind, mode, size, oid, self._changed_by(path, (mode, oid)).committer.timestamp)

    def last_modified(self, path: bytes) -> tuple[int, int]:
        """(seconds, tz offset in minutes): the committer time of the newest commit
        that changed the path (see `_changed_by`); the image's commit for every path
        of an image without writes."""
        committer = self._changed_by(path, self._need(path)).committer
        return committer.timestamp, committer.tz_minutes

    def _changed_by(self, path: bytes, now: tuple[int, bytes]) -> Commit:
        """The newest commit of the head's first-parent history whose parent holds
        something else at `path` (another id or mode, or nothing) than `now`, what
        the head holds there. Looked for back to the first generation's commit, which
        is the answer for a path no generation changed; after HISTORY_LIMIT commits,
        or where the history leaves the image, the oldest commit looked at."""
        commit = self.commit
        if self.image.generation == 0:
            return commit
        segs = split_path(path)
        key = b"/".join(segs)
        hit = self._modified.get(key)
        if hit is not None:
            self._modified.move_to_end(key)
            return hit
        first = self.image.layout.commit
        oid = self.image.commit
        try:
            for _ in range(HISTORY_LIMIT):
                if oid == first or not commit.parents or commit.parents[0] not in self.image:
                    break
                parent_oid = commit.parents[0]
                parent = self.image.commit_object(parent_oid)
                if self._find_in(parent.tree, segs) != now:
                    break
                commit, oid = parent, parent_oid
        except IntegrityError as exc:
            raise self.image.named(exc) from None
        self._modified[key] = commit
        if len(self._modified) > MODIFIED_CACHE:
            self._modified.popitem(last=False)
        return commit

    def get(
        self, path: bytes, offset: int = 0, length: int | None = None, chunk: int = 1 << 18
    ) -> tuple[GetEnd | None, Iterator[bytes]]:
        """The END record and the chunks of a (ranged) get, clamped to the file.

        The END record is None for a whole file: its size is what was sent,
        and the object's headers need not be read twice. A symlink's content
        is its target path, as git stores it (not followed).
        """
        _, oid = self._need_blob(path)
        # The id is checked here, before anything is answered: the range is then
        # clamped to the checked size, never to an unchecked entry header.
        blob = self.image.open_blob(oid)
        if offset == 0 and length is None:
            return None, blob.chunks(0, None, chunk)
        start, count = clamp(blob.size, offset, length)
        return GetEnd(blob.size, start, count), blob.chunks(start, count, chunk)

    def list(self, path: bytes) -> Iterator[Entry]:
        """Direct children of a directory, with full keys (`/dir/name`)."""
        oid = self._need_tree(path)
        prefix = key_prefix(path)
        try:
            for emode, name, _ in self.tree(oid):
                yield Entry(prefix + name, kind_of_mode(emode), emode)
        except IntegrityError as exc:
            raise self.image.named(exc) from None

    def info(self) -> dict[str, str]:
        c = self.commit
        image = self.image
        return {
            "disk": self.name,
            "commit": image.commit.hex(),
            "tree": c.tree.hex(),
            "parents": " ".join(p.hex() for p in c.parents),
            "author": f"{c.author.name} <{c.author.email}>",
            "author_time": str(c.author.timestamp),
            "committer": f"{c.committer.name} <{c.committer.email}>",
            "committer_time": str(c.committer.timestamp),
            "committer_tz": c.committer.tz_offset,
            "message": (c.message or b"").decode("utf-8", "replace"),
            "image": image.path,
            "image_size": str(image.layout.image_size),
            "objects": str(image.object_count()),
            **generation_fields(image),
        }


def generation_fields(image: Image, suffix: str = "") -> dict[str, str]:
    """What an image with generations reports (PROTOCOL.md): `generation` served,
    `skipped` (the warning lines, one a line; empty when none) and, with room for
    writes, `free` bytes. Nothing for an image without writes: its greeting and
    `info` are what they always were."""
    if not image.has_generations:
        return {}
    fields = {f"generation{suffix}": str(image.generation), f"skipped{suffix}": "\n".join(image.warnings())}
    if image.store.writable:
        fields[f"free{suffix}"] = str(image.free_space())
    return fields
