"""The tree editor of write batches against git itself.

Trees are read from a real repository (`git cat-file --batch`); the trees the
editor produces must have the ids git computes for the same content, whether
git gets it from a work tree (`git add -A && git write-tree`) or from an
index built entry by entry (`git update-index --index-info && git write-tree`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur.guest import treeview
from docteur.guest.errors import IntegrityError, NotFound
from docteur.guest.kverrors import (
    AlreadyPresent,
    DictionaryExpected,
    InvalidMode,
    InvalidPath,
    PathNotFound,
    RenameSourcePrefix,
    ValueExpected,
)
from docteur.guest.objects import MODE_EXEC, MODE_FILE, MODE_GITLINK, MODE_LINK, MODE_TREE, TREE, iter_tree
from docteur.guest.objects import object_id as git_object_id
from docteur.guest.paths import split_path
from docteur.guest.treeedit import EMPTY_TREE, PUT_MODES, TreeEditor
from tests.support.git import git, git_env, git_try, needs_git

pytestmark = needs_git

GITLINK = "1234567890abcdef1234567890abcdef12345678"
Model = dict[tuple[bytes, ...], tuple[int, bytes]]


class GitTrees:
    """read_tree backed by `git cat-file --batch`, counting the reads."""

    def __init__(self, repo: Path):
        self.repo = repo
        self.proc = subprocess.Popen(
            ["git", "cat-file", "--batch"], cwd=repo, env=git_env(),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        self.reads: list[bytes] = []

    def object(self, oid: bytes) -> tuple[str, bytes]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(oid.hex().encode() + b"\n")
        self.proc.stdin.flush()
        header = self.proc.stdout.readline().split()
        if header[-1] == b"missing":
            raise NotFound(f"object {oid.hex()} is not in the repository")
        body = self.proc.stdout.read(int(header[2]) + 1)[:-1]
        return header[1].decode(), body

    def __call__(self, oid: bytes) -> bytes:
        self.reads.append(oid)
        kind, body = self.object(oid)
        assert kind == "tree"
        return body

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait()


def blob(repo: Path, data: bytes) -> bytes:
    return bytes.fromhex(git("hash-object", "-w", "--stdin", cwd=repo, input=data).decode().strip())


def tree_of(repo: Path, rev: str = "HEAD") -> bytes:
    return bytes.fromhex(git("rev-parse", f"{rev}^{{tree}}", cwd=repo).decode().strip())


def model_of(repo: Path, tree: bytes) -> Model:
    """Every non-tree entry of `tree`, as git lists it."""
    out: Model = {}
    for line in git("ls-tree", "-r", "-z", "--full-tree", tree.hex(), cwd=repo).split(b"\0"):
        if line:
            meta, path = line.split(b"\t", 1)
            mode, _, oid = meta.split()
            out[tuple(path.split(b"/"))] = (int(mode, 8), bytes.fromhex(oid.decode()))
    return out


def trees_at(repo: Path, tree: bytes) -> dict[bytes, bytes]:
    """path -> id of `tree` (at b"") and of every tree under it."""
    out = {b"": tree}
    for line in git("ls-tree", "-r", "-t", "-z", "--full-tree", tree.hex(), cwd=repo).split(b"\0"):
        if line and line.split()[1] == b"tree":
            meta, path = line.split(b"\t", 1)
            out[path] = bytes.fromhex(meta.split()[2].decode())
    return out


def trees_in(repo: Path, tree: bytes) -> set[bytes]:
    return set(trees_at(repo, tree).values())


def git_tree(repo: Path, model: Model, tmp: Path) -> bytes:
    """The tree git writes for `model`, from an index built entry by entry."""
    index = tmp / "oracle.index"
    index.unlink(missing_ok=True)
    env = git_env(GIT_INDEX_FILE=str(index))
    lines = b"".join(
        b"%o %s %s\t%s\0" % (mode, b"commit" if mode == MODE_GITLINK else b"blob", oid.hex().encode(),
                              b"/".join(path))
        for path, (mode, oid) in model.items()
    )
    git("update-index", "-z", "--index-info", cwd=repo, input=lines, env=env)
    return bytes.fromhex(git("write-tree", cwd=repo, env=env).decode().strip())


def check_finish(ed: TreeEditor, trees: GitTrees, start: bytes, expected: bytes,
                 rebuilt: bool = False) -> list[tuple[bytes, bytes]]:
    """finish() gives git's root, and new trees that are exactly git's bytes,
    children first, each of the result and at a path where the start had
    another tree (it may equal one elsewhere: a copy; or anywhere after a
    set_root: `rebuilt`), and every one the result needs that the start lacks."""
    root, new = ed.finish()
    assert root.hex() == expected.hex()
    ids = [oid for oid, _ in new]
    assert len(ids) == len(set(ids))
    before, after = trees_at(trees.repo, start), trees_at(trees.repo, expected)
    old = set(before.values())
    for pos, (oid, body) in enumerate(new):
        assert git_object_id(TREE, body) == oid
        assert trees.object(oid) == ("tree", body)  # git wrote the same bytes
        assert any(tree == oid and (rebuilt or before.get(path) != oid) for path, tree in after.items())
        for entry in iter_tree(body):  # children the start lacks before their parents
            if entry.mode == MODE_TREE and entry.id in ids and entry.id not in old:
                assert ids.index(entry.id) < pos
    assert set(after.values()) - old <= set(ids)
    return new


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nested directories, an executable, symlinks and a submodule entry."""
    work = tmp_path_factory.mktemp("start")
    git("init", "-q", "-b", "main", cwd=work)
    files = {
        "README": b"readme\n",
        "docs/guide/intro.md": b"intro\n",
        "docs/guide/deep/x.txt": b"x\n",
        "a/b/c/d.txt": b"d\n",
        "only/one.txt": b"one\n",
        "tools/run.sh": b"#!/bin/sh\n",
        "z-last": b"last\n",
    }
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    (work / "tools/run.sh").chmod(0o755)
    os.symlink("guide/intro.md", work / "docs/link")
    os.symlink("../README", work / "tools/readme")
    git("add", "-A", cwd=work)
    git("update-index", "--add", "--cacheinfo", f"160000,{GITLINK},vendor/sub", cwd=work)
    (work / "vendor/sub").mkdir(parents=True)  # an unpopulated submodule, as a checkout leaves it
    git("commit", "-q", "-m", "start", cwd=work)
    return work


@pytest.fixture
def trees(repo: Path) -> Iterator[GitTrees]:
    reader = GitTrees(repo)
    yield reader
    reader.close()


def worktree(repo: Path, tmp: Path) -> Path:
    work = tmp / "work"
    git("worktree", "add", "-q", "--detach", str(work), "HEAD", cwd=repo)
    (work / "vendor/sub").mkdir(parents=True, exist_ok=True)
    return work


def fs_apply(work: Path, op: tuple) -> None:
    """The same edit on a work tree, with the file system's own calls."""
    kind, *args = op
    if kind == "put":
        path, data, mode = args
        target = work / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if mode == MODE_LINK:
            os.symlink(data, target)
        else:
            target.write_bytes(data)
            target.chmod(0o755 if mode == MODE_EXEC else 0o644)
    elif kind == "remove":
        target = work / args[0].lstrip("/")
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    else:
        src, dst = (work / p.lstrip("/") for p in args)
        if dst.is_dir() and not dst.is_symlink():
            dst = dst / src.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dst)


def ed_apply(ed: TreeEditor, repo: Path, op: tuple) -> None:
    kind, *args = op
    if kind == "put":
        path, data, mode = args
        ed.put(path.encode(), blob(repo, data.encode() if isinstance(data, str) else data), mode)
    elif kind == "remove":
        ed.remove(args[0].encode())
    else:
        ed.rename(args[0].encode(), args[1].encode())


SCENARIO = [
    ("put", "/docs/guide/intro.md", b"new intro\n", MODE_FILE),  # a change deep down
    ("put", "/new/dir/file.txt", b"created\n", MODE_FILE),  # parents created
    ("put", "/tools/run.sh", b"#!/bin/sh\n", MODE_FILE),  # the mode alone changes
    ("put", "/docs/newlink", "guide/intro.md", MODE_LINK),
    ("put", "/tools/x.sh", b"#!/bin/sh\necho x\n", MODE_EXEC),
    ("remove", "/a"),  # recursive; a/b/c vanish
    ("remove", "/only/one.txt"),  # the last file: only/ vanishes
    ("rename", "/docs/guide", "/tools"),  # a directory moved inside a directory
    ("rename", "/tools/x.sh", "/bin/y.sh"),  # keeps its mode
    ("rename", "/z-last", "/new/dir/file.txt"),  # a file replaced
    ("rename", "/docs/link", "/"),  # into the root
    ("rename", "/README", "/README"),  # onto itself: nothing
]


def test_scenario_matches_git_work_tree(repo: Path, trees: GitTrees, tmp_path: Path) -> None:
    start = tree_of(repo)
    ed = TreeEditor(trees, start)
    work = worktree(repo, tmp_path)
    for op in SCENARIO:
        ed_apply(ed, repo, op)
        fs_apply(work, op)
    git("add", "-A", cwd=work)
    expected = bytes.fromhex(git("write-tree", cwd=work).decode().strip())
    assert ed.changed
    check_finish(ed, trees, start, expected)
    model = model_of(repo, expected)
    assert model[(b"vendor", b"sub")] == (MODE_GITLINK, bytes.fromhex(GITLINK))  # untouched
    assert model[(b"bin", b"y.sh")][0] == MODE_EXEC
    assert ed.lookup(b"/only") is None and ed.lookup(b"/a") is None
    assert ed.lookup(b"/tools/guide/deep/x.txt") == model[(b"tools", b"guide", b"deep", b"x.txt")]
    names = [e.name for e in ed.list(b"/tools")]
    assert names == [b"guide", b"readme", b"run.sh"]
    assert ed.lookup(b"/tools/guide")[1] in trees_in(repo, expected)


def test_changed_paths_match_git_diff_tree(repo: Path, trees: GitTrees, tmp_path: Path) -> None:
    start = tree_of(repo)
    ed = TreeEditor(trees, start)
    for op in SCENARIO:
        ed_apply(ed, repo, op)
    ed.put(b"/a", blob(repo, b"a file where a directory was\n"))
    ed.put(b"/README", blob(repo, b"readme\n"), MODE_LINK)  # same bytes, now a symlink
    root, new = ed.finish()
    oracle = trees.repo
    for oid, body in new:  # git needs the new trees to diff them
        written = git("hash-object", "-t", "tree", "-w", "--stdin", cwd=oracle, input=body)
        assert written.strip() == oid.hex().encode()
    names = {b"A": "add", b"D": "remove", b"M": "change", b"T": "change"}
    out = git("diff-tree", "-r", "-z", "--no-renames", start.hex(), root.hex(), cwd=oracle).split(b"\0")
    pairs = zip(out[0:-1:2], out[1::2], strict=True)
    expected = sorted(((names[st.split()[-1]], b"/" + path) for st, path in pairs), key=lambda x: x[1])
    assert ed.changed_paths() == expected
    assert ("add", b"/a") in expected and ("remove", b"/a/b/c/d.txt") in expected


def test_unchanged_tree_makes_no_new_trees(repo: Path, trees: GitTrees) -> None:
    start = tree_of(repo)
    ed = TreeEditor(trees, start)
    intro = ed.lookup(b"/docs/guide/intro.md")
    assert intro is not None
    ed.put(b"/docs/guide/intro.md", intro[1], intro[0])  # the same bytes again
    ed.put(b"/docs/guide/tmp", blob(repo, b"tmp\n"))
    ed.remove(b"/docs/guide/tmp")
    ed.rename(b"/docs/guide", b"/elsewhere")
    ed.rename(b"/elsewhere", b"/docs/guide")
    ed.rename(b"/only/one.txt", b"/one.txt")  # only/ vanishes...
    ed.rename(b"/one.txt", b"/only/one.txt")  # ...and comes back the same
    assert not ed.changed
    assert ed.finish() == (start, [])
    assert ed.changed_paths() == []


def test_set_root(repo: Path, trees: GitTrees, tmp_path: Path) -> None:
    start = tree_of(repo)
    other = bytes.fromhex(git("rev-parse", "HEAD:docs", cwd=repo).decode().strip())
    ed = TreeEditor(trees, start)
    ed.put(b"/dropped", blob(repo, b"dropped\n"))
    ed.set_root(other)
    assert ed.changed and ed.finish() == (other, [])
    assert ed.lookup(b"/guide/intro.md") == model_of(repo, other)[(b"guide", b"intro.md")]
    ed.set_root(None)  # `docteur commit DIR`: an empty tree, then every file
    assert ed.lookup(b"/") == (MODE_TREE, EMPTY_TREE)
    model: Model = {}
    for i, path in enumerate([b"/index.html", b"/css/site.css", b"/css/img/a.png"]):
        model[tuple(path[1:].split(b"/"))] = (MODE_FILE, blob(repo, b"%d" % i))
        ed.put(path, model[tuple(path[1:].split(b"/"))][1])
    check_finish(ed, trees, start, git_tree(repo, model, tmp_path))
    ed.set_root(None)  # the same files again, from nothing: the same tree
    for path, (mode, oid) in model_of(repo, other).items():
        ed.put(b"/" + b"/".join(path), oid, mode)
    assert ed.finish()[0] == other
    ed.set_root(start)
    assert not ed.changed


def test_empty_start_and_emptied_root(repo: Path, trees: GitTrees) -> None:
    ed = TreeEditor(trees, None)
    assert not ed.changed
    one = blob(repo, b"1")
    ed.put(b"/x", one)
    assert ed.changed and ed.list(b"/") == [(MODE_FILE, b"x", one)]
    ed.remove(b"/x")
    assert not ed.changed
    start = tree_of(repo)
    ed = TreeEditor(trees, start)
    for name in [e.name for e in ed.list(b"/")]:
        ed.remove(b"/" + name)
    assert ed.finish() == (EMPTY_TREE, [(EMPTY_TREE, b"")])  # git has no empty directories but this one


# -- errors: each with its type, and the editor unchanged after it -------------------------

@pytest.mark.parametrize(
    ("op", "error", "named"),
    [
        (("put", b"/README/x"), DictionaryExpected, "/README"),
        (("put", b"/vendor/sub/x"), DictionaryExpected, "/vendor/sub"),  # a submodule is no directory
        (("put", b"/docs/guide"), ValueExpected, "/docs/guide"),
        (("put", b"/"), ValueExpected, "/"),
        (("remove", b"/nope"), PathNotFound, "/nope"),
        (("remove", b"/README/x"), PathNotFound, "/README/x"),
        (("remove", b"/"), InvalidPath, "root"),
        (("rename", b"/nope", b"/x"), PathNotFound, "/nope"),
        (("rename", b"/docs", b"/docs/guide/deeper"), RenameSourcePrefix, "/docs"),
        (("rename", b"/docs", b"/docs/guide"), RenameSourcePrefix, "/docs/guide/docs"),
        (("rename", b"/", b"/x"), RenameSourcePrefix, "/"),
        (("rename", b"/README", b"/README/x"), DictionaryExpected, "/README"),
        (("rename", b"/z-last", b"/README/x"), DictionaryExpected, "/README"),
        (("rename", b"/docs", b"/README"), ValueExpected, "/docs"),  # mirage-kv names the source
        (("rename", b"/docs/guide", b"/"), AlreadyPresent, "/guide"),  # not merged
        (("rename", b"/README", b"/docs/guide/intro.md/x"), DictionaryExpected, "/docs/guide/intro.md"),
        (("put", b"/a//b"), InvalidPath, "empty segment"),
        (("put", b"/a/../b"), InvalidPath, ".."),
        (("put", b"/./b"), InvalidPath, ".."),
        (("put", b"/a/.Git/config"), InvalidPath, ".Git"),
        (("put", b"/a\0b"), InvalidPath, "NUL"),
        (("rename", b"/README", b"/.git"), InvalidPath, ".git"),
    ],
)
def test_errors(repo: Path, trees: GitTrees, op: tuple, error: type[Exception], named: str) -> None:
    start = tree_of(repo)
    ed = TreeEditor(trees, start)
    ed.put(b"/guide/keep", blob(repo, b"k"))  # so that moving /docs/guide to / collides
    before = ed.finish()
    with pytest.raises(error) as info:
        if op[0] == "put":
            ed.put(op[1], blob(repo, b"v"))
        elif op[0] == "remove":
            ed.remove(op[1])
        else:
            ed.rename(op[1], op[2])
    assert named in str(info.value)
    assert "\n" not in str(info.value)
    assert ed.finish() == before


def test_error_codes_and_not_found_family() -> None:
    assert PathNotFound(b"/x").code == "not_found" and isinstance(PathNotFound(b"/x"), NotFound)
    codes = {cls.code for cls in (ValueExpected, DictionaryExpected, AlreadyPresent, RenameSourcePrefix)}
    assert codes == {"value_expected", "dictionary_expected", "already_present", "rename_source_prefix"}


def test_rename_onto_a_file_in_a_directory_destination(repo: Path, trees: GitTrees) -> None:
    ed = TreeEditor(trees, tree_of(repo))
    ed.put(b"/dest/README", blob(repo, b"old\n"))
    ed.rename(b"/README", b"/dest")  # inside: /dest/README, a file, replaced
    assert ed.lookup(b"/dest/README") == (MODE_FILE, blob(repo, b"readme\n"))
    assert ed.lookup(b"/README") is None
    ed.put(b"/dest/intro.md/x", blob(repo, b"x"))
    with pytest.raises(ValueExpected, match=r"/dest/intro\.md"):  # inside /dest, a directory is there
        ed.rename(b"/docs/guide/intro.md", b"/dest")


def test_remove_missing_ok(repo: Path, trees: GitTrees) -> None:
    start = tree_of(repo)
    ed = TreeEditor(trees, start)
    ed.remove(b"/nope", missing_ok=True)
    ed.remove(b"/README/x", missing_ok=True)
    assert not ed.changed


def test_put_modes(repo: Path, trees: GitTrees) -> None:
    ed = TreeEditor(trees, tree_of(repo))
    for mode in (MODE_TREE, MODE_GITLINK, 0o100664, 0o644):
        with pytest.raises(InvalidMode):
            ed.put(b"/x", blob(repo, b"x"), mode)
    assert not ed.changed


# -- paths: what git refuses, the editor refuses; what it takes, git fsck accepts ------------

NAMES = [
    b".git", b".GIT", b".Git", b".git.", b".git ", b".git. . ", b"git~1", b"GIT~1", b".git:x",
    b".git\\x", b"x\\.git", b".g\xe2\x80\x8cit", b"\xef\xbb\xbf.git",  # ZWNJ, BOM: .git on HFS+
    b".gitx", b"git", b"git~2", b"x.git", b".gitmodules", b"a\\b", b"..a", b"...", b"\xff\xfe",
    b" .git",
]


@pytest.mark.parametrize("name", NAMES, ids=[repr(n) for n in NAMES])
def test_names_agree_with_git(trees: GitTrees, tmp_path: Path, name: bytes) -> None:
    repo = tmp_path / "names"  # its own repository: fsck checks every object in it
    git("init", "-q", str(repo), cwd=tmp_path)
    one = blob(repo, b"1")
    index = tmp_path / "index"
    env = git_env(GIT_INDEX_FILE=str(index))
    line = b"100644 blob %s\tdir/%s\0" % (one.hex().encode(), name)
    git_takes = git_try("update-index", "-z", "--index-info", cwd=repo, input=line, env=env,
                        ).returncode == 0 and git("ls-files", cwd=repo, env=env) != b""
    if git_takes:
        tree = git("write-tree", cwd=repo, env=env).decode().strip()
        commit = git("commit-tree", "-m", "n", tree, cwd=repo).decode().strip()
        fsck = git_try("fsck", "--strict", "--no-dangling", commit, cwd=repo)
        git_takes = b"hasDotgit" not in fsck.stderr and fsck.returncode == 0
    ed = TreeEditor(trees, None)
    try:
        ed.put(b"/dir/" + name, one)
    except InvalidPath:
        assert not git_takes
    else:
        assert git_takes
        assert split_path(b"/dir/" + name) == [b"dir", name]  # reads find it the same way


SPECIAL = [b".gitmodules", b".GitAttributes", b".gitignore.", b".mailmap", b"GITMOD~1", b"gi7eba~3",
           b".git\xe2\x80\x8cmodules", b"gitatt~2", b".gitmodulesx", b"gitmodules"]


@pytest.mark.parametrize("name", SPECIAL, ids=[repr(n) for n in SPECIAL])
@pytest.mark.parametrize("mode", [MODE_LINK, MODE_TREE, MODE_FILE])
def test_special_names_agree_with_fsck(repo: Path, trees: GitTrees, tmp_path: Path, name: bytes,
                                       mode: int) -> None:
    """A symlink (or a directory) where `git fsck --strict` refuses one is
    refused, through put and rename alike; whatever is taken passes fsck."""
    fresh = tmp_path / "fsck"
    git("init", "-q", str(fresh), cwd=tmp_path)
    target = blob(fresh, b"target")
    entry = b"%o %s %s\t%s\n" % (mode, b"tree" if mode == MODE_TREE else b"blob",
                                   git("mktree", cwd=fresh, input=b"").strip() if mode == MODE_TREE
                                   else target.hex().encode(), name)
    tree = git("mktree", cwd=fresh, input=entry).decode().strip()
    commit = git("commit-tree", "-m", "n", tree, cwd=fresh).decode().strip()
    fsck = git_try("fsck", "--strict", "--no-dangling", commit, cwd=fresh)
    git_takes = fsck.returncode == 0 and b"warning" not in fsck.stderr and b"error" not in fsck.stderr
    ed = TreeEditor(trees, tree_of(repo))
    tries = [
        lambda: ed.put(b"/" + name + (b"/f" if mode == MODE_TREE else b""), blob(repo, b"x"),
                       MODE_FILE if mode == MODE_TREE else mode),
        lambda: ed.rename({MODE_LINK: b"/docs/link", MODE_TREE: b"/a", MODE_FILE: b"/README"}[mode],
                          b"/docs/" + name),
    ]
    for attempt in tries:
        try:
            attempt()
        except InvalidPath as exc:
            assert not git_takes, fsck.stderr
            assert "git refuses" in str(exc)
        else:
            assert git_takes


# -- size: deep and wide ------------------------------------------------------------------

def test_deep_path(repo: Path, trees: GitTrees, tmp_path: Path) -> None:
    start = tree_of(repo)
    ed = TreeEditor(trees, start)
    deep = tuple(b"d%d" % i for i in range(50))
    one = blob(repo, b"deep\n")
    ed.put(b"/" + b"/".join(deep), one, MODE_EXEC)
    model = model_of(repo, start)
    model[deep] = (MODE_EXEC, one)
    new = check_finish(ed, trees, start, git_tree(repo, model, tmp_path))
    assert len(new) == 50  # the 49 directories above the file, and the root
    ed.rename(b"/d0/d1", b"/")
    del model[deep]
    model[deep[1:]] = (MODE_EXEC, one)
    check_finish(ed, trees, start, git_tree(repo, model, tmp_path))
    ed.remove(b"/" + b"/".join(deep[1:]))  # every directory above it vanishes
    assert ed.lookup(b"/d1") is None and ed.lookup(b"/d0") is None
    assert not ed.changed


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """10 000 files in one directory, next to 100 directories of 100 files."""
    repo = tmp_path_factory.mktemp("wide")
    git("init", "-q", "-b", "main", cwd=repo)
    one = blob(repo, b"1\n")
    line = b"100644 blob %s\t" % one.hex().encode()
    big = git("mktree", "-z", cwd=repo, input=b"".join(line + b"f%05d\0" % i for i in range(10_000)))
    small = git("mktree", "-z", cwd=repo, input=b"".join(line + b"g%03d\0" % i for i in range(100)))
    top = b"".join(b"040000 tree %s\tsib%03d\0" % (small.strip(), i) for i in range(100))
    top += b"040000 tree %s\twide\0" % big.strip()
    return repo, bytes.fromhex(git("mktree", "-z", cwd=repo, input=top).decode().strip())


def test_wide_directory_reads_only_the_path(wide: tuple[Path, bytes], tmp_path: Path) -> None:
    repo, start = wide
    trees = GitTrees(repo)
    try:
        ed = TreeEditor(trees, start)
        new_blob = blob(repo, b"new\n")
        ed.put(b"/wide/f05000.new", new_blob)
        wide_id = bytes.fromhex(git("rev-parse", f"{start.hex()}:wide", cwd=repo).decode().strip())
        assert trees.reads == [start, wide_id]  # no sibling, no other tree
        model = model_of(repo, start)
        model[(b"wide", b"f05000.new")] = (MODE_FILE, new_blob)
        new = check_finish(ed, trees, start, git_tree(repo, model, tmp_path))
        assert len(new) == 2
        ed.remove(b"/wide/f00000")
        ed.rename(b"/wide/f00001", b"/sib007")
        assert ed.lookup(b"/sib007/f00001") == (MODE_FILE, model[(b"wide", b"f00001")][1])
        assert len(trees.reads) == 3  # sib007 alone was added
        del model[(b"wide", b"f00000")]
        model[(b"sib007", b"f00001")] = model.pop((b"wide", b"f00001"))
        assert len(check_finish(ed, trees, start, git_tree(repo, model, tmp_path))) == 3
    finally:
        trees.close()


# -- random batches against a model of mirage-kv's semantics --------------------------------

class ModelError(Exception):
    def __init__(self, kind: type[Exception]):
        self.kind = kind


def m_kind(model: Model, path: tuple[bytes, ...]) -> str | None:
    if path in model:
        return "value"
    if not path or any(k[: len(path)] == path for k in model):
        return "dir"
    return None


def m_file_prefix(model: Model, path: tuple[bytes, ...]) -> bool:
    return any(path[:i] in model for i in range(1, len(path)))


def m_put(model: Model, path: tuple[bytes, ...], entry: tuple[int, bytes]) -> None:
    if m_file_prefix(model, path):
        raise ModelError(DictionaryExpected)
    if m_kind(model, path) == "dir":
        raise ModelError(ValueExpected)
    model[path] = entry


def m_remove(model: Model, path: tuple[bytes, ...]) -> None:
    if not path:
        raise ModelError(InvalidPath)
    if m_kind(model, path) is None:
        raise ModelError(PathNotFound)
    for k in [k for k in model if k[: len(path)] == path]:
        del model[k]


def m_rename(model: Model, src: tuple[bytes, ...], dst: tuple[bytes, ...]) -> None:
    if not src:
        raise ModelError(RenameSourcePrefix)
    kind = m_kind(model, src)
    if kind is None:
        raise ModelError(PathNotFound)
    if src == dst:
        return
    if m_kind(model, dst) == "dir":
        dst = (*dst, src[-1])
        if src == dst:
            return
    if dst[: len(src)] == src:
        raise ModelError(RenameSourcePrefix if kind == "dir" else DictionaryExpected)
    if m_file_prefix(model, dst):
        raise ModelError(DictionaryExpected)
    there = m_kind(model, dst)
    if there == "dir":
        raise ModelError(AlreadyPresent if kind == "dir" else ValueExpected)
    if there == "value" and kind == "dir":
        raise ModelError(ValueExpected)
    moved = {k: v for k, v in model.items() if k[: len(src)] == src}
    for k in moved:
        del model[k]
    model.pop(dst, None)
    for k, v in moved.items():
        model[dst + k[len(src):]] = v


SEGS = st.lists(st.sampled_from([b"a", b"b", b"c", b"vendor", b"sub"]), min_size=0, max_size=3).map(tuple)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("put"), SEGS, st.sampled_from(PUT_MODES), st.integers(0, 2)),
        st.tuples(st.just("remove"), SEGS),
        st.tuples(st.just("rename"), SEGS, SEGS),
        st.tuples(st.just("set_root"), st.just(()), st.booleans()),  # empty, or the start again
    ),
    max_size=12,
)


@pytest.fixture(scope="module")
def small_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, list[bytes]]:
    """A start whose names collide with the random ones, a submodule among them."""
    repo = tmp_path_factory.mktemp("small")
    git("init", "-q", "-b", "main", cwd=repo)
    blobs = [blob(repo, b"%d\n" % i) for i in range(3)]
    model: Model = {
        (b"a", b"b", b"c"): (MODE_FILE, blobs[0]),
        (b"a", b"a"): (MODE_EXEC, blobs[1]),
        (b"b",): (MODE_LINK, blobs[2]),
        (b"c", b"a", b"a", b"b"): (MODE_FILE, blobs[2]),
        (b"vendor", b"sub"): (MODE_GITLINK, bytes.fromhex(GITLINK)),
    }
    return repo, git_tree(repo, model, tmp_path_factory.mktemp("idx")), blobs


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=OPS)
def test_random_batches_follow_the_model(
    small_repo: tuple[Path, bytes, list[bytes]], tmp_path_factory: pytest.TempPathFactory, ops: list
) -> None:
    repo, start, blobs = small_repo
    trees = GitTrees(repo)
    try:
        ed = TreeEditor(trees, start)
        model = model_of(repo, start)
        for op in ops:
            def path(segs: tuple[bytes, ...]) -> bytes:
                return b"/" + b"/".join(segs)
            try:
                if op[0] == "put":
                    m_put(model, op[1], (op[2], blobs[op[3]]))
                elif op[0] == "remove":
                    m_remove(model, op[1])
                elif op[0] == "rename":
                    m_rename(model, op[1], op[2])
                else:
                    model = model_of(repo, start) if op[2] else {}
                expected: type[Exception] | None = None
            except ModelError as exc:
                expected = exc.kind
            try:
                if op[0] == "put":
                    ed.put(path(op[1]), blobs[op[3]], op[2])
                elif op[0] == "remove":
                    ed.remove(path(op[1]))
                elif op[0] == "rename":
                    ed.rename(path(op[1]), path(op[2]))
                else:
                    ed.set_root(start if op[2] else None)
                got: type[Exception] | None = None
            except (InvalidPath, PathNotFound, ValueExpected, DictionaryExpected, AlreadyPresent,
                    RenameSourcePrefix) as exc:
                got = type(exc)
            assert got == expected, op
            touched = {op[1], op[-1] if op[0] == "rename" else op[1]}
            for segs in {t[:i] for t in touched for i in range(len(t) + 1)}:  # and their parents
                if segs in model:
                    assert ed.lookup(path(segs)) == model[segs]
                elif m_kind(model, segs) == "dir":
                    assert ed.lookup(path(segs))[0] == MODE_TREE
                    names = sorted({k[len(segs)] for k in model if k[: len(segs)] == segs})
                    assert sorted(e.name for e in ed.list(path(segs))) == names
                else:
                    assert ed.lookup(path(segs)) is None
        expected_root = git_tree(repo, model, tmp_path_factory.mktemp("idx"))
        check_finish(ed, trees, start, expected_root, rebuilt=any(op[0] == "set_root" for op in ops))
        assert ed.changed == (expected_root != start)
    finally:
        trees.close()


def test_noncanonical_start_tree_kept_unless_changed(tmp_path: Path) -> None:
    """A directory in a form git no longer writes (zero-padded mode) keeps its
    id when a batch ends where it started, and is re-serialised as git would
    when it really changes."""
    repo = tmp_path / "r"
    git("init", "-q", "-b", "main", str(repo), cwd=tmp_path)
    one = blob(repo, b"1\n")
    sub = git("mktree", cwd=repo, input=b"100644 blob %s\tf\n" % one.hex().encode()).strip()
    legacy = b"0100644 g\0" + one + b"040000 s\0" + bytes.fromhex(sub.decode())
    odd = bytes.fromhex(git("hash-object", "-t", "tree", "-w", "--literally", "--stdin", cwd=repo,
                            input=legacy).decode().strip())
    start = bytes.fromhex(git("mktree", cwd=repo, input=b"040000 tree %s\tlegacy\n" % odd.hex().encode())
                          .decode().strip())
    trees = GitTrees(repo)
    try:
        ed = TreeEditor(trees, start)
        ed.put(b"/legacy/tmp", one)
        ed.remove(b"/legacy/tmp")
        assert not ed.changed and ed.finish() == (start, [])
        ed.put(b"/legacy/h", one)
        model = {(b"legacy", b"g"): (MODE_FILE, one), (b"legacy", b"s", b"f"): (MODE_FILE, one),
                 (b"legacy", b"h"): (MODE_FILE, one)}
        root, _ = ed.finish()
        assert root == git_tree(repo, model, tmp_path)
    finally:
        trees.close()


def test_reads_take_read_paths_and_name_errors(repo: Path, trees: GitTrees) -> None:
    ed = TreeEditor(trees, tree_of(repo))
    ed.put(b"/docs/guide/new", blob(repo, b"n"))
    assert ed.lookup(b"docs/./guide/../guide/new/") == (MODE_FILE, blob(repo, b"n"))  # as reads resolve
    with pytest.raises(DictionaryExpected, match="README"):
        ed.list(b"/README")
    with pytest.raises(PathNotFound, match="nope"):
        ed.list(b"/nope")
    with pytest.raises(InvalidPath):
        ed.lookup(b"/..")
    ed.rename(b"/vendor/sub", b"/lib/sub")  # a submodule moves as it is
    assert ed.lookup(b"/lib/sub") == (MODE_GITLINK, bytes.fromhex(GITLINK))
    assert ed.lookup(b"/vendor") is None


def test_damaged_and_missing_trees_surface(tmp_path: Path) -> None:
    store = {b"\1" * 20: b"100644 name-without-id\0\1\2"}
    ed = TreeEditor(store.__getitem__, b"\1" * 20)
    with pytest.raises(IntegrityError, match="malformed tree entry"):
        ed.put(b"/x", b"\3" * 20)
    repo = tmp_path / "r"
    git("init", "-q", str(repo), cwd=tmp_path)
    trees = GitTrees(repo)
    try:
        with pytest.raises(NotFound):
            TreeEditor(trees, b"\4" * 20).lookup(b"/x")
    finally:
        trees.close()


PATHS = st.lists(
    st.sampled_from([b"a", b".", b"..", b"", b".git", b"b c", b"\xff", b"x\\y", b".Git."]), max_size=5
).flatmap(lambda segs: st.sampled_from([b"/".join(segs), b"/" + b"/".join(segs), b"/".join(segs) + b"/"]))


@settings(max_examples=300, deadline=None)
@given(path=PATHS)
def test_write_paths_read_back_the_same(path: bytes) -> None:
    """Reads and writes share one parser (the tree view's is paths.split_path), and every
    path a write accepts means the same segments to a read."""
    assert treeview.split_path is split_path
    try:
        read = split_path(path)
    except InvalidPath:
        read = None
    try:
        written = split_path(path, strict=True)
    except InvalidPath:
        return
    assert written == read
