"""The QEMU command line for the docteur microVM.

Everything here is a decision about how the guest boots fast and never hangs
under TCG (see the microVM facts): -M microvm with ACPI and RTC kept on,
tsc_early_khz always, panic=-1 with -no-reboot, AVX off for faster TCG
SHA-1/zlib. QMP and the protocol port are connected socketpairs handed to
QEMU as file descriptors: no socket paths to race for or clean up.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from docteur.guest.defaults import DEFAULT_VERIFY, PORT_NAME, VERIFY_MODES

QEMU = "qemu-system-x86_64"
ACCELS = ("auto", "kvm", "tcg")
# virtio-blk serials are at most 20 bytes; the name also goes on the kernel command line.
BLOCK_NAME = re.compile(r"[A-Za-z0-9_.-]{1,20}")
# TCG's AVX emulation (new in QEMU 7.2) makes glibc pick slower SHA-1/zlib paths.
TCG_CPU = "max,-avx,-avx2,-fma,-f16c"
BOOT_ARGS = (
    "console=ttyS0", "panic=-1", "quiet", "mitigations=off", "audit=0", "security=none",
    "cryptomgr.notests", "random.trust_cpu=on", "no_timer_check",
)  # fmt: skip


class QemuError(RuntimeError):
    pass


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
    memory: int = 128
    accel: str = "tcg"  # already chosen: kvm or tcg
    extra_args: list[str] = field(default_factory=list)  # kernel command line

    def cmdline(self) -> str:
        args = [*BOOT_ARGS, f"tsc_early_khz={host_khz()}"]
        args += [f"docteur.verify={self.verify}", f"docteur.blocks={','.join(self.blocks)}"]
        return " ".join([*args, *self.extra_args])

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
            check_block_name(name)
            argv += [
                "-drive", f"id=d{i},file={_opt(path)},if=none,readonly=on,format=raw",
                "-device", f"virtio-blk-device,drive=d{i},serial={name}",
            ]  # fmt: skip
        if self.port_fd is not None:
            argv += [
                "-device", "virtio-serial-device",
                "-chardev", f"socket,id=port,fd={self.port_fd}",
                "-device", f"virtserialport,chardev=port,name={PORT_NAME}",
            ]  # fmt: skip
        return argv


# ---- run directories ---------------------------------------------------------
# Each appliance keeps its console log and QEMU's stderr in a short private
# directory, /tmp/dct-XXXXXXXX, removed when it stops. A kill -9 of the host
# process cannot remove it; so every directory holds `owner.lock`, flock'ed by
# its owner for as long as it runs (the lock goes with the process, whatever kills
# it), and each new appliance first removes the directories whose lock it can take.
RUNDIR_BASE = "/tmp"
RUNDIR_PREFIX = "dct-"
OWNER_LOCK = "owner.lock"
UNLOCKED_GRACE = 60.0  # seconds a directory without a lock is left alone (being created)


def make_rundir(base: str = RUNDIR_BASE) -> tuple[Path, int]:
    """Clean stale run directories, then create ours; returns it and the lock's fd
    (keep it open while the directory is in use; close it after removing it)."""
    with contextlib.suppress(OSError):
        clean_stale_rundirs(base)
    path = Path(tempfile.mkdtemp(prefix=RUNDIR_PREFIX, dir=base))
    # Locked before it gets its name: a cleaner never sees an unlocked owner.lock.
    fd = os.open(path / ".owner.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.rename(path / ".owner.tmp", path / OWNER_LOCK)
    except BaseException:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path, fd


def _open_in(directory: str) -> bool:
    """Does any process hold a file of `directory` open (QEMU its console log)?"""
    prefix = directory.rstrip("/") + "/"
    me = str(os.getpid())  # we hold its owner.lock while we check
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid == me:
            continue
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                        return True
    return False


def clean_stale_rundirs(base: str = RUNDIR_BASE, grace: float = UNLOCKED_GRACE) -> list[str]:
    """Remove our run directories whose owner is gone; returns what was removed.

    Stale: its owner.lock can be locked (the owner died), or it has none (an older
    docteur's, or a creation that crashed) and is older than `grace`. Either way, a
    directory that some process still has a file open in is kept."""
    removed = []
    uid = os.getuid()
    with os.scandir(base) as it:
        entries = [e for e in it if e.name.startswith(RUNDIR_PREFIX)]
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            if not entry.is_dir(follow_symlinks=False) or st.st_uid != uid:
                continue
            fd = os.open(os.path.join(entry.path, OWNER_LOCK), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            if time.time() - st.st_mtime < grace or _open_in(entry.path):
                continue
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its owner is running
        else:
            if not _open_in(entry.path):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
        finally:
            os.close(fd)
    return removed
