"""git as the oracle: what an image holds, asked of git itself."""

from __future__ import annotations

import shutil
from pathlib import Path

from docteur.guest.device import FileDevice
from docteur.guest.generations import Store
from docteur.guest.image import Image
from docteur.guest.layout import read_layout
from docteur.guest.objects import Tree
from tests.support.git import cat_blobs, git, git_env, ls_tree, rev


def extract(image: Path, dest: Path) -> tuple[Path, Path]:
    """The PACK and the IDX of an image, as files git can read."""
    with open(image, "rb") as f:
        layout = read_layout(f.fileno())
        data = f.read()
    pack = dest / "image.pack"
    idx = dest / "image-from-image.idx"
    pack.write_bytes(data[28 : layout.pack_end])
    idx.write_bytes(data[layout.idx_offset : layout.idx_end])
    return pack, idx


def read_path(image: Image, path: bytes) -> tuple[int, bytes]:
    """(mode, oid) of a path, walking trees through guest's reader."""
    oid = image.commit_object().tree
    mode = 0o040000
    for part in path.split(b"/"):
        _kind, body = image.read_object(oid)
        entry = Tree.from_raw(body).get(part)
        assert entry is not None, f"{path!r}: {part!r} missing"
        mode, oid = entry.mode, entry.id
    return mode, oid


def repo_from_image(image: Path, tmp: Path) -> Path:
    """A bare repository holding exactly the image's objects (to ask git about them)."""
    repo = tmp / "from-image.git"
    git("init", "-q", "--bare", repo)
    pack, _idx = extract(image, tmp)
    dest = repo / "objects" / "pack" / "pack-image.pack"
    shutil.copyfile(pack, dest)
    git("index-pack", dest, cwd=repo)
    return repo


def check_image(image: Path, repo: Path, commit: str, tmp: Path) -> None:
    """git accepts the image's PACK, the IDX is git's, every path reads back as git has it."""
    pack, idx = extract(image, tmp)
    git_idx = tmp / "image.idx"
    git("index-pack", "--fsck-objects", "-o", git_idx, pack)
    assert git_idx.read_bytes() == idx.read_bytes(), "IDX differs from git index-pack's"
    verify = git("verify-pack", "-v", git_idx).decode()
    count = sum(1 for line in verify.splitlines() if len(line) > 40 and line[40] == " ")
    entries = ls_tree(repo, commit)
    oids = {bytes.fromhex(commit), bytes.fromhex(rev(repo, f"{commit}^{{tree}}"))}
    oids |= {oid for mode, _k, oid, _p in entries if mode != 0o160000}
    assert count == len(oids), f"pack holds {count} objects, the commit needs {len(oids)}"
    blobs = [(m, o, p) for m, k, o, p in entries if k == "blob"]
    contents = cat_blobs(repo, [o for _m, o, _p in blobs])
    with Image.open(str(image)) as img:
        assert img.commit.hex() == commit
        for mode, oid, path in blobs:
            assert read_path(img, path) == (mode, oid), path
            kind, body = img.read_object(oid)
            assert kind == "blob" and body == contents[oid], path


def directory_tree_id(directory: Path, tmp: Path) -> str:
    """The tree id git gives a directory (`git add -A; git write-tree`)."""
    gd = tmp / "oracle.git"
    env = git_env(GIT_DIR=str(gd), GIT_WORK_TREE=str(directory))
    git("init", "-q", "--bare", gd)
    git("config", "core.symlinks", "true", env=env)
    git("config", "core.fileMode", "true", env=env)
    git("add", "-A", ".", cwd=directory, env=env)
    return git("write-tree", env=env, cwd=directory).decode().strip()


# -- the generation store's images ---------------------------------------------------------
def export_packs(image: str, repo: Path) -> bytes:
    """Copy every live PACK/IDX of the image into a bare repository; the head commit id."""
    if not repo.exists():
        git("init", "-q", "--bare", repo)
    pack_dir = repo / "objects" / "pack"
    with FileDevice(image) as dev, Store.open(dev) as store:
        lay = store.layout
        spans = [(28, lay.pack_end - 28, lay.idx_offset, lay.idx_end - lay.idx_offset)]
        spans += [(e.pack_offset, e.pack_length, e.idx_offset, e.idx_length) for e in store.extents]
        for pack_off, pack_len, idx_off, idx_len in spans:
            pack = dev.pread(pack_len, pack_off)
            name = f"pack-{pack[-20:].hex()}"
            (pack_dir / f"{name}.pack").write_bytes(pack)
            (pack_dir / f"{name}.idx").write_bytes(dev.pread(idx_len, idx_off))
        head = store.head_commit
    git("update-ref", "refs/heads/main", head.hex(), cwd=repo)
    return head


def git_files(repo: Path, commit: bytes) -> dict[str, tuple[int, bytes]]:
    """path -> (mode, bytes) of `commit`'s files as git reads them."""
    rows = [(mode, oid, path) for mode, kind, oid, path in ls_tree(repo, commit.hex()) if kind != "tree"]
    bodies = cat_blobs(repo, [oid for _mode, oid, _path in rows])
    return {path.decode(): (mode, bodies[oid]) for mode, oid, path in rows}
