"""The `docteur` command as a user types it: in this process (fast, `capsys`) or in a child.

A child run has an outer timeout (a hang fails the test instead of hanging it), and every
process it left behind is found (by a mark in its environment) and killed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest

Arg = str | os.PathLike[str]

# The argv of `docteur` in a child, with this interpreter (no reliance on PATH or the venv's script).
DOCTEUR = [sys.executable, "-c", "import sys; from docteur.cli.main import main; sys.exit(main())"]

# -- in this process -------------------------------------------------------------------


def docteur(capsys: pytest.CaptureFixture[str], *args: Arg) -> tuple[int, str, str]:
    """Run `docteur ARGS` in this process; (exit status, stdout, stderr)."""
    from docteur.cli.main import main

    capsys.readouterr()
    rc = main([os.fspath(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def fails(capsys: pytest.CaptureFixture[str], *args: Arg) -> str:
    """Run `docteur ARGS`; it must exit 1 with one error line, which is returned."""
    rc, _out, err = docteur(capsys, *args)
    assert rc == 1, err
    return one_error_line(err)


def one_error_line(err: str) -> str:
    """The single `docteur: error: ...` line a failure must print, without traceback."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if ln.startswith("docteur: error: ")]
    assert len(errors) == 1, err
    return errors[0]


# -- in a child process ------------------------------------------------------------------

_MARK = "DOCTEUR_TEST_RUN"


def marked_processes(mark: str) -> list[int]:
    """Processes (but us) whose environment carries `mark`: the CLI and what it started."""
    needle = f"{_MARK}={mark}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
            if needle in f.read().split(b"\0"):
                found.append(int(pid))
    return found


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)


@dataclass
class CLIRun:
    returncode: int
    stdout: bytes
    stderr: bytes
    leftovers: list[int]  # processes it left running (killed since)

    @property
    def rc(self) -> int:
        return self.returncode

    @property
    def out(self) -> str:
        return self.stdout.decode()

    @property
    def err(self) -> str:
        return self.stderr.decode()


def start_cli(*args: Arg, env: dict[str, str] | None = None, mark: str | None = None,
              stdin: object = None) -> subprocess.Popen[bytes]:  # fmt: skip
    full = dict(os.environ if env is None else env)
    full[_MARK] = mark or uuid.uuid4().hex
    return subprocess.Popen([*DOCTEUR, *map(os.fspath, args)], env=full, stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def run_cli(*args: Arg, env: dict[str, str] | None = None, input: bytes | None = None,
            stdin: object = None, timeout: float = 120) -> CLIRun:  # fmt: skip
    """`docteur ARGS` in a child (stdin: `input` through a pipe, or a file given as `stdin`);
    a hang past `timeout` fails the test (after a kill)."""
    mark = uuid.uuid4().hex
    if stdin is None and input is not None:
        stdin = subprocess.PIPE
    proc = start_cli(*args, env=env, mark=mark, stdin=stdin)
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        kill_all(marked_processes(mark))
        pytest.fail(f"docteur {' '.join(map(str, args))} hung for {timeout} s: {err.decode()}")
    # What docteur killed and reaped is gone; a zombie it forgot has an empty environ.
    leftovers = marked_processes(mark)
    kill_all(leftovers)
    return CLIRun(proc.returncode, out, err, leftovers)


def fails_in_one_line(run: CLIRun | subprocess.CompletedProcess[bytes], *needles: str) -> None:
    """A child's failure: non-zero exit, one line on stderr holding every needle, no traceback."""
    err = run.stderr.decode()
    assert run.returncode != 0
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    for needle in needles:
        assert needle in err, err
