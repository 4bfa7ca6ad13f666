"""Bad inputs give one line and exit 1; a failing build leaves nothing behind."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from docteur.builder import make as make_mod
from docteur.builder.source import parse_source
from docteur.cli.main import make_main
from docteur.cli.redact import redact, register_secret
from tests.support.cli import docteur, fails, one_error_line
from tests.support.git import needs_git
from tests.support.repos import make_repo, populate
from tests.support.servers import free_port

pytestmark = needs_git


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("err") / "r.git", bare=True, history=1)


def test_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(capsys, "make", tmp_path / "nope", tmp_path / "x.img")
    assert "no such file or directory" in line and "nope" in line
    assert "no such" in fails(capsys, "make", f"file://{tmp_path}/nope", tmp_path / "x.img")


def test_empty_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "sub").mkdir(parents=True)  # only empty directories: nothing to store
    assert "empty directory" in fails(capsys, "make", tmp_path / "empty", tmp_path / "x.img")


def test_special_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok.txt").write_text("ok\n")
    os.mkfifo(d / "pipe")
    line = fails(capsys, "make", d, tmp_path / "x.img")
    assert "fifo" in line and str(d / "pipe") in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "secret").write_text("x")
    (d / "secret").chmod(0)
    assert str(d / "secret") in fails(capsys, "make", d, tmp_path / "x.img")


@pytest.mark.parametrize(
    ("source", "expect"),
    [
        ("ftp://example.org/x.git", "unsupported scheme"),
        ("https:///x.git", "no host"),
        ("https://example.org", "no repository path"),
        ("file://relative/path", "absolute path"),
        ("git@example.org:", "no path"),
        ("https://example.org:99999/x.git", "bad URL"),
    ],
)
def test_bad_urls(source: str, expect: str, tmp_path: Path,
                  capsys: pytest.CaptureFixture[str]) -> None:
    assert expect in fails(capsys, "make", source, tmp_path / "x.img")


def test_unknown_host_and_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "unknown host" in fails(capsys, "make", "git://no-such-host.invalid/x.git",
                                    tmp_path / "x.img")
    port = free_port()
    assert "connection refused" in fails(capsys, "make", f"git://127.0.0.1:{port}/x.git",
                                          tmp_path / "x.img")
    assert "connection refused" in fails(capsys, "make", f"http://127.0.0.1:{port}/x.git",
                                          tmp_path / "x.img")
    assert not list(tmp_path.iterdir())


def test_missing_ref(bare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = fails(capsys, "make", "-b", "nope", bare, tmp_path / "x.img")
    assert "no ref 'nope'" in line and "main" in line


def test_not_a_git_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    (broken / ".git").mkdir(parents=True)  # a .git that is no repository
    line = fails(capsys, "make", broken, tmp_path / "x.img")
    assert "not a git repository" in line or "git" in line


def test_empty_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.support.git import git

    git("init", "-q", "--bare", tmp_path / "e.git")
    line = fails(capsys, "make", tmp_path / "e.git", tmp_path / "x.img")
    assert "HEAD" in line or "empty" in line


def test_tags_only_repository(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No HEAD, only tags: the line says so and lists them (and any branch) for -b."""
    from tests.support.git import rev
    from tests.support.oracle import check_image
    from tests.support.repos import without_head

    tags = without_head(make_repo(tmp_path / "tags.git", bare=True))
    line = fails(capsys, "make", f"file://{tags}", tmp_path / "x.img")
    assert f"{tags} has no HEAD" in line and "empty" not in line, line
    assert "tags: v1, light" in line and "branches" not in line, line
    assert not (tmp_path / "x.img").exists()
    assert docteur(capsys, "make", "-b", "light", f"file://{tags}", tmp_path / "x.img")[0] == 0
    check_image(tmp_path / "x.img", tags, rev(tags, "light"), tmp_path)
    mixed = without_head(make_repo(tmp_path / "mixed.git", bare=True), keep_branches=("feature",))
    line = fails(capsys, "make", mixed, tmp_path / "y.img")
    assert "has no HEAD" in line and "branches: feature" in line and "tags: v1, light" in line, line


def test_ref_lists_are_cut_short(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Hundreds of release tags: the newest few (in version order) and how many more."""
    from tests.support.git import git
    from tests.support.repos import without_head

    repo = make_repo(tmp_path / "many.git", bare=True, history=1)
    git("update-ref", "--stdin", cwd=repo,
        input="".join(f"create refs/tags/v1.{i} HEAD\n" for i in range(1, 31)).encode())  # fmt: skip
    line = fails(capsys, "make", without_head(repo), tmp_path / "x.img")
    # v1 and v1.1 … v1.30: 31 tags.
    assert "tags: v1.30, v1.29, v1.28, v1.27, v1.26, v1.25, v1.24, v1.23, … (23 more)" in line, line


def test_bad_date_and_block_size(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    populate(tmp_path / "t")
    assert "bad date" in fails(capsys, "make", "-d", "yesterday", tmp_path / "t",
                                tmp_path / "x.img")
    assert "block size" in fails(capsys, "make", "--bs", "0", tmp_path / "t", tmp_path / "x.img")


def test_destination_problems(bare: Path, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert "no such directory" in fails(capsys, "make", bare, tmp_path / "no" / "x.img")
    assert "is a directory" in fails(capsys, "make", bare, tmp_path)


# -- atomicity -------------------------------------------------------------------------


def _only(tmp_path: Path, *names: str) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_failure_keeps_existing_image(bare: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(b"old image")
    fails(capsys, "make", "-b", "nope", bare, img)
    assert img.read_bytes() == b"old image"
    _only(tmp_path, "disk.img")


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left")])
def test_interrupted_or_disk_full_mid_write(bare: Path, tmp_path: Path, exc: BaseException,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(b"old image")
    real = make_mod.write_image

    def broken(out, *args, **kwargs):  # type: ignore[no-untyped-def]
        real(out, *args, **kwargs)  # the temp file exists and is full...
        raise exc  # ...when the trouble comes

    monkeypatch.setattr(make_mod, "write_image", broken)
    rc, _, err = docteur(capsys, "make", bare, img)
    line = one_error_line(err)
    if isinstance(exc, KeyboardInterrupt):
        assert rc == 130 and "interrupted" in line
    else:
        assert rc == 1 and "disk full" in line
    assert img.read_bytes() == b"old image"
    _only(tmp_path, "disk.img")


def test_unwritable_destination_names_the_image(bare: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """/proc takes no new files: the line names the image asked for, not our temp file."""
    line = fails(capsys, "make", bare, "/proc/disk.img")
    assert line.startswith("docteur: error: cannot write /proc/disk.img: ") and ".tmp" not in line, line


def test_alias_entry_point(bare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert make_main([str(bare), str(tmp_path / "a.img")]) == 0
    capsys.readouterr()
    assert make_main(["-b", "nope", str(bare), str(tmp_path / "b.img")]) == 1
    assert capsys.readouterr().err.startswith("docteur.make: error: no ref 'nope'")  # its own name
    _only(tmp_path, "a.img")


# -- credentials -------------------------------------------------------------------------


def test_redaction() -> None:
    src = parse_source("https://user:p%40ss-word@example.org/x.git")
    assert "p%40ss-word" not in src.display and "p@ss-word" not in src.display
    assert redact("failed: p@ss-word") == "failed: ***"
    assert redact("https://tok123@host/x") == "https://***@host/x"
    assert redact("ssh://bob:pw@host/x") == "ssh://bob:***@host/x"
    assert redact("ssh://bob@host/x") == "ssh://bob@host/x"
    register_secret("x")  # too short to mask safely: ignored
    assert redact("x marks") == "x marks"


@pytest.mark.parametrize(
    ("ssh_says", "expect"),
    [
        ("ssh: Could not resolve hostname nohost: Name or service not known", "unknown host"),
        ("ssh: connect to host nohost port 22: Connection refused", "connection refused"),
        ("fatal: '/x.git' does not appear to be a git repository", "not a git repository"),
        ("Permission denied (publickey).", "Permission denied"),
    ],
)
def test_ssh_failures(ssh_says: str, expect: str, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "ssh"
    fake.write_text(f"#!/bin/sh\necho \"{ssh_says}\" >&2\nexit 255\n")
    fake.chmod(0o755)
    monkeypatch.delenv("GIT_SSH_COMMAND", raising=False)
    monkeypatch.setenv("GIT_SSH", str(fake))
    line = fails(capsys, "make", "git@nohost:x.git", tmp_path / "x.img")
    assert expect in line
    assert not (tmp_path / "x.img").exists()


def test_missing_ssh_command(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GIT_SSH", raising=False)
    monkeypatch.setenv("GIT_SSH_COMMAND", str(tmp_path / "no-ssh"))
    line = fails(capsys, "make", "ssh://git@nohost/x.git", tmp_path / "x.img")
    assert line.endswith(f"cannot run {tmp_path / 'no-ssh'}: No such file or directory"), line


def test_index_pack_rejects_garbage(tmp_path: Path) -> None:
    from docteur.builder.errors import BuildError
    from docteur.builder.fetch import _IndexPackSink

    sink = _IndexPackSink(str(tmp_path), str(tmp_path / "fetch"))
    try:
        sink.write(b"PACK\0\0\0\2\0\0\0\5" + b"garbage" * 100)
        with pytest.raises(BuildError, match="broken"):
            sink.finish()
    finally:
        sink.close()


def test_scratch_disk_full_is_not_a_read_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """TMPDIR full while a directory is copied: "disk full", not "<the user's file>: cannot
    read"; git's own "No space left" (git init, index-pack) is "disk full" too."""
    import builtins

    from docteur.builder import directory
    from docteur.builder.gittools import git_failure

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")

    def full(path, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(directory, "open", full, raising=False)
    line = fails(capsys, "make", src, tmp_path / "out.img")
    assert "disk full" in line and "scratch" in line and "cannot read" not in line, line
    assert not (tmp_path / "out.img").exists()
    err = b"fatal: cannot copy 'x' to '/t/y': No space left on device\n"
    assert str(git_failure("git init", err, 128)).startswith("disk full: git init failed: fatal")
    assert str(git_failure("git init", b"fatal: other\n", 128)) == "git init failed: fatal: other"


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_sigterm_cleans_up_like_ctrl_c(bare: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch, signame: str) -> None:
    """`timeout` and `kill` send SIGTERM, a closed terminal SIGHUP: no temp image, no
    scratch directory, the old image untouched, one line, exit 128+N; the previous
    handler is restored."""
    import signal
    import tempfile

    signum = getattr(signal, signame)

    img = tmp_path / "disk.img"
    img.write_bytes(b"old image")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    real = make_mod.write_image

    def killed(out, *args, **kwargs):  # type: ignore[no-untyped-def]
        real(out, *args, **kwargs)
        os.kill(os.getpid(), signum)  # delivered before the next bytecode

    monkeypatch.setattr(make_mod, "write_image", killed)
    before = signal.getsignal(signum)
    rc, _, err = docteur(capsys, "make", bare, img)
    assert rc == 128 + signum and "terminated" in one_error_line(err)
    assert img.read_bytes() == b"old image"
    _only(tmp_path, "disk.img", "scratch")
    assert list(scratch.iterdir()) == []
    assert signal.getsignal(signum) == before
