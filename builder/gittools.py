"""Running the git command line, when it is installed (it does the heavy lifting fast)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

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
) -> bytes:
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
        return BuildError(f"disk full: {what} failed: {last}")
    return BuildError(f"{what} failed: {last}")
