"""Progress lines on a terminal only, and the log formats."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest

from docteur.cli.progress import Progress, human_bytes, is_terminal
from tests.support.cli import docteur
from tests.support.git import needs_git
from tests.support.repos import make_repo


def test_disabled_writes_nothing() -> None:
    buf = io.StringIO()
    assert not is_terminal(buf)
    with Progress("x", stream=buf) as p:
        p.update(5, 10)
        p.message("remote: counting")
    assert buf.getvalue() == ""


def test_enabled_draws_and_clears() -> None:
    buf = io.StringIO()
    with Progress("packing", unit="objects", stream=buf, enabled=True, interval=0) as p:
        p.update(1, 4)
        p.advance(3)
    out = buf.getvalue()
    assert "packing:  25% (1 objects / 4 objects)" in out
    assert "100%" in out
    assert out.endswith("\r\x1b[K")


def test_human_bytes() -> None:
    assert human_bytes(12) == "12 B"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(3 << 30) == "3.0 GiB"


def _on_a_terminal(argv: list[str]) -> tuple[int, str]:
    main, sub = pty.openpty()
    try:
        proc = subprocess.run(argv, stderr=sub, stdout=sub, check=False, timeout=60)
        os.close(sub)
        chunks = []
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(main)
    return proc.returncode, b"".join(chunks).decode()


@needs_git
def test_json_logs_on_a_terminal_have_no_progress(tmp_path: Path) -> None:
    """--log-format json on a terminal: JSON lines only, no progress redraws among them."""
    repo = make_repo(tmp_path / "r.git", bare=True, history=1)
    cmd = [sys.executable, "-m", "docteur.cli", "--log-format", "json"]
    rc, err = _on_a_terminal([*cmd, "make", str(repo), str(tmp_path / "a.img")])
    assert rc == 0 and "\x1b" not in err and "\r\n" in err  # (a pty turns \n into \r\n)
    assert [json.loads(line)["event"] for line in err.split("\r\n") if line] == ["image written"]
    rc, err = _on_a_terminal([*cmd, "verify", "-q", str(tmp_path / "a.img")])
    assert (rc, err) == (0, "")
    rc, err = _on_a_terminal([*cmd[:-2], "verify", "-q", str(tmp_path / "a.img")])
    assert (rc, err) == (0, "")  # -q: not even a progress line that erases itself


@needs_git
def test_progress_on_a_terminal_only(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r.git", bare=True, history=1)
    cmd = [sys.executable, "-m", "docteur.cli", "make", str(repo)]
    rc, tty_err = _on_a_terminal([*cmd, str(tmp_path / "a.img")])
    assert rc == 0
    assert "writing:" in tty_err and "\x1b[K" in tty_err
    piped = subprocess.run([*cmd, str(tmp_path / "b.img")], capture_output=True, check=False)
    assert piped.returncode == 0
    assert b"\x1b" not in piped.stderr and b"\r" not in piped.stderr
    assert piped.stderr.count(b"\n") == 1  # the summary line only


@needs_git
def test_json_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = make_repo(tmp_path / "r.git", bare=True, history=1)
    rc, _, err = docteur(capsys, "--log-format", "json", "-v", "make", repo, tmp_path / "a.img")
    assert rc == 0
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    names = {e["event"] for e in events}
    assert {"fetching", "image written"} <= names
    assert all(e["level"] == "info" for e in events)


def test_every_command_is_declared_without_loading_its_side() -> None:
    """docteur.cli declares every subcommand itself (the VM side adds none), and `docteur
    --help` loads neither the builder nor the VM side nor their heavy libraries."""
    code = ("import sys\nfrom docteur.cli.main import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nprint(' '.join(sorted(sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("make", "verify", "run", "query"):
        assert f"    {command} " in proc.stdout, proc.stdout
    loaded = set(proc.stderr.split())
    # docteur.builder.defaults (the --timeout default) is a few lines: the work modules are not.
    heavy = {"docteur.builder.make", "docteur.builder.fetch", "docteur.vm.client",
             "docteur.vm.runtime.appliance", "dulwich", "asyncio", "structlog", "qemu.qmp"}  # fmt: skip
    assert not heavy & loaded, heavy & loaded


@needs_git
def test_global_options_after_the_subcommand(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from docteur.cli.main import make_main

    repo = make_repo(tmp_path / "r.git", bare=True, history=1)
    rc, _, err = docteur(capsys, "make", "--log-format", "json", "-v", repo, tmp_path / "a.img")
    assert rc == 0 and '"event": "fetching"' in err
    rc, _, err = docteur(capsys, "-v", "make", repo, tmp_path / "b.img")
    assert rc == 0 and "fetching" in err
    rc, _, err = docteur(capsys, "make", repo, tmp_path / "c.img")
    assert rc == 0 and "fetching" not in err
    capsys.readouterr()
    assert make_main(["-v", "--log-format", "json", str(repo), str(tmp_path / "d.img")]) == 0
    assert '"event": "fetching"' in capsys.readouterr().err


@needs_git
def test_json_means_every_stderr_line_is_json(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """--log-format json: the summary and the error lines are JSON too (no bare
    `docteur: error:` text), for run and query as well, the option after the command."""
    repo = make_repo(tmp_path / "r.git", bare=True, history=1)

    def events(*args: str | Path) -> tuple[int, list[dict[str, object]]]:
        rc, _, err = docteur(capsys, *args)
        return rc, [json.loads(line) for line in err.splitlines()]  # fails on any non-JSON line

    rc, evs = events("make", "--log-format", "json", repo, tmp_path / "a.img")
    assert rc == 0 and [e["event"] for e in evs] == ["image written"]
    assert evs[0]["objects"] and evs[0]["commit"] and evs[0]["image"] == str(tmp_path / "a.img")
    rc, evs = events("--log-format", "json", "make", "http://u:s3cret@127.0.0.1:1/x.git",
                     tmp_path / "b.img")  # fmt: skip
    assert rc == 1 and evs[-1]["level"] == "error" and "connection refused" in evs[-1]["event"]
    assert "s3cret" not in json.dumps(evs)
    rc, evs = events("run", "--log-format", "json", "-v", "--target", "unix", tmp_path / "a.img",
                     "--filename", "/nope")  # fmt: skip
    assert rc == 1 and evs[-1]["level"] == "error" and "/nope" in evs[-1]["event"]
    assert any(e["event"] == "guest server started" for e in evs)  # -v after `run` counts
    with pytest.raises(SystemExit) as usage:  # argparse's own errors
        # (run IMAGE alone is the console now: two exclusive options are the usage error)
        docteur(capsys, "run", "--log-format=json", "--target", "unix", "--filename", "/a", "--socket", "/s")
    err = capsys.readouterr().err
    assert usage.value.code == 2 and "not allowed with argument --filename" in json.loads(err)["event"]
    rc, evs = events("query", "--log-format", "json", "--socket", tmp_path / "none", "ls")
    assert rc == 1 and evs == [{**evs[0], "event": f"cannot connect to {tmp_path / 'none'}: "
                                "No such file or directory", "level": "error"}]  # fmt: skip


def test_server_progress_shows_whole_lines_only() -> None:
    """dulwich hands the sideband over in pieces that end mid-line: never draw a piece."""
    from docteur.builder.fetch import Sideband

    out = io.StringIO()
    bar = Progress("receiving", stream=out, enabled=True, interval=0)
    side = Sideband(bar)
    for piece in (b"Counting objects:   1% (1/200)\rCounting ob", b"jects:  50% (100/2",
                  b"00)\rCounting objects: 100% (200/200), done.\nCompress"):  # fmt: skip
        side(piece)
    shown = [t for t in out.getvalue().split("\r\x1b[K") if t]
    assert shown == ["remote: Counting objects:   1% (1/200)",  # the 50% line came with a later one
                     "remote: Counting objects: 100% (200/200), done."]  # fmt: skip
    out.truncate(0)
    out.seek(0)
    slow = Progress("receiving", stream=out, enabled=True, interval=60)
    for n in range(50):
        slow.message(f"remote: Counting objects: {n}%")
    slow.message("remote: Counting objects: 100%, done.")
    assert out.getvalue().count("\r") == 2  # the first one, then `done.`: not 51 redraws


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from docteur.cli.main import main, verify_main

    for entry in (main, verify_main):
        with pytest.raises(SystemExit) as stop:
            entry(["--version"])
        assert stop.value.code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("docteur 0.") and out[1].startswith("docteur.verify 0.")


@needs_git
def test_packing_progress_and_log_lines_on_a_terminal(tmp_path: Path) -> None:
    """A directory on a terminal: git's packing progress shows ("objects packed"), and a
    warning is printed on a line of its own, never glued to a progress line."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    (src / "sub" / ".git").mkdir()  # a nested .git: a warning while "reading" shows
    (src / "sub" / "b.txt").write_text("b\n")
    rc, err = _on_a_terminal([sys.executable, "-m", "docteur.cli", "make", str(src),
                              str(tmp_path / "a.img")])  # fmt: skip
    assert rc == 0, err
    assert re.search(r"(Enumerating|Counting|Compressing|Writing) objects|Total \d", err), err  # git's
    warning = next(part for part in err.split("\r\n") if "nested .git" in part)
    assert "reading:" not in warning.split("\x1b[K")[-1], repr(warning)
