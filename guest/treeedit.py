"""The tree edits of one write batch: put, remove, rename, set_root -> new trees.

    ed = TreeEditor(read_tree, head_commit.tree)   # read_tree(oid) -> raw tree body
    ed.put(b"/site/index.html", blob_id)           # mode 0o100644; 0o100755, 0o120000 too
    ed.remove(b"/old")                             # recursive on a directory
    ed.rename(b"/a.txt", b"/docs")                 # /docs a directory: -> /docs/a.txt
    ed.lookup(b"/site/index.html")                 # (mode, oid): reads see the batch
    if ed.changed:                                 # an unchanged tree makes no commit
        root, trees = ed.finish()                  # new tree objects, children first

Semantics are mirage-kv's (errors in kverrors, each naming the path):
- put: parent directories are created; a file (or symlink, or submodule) on
  the way is DictionaryExpected(that prefix); a directory at the path itself
  (the root included) is ValueExpected(path); a file there is replaced, mode
  included. Modes: 100644, 100755, 120000, else InvalidMode.
- remove: recursive on a directory. An absent path is PathNotFound unless
  `missing_ok` (mirage-kv's "removes any binding"): a typo in `docteur rm`
  must not silently make no commit. The root is InvalidPath (use set_root).
- rename: an absent source is PathNotFound; a destination that is a
  directory (the root included) receives the source inside it; a source
  directory that is a prefix of the destination (the root is a prefix of
  all) is RenameSourcePrefix, a source file is DictionaryExpected(source)
  there; a destination file is replaced by a source file; a source
  directory onto a file is ValueExpected(source), as mirage-kv documents;
  onto an existing directory (after moving inside) is AlreadyPresent (no
  merge); a rename onto itself changes nothing. Modes move with the entry
  (submodules too); a directory moves as its tree id, unread.
- Directories that become empty vanish (git cannot hold them), up to the root.
- set_root(tree) replaces the whole tree (`docteur commit DIR`: set_root(None),
  then a put per file).
- Every operation checks everything before changing anything: an error
  leaves the editor as it was.
- Write paths are strict (paths.split_path(strict=True): no `.`/`..`, no
  name git refuses, InvalidPath); the names a write creates are checked
  against fsck (paths.check_new_name); lookup/list take read paths, as the
  read side does.

Results: `changed` (the tree differs from the start), `finish()` (the root id
and the trees to store, children first), `changed_paths()` (git-kv's list of
added/removed/changed files).

Cost: trees are read (read_tree) only along the paths an operation walks,
and a directory is parsed once; only directories on changed paths are
re-serialised (git's order and bytes, as objects.Tree); memory is bounded
by the directories touched. A touched directory whose entries end equal to
its start keeps its old id (even if it was not in canonical form).
"""

from __future__ import annotations

from collections.abc import Callable

from .errors import IntegrityError
from .kverrors import (
    AlreadyPresent,
    DictionaryExpected,
    InvalidMode,
    InvalidPath,
    PathNotFound,
    RenameSourcePrefix,
    ValueExpected,
    show,
)
from .objects import (
    MODE_EXEC,
    MODE_FILE,
    MODE_LINK,
    MODE_TREE,
    TREE,
    TreeEntry,
    object_id,
)
from .paths import check_new_name, join_path, split_path

EMPTY_TREE = object_id(TREE, b"")
PUT_MODES = (MODE_FILE, MODE_EXEC, MODE_LINK)

Entries = dict[bytes, tuple[int, bytes]]


# Mode text <-> number, for the few modes there are: int(..., 8) and "%o" for
# each of 10 000 entries would be a third of the time spent on a big directory.
_MODE_NUMBERS: dict[bytes, int] = {}
_MODE_TEXTS: dict[int, bytes] = {}


def parse_entries(body: bytes) -> Entries:
    """name -> (mode, oid) of a tree body: objects.iter_tree's parse, ~3x faster
    (no TreeEntry per entry), for the directories a batch touches."""
    out: Entries = {}
    pos, end, find = 0, len(body), body.find
    while pos < end:
        space = find(b" ", pos)
        nul = find(b"\0", space + 1)
        if space < 0 or nul < 0 or nul + 21 > end:
            raise IntegrityError(f"malformed tree entry at byte {pos}")
        text = body[pos:space]
        mode = _MODE_NUMBERS.get(text)
        if mode is None:
            try:
                mode = _MODE_NUMBERS[text] = int(text, 8)
            except ValueError:
                raise IntegrityError(f"malformed tree mode at byte {pos}") from None
        out[body[space + 1 : nul]] = (mode, body[nul + 1 : nul + 21])
        pos = nul + 21
    return out


def _sort_key(item: tuple[bytes, tuple[int, bytes]]) -> bytes:
    # git's order, as objects.Tree keeps it: a directory sorts as "name/".
    return item[0] + b"/" if item[1][0] == MODE_TREE else item[0]


def serialise_entries(entries: Entries) -> bytes:
    """The tree body git writes for `entries` (objects.Tree.as_raw's bytes, faster)."""
    out = []
    for name, (mode, oid) in sorted(entries.items(), key=_sort_key):
        text = _MODE_TEXTS.get(mode)
        if text is None:
            text = _MODE_TEXTS[mode] = b"%o" % mode
        out.append(b"%s %s\0%s" % (text, name, oid))
    return b"".join(out)


class _Dir:
    """One directory: its starting tree, its entries once read, opened subdirectories."""

    __slots__ = ("base", "body", "children", "entries", "oid", "orig")

    def __init__(self, base: bytes | None, entries: Entries | None = None):
        self.base = base  # the tree it started as; None: a new directory
        self.orig: Entries | None = entries  # the entries of `base`, once read
        self.entries: Entries | None = entries  # the entries now (is `orig` until written)
        self.children: dict[bytes, _Dir] = {}  # subdirectories walked into
        self.oid: bytes | None = base  # the id of the entries now, None: to compute
        self.body: bytes | None = None  # the serialised entries, when `oid` is a new tree


class TreeEditor:
    """Edits of the tree `root` (None: the empty tree), read through `read_tree`."""

    def __init__(self, read_tree: Callable[[bytes], bytes], root: bytes | None):
        self._read_tree = read_tree
        self._start = EMPTY_TREE if root is None else root
        self._root = self._new_root(root)

    @staticmethod
    def _new_root(root: bytes | None) -> _Dir:
        return _Dir(None, {}) if root is None else _Dir(root)

    # -- nodes ------------------------------------------------------------------
    def _entries(self, node: _Dir) -> Entries:
        if node.entries is None:
            assert node.base is not None
            node.orig = node.entries = parse_entries(self._read_tree(node.base))
        return node.entries

    def _child(self, node: _Dir, name: bytes) -> _Dir:
        child = node.children.get(name)
        if child is None:
            child = node.children[name] = _Dir(self._entries(node)[name][1])
        return child

    def _writable(self, node: _Dir) -> Entries:
        entries = self._entries(node)
        if entries is node.orig:
            entries = node.entries = dict(entries)
        return entries

    def _walk(self, segs: list[bytes]) -> tuple[list[_Dir], int]:
        """The directories along `segs[:-1]` from the root, and how many segments
        they cover (fewer when a prefix is absent). A file on the way is
        DictionaryExpected(that prefix)."""
        nodes = [self._root]
        for i, seg in enumerate(segs[:-1]):
            found = self._entries(nodes[-1]).get(seg)
            if found is None:
                return nodes, i
            if found[0] != MODE_TREE:
                raise DictionaryExpected(join_path(segs[: i + 1]))
            nodes.append(self._child(nodes[-1], seg))
        return nodes, len(segs) - 1

    def _find(self, segs: list[bytes]) -> tuple[int, bytes] | None:
        """(mode, oid as it started) of `segs`, None when absent or under a file."""
        if not segs:
            return MODE_TREE, b""
        try:
            nodes, depth = self._walk(segs)
        except DictionaryExpected:
            return None
        if depth < len(segs) - 1:
            return None
        return self._entries(nodes[-1]).get(segs[-1])

    @staticmethod
    def _touch(nodes: list[_Dir]) -> None:
        for node in nodes:
            node.oid = None

    def _insert(self, segs: list[bytes], entry: tuple[int, bytes], node: _Dir | None = None) -> None:
        """Bind `segs` to `entry` (a directory's `node` when moved), creating parents.
        The caller has checked that no prefix is a file."""
        nodes, depth = self._walk(segs)
        for seg in segs[depth:-1]:
            parent = nodes[-1]
            self._writable(parent)[seg] = (MODE_TREE, EMPTY_TREE)  # id set by _seal
            new = parent.children[seg] = _Dir(None, {})
            nodes.append(new)
        parent = nodes[-1]
        self._writable(parent)[segs[-1]] = entry
        parent.children.pop(segs[-1], None)
        if node is not None:
            parent.children[segs[-1]] = node
        self._touch(nodes)

    def _delete(self, segs: list[bytes]) -> None:
        """Unbind `segs` (present), and every directory this leaves empty."""
        nodes, _ = self._walk(segs)
        self._touch(nodes)
        for depth in range(len(segs) - 1, -1, -1):
            parent, name = nodes[depth], segs[depth]
            entries = self._writable(parent)
            del entries[name]
            parent.children.pop(name, None)
            if entries or depth == 0:
                break

    @staticmethod
    def _check_new(segs: list[bytes], depth: int, mode: int) -> None:
        """Refuse names fsck would flag, for the directories a write creates
        (those past `depth`) and its last segment, bound to `mode`."""
        for i in range(depth, len(segs)):
            check_new_name(join_path(segs[: i + 1]), segs[i], mode if i == len(segs) - 1 else MODE_TREE)

    # -- writes -----------------------------------------------------------------
    def put(self, path: bytes, oid: bytes, mode: int = MODE_FILE) -> None:
        """Bind `path` to the blob `oid` (a file, an executable or a symlink)."""
        if len(oid) != 20:
            raise ValueError("an object id is 20 raw bytes")
        segs, found = self._put_target(path, mode)
        if found != (mode, oid):
            self._insert(segs, (mode, oid))

    def check_put(self, path: bytes, mode: int = MODE_FILE) -> None:
        """Raise what `put(path, ..., mode)` would, changing nothing: a writer checks
        the path before it streams a big blob into the batch."""
        self._put_target(path, mode)

    def _put_target(self, path: bytes, mode: int) -> tuple[list[bytes], tuple[int, bytes] | None]:
        """The segments of a put's path and what is bound there now, once checked."""
        if mode not in PUT_MODES:
            raise InvalidMode(
                f"mode {mode:o} is not a file (100644), an executable (100755) or a symlink (120000)"
            )
        segs = split_path(path, strict=True)
        if not segs:
            raise ValueExpected(b"/", "the root is a directory")
        nodes, depth = self._walk(segs)
        self._check_new(segs, depth, mode)
        found = None
        if depth == len(segs) - 1:
            found = self._entries(nodes[-1]).get(segs[-1])
            if found is not None and found[0] == MODE_TREE:
                raise ValueExpected(join_path(segs))
        return segs, found

    def remove(self, path: bytes, missing_ok: bool = False) -> None:
        """Unbind `path`, recursively for a directory."""
        segs = split_path(path, strict=True)
        if not segs:
            raise InvalidPath("the root / cannot be removed (replace the whole tree instead)")
        if self._find(segs) is None:
            if missing_ok:
                return
            raise PathNotFound(join_path(segs))
        self._delete(segs)

    def rename(self, source: bytes, dest: bytes) -> None:
        """Move `source` to `dest`, or inside `dest` when it is a directory."""
        src = split_path(source, strict=True)
        dst = split_path(dest, strict=True)
        src_path = join_path(src)
        if not src:
            raise RenameSourcePrefix(b"/", join_path(dst))
        moved = self._find(src)
        if moved is None:
            raise PathNotFound(src_path)
        if src == dst:
            return
        there = self._find(dst)
        if there is not None and there[0] == MODE_TREE:
            dst = [*dst, src[-1]]
            if src == dst:
                return
            there = self._find(dst)
        dst_path = join_path(dst)
        is_dir = moved[0] == MODE_TREE
        if dst[: len(src)] == src:
            if is_dir:
                raise RenameSourcePrefix(src_path, dst_path)
            raise DictionaryExpected(src_path)
        if there is not None:
            if there[0] == MODE_TREE:
                if is_dir:
                    raise AlreadyPresent(dst_path, "a directory is there already (no merge)")
                raise ValueExpected(dst_path)
            if is_dir:
                raise ValueExpected(src_path, f"a directory cannot replace the file {show(dst_path)}")
        self._check_new(dst, self._walk(dst)[1], moved[0])  # and a file on the way: DictionaryExpected
        node = None
        if is_dir:
            nodes, _ = self._walk(src)
            node = nodes[-1].children.get(src[-1])
        self._delete(src)
        self._insert(dst, moved, node)

    def set_root(self, tree: bytes | None) -> None:
        """Replace the whole tree by `tree` (None: empty), like `docteur commit DIR`."""
        self._root = self._new_root(tree)

    # -- reads (this batch's writes included) -----------------------------------------
    def lookup(self, path: bytes) -> tuple[int, bytes] | None:
        """(mode, oid) bound at `path` now, None when absent."""
        segs = split_path(path)
        if not segs:
            return MODE_TREE, self._seal(self._root)
        found = self._find(segs)
        if found is None or found[0] != MODE_TREE:
            return found
        nodes, _ = self._walk(segs)
        return MODE_TREE, self._seal(self._child(nodes[-1], segs[-1]))

    def list(self, path: bytes) -> list[TreeEntry]:
        """The entries of the directory `path` now, in git's order."""
        segs = split_path(path)
        found = self._find(segs)
        if found is None:
            raise PathNotFound(join_path(segs))
        if found[0] != MODE_TREE:
            raise DictionaryExpected(join_path(segs))
        node = self._root
        if segs:
            nodes, _ = self._walk(segs)
            node = self._child(nodes[-1], segs[-1])
        self._seal(node)
        return [TreeEntry(m, n, o) for n, (m, o) in sorted(self._entries(node).items(), key=_sort_key)]

    # -- results ----------------------------------------------------------------------
    @property
    def changed(self) -> bool:
        """The tree now differs from the starting one."""
        return self._seal(self._root) != self._start

    def finish(self) -> tuple[bytes, list[tuple[bytes, bytes]]]:
        """(root tree id, new trees as (oid, body), each child before its parent).

        New trees are those serialised here whose id differs from the tree the
        directory started as, each once. One may still equal a tree the store
        holds (a copied directory; after set_root(None) and puts, every
        unchanged directory): a writer skips the ids it has, and their
        subtrees need nothing either. The editor stays usable.
        """
        root = self._seal(self._root)
        trees: dict[bytes, bytes] = {}

        def collect(node: _Dir) -> None:
            if node.oid == node.base:  # the whole subtree is an existing tree
                return
            for child in node.children.values():
                collect(child)
            assert node.oid is not None and node.body is not None
            trees.setdefault(node.oid, node.body)

        collect(self._root)
        return root, list(trees.items())

    def _seal(self, node: _Dir) -> bytes:
        """The id of `node` now, serialising the directories that changed."""
        if node.oid is not None:
            return node.oid
        entries = self._entries(node)
        for name, child in node.children.items():
            coid = self._seal(child)
            if entries[name][1] != coid:
                entries = self._writable(node)
                entries[name] = (MODE_TREE, coid)
        node.body = None
        if node.base is not None and (entries is node.orig or entries == node.orig):
            node.oid = node.base
            return node.base
        node.body = serialise_entries(entries)
        node.oid = object_id(TREE, node.body)
        return node.oid

    def changed_paths(self) -> list[tuple[str, bytes]]:
        """What the batch changes, as git-kv's pull reports it: ("add" | "remove" |
        "change", path) for each file, symlink or submodule, sorted by path. A
        file that becomes a directory is a remove and adds."""
        root, trees = self.finish()
        bodies = dict(trees)
        out: list[tuple[str, bytes]] = []

        def read(oid: bytes | None) -> Entries:
            if oid is None:
                return {}
            body = bodies.get(oid)
            if body is None:
                body = self._read_tree(oid)
            return parse_entries(body)

        def diff(old: bytes | None, new: bytes | None, prefix: bytes) -> None:
            if old == new:
                return
            before, after = read(old), read(new)
            for name in sorted(before.keys() | after.keys()):
                a, b = before.get(name), after.get(name)
                if a == b:
                    continue
                path = prefix + name
                a_dir = a is not None and a[0] == MODE_TREE
                b_dir = b is not None and b[0] == MODE_TREE
                if a_dir or b_dir:
                    diff(a[1] if a_dir else None, b[1] if b_dir else None, path + b"/")  # type: ignore[index]
                if a is not None and not a_dir and b is not None and not b_dir:
                    out.append(("change", path))
                elif a is not None and not a_dir:
                    out.append(("remove", path))
                elif b is not None and not b_dir:
                    out.append(("add", path))

        diff(self._start, root, b"/")
        out.sort(key=lambda item: item[1])
        return out
