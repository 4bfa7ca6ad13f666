"""The initramfs ships only the stdlib modules the guest's tracing found: every import
statement in guest/ (lazy ones inside functions too) must resolve in the booted guest.

A second cpio appended to the built initramfs replaces /init (the kernel unpacks them in
order) by a script that imports each name with the guest's own interpreter and files,
logs what failed to the console and powers off.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from docteur.vm.guestbuild import guestpy
from docteur.vm.guestbuild.cpio import Archive
from docteur.vm.guestbuild.initramfs import GUEST_SRC, MTIME
from docteur.vm.runtime.appliance import Appliance
from tests.support.vm import GUEST, needs_vm

pytestmark = [pytest.mark.vm, needs_vm]

_INIT = """#!/usr/bin/python3.11 -IS
import sys
from docteur.guest import pid1

missing = []
for name in NAMES:
    try:
        __import__(name)
    except ImportError as exc:
        missing.append(f"{name} ({exc})")
pid1.log("imported %d names; missing: %s" % (len(NAMES), ", ".join(missing) or "none"))
sys.stderr.flush()
pid1.power_off()
"""


def guest_import_names() -> list[str]:
    """Every docteur.guest module and every module an import statement in guest/ names
    (not the `from pkg import name` guesses, which may be functions; nor the names the
    build excludes as host-only)."""
    sources = sorted(GUEST_SRC.glob("*.py"))
    names = {f"docteur.guest.{s.stem}" for s in sources if s.stem != "__main__"}  # it would serve
    return sorted(names | {n for n in guestpy.imported_names(sources) if not n.startswith("?")})


async def missing_in_guest(names: list[str], tmp_path: Path) -> str:
    """The console line of the importing /init, booted on the built guest."""
    extra = Archive()
    extra.file("init", _INIT.replace("NAMES", repr(names)).encode(), 0o755)
    initrd = tmp_path / "initrd"
    initrd.write_bytes((GUEST / "initrd").read_bytes() + extra.cpio(MTIME))
    disk = tmp_path / "unused.img"  # the appliance wants one; this /init never reads it
    disk.write_bytes(bytes(4096))
    vm = Appliance(blocks={"docteur": disk}, greet=False, kernel=GUEST / "vmlinuz", initrd=initrd)
    async with vm:
        assert await vm.wait(120) == 0
        console = vm.console_log.read_text()
    lines = [line for line in console.splitlines() if "imported" in line]
    assert len(lines) == 1, console[-2000:]
    return lines[0]


async def test_every_guest_import_resolves_in_the_guest(tmp_path: Path) -> None:
    names = guest_import_names()
    assert {"mmap", "zlib", "struct", "docteur.guest.server", "docteur.guest.verify"} <= set(names)
    line = await missing_in_guest([*names, "socket"], tmp_path)
    # socket is named by the server's host-only --listen and left out on purpose: the
    # check sees what the guest lacks (and only that).
    assert line.endswith(f"imported {len(names) + 1} names; missing: socket (No module named 'socket')")
