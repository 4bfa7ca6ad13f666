"""`docteur verify`: the original's report, -q, and a clear line for every corruption."""

from __future__ import annotations

from pathlib import Path

import pytest

from docteur.cli.main import verify_main
from docteur.guest.layout import read_layout
from tests.support.cli import docteur, fails, one_error_line
from tests.support.corrupt import corrupt
from tests.support.git import needs_git, rev
from tests.support.images import image_of
from tests.support.repos import make_repo

pytestmark = needs_git


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("verify")
    repo = make_repo(tmp / "repo.git", bare=True, history=2)
    return repo, image_of(repo, tmp / "good.img")


def test_report(built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    repo, img = built
    rc, out, err = docteur(capsys, "verify", img)
    assert rc == 0, err
    assert out == (
        f"commit\t: {rev(repo)}\n"
        'author\t: "A U Thor" <author@example.com>\n'
        f"root\t: {rev(repo, 'HEAD^{tree}')}\n"
        "\n"
        "commit 2\n\n"  # the message as stored (with its newline), then the original's "\n"
    )


def test_report_is_the_originals_byte_for_byte() -> None:
    """bin/verify.ml: `%S` for the name (OCaml escapes), the message followed by "\n",
    and with no message (a directory's commit) only the blank line."""
    from docteur.builder.report import report
    from docteur.guest.objects import Commit, Signature

    who = Signature('Zo\u00eb "Q" \\ <z@x> 1 +0000'.encode())
    tree = bytes(range(20))
    head = f"commit\t: {'ab' * 20}\n".encode()
    author = b'author\t: "Zo\\195\\171 \\"Q\\" \\\\" <z@x>\n'
    root = f"root\t: {tree.hex()}\n".encode()
    c = Commit(tree=tree, parents=(), author=who, committer=who, message=b"subject\n\nbody\n")
    assert report("ab" * 20, c) == head + author + root + b"\nsubject\n\nbody\n\n"
    c = Commit(tree=tree, parents=(), author=who, committer=who, message=b"no newline")
    assert report("ab" * 20, c) == head + author + root + b"\nno newline\n"
    c = Commit(tree=tree, parents=(), author=who, committer=who, message=None)
    assert report("ab" * 20, c) == head + author + root + b"\n"
    c = Commit(tree=tree, parents=(), author=who, committer=who, message=b"")
    assert report("ab" * 20, c) == head + author + root + b"\n\n"


def test_not_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory, a missing file: one line naming it (not a bare "Is a directory")."""
    assert fails(capsys, "verify", tmp_path) == f"docteur: error: {tmp_path}: is a directory, not an image"
    assert str(tmp_path / "nope.img") in fails(capsys, "verify", tmp_path / "nope.img")
    capsys.readouterr()
    assert verify_main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("docteur.verify: error: ")


def test_quiet(built: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert docteur(capsys, "verify", "-q", built[1]) == (0, "", "")
    capsys.readouterr()
    assert verify_main(["-q", str(built[1])]) == 0
    assert capsys.readouterr().out == ""


def _where(img: Path) -> dict[str, int]:
    with open(img, "rb") as f:
        layout = read_layout(f.fileno())
    return {
        "pack_mid": (28 + layout.pack_end) // 2,
        "pack_trailer": layout.pack_end - 5,
        "idx_fanout": layout.idx_offset + 8 + 4 * 100,
        "idx_ids": layout.idx_offset + 8 + 1024 + 3,
        "idx_crc": layout.idx_end - 40 - 4,
        "idx_checksum": layout.idx_end - 2,
    }


@pytest.mark.parametrize(
    "where",
    ["commit", "idx_offset", "pack_magic", "pack_mid", "pack_trailer", "idx_fanout",
     "idx_ids", "idx_crc", "idx_checksum"],
)
def test_corruption(built: tuple[Path, Path], tmp_path: Path, where: str,
                    capsys: pytest.CaptureFixture[str]) -> None:
    _repo, good = built
    offsets = {"commit": 3, "idx_offset": 21, "pack_magic": 29, **_where(good)}
    bad = corrupt(good, offsets[where], dest=tmp_path / "bad.img")
    rc, out, err = docteur(capsys, "verify", bad)
    assert rc == 1
    assert out == ""
    line = one_error_line(err)
    assert len(line) > len("docteur: error: ") + 10
    assert str(bad) in line  # every error line names the image


@pytest.mark.parametrize("where", ["after the PACK", "before the IDX", "after the IDX"])
def test_a_flip_in_the_padding_says_padding(built: tuple[Path, Path], tmp_path: Path, where: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Not "trailer mismatch": the PACK and the IDX are whole, a zero byte is not."""
    _repo, good = built
    with open(good, "rb") as f:
        layout = read_layout(f.fileno())
    at = {"after the PACK": layout.pack_end + 3, "before the IDX": layout.idx_offset - 1,
          "after the IDX": layout.idx_end + 7}[where]  # fmt: skip
    bad = corrupt(good, at, b"\x01", dest=tmp_path / "bad.img")
    line = fails(capsys, "verify", bad)
    assert "padding" in line and str(bad) in line and str(at) in line, line


def test_wrong_commit_in_header(built: tuple[Path, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    """The header names an object of the pack that is not a commit (its tree)."""
    repo, good = built
    tree = bytes.fromhex(rev(repo, "HEAD^{tree}"))
    bad = corrupt(good, 0, tree, dest=tmp_path / "bad.img")
    assert "commit" in fails(capsys, "verify", bad)


@pytest.mark.parametrize("content", [b"", b"short", b"\0" * 4096, b"PACK" * 2000])
def test_not_an_image(tmp_path: Path, content: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.img"
    f.write_bytes(content)
    assert "image" in fails(capsys, "verify", f)


def test_truncated(built: tuple[Path, Path], tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    data = built[1].read_bytes()
    for cut in (len(data) // 2, len(data) - 600):
        f = tmp_path / "cut.img"
        f.write_bytes(data[:cut])
        fails(capsys, "verify", f)


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such file" in fails(capsys, "verify", tmp_path / "none.img")


def test_the_originals_git_cram_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The original docteur's test/git-simple.t, replayed: same repository, same ids, same report."""
    from tests.support.git import git, git_env

    store = tmp_path / "git-store"
    store.mkdir()
    env = git_env(
        GIT_AUTHOR_NAME="Romain Calascibetta",
        GIT_AUTHOR_EMAIL="romain@mirage.io",
        GIT_COMMITTER_NAME="Romain Calascibetta",
        GIT_COMMITTER_EMAIL="romain@mirage.io",
        GIT_AUTHOR_DATE="2016-08-21 17:18:43 +0200",
        GIT_COMMITTER_DATE="2016-08-21 17:18:43 +0200",
    )
    git("init", "-q", "-b", "master", cwd=store, env=env)
    (store / "README.md").write_text("Hello Git!\n")
    git("add", "README.md", cwd=store, env=env)
    git("commit", "-q", "-m", "My name is Dr. Greenthumb", cwd=store, env=env)
    img = tmp_path / "disk.img"
    rc, _, err = docteur(capsys, "make", "--branch", "refs/heads/master", f"file://{store}", img)
    assert rc == 0, err
    rc, out, err = docteur(capsys, "verify", img)
    assert rc == 0, err
    assert out == (
        "commit\t: 7f76ddedf89aaca1a566a5cb3fb2f1b5cc96f716\n"
        'author\t: "Romain Calascibetta" <romain@mirage.io>\n'
        "root\t: 73c44169dbb57613737326b902934762298208d4\n"
        "\n"
        "My name is Dr. Greenthumb\n"
        "\n"
    )
