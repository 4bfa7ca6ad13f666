"""`docteur make` over the network: git daemon, smart HTTP, ssh (a stand-in), on loopback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.cli import docteur, fails, one_error_line
from tests.support.git import needs_git, rev
from tests.support.oracle import check_image
from tests.support.repos import make_repo, without_head
from tests.support.servers import run_http_git

pytestmark = needs_git


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("remote") / "project.git", bare=True)


def _serve(bare: Path, base: Path) -> None:
    shutil.copytree(bare, base / "project.git", symlinks=True)


def test_git_daemon(bare: Path, git_daemon: tuple[Path, str], tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    base, url = git_daemon
    _serve(bare, base)
    img = tmp_path / "disk.img"
    rc, _, err = docteur(capsys, "make", f"{url}/project.git", img)
    assert rc == 0, err
    check_image(img, bare, rev(bare), tmp_path)
    rc, _, err = docteur(capsys, "make", "-b", "v1", f"{url}/project.git", img)
    assert rc == 0, err
    check_image(img, bare, rev(bare, "v1^{commit}"), tmp_path)


def test_git_daemon_errors(git_daemon: tuple[Path, str], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    _base, url = git_daemon
    assert "not a git repository" in fails(capsys, "make", f"{url}/nothing-here.git", tmp_path / "x.img")
    assert not list(tmp_path.iterdir())


def test_tags_only_over_git_daemon(bare: Path, git_daemon: tuple[Path, str], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    base, url = git_daemon
    _serve(bare, base)
    without_head(base / "project.git")
    line = fails(capsys, "make", f"{url}/project.git", tmp_path / "x.img")
    assert f"{url}/project.git has no HEAD" in line and "tags: v1, light" in line, line
    assert not list(tmp_path.iterdir())
    rc, _, err = docteur(capsys, "make", "-b", "v1", f"{url}/project.git", tmp_path / "x.img")
    assert rc == 0, err
    check_image(tmp_path / "x.img", bare, rev(bare, "v1^{commit}"), tmp_path)


def test_smart_http(bare: Path, http_git: tuple[Path, str], tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    base, url = http_git
    _serve(bare, base)
    img = tmp_path / "disk.img"
    rc, _, err = docteur(capsys, "make", "-b", "feature", f"{url}/project.git", img)
    assert rc == 0, err
    check_image(img, bare, rev(bare, "feature"), tmp_path)
    assert "no ref 'nope'" in fails(capsys, "make", "-b", "nope", f"{url}/project.git", img)
    assert "not a git repository" in fails(capsys, "make", f"{url}/missing.git", img)


SECRET = "s3cret-Passw0rd"


def test_http_credentials_work_and_stay_hidden(bare: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "srv"
    base.mkdir()
    _serve(bare, base)
    img = tmp_path / "disk.img"
    with run_http_git(base, credentials=("alice", SECRET)) as url:
        authed = url.replace("http://", f"http://alice:{SECRET}@") + "/project.git"
        rc, out, err = docteur(capsys, "--log-format", "json", "-vv", "make", authed, img)
        assert rc == 0, err
        assert SECRET not in out + err
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        assert any(e.get("event") == "fetching" for e in events)
        check_image(img, bare, rev(bare), tmp_path)
        wrong = url.replace("http://", "http://alice:wrong-Passw0rd@") + "/project.git"
        rc, out, err = docteur(capsys, "-v", "make", wrong, tmp_path / "no.img")
        assert rc == 1
        line = one_error_line(err)
        assert "wrong-Passw0rd" not in out + err
        assert "authentication" in line or "401" in line
    rc, _, err = docteur(capsys, "make", f"https://tok:{SECRET}@unknown-host.invalid/x.git",
                         tmp_path / "no.img")
    assert rc == 1
    assert SECRET not in err
    assert "unknown host" in one_error_line(err)


def test_ssh_url_and_scp_like(bare: Path, ssh_git: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "disk.img"
    rc, _, err = docteur(capsys, "make", f"ssh://git@example.org{bare}", img)
    assert rc == 0, err
    check_image(img, bare, rev(bare), tmp_path)
    rc, _, err = docteur(capsys, "make", "-b", "light", f"git@example.org:{bare}", img)
    assert rc == 0, err
    check_image(img, bare, rev(bare, "light"), tmp_path)
    log = Path(str(ssh_git) + ".log").read_text().split()
    assert log.count("example.org") + log.count("git@example.org") == 2
