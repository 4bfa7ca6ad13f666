"""The QEMU command line for the docteur microVM.

Everything here is a decision about how the guest boots fast and never hangs
under TCG (see the microVM facts): -M microvm with ACPI and RTC kept on,
tsc_early_khz always, panic=-1 with -no-reboot, AVX off for faster TCG
SHA-1/zlib. QMP and the protocol port are connected socketpairs handed to
QEMU as file descriptors: no socket paths to race for or clean up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from docteur.cli.errors import HostError
from docteur.guest.defaults import DEFAULT_VERIFY, PORT_NAME, RW_PARAM, VERIFY_MODES
from docteur.vm.runtime.defaults import ACCELS, DEFAULT_MEMORY

QEMU = "qemu-system-x86_64"
# virtio-blk serials are at most 20 bytes; the name also goes on the kernel command line.
BLOCK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,20}")
# TCG's AVX emulation (new in QEMU 7.2) makes glibc pick slower SHA-1/zlib paths. Without
# ERMS/FSRM the kernel copies with plain moves instead of `rep movsb`, which TCG runs a byte
# at a time: measured side by side, the raw port went from 134 to 387 MB/s, a 64 MiB get
# from 22 to 34 MB/s (repeat 52 to 111) and a cold boot from 3.25 to 2.83 s.
TCG_CPU = "max,-avx,-avx2,-fma,-f16c,-erms,-fsrm"
BOOT_ARGS = (
    "console=ttyS0", "panic=-1", "quiet", "mitigations=off", "audit=0", "security=none",
    "cryptomgr.notests", "random.trust_cpu=on", "no_timer_check",
)  # fmt: skip


class QemuError(HostError):
    """QEMU missing, or a command line it would refuse (a bad block name, verify mode)."""


def find_qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise QemuError(f"{QEMU} not found: install qemu-system-x86 (make setup does)")
    return path


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def kvm_usable() -> bool:
    """KVM only with real virtualization flags: a paravirtual /dev/kvm (no vmx/svm)
    starts QEMU but runs stock kernels ~1000x slower, then pauses on an emulation error."""
    return bool(_cpu_flags() & {"vmx", "svm"}) and os.access("/dev/kvm", os.R_OK | os.W_OK)


def choose_accel(requested: str) -> str:
    if requested not in ACCELS:
        raise QemuError(f"--accel must be one of {', '.join(ACCELS)}")
    if requested == "auto":
        return "kvm" if kvm_usable() else "tcg"
    return requested


def host_khz() -> int:
    """Host TSC rate for tsc_early_khz: without it ~10 % of TCG boots hang at
    "Marking TSC unstable"."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.partition(":")[2]) * 1000)
    except (OSError, ValueError):
        pass
    return 2_000_000


def check_block_name(name: str) -> str:
    if not BLOCK_NAME.fullmatch(name):
        raise QemuError(f"block name {name!r}: 1-20 characters of A-Z a-z 0-9 _ . -")
    return name


def _opt(value: str | Path) -> str:
    # QEMU option values escape a comma by doubling it.
    return str(value).replace(",", ",,")


@dataclass
class Launch:
    kernel: Path
    initrd: Path
    blocks: dict[str, Path]
    console_log: Path
    qmp_fd: int
    port_fd: int | None = None  # None: no protocol port (the bare benchmark boot)
    verify: str = DEFAULT_VERIFY
    memory: int = DEFAULT_MEMORY
    accel: str = "tcg"  # already chosen: kvm or tcg
    extra_args: list[str] = field(default_factory=list)  # kernel command line
    writable: bool = False  # every disk attached read-write, the guest told to write
    # A disk's QEMU -blockdev (its JSON form) instead of the plain image file, for a
    # driver chain: blkdebug (fault injection) or blklogwrites (a log of every write
    # and flush) in the tests. Its node-name and read-only are set here.
    blockdevs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def cmdline(self) -> str:
        args = [*BOOT_ARGS, f"tsc_early_khz={host_khz()}"]
        args += [f"docteur.verify={self.verify}", f"docteur.blocks={','.join(self.blocks)}"]
        if self.writable:
            args.append(f"{RW_PARAM}={','.join(self.blocks)}")
        return " ".join([*args, *self.extra_args])

    def disk_args(self, i: int, name: str, path: Path) -> list[str]:
        """-drive/-blockdev and the virtio-blk device of one disk."""
        check_block_name(name)
        node = f"d{i}"
        custom = self.blockdevs.get(name)
        if custom is not None:
            backend = ["-blockdev", json.dumps({**custom, "node-name": node, "read-only": not self.writable})]
        elif self.writable:
            # cache=none: O_DIRECT on the host, so the guest's writes skip the host's
            # page cache and a guest flush (fdatasync of /dev/vdX) is an fdatasync of the
            # image. Never `unsafe` (it drops flushes), nor writethrough/directsync (no
            # write cache to flush: every write synchronous, same order, far slower).
            # aio stays QEMU's default (threads: any file system; the serial port, not
            # the disk, bounds a put); discard stays ignored: the store never discards,
            # a freed extent is written over later.
            backend = ["-drive", f"id={node},file={_opt(path)},if=none,format=raw,readonly=off,cache=none"]
        else:
            backend = ["-drive", f"id={node},file={_opt(path)},if=none,readonly=on,format=raw"]
        device = f"virtio-blk-device,drive={node},serial={name}"
        if self.writable:
            # A failed write reaches the guest as EIO (it then refuses writes and keeps
            # serving reads); QEMU's default stops the whole VM on ENOSPC instead.
            device += ",werror=report,rerror=report"
        return [*backend, "-device", device]

    def argv(self, qemu: str) -> list[str]:
        if self.verify not in VERIFY_MODES:
            raise QemuError(f"verify mode must be one of {', '.join(VERIFY_MODES)}")
        cpu = ["-accel", "kvm", "-cpu", "host"] if self.accel == "kvm" else ["-accel", "tcg", "-cpu", TCG_CPU]
        argv = [
            qemu, "-M", "microvm", "-nodefaults", "-no-user-config", "-no-reboot",
            "-display", "none", *cpu, "-m", str(self.memory), "-smp", "1",
            "-kernel", _opt(self.kernel), "-initrd", _opt(self.initrd), "-append", self.cmdline(),
            "-chardev", f"file,id=con,path={_opt(self.console_log)}", "-serial", "chardev:con",
            "-chardev", f"socket,id=qmp,fd={self.qmp_fd}", "-mon", "chardev=qmp,mode=control",
        ]  # fmt: skip
        for i, (name, path) in enumerate(self.blocks.items()):
            argv += self.disk_args(i, name, path)
        if self.port_fd is not None:
            argv += [
                "-device", "virtio-serial-device",
                "-chardev", f"socket,id=port,fd={self.port_fd}",
                "-device", f"virtserialport,chardev=port,name={PORT_NAME}",
            ]  # fmt: skip
        return argv
