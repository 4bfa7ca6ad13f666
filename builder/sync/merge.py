"""What changed between two trees, and the merge of two sides whose changes do not overlap.

Changes are listed as the tree editor reports them (git-kv's pull does the same):
("add" | "remove" | "change", path) per file, symlink or submodule.
"""

from __future__ import annotations

from docteur.guest.objects import MODE_GITLINK
from docteur.guest.treeedit import TreeEditor

from ..errors import BuildError
from .history import Objects

Change = tuple[str, bytes]


def changes(objects: Objects, old_tree: bytes, new_tree: bytes) -> list[Change]:
    editor = TreeEditor(objects.tree, old_tree)
    editor.set_root(new_tree)
    return editor.changed_paths()


def _overlap(
    ours: list[Change], theirs: list[Change], ours_ed: TreeEditor, theirs_ed: TreeEditor
) -> list[bytes]:
    """Paths both sides changed differently, or one changed inside what the other changed."""
    mine = {p for _, p in ours}
    clashes = []
    for _, path in theirs:
        if path in mine:
            if ours_ed.lookup(path) != theirs_ed.lookup(path):  # the same change on both: fine
                clashes.append(path)
            continue
        prefix = path + b"/"
        if any(m.startswith(prefix) or path.startswith(m + b"/") for m in mine):
            clashes.append(path)
    return clashes


def merge_tree(objects: Objects, base: bytes, ours: bytes, theirs: bytes) -> tuple[TreeEditor, list[bytes]]:
    """An editor holding `ours` with `theirs`' changes since `base` applied, and the
    paths where both sides' changes overlap (the merge is refused when there are any)."""
    ours_ed, theirs_ed = TreeEditor(objects.tree, ours), TreeEditor(objects.tree, theirs)
    mine, yours = changes(objects, base, ours), changes(objects, base, theirs)
    clashes = _overlap(mine, yours, ours_ed, theirs_ed)
    editor = TreeEditor(objects.tree, ours)
    if clashes:
        return editor, clashes
    for kind, path in yours:
        if kind == "remove":
            editor.remove(path, missing_ok=True)
            continue
        entry = theirs_ed.lookup(path)
        assert entry is not None
        mode, oid = entry
        if mode == MODE_GITLINK:
            raise BuildError(
                f"the remote changed the submodule {path.decode('utf-8', 'replace')}: not merged"
            )
        editor.put(path, oid, mode)
    return editor, []
