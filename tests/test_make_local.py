"""`docteur make` from local sources: work tree, bare repository, plain directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.cli import docteur
from tests.support.git import git, ls_tree, needs_git, rev
from tests.support.oracle import check_image, directory_tree_id, extract, repo_from_image
from tests.support.repos import make_repo, populate

pytestmark = needs_git
DATE = "2024-02-03T04:05:06Z"
TS = 1706933106


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("src") / "repo")


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("src") / "bare.git", bare=True)


def test_work_tree_head(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "disk.img"
    rc, _out, err = docteur(capsys, "make", f"file://{repo}", img)
    assert rc == 0, err
    assert rev(repo) in err and "objects" in err  # the summary line
    check_image(img, repo, rev(repo), tmp_path)
    rc, out, _ = docteur(capsys, "verify", img)
    assert rc == 0
    assert out == (
        f"commit\t: {rev(repo)}\n"
        f'author\t: "A U Thor" <author@example.com>\n'
        f"root\t: {rev(repo, 'HEAD^{tree}')}\n\ncommit 3\n\n"
    )


def test_bare_repo(bare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "disk.img"
    assert docteur(capsys, "make", f"file://{bare}", img)[0] == 0
    check_image(img, bare, rev(bare), tmp_path)


@pytest.mark.parametrize(
    ("ref", "expect"),
    [
        ("feature", "feature"),
        ("refs/heads/feature", "feature"),
        ("v1", "v1^{commit}"),  # annotated: peeled, the tag object is left out
        ("light", "light"),
        ("refs/tags/v1", "v1^{commit}"),
    ],
)
def test_refs(bare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], ref: str,
              expect: str) -> None:
    img = tmp_path / "disk.img"
    rc, _, err = docteur(capsys, "make", "-b", ref, str(bare), img)
    assert rc == 0, err
    check_image(img, bare, rev(bare, expect), tmp_path)


def test_annotated_tag_message(bare: Path, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "disk.img"
    assert docteur(capsys, "make", "-b", "v1", bare, img)[0] == 0
    _, out, _ = docteur(capsys, "verify", img)
    assert out.endswith("\n\nfirst commit\n\nwith a body\n\n")


def test_relative_and_relativize(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo.parent)
    for src in (repo.name, f"relativize://{repo.name}"):
        img = tmp_path / "disk.img"
        rc, _, err = docteur(capsys, "make", src, img)
        assert rc == 0, err
        check_image(img, repo, rev(repo), tmp_path)


def test_reproducible_repo(bare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    assert docteur(capsys, "make", bare, a)[0] == 0
    assert docteur(capsys, "make", bare, b)[0] == 0
    assert a.read_bytes() == b.read_bytes()


# -- plain directories ----------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    d = tmp_path / "tree"
    populate(d)
    return d


def _expected_commit(tree_id: str, ts: int) -> str:
    who = f"Dr. Greenthumb <noreply@cypress.hill> {ts} +0000"
    body = f"tree {tree_id}\nauthor {who}\ncommitter {who}\n".encode()
    return git("hash-object", "-t", "commit", "--stdin", "--literally", input=body).decode().strip()


def test_directory(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "disk.img"
    rc, _, err = docteur(capsys, "make", "-d", DATE, f"file://{tree}", img)
    assert rc == 0, err
    tree_id = directory_tree_id(tree, tmp_path)  # git's own reading of the directory
    commit = _expected_commit(tree_id, TS)
    oracle = repo_from_image(img, tmp_path)
    assert rev(oracle, f"{commit}^{{tree}}") == tree_id
    check_image(img, oracle, commit, tmp_path)
    # What the tree holds, from the files themselves.
    modes = {path: mode for mode, _kind, _oid, path in ls_tree(oracle, commit)}
    assert modes[b"bin/run.sh"] == 0o100755
    assert modes[b"link-to-readme"] == 0o120000
    assert modes[b"bin/outside"] == 0o120000
    assert modes[b".hidden"] == 0o100644 and b".config/settings.ini" in modes
    assert modes[b"empty"] == 0o100644
    assert any(p.endswith(b"d29/deep.txt") for p in modes)
    assert git("cat-file", "blob", f"{commit}:bin/outside", cwd=oracle) == b"/etc/passwd"
    rc, out, _ = docteur(capsys, "verify", img)
    assert rc == 0
    assert out == (
        f"commit\t: {commit}\n"
        f'author\t: "Dr. Greenthumb" <noreply@cypress.hill>\n'
        f"root\t: {tree_id}\n\n"
    )


def test_directory_has_deltas(tree: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "disk.img"
    assert docteur(capsys, "make", "-d", DATE, tree, img)[0] == 0
    pack, _idx = extract(img, tmp_path)
    git("index-pack", "-o", tmp_path / "image.idx", pack)
    out = git("verify-pack", "-v", tmp_path / "image.idx").decode()
    assert "chain length = 1" in out  # git pack-objects found deltas among src/mod*.py


def test_directory_reproducible(tree: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    a, b, c = tmp_path / "a.img", tmp_path / "b.img", tmp_path / "c.img"
    assert docteur(capsys, "make", "-d", DATE, tree, a)[0] == 0
    assert docteur(capsys, "make", "-d", DATE, tree, b)[0] == 0
    assert a.read_bytes() == b.read_bytes()
    assert docteur(capsys, "make", "-d", "2024-02-03T05:05:06+01:00", tree, c)[0] == 0
    assert c.read_bytes() == a.read_bytes()  # the same instant, another offset
    assert docteur(capsys, "make", "-d", "2025-01-01T00:00:00Z", tree, c)[0] == 0
    assert c.read_bytes()[:20] != a.read_bytes()[:20]


def test_directory_block_size(tree: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "disk.img"
    assert docteur(capsys, "make", "--bs", "4096", tree, img)[0] == 0
    assert img.stat().st_size % 4096 == 0
    assert int.from_bytes(img.read_bytes()[20:28], "little") % 4096 == 0
    assert docteur(capsys, "verify", "-q", img)[:2] == (0, "")


def test_directory_without_git(tree: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    img = tmp_path / "disk.img"
    with_git = tmp_path / "git.img"
    assert docteur(capsys, "make", "-d", DATE, tree, with_git)[0] == 0
    monkeypatch.setenv("DOCTEUR_NO_GIT", "1")
    rc, _, err = docteur(capsys, "make", "-d", DATE, tree, img)
    assert rc == 0, err
    assert "undeltified" in err
    assert img.read_bytes()[:20] == with_git.read_bytes()[:20]  # same commit
    assert docteur(capsys, "verify", "-q", img)[0] == 0
    monkeypatch.delenv("DOCTEUR_NO_GIT")
    oracle = repo_from_image(img, tmp_path)
    check_image(img, oracle, img.read_bytes()[:20].hex(), tmp_path)


def test_repo_without_git(bare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    """dulwich's own local client and index writer, when git is missing."""
    img = tmp_path / "disk.img"
    monkeypatch.setenv("DOCTEUR_NO_GIT", "1")
    rc, _, err = docteur(capsys, "make", "-b", "v1", bare, img)
    assert rc == 0, err
    monkeypatch.delenv("DOCTEUR_NO_GIT")
    check_image(img, bare, rev(bare, "v1^{commit}"), tmp_path)


def test_work_tree_is_not_a_directory_image(repo: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A `.git` at the top: the commit, not the files (untracked ones stay out)."""
    (repo / "untracked.txt").write_text("not committed\n")
    try:
        img = tmp_path / "disk.img"
        assert docteur(capsys, "make", repo, img)[0] == 0
        assert img.read_bytes()[:20].hex() == rev(repo)
    finally:
        os.unlink(repo / "untracked.txt")


def test_image_inside_the_directory(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Building twice into the same directory: the old image is not packed into the new."""
    img = tree / "disk.img"
    assert docteur(capsys, "make", "-d", DATE, tree, img)[0] == 0
    first = img.read_bytes()
    rc, _, err = docteur(capsys, "make", "-d", DATE, tree, img)
    assert rc == 0
    assert "skipping the image itself" in err
    assert img.read_bytes() == first


def test_big_file_streamed(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Files over the threshold are stored in chunks; ids are still git's."""
    from docteur.builder import directory

    monkeypatch.setattr(directory, "_BIG_FILE", 1000)
    monkeypatch.setattr(directory, "_CHUNK", 333)
    d = tmp_path / "big"
    d.mkdir()
    (d / "a.bin").write_bytes(bytes(range(256)) * 40)
    (d / "b.bin").write_bytes(bytes(range(256)) * 40)  # same content: one blob
    (d / "small").write_text("x\n")
    img = tmp_path / "disk.img"
    assert docteur(capsys, "make", "-d", DATE, d, img)[0] == 0
    tree_id = directory_tree_id(d, tmp_path)
    oracle = repo_from_image(img, tmp_path)
    commit = _expected_commit(tree_id, TS)
    check_image(img, oracle, commit, tmp_path)


def test_directory_commit_is_the_originals() -> None:
    """The original docteur's own test (test/simple.t) publishes, for its `store`
    directory made with `-d 2020-10-10T08:00:00+00:00`, root 7d8a9e38… and commit
    ca71a852…: the same tree and date must give the same commit id here."""
    from docteur.builder.directory import parse_date, snapshot_commit
    from docteur.guest.objects import object_id

    tree = bytes.fromhex("7d8a9e386b602e1bd8cd8f226a461a87ccf372e3")
    commit = snapshot_commit(tree, parse_date("2020-10-10T08:00:00+00:00"))
    assert object_id("commit", commit.as_raw()).hex() == "ca71a852f6c2d16bf04691f13b8a7edeadb15b80"
