"""Helpers for the tests of the writing commands: run `docteur`, make images, read them back."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from docteur.guest.objects import MODE_TREE, iter_tree
from tests.crashstates import export_packs, git_files
from tests.genstore import open_store

DOCTEUR = [sys.executable, "-m", "docteur.cli"]
DATE = "2024-01-01T00:00:00Z"
ROOT = Path(__file__).resolve().parent.parent


def docteur(*args: str | Path, input: bytes | None = None, stdin: object = None,
            check: bool = True) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    """Run `docteur ARGS`; with `check`, fail the test unless it exits 0."""
    proc = subprocess.run(
        [*DOCTEUR, *map(str, args)], input=input, stdin=stdin, capture_output=True, timeout=300, cwd=ROOT,
        check=False,
    )  # fmt: skip
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


def committed(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    """The commit id a writing command printed (its only stdout line)."""
    lines = proc.stdout.decode().split()
    assert len(lines) == 1 and len(lines[0]) == 40, proc.stdout
    return bytes.fromhex(lines[0])


def head_files(image: Path) -> tuple[bytes, dict[str, tuple[int, bytes]]]:
    """(head commit, path -> (mode, bytes)) read through the store (every object
    hash-checked); a name that is not UTF-8 keeps its bytes (surrogateescape)."""
    dev, store = open_store(image)
    out: dict[str, tuple[int, bytes]] = {}

    def walk(tree: bytes, prefix: str) -> None:
        for entry in iter_tree(store.read_object(tree)[1]):
            path = prefix + os.fsdecode(entry.name)
            if entry.mode == MODE_TREE:
                walk(entry.id, path + "/")
            else:
                out[path] = (entry.mode, store.read_object(entry.id)[1])

    with dev, store:
        walk(store.commit_object().tree, "")
        return store.head_commit, out


def git_head_files(image: Path, repo: Path) -> tuple[bytes, dict[str, tuple[int, bytes]]]:
    """The same, per git, on a copy of the image's packs."""
    head = export_packs(str(image), repo)
    return head, git_files(repo, head)
