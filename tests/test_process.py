"""The child-process rule of the host (docteur.vm.runtime.process): a child dies with
its parent, even when the parent is gone before the child could arm PR_SET_PDEATHSIG."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# Runs as a subreaper, so that the orphaned grandchild becomes its child and can be
# waited for. The middle process takes die_with_parent() (its own pid), forks, and
# exits at once; the grandchild waits until it is orphaned, then runs the preexec
# function as a spawned child would between fork and exec.
SCRIPT = """
import ctypes, os, signal, sys, time
from docteur.vm.runtime.process import die_with_parent

PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1)
read, write = os.pipe()
middle = os.fork()
if middle == 0:
    preexec = die_with_parent(signal.SIGTERM if sys.argv[1] == "late" else signal.SIGUSR1)
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        if sys.argv[1] == "late":  # the usual case: armed while the parent lives
            preexec()
            os.write(write, b"armed")
        while os.getppid() == parent:
            time.sleep(0.01)
        if sys.argv[1] == "early":  # the parent died between fork and prctl
            preexec()
        time.sleep(30)  # an orphan that was not stopped
        os._exit(0)
    if sys.argv[1] == "late":
        os.read(read, 5)
    os._exit(0)
os.waitpid(middle, 0)
pid, status = os.waitpid(-1, 0)  # the grandchild, reparented to us
print(os.WTERMSIG(status) if os.WIFSIGNALED(status) else -os.WEXITSTATUS(status))
"""


@pytest.mark.parametrize(("when", "sig"), [("early", signal.SIGUSR1), ("late", signal.SIGTERM)])
def test_a_child_dies_with_its_parent(when: str, sig: int) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, when], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) == sig  # killed by the signal asked for, not living on
