"""Run directories of dead owners (kill -9 of `docteur run`) are cleaned by the next run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from docteur.cli.owned import OWNER_LOCK
from docteur.vm.runtime import rundir

CHILD = """
import sys, time
from docteur.vm.runtime import rundir
path, fd = rundir.make_rundir(sys.argv[1])
(path / "console.log").write_text("boot")
print(path, flush=True)
time.sleep(60)
"""


def _owner(base: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(base)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_stale_rundirs_of_dead_owners_are_removed(tmp_path: Path) -> None:
    alive, alive_dir = _owner(tmp_path)
    dead, dead_dir = _owner(tmp_path)
    try:
        assert (dead_dir / OWNER_LOCK).read_text().strip() == str(dead.pid)
        dead.kill()  # kill -9: nothing of ours runs to clean up
        dead.wait(5)
        # No lock at all (an older docteur's, or being created): only when old and unused.
        fresh = tmp_path / "dct-fresh"
        fresh.mkdir()
        old = tmp_path / "dct-old"
        old.mkdir()
        busy = tmp_path / "dct-busy"
        busy.mkdir()
        for d in (old, busy):
            os.utime(d, (time.time() - 3600, time.time() - 3600))
        other = tmp_path / "unrelated"
        other.mkdir()
        with open(busy / "console.log", "w"):  # a QEMU of an older docteur still writing
            removed = rundir.clean_stale_rundirs(str(tmp_path))
        assert sorted(removed) == sorted([str(dead_dir), str(old)])
        assert alive_dir.is_dir() and fresh.is_dir() and busy.is_dir() and other.is_dir()
        assert not dead_dir.exists() and not old.exists()
        # make_rundir cleans before it creates; ours is locked from the start.
        path, fd = rundir.make_rundir(str(tmp_path))
        try:
            removed = rundir.clean_stale_rundirs(str(tmp_path), grace=0)
            assert sorted(removed) == sorted([str(fresh), str(busy)])  # unlocked, now unused
            assert path.is_dir() and alive_dir.is_dir()
        finally:
            os.close(fd)
        alive.kill()
        alive.wait(5)
        assert sorted(rundir.clean_stale_rundirs(str(tmp_path))) == sorted([str(alive_dir), str(path)])
        assert other.is_dir()
    finally:
        for p in (alive, dead):
            p.kill()
            p.wait(5)
