"""What a target is asked to do: built by the command line (docteur.cli), never argparse's
namespace, so that a target is as easy to drive from Python as from the shell."""

from __future__ import annotations

from dataclasses import dataclass

from docteur.guest.defaults import DEFAULT_VERIFY
from docteur.guest.protocol import DEFAULT_DISK
from docteur.vm.runtime.defaults import BOOT_TIMEOUT, DEFAULT_MEMORY, DEFAULT_SNAPSHOT


@dataclass(frozen=True)
class TargetConfig:
    blocks: dict[str, str]  # disk name -> image path, in the order given
    verify: str = DEFAULT_VERIFY  # boot verification: full, pack or none
    writable: bool = False  # --rw: the server writes the images (protocol v2 writes)
    timeout: float = BOOT_TIMEOUT  # seconds until the server greets, verification included
    disk: str = DEFAULT_DISK  # the disk `filename` is read from
    filename: str | None = None  # print this file and exit ...
    socket: str | None = None  # ... or serve on this unix socket until stopped
    memory: int = DEFAULT_MEMORY  # microvm: guest memory in MiB
    accel: str = "auto"  # microvm: auto, kvm or tcg
    kernel: str | None = None  # microvm: prebuilt guest kernel and initramfs (both or neither)
    initrd: str | None = None
    snapshot: str = DEFAULT_SNAPSHOT  # microvm: auto, off or refresh (runtime/snapshot.py)
