"""Walks of commit history over what the image holds, plus what a fetch brought.

`Objects` reads an object from wherever it is (the image, or a fetched pack's commits and
trees held in memory); a commit whose object is absent (the parents of an image made at
depth 1) ends a walk: that is the shallow boundary.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from dulwich.objects import parse_tree

from docteur.guest.objects import COMMIT, MODE_GITLINK, MODE_TREE, TREE, Commit

from ..errors import BuildError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .image import ObjectSource


class Objects:
    """The image's objects, and `extra` (id -> (kind, body)) on top of them."""

    def __init__(self, store: ObjectSource, extra: dict[bytes, tuple[str, bytes]] | None = None):
        self.store = store
        self.extra = extra if extra is not None else {}
        self._commits: dict[bytes, Commit] = {}

    def __contains__(self, oid: bytes) -> bool:
        return oid in self.extra or oid in self.store

    def read(self, oid: bytes) -> tuple[str, bytes]:
        got = self.extra.get(oid)
        return got if got is not None else self.store.read_object(oid)

    def commit(self, oid: bytes) -> Commit:
        c = self._commits.get(oid)
        if c is None:
            kind, body = self.read(oid)
            if kind != COMMIT:
                raise BuildError(f"{oid.hex()} is a {kind}, not a commit")
            c = self._commits[oid] = Commit.from_raw(body)
        return c

    def tree(self, oid: bytes) -> bytes:
        kind, body = self.read(oid)
        if kind != TREE:
            raise BuildError(f"{oid.hex()} is a {kind}, not a tree")
        return body

    def parents(self, oid: bytes) -> tuple[bytes, ...]:
        return self.commit(oid).parents


def reach(
    objects: Objects, starts: Iterable[bytes], stop: set[bytes] | frozenset[bytes] = frozenset()
) -> set[bytes]:
    """The commits reachable from `starts` that the objects hold, not going past `stop`."""
    seen: set[bytes] = set()
    todo = deque(s for s in starts if s in objects and s not in stop)
    while todo:
        oid = todo.popleft()
        if oid in seen:
            continue
        seen.add(oid)
        todo.extend(p for p in objects.parents(oid) if p in objects and p not in stop and p not in seen)
    return seen


def arrived(objects: Objects, tip: bytes) -> list[bytes]:
    """The commits of `tip`'s history that a fetch brought (the image does not hold them)."""
    out: list[bytes] = []
    seen: set[bytes] = set()
    todo = [tip]
    while todo:
        oid = todo.pop()
        if oid in seen or oid in objects.store or oid not in objects:
            continue
        seen.add(oid)
        out.append(oid)
        todo.extend(objects.parents(oid))
    return out


def is_ancestor(objects: Objects, old: bytes, new: bytes) -> bool:
    """Is `old` `new` or one of its ancestors (as far as the objects go)?"""
    return old == new or old in reach(objects, [new])


def shallow(objects: Objects, head: bytes) -> set[bytes]:
    """The commits of the history whose parents are not all present: the image's
    shallow boundary (its first commit when it was made at depth 1)."""
    return {c for c in reach(objects, [head]) if any(p not in objects for p in objects.parents(c))}


def newest_first(objects: Objects, head: bytes, limit: int) -> Iterator[bytes]:
    """Up to `limit` commits from `head`, breadth first (the haves a fetch offers)."""
    seen: set[bytes] = set()
    todo = deque([head])
    while todo and len(seen) < limit:
        oid = todo.popleft()
        if oid in seen or oid not in objects:
            continue
        seen.add(oid)
        yield oid
        todo.extend(objects.parents(oid))


def new_objects(objects: Objects, commits: list[bytes]) -> list[bytes]:
    """The ids of `commits` and of every tree and blob they bring that their parents'
    trees do not hold: each tree is walked against the same directory of the parents
    (identical subtrees are skipped whole), as git's pack-objects does with edges.
    Tree entries are parsed by dulwich's C parser, ids kept in hex until output."""
    out: list[bytes] = []
    seen: set[bytes] = set()  # hex
    parsed: dict[bytes, dict[bytes, tuple[int, bytes]]] = {}

    def entries(tree: bytes) -> dict[bytes, tuple[int, bytes]]:
        got = parsed.get(tree)
        if got is None:
            body = objects.tree(tree) if tree in objects else b""
            got = parsed[tree] = {name: (mode, hexid) for name, mode, hexid in parse_tree(body, 20)}
        return got

    def walk(tree: bytes, bases: list[bytes]) -> None:
        seen.add(tree.hex().encode())
        out.append(tree)
        known = [entries(b) for b in bases]
        ids = {hexid for k in known for _, hexid in k.values()}
        for name, (mode, hexid) in entries(tree).items():
            if hexid in seen or hexid in ids or mode == MODE_GITLINK:
                continue
            if mode == MODE_TREE:
                subs = [k[name][1] for k in known if k.get(name, (0,))[0] == MODE_TREE]
                walk(bytes.fromhex(hexid.decode()), [bytes.fromhex(h.decode()) for h in subs])
            else:
                seen.add(hexid)
                out.append(bytes.fromhex(hexid.decode()))

    for oid in commits:
        out.append(oid)
        c = objects.commit(oid)
        bases = [objects.commit(p).tree for p in c.parents if p in objects]
        if c.tree.hex().encode() not in seen and c.tree not in bases:
            walk(c.tree, bases)
    return out
