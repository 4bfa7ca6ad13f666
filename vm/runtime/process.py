"""The host's child processes (QEMU, the `--target unix` guest server): they die with
us and are always reaped.

    proc = await asyncio.create_subprocess_exec(*argv, preexec_fn=die_with_parent(SIGKILL))
    ...
    await terminate(proc, grace=2.0)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn (call it in the parent, pass what it returns): the child gets `sig`
    when this process dies without stopping it, e.g. on kill -9.

    The parent may already be gone between fork and prctl: prctl then arms nothing, and
    the child would live on as an orphan. So the child compares its parent with the pid
    taken here, and if it changed, it sends itself `sig` at once."""
    parent = os.getpid()

    def preexec() -> None:
        with contextlib.suppress(Exception):  # no libc prctl (not Linux): nothing to arm
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


async def terminate(proc: asyncio.subprocess.Process, grace: float) -> int:
    """SIGTERM, then SIGKILL if it still runs after `grace` seconds; reaped either way.
    Returns its exit status."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
    return await proc.wait()
