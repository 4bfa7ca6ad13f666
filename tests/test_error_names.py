"""Every error about an image's content names the image, also for objects that
hash right but make no sense (a crafted tree: a bad mode, a blob entry that is a tree)."""

from __future__ import annotations

from pathlib import Path

import pytest

from docteur.guest.errors import IntegrityError
from docteur.guest.image import Image
from docteur.guest.treeview import Disk
from tests.support.git import git
from tests.support.images import packed_image


@pytest.fixture(scope="module")
def crafted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("crafted")
    git("init", "-q", "-b", "main", ".", cwd=work)
    blob = git("hash-object", "-w", "--stdin", cwd=work, input=b"hello\n").strip()
    empty = git("mktree", cwd=work, input=b"").strip()
    body = (b"100644 a-tree-as-a-file\0" + bytes.fromhex(empty.decode())
            + b"100644 good\0" + bytes.fromhex(blob.decode())
            + b"10x644 weird\0" + bytes.fromhex(blob.decode()))  # fmt: skip
    tree = git("hash-object", "-w", "--literally", "-t", "tree", "--stdin", cwd=work, input=body).strip()
    commit = git("-c", "user.name=T", "-c", "user.email=t@example.com", "commit-tree", tree.decode(),
                 "-m", "crafted", cwd=work).strip()  # fmt: skip
    # An explicit object list: pack-objects does not parse the trees then.
    return packed_image(work, work / "crafted.img", commit.decode(), objects=[commit, tree, blob, empty])


def test_errors_from_a_crafted_tree_name_the_image(crafted: Path) -> None:
    with Image.open(str(crafted)) as img:
        disk = Disk("docteur", img)
        assert b"".join(disk.get(b"/good")[1]) == b"hello\n"
        with pytest.raises(IntegrityError, match="a blob was expected") as caught:
            disk.size(b"/a-tree-as-a-file")
        assert str(caught.value).startswith(f"{crafted}: ")
        with pytest.raises(IntegrityError, match="malformed tree mode") as caught:
            list(disk.list(b"/"))
        assert str(caught.value).startswith(f"{crafted}: ")
        with pytest.raises(IntegrityError, match="malformed tree mode") as caught:
            disk.exists(b"/weird")
        assert str(caught.value).startswith(f"{crafted}: ")
