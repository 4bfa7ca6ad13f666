"""Helpers for the tests of the writing commands: run `docteur`, make images, read them back."""

from __future__ import annotations

from pathlib import Path

from tests.support.cli import CLIRun, run_cli
from tests.support.oracle import export_packs, git_files
from tests.support.store import open_store, store_files

DATE = "2024-01-01T00:00:00Z"


def docteur(*args: str | Path, input: bytes | None = None, stdin: object = None,
            check: bool = True) -> CLIRun:  # fmt: skip
    """Run `docteur ARGS` (tests.support.cli.run_cli); with `check`, fail the test unless it exits 0."""
    proc = run_cli(*args, input=input, stdin=stdin, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"docteur {args}: exit {proc.returncode}: {proc.stderr.decode()}")
    return proc


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    return root


def made(tmp: Path, files: dict[str, bytes], capacity: str | None = "16M", name: str = "w.img") -> Path:
    """An image of a directory holding `files`, made by the CLI (with room when `capacity`)."""
    src = write_files(tmp / f"src-{name}", files)
    image = tmp / name
    extra = ["--capacity", capacity] if capacity else []
    docteur("make", *extra, "-d", DATE, src, image)
    return image


def committed(proc: CLIRun) -> bytes:
    """The commit id a writing command printed (its only stdout line)."""
    lines = proc.stdout.decode().split()
    assert len(lines) == 1 and len(lines[0]) == 40, proc.stdout
    return bytes.fromhex(lines[0])


def head_files(image: Path) -> tuple[bytes, dict[str, tuple[int, bytes]]]:
    """(head commit, path -> (mode, bytes)) read through the store (store_files)."""
    dev, store = open_store(image)
    with dev, store:
        return store.head_commit, store_files(store, store.head_commit)


def git_head_files(image: Path, repo: Path) -> tuple[bytes, dict[str, tuple[int, bytes]]]:
    """The same, per git, on a copy of the image's packs."""
    head = export_packs(str(image), repo)
    return head, git_files(repo, head)
