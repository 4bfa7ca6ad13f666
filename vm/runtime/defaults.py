"""What the command line shows of the microVM's settings, cheap to import (qemu.py
loads dataclasses and shutil: `docteur --help` need not)."""

ACCELS = ("auto", "kvm", "tcg")
DEFAULT_MEMORY = 128  # MiB: the guest serves a 100 000-file image in ~46 MiB
MIN_MEMORY = 64  # MiB: below it Debian's kernel and python3.11 do not boot
BOOT_TIMEOUT = 60.0  # seconds from QEMU's start to the guest's greeting, verification included
SNAPSHOT_MODES = ("auto", "off", "refresh")  # restore a saved state / never / boot cold and save anew
DEFAULT_SNAPSHOT = "auto"  # `docteur run`'s; the Appliance class's is "off" (a library call opts in)
