"""What `docteur make` writes before the image exists, and what a kill -9 leaves of it.

Two makes are held mid-fetch by servers that stop answering; one is killed with
SIGKILL. The next make in that directory removes the dead one's scratch, never
the live one's; the live one, stopped properly, removes its own.
"""

from __future__ import annotations

import os
import random
import signal
import time
import uuid
from pathlib import Path

import pytest

from docteur.builder.scratch import is_scratch_name, scratch_dir, sweep
from docteur.cli.owned import OWNER_LOCK
from tests.support.cli import kill_all, marked_processes, run_cli, start_cli
from tests.support.git import git, needs_git
from tests.support.relay import stalling_relay
from tests.support.repos import make_repo
from tests.support.servers import run_git_daemon

pytestmark = needs_git
PARTIAL = 8192


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("served")
    work = make_repo(base / "work", history=1)
    (work / "noise.bin").write_bytes(random.Random(7).randbytes(300_000))
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "noise", cwd=work)
    git("clone", "-q", "--bare", work, base / "project.git")
    return base


def _until(condition, what: str, limit: float = 60) -> None:  # type: ignore[no-untyped-def]
    """Wait for `condition` (a generous limit: only a broken test reaches it)."""
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def _scratch(*dirs: Path) -> list[Path]:
    """Whatever make keeps before the image exists, wherever it may put it."""
    return sorted(p for d in dirs for p in d.iterdir() if p.name.startswith((".", "docteur-")))


def test_kill_9_leftovers_go_with_the_next_make(served: Path, tmp_path: Path) -> None:
    tmp, out = tmp_path / "tmp", tmp_path / "out"
    tmp.mkdir()
    out.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    marks = {"doomed": uuid.uuid4().hex, "live": uuid.uuid4().hex}
    with run_git_daemon(served) as upstream:
        port = int(upstream.rsplit(":", 1)[1])
        with stalling_relay(port, PARTIAL) as r1, stalling_relay(port, PARTIAL) as r2:
            # --timeout 600: held for as long as the test needs, however slow the machine.
            held = ("make", "--timeout", "600")
            doomed = start_cli(*held, f"git://127.0.0.1:{r1.port}/project.git", out / "a.img",
                               env=env, mark=marks["doomed"])  # fmt: skip
            live = start_cli(*held, f"git://127.0.0.1:{r2.port}/project.git", out / "b.img",
                             env=env, mark=marks["live"])  # fmt: skip
            try:
                # Both are mid-pack, their scratch directories part full.
                _until(lambda: r1.forwarded == PARTIAL and r2.forwarded == PARTIAL, "both makes to stall")
                _until(lambda: len(_scratch(tmp, out)) == 2, "two scratch directories")
                doomed.kill()
                doomed.wait()
                run = run_cli("make", served / "project.git", out / "c.img", env=env)
                assert run.rc == 0, run.err
                # The dead make's scratch is gone; the live one's is untouched, beside its image.
                (survivor,) = _scratch(tmp, out)
                assert survivor.parent == out and survivor.name.startswith(".b.img.docteur-")
                assert (survivor / OWNER_LOCK).exists()
                live.send_signal(signal.SIGTERM)
                _, err = live.communicate(timeout=60)
                assert live.returncode == 128 + signal.SIGTERM, err
            finally:
                for proc in (doomed, live):
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                kill_all([pid for mark in marks.values() for pid in marked_processes(mark)])
    assert _scratch(tmp, out) == []
    assert sorted(p.name for p in out.iterdir()) == ["c.img"]


def test_scratch_is_beside_the_image_and_goes(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    with scratch_dir(str(image)) as work:
        assert Path(work).parent == tmp_path and is_scratch_name(Path(work).name)
        assert Path(work).name.startswith(".disk.img.docteur-")
        (Path(work) / "pack").write_bytes(b"x" * 1000)
        assert sweep(str(tmp_path)) == []  # ours, and we are alive
    assert list(tmp_path.iterdir()) == []


def test_sweep_spares_what_is_not_a_dead_makes(tmp_path: Path) -> None:
    """A lockless scratch is being created (the lock comes right after): kept while
    young. Names that only look alike, files, and other users' are left alone."""
    young = tmp_path / ".a.img.docteur-abcd1234"
    old = tmp_path / ".a.img.docteur-efgh5678"
    for d in (young, old):
        d.mkdir()
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    lookalikes = [tmp_path / ".a.img.docteur-short", tmp_path / "a.img.docteur-abcd1234"]
    for d in lookalikes:
        d.mkdir()
    (tmp_path / ".b.img.docteur-ijkl9012").write_text("a file, not ours")
    assert sweep(str(tmp_path)) == [str(old)]
    assert young.is_dir() and all(d.is_dir() for d in lookalikes)
    assert (tmp_path / ".b.img.docteur-ijkl9012").is_file()
