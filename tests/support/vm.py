"""What the microVM tests need besides an image and a client: the skip marker, the guest's
artifacts, and a check that a process is gone."""

from __future__ import annotations

import os
import shutil

import pytest

from docteur.vm.runtime.appliance import DEFAULT_BUILD

GUEST = DEFAULT_BUILD / "guest"
needs_vm = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or not (GUEST / "initrd").exists(),
    reason="needs qemu-system-x86_64 and the guest (make guest)",
)


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
