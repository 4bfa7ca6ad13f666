"""Running the git command line, when it is installed (it does the heavy lifting fast)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Callable, Sequence

from docteur.cli.errors import DISK_FULL_LINE

from .errors import BuildError

# Settings that would make our output depend on the user's configuration.
_PINNED = [
    "-c",
    "pack.indexVersion=2",
    "-c",
    "core.bigFileThreshold=512m",
    "-c",
    "pack.compression=-1",
    "-c",
    "core.compression=-1",
]


def git_path() -> str | None:
    if os.environ.get("DOCTEUR_NO_GIT"):  # lets tests exercise the git-less fallbacks
        return None
    return shutil.which("git")


def git_argv(args: Sequence[str]) -> list[str]:
    git = git_path()
    if git is None:
        raise BuildError("git is not installed")
    return [git, *_PINNED, *args]


def git_env() -> dict[str, str]:
    return dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C")


def run_git(
    args: Sequence[str],
    *,
    input: bytes | None = None,
    cwd: str | None = None,
    what: str = "git",
    on_stderr: Callable[[bytes], None] | None = None,
) -> bytes:
    """git's stdout; a failure is a BuildError. `on_stderr` receives git's stderr as
    it comes (its --progress lines), else it is collected for the error message."""
    if on_stderr is not None:
        return _run_streaming(args, input, cwd, what, on_stderr)
    proc = subprocess.run(
        git_argv(args),
        input=input,
        cwd=cwd,
        env=git_env(),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise git_failure(what, proc.stderr, proc.returncode)
    return proc.stdout


def git_failure(what: str, stderr: bytes, status: int) -> BuildError:
    """One line for a failed git command: its last message line; a full disk says so."""
    err = stderr.decode("utf-8", "replace").strip().splitlines()
    last = err[-1] if err else f"exit {status}"
    if any("No space left on device" in line or "Disk quota exceeded" in line for line in err):
        return BuildError(f"{DISK_FULL_LINE}: {what} failed: {last}")
    return BuildError(f"{what} failed: {last}")


def _run_streaming(
    args: Sequence[str], input: bytes | None, cwd: str | None, what: str,
    on_stderr: Callable[[bytes], None],
) -> bytes:  # fmt: skip
    proc = subprocess.Popen(git_argv(args), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=cwd, env=git_env())  # fmt: skip
    out = bytearray()
    err = bytearray()

    def feed() -> None:
        with contextlib.suppress(BrokenPipeError), proc.stdin:  # type: ignore[union-attr]
            proc.stdin.write(input or b"")  # type: ignore[union-attr]

    def collect() -> None:
        out.extend(proc.stdout.read())  # type: ignore[union-attr]

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=collect, daemon=True)]
    try:
        for t in threads:
            t.start()
        while chunk := proc.stderr.read1(65536):  # type: ignore[union-attr]
            err.extend(chunk)
            on_stderr(chunk)
        status = proc.wait()
        for t in threads:
            t.join()
    finally:
        if proc.poll() is None:  # interrupted: git goes too
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]
    if status != 0:
        raise git_failure(what, bytes(err), status)
    return bytes(out)
