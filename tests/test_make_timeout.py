"""`docteur make --timeout`: a server that stops sending is one line, not a hang.

Each make runs in a child process with a generous outer timeout, so that a
regression fails the test instead of hanging it; after it, nothing may be left:
no image, no temporary file, no scratch directory, no process.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import pytest

from docteur.builder.defaults import DEFAULT_TIMEOUT
from tests.support.cli import CLIRun, docteur, one_error_line, run_cli
from tests.support.git import git, needs_git
from tests.support.relay import stalling_relay
from tests.support.repos import make_repo
from tests.support.servers import SSH_STANDIN, run_git_daemon, run_http_git

pytestmark = needs_git
SECRET = "t1meout-Passw0rd"
PARTIAL = 8192  # bytes a half-answering server sends before going silent


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding project.git, whose pack (~300 KB, incompressible) is far
    bigger than what a half-answering server lets through."""
    base = tmp_path_factory.mktemp("served")
    work = make_repo(base / "work", history=1)
    (work / "noise.bin").write_bytes(random.Random(5).randbytes(300_000))
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "noise", cwd=work)
    git("clone", "-q", "--bare", work, base / "project.git")
    return base


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    return dict(os.environ, TMPDIR=str(scratch), **extra)


def _timed_out(run: CLIRun, where: str, tmp_path: Path) -> str:
    """One line naming the source, exit 1, and nothing left anywhere."""
    assert not run.leftovers, f"processes left running: {run.leftovers}"
    assert run.rc == 1, run.err
    line = one_error_line(run.err)
    assert "timed out" in line and where in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"]  # no image, temp file, scratch
    assert list((tmp_path / "tmp").iterdir()) == []
    assert SECRET not in run.out + run.err
    return line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("git://127.0.0.1:{port}/project.git", "git://127.0.0.1:{port}/project.git"),
        (f"http://alice:{SECRET}@127.0.0.1:{{port}}/project.git", "http://***@127.0.0.1:{port}/project.git"),
        # The TLS handshake itself gets no answer.
        (f"https://alice:{SECRET}@127.0.0.1:{{port}}/x.git", "https://***@127.0.0.1:{port}/x.git"),
    ],
    ids=["git", "http", "https"],
)
def test_server_that_never_answers(url: str, shown: str, tmp_path: Path) -> None:
    with stalling_relay() as relay:
        run = run_cli("make", "--timeout", "1", url.format(port=relay.port), tmp_path / "disk.img",
                      env=_env(tmp_path))  # fmt: skip
        # One connection: a retry would wait the whole timeout again, and again.
        assert relay.accepted == 1
    line = _timed_out(run, shown.format(port=relay.port), tmp_path)
    assert "1 s" in line, line


@pytest.mark.parametrize("scheme", ["git", "http"])
def test_server_that_stops_mid_pack(scheme: str, served: Path, tmp_path: Path) -> None:
    """The references and the start of the pack arrive, then nothing: `git index-pack`,
    already fed, must go too."""
    server = run_git_daemon(served) if scheme == "git" else run_http_git(served)
    with server as upstream:
        port = int(upstream.rsplit(":", 1)[1])
        with stalling_relay(port, budget=PARTIAL) as relay:
            url = f"{scheme}://127.0.0.1:{relay.port}/project.git"
            # 3 s: the server may take a while to start answering on a loaded machine.
            run = run_cli("make", "--timeout", "3", url, tmp_path / "disk.img", env=_env(tmp_path))
            assert relay.forwarded == PARTIAL  # the server had more to say
    _timed_out(run, url, tmp_path)


def _ssh(tmp_path: Path, remote: str) -> Path:
    """A GIT_SSH stand-in that runs `remote` instead of the git command asked for."""
    script = tmp_path / "bin" / "fake-ssh"
    script.parent.mkdir()
    script.write_text(SSH_STANDIN.replace('exec sh -c "$*"', remote))
    script.chmod(0o755)
    return script


@pytest.mark.parametrize(
    "remote",
    [
        "exec sleep 300",  # never a byte
        f'sh -c "$*" | head -c {PARTIAL}; exec sleep 300',  # the start of an answer, then nothing
    ],
    ids=["silent", "partial"],
)
def test_ssh_that_stalls(remote: str, served: Path, tmp_path: Path) -> None:
    ssh = _ssh(tmp_path, remote)
    env = _env(tmp_path, GIT_SSH=str(ssh))
    env.pop("GIT_SSH_COMMAND", None)
    url = f"ssh://git@example.org{served / 'project.git'}"
    run = run_cli("make", "--timeout", "3", url, tmp_path / "disk.img", env=env)
    for p in ssh.parent.iterdir():  # the stand-in and its log are the test's own files
        p.unlink()
    ssh.parent.rmdir()
    _timed_out(run, url, tmp_path)


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf"])
def test_timeout_must_be_positive(value: str, served: Path, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    # A usage error (exit 2, argparse's convention, as for every other bad option value).
    with pytest.raises(SystemExit) as exit_:
        docteur(capsys, "make", "--timeout", value, served / "project.git", tmp_path / "x.img")
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--timeout" in err and value in err, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_default_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    from docteur.cli.main import main

    with pytest.raises(SystemExit):
        main(["make", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert re.search(rf"--timeout SECONDS .*\(default: {DEFAULT_TIMEOUT:g}\)", help_text), help_text
    assert DEFAULT_TIMEOUT == 60
