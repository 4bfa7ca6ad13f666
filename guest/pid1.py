"""PID 1 of the microVM: set the machine up, run the guest server, power off.

Runs under Debian's python3.11 from the initramfs (`/init` imports this and
calls main()). Standard library only and no asyncio (0.6 s to import under
TCG). There is no kmod, busybox or udev in the guest: mounts, module loads and
power-off are direct system calls through _ctypes, the C half of ctypes (the
ctypes package itself costs ~0.1 s of imports under TCG, before anything runs).

Kernel parameters read from /proc/cmdline: docteur.blocks=NAME,... (the
virtio-blk serials to wait for), docteur.verify=full|pack|none,
docteur.rw=NAME,... (the disks attached writable: served with --rw), and for
diagnosis docteur.debug=1 (stage times on the console), docteur.dry=1 (stop
before serving).

PID 1 must never return: the kernel would panic. Every path ends in
reboot(RB_POWER_OFF), which QEMU turns into a clean exit; should even that
fail, exiting makes the kernel panic and `panic=-1 -no-reboot` ends QEMU.
"""

from __future__ import annotations

import os
import sys
import time
from _ctypes import FUNCFLAG_CDECL, FUNCFLAG_USE_ERRNO, CFuncPtr, _SimpleCData, dlopen, get_errno

from .defaults import DEFAULT_VERIFY, PORT_NAME, RW_PARAM

MODULE_ORDER = "/lib/modules/docteur.order"  # written by the guest build
DEVICE_TIMEOUT = 10.0  # seconds to wait for the disks and the port to appear
_SYS_FINIT_MODULE = 313  # x86_64
_RB_POWER_OFF = 0x4321FEDC
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8

_T0 = time.monotonic()


class _CInt(_SimpleCData):
    _type_ = "i"  # what ctypes.c_int is


class _LibcFunc(CFuncPtr):
    """A libc function returning int, errno saved (what ctypes.CDLL(..., use_errno=True) makes)."""

    _flags_ = FUNCFLAG_CDECL | FUNCFLAG_USE_ERRNO
    _restype_ = _CInt


class _Libc:
    _handle = dlopen("libc.so.6")  # the attribute CFuncPtr((name, library)) looks up

    def __getattr__(self, name: str) -> _LibcFunc:
        return _LibcFunc((name, self))


_libc = _Libc()


def log(msg: str) -> None:
    # The console is the ISA serial port: the host keeps it as the guest log.
    sys.stderr.write(f"docteur-init[{time.monotonic():.3f}]: {msg}\n")
    sys.stderr.flush()


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str, flags: int = 0) -> None:
    os.makedirs(target, exist_ok=True)
    ret = _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None)
    _check(ret, f"mount {fstype} on {target}")


def load_module(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        ret = _libc.syscall(_SYS_FINIT_MODULE, fd, b"", 0)
        if ret != 0 and get_errno() != 17:  # EEXIST: built in or loaded already
            _check(ret, f"finit_module {path}")
    finally:
        os.close(fd)


def power_off() -> None:
    _libc.reboot(_RB_POWER_OFF)


def cmdline() -> dict[str, str]:
    """`docteur.KEY=VALUE` kernel parameters (dotted ones never reach init's env)."""
    with open("/proc/cmdline") as f:
        words = f.read().split()
    out: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key.startswith("docteur."):
            out[key.removeprefix("docteur.")] = value
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def find_disks(names: list[str]) -> dict[str, str]:
    """Map each expected virtio-blk serial (the host's block NAME) to its /dev node."""
    found: dict[str, str] = {}
    for dev in sorted(os.listdir("/sys/block")):
        serial = _read(f"/sys/block/{dev}/serial")
        if serial in names and os.path.exists(f"/dev/{dev}"):
            found[serial] = f"/dev/{dev}"
    return found


def find_port(name: str) -> str | None:
    base = "/sys/class/virtio-ports"
    if not os.path.isdir(base):
        return None
    for port in sorted(os.listdir(base)):
        if _read(f"{base}/{port}/name") == name and os.path.exists(f"/dev/{port}"):
            return f"/dev/{port}"
    return None


def wait_devices(names: list[str]) -> tuple[dict[str, str], str]:
    # Virtio devices probe asynchronously after the module loads: poll briefly.
    deadline = time.monotonic() + DEVICE_TIMEOUT
    while True:
        disks, port = find_disks(names), find_port(PORT_NAME)
        if port is not None and len(disks) == len(names):
            return disks, port
        if time.monotonic() > deadline:
            missing = [n for n in names if n not in disks] + ([] if port else [PORT_NAME])
            raise RuntimeError(f"devices not found: {', '.join(missing)}")
        time.sleep(0.005)


def setup() -> dict[str, str]:
    mount("devtmpfs", "/dev", "devtmpfs", _MS_NOSUID | _MS_NOEXEC)
    mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    mount("sysfs", "/sys", "sysfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    with open(MODULE_ORDER) as f:
        for line in f:
            if line.strip():
                load_module(line.strip())
    return cmdline()


def server_argv(params: dict[str, str]) -> list[str]:
    names = [n for n in params.get("blocks", "").split(",") if n]
    disks, port = wait_devices(names)
    log(f"port {port}, disks {' '.join(f'{n}={p}' for n, p in disks.items()) or '(none)'}")
    return argv_for(disks, port, params)


def argv_for(disks: dict[str, str], port: str, params: dict[str, str]) -> list[str]:
    """The guest server's command line for the disks and port found and the kernel parameters."""
    argv: list[str] = []
    for name, path in disks.items():
        argv += ["--block", f"{name}={path}"]
    writable = [n for n in params.get(RW_PARAM.removeprefix("docteur."), "").split(",") if n]
    if writable:  # /dev/vdX opened O_RDWR, O_DIRECT (device.FileDevice)
        argv.append(f"--rw={','.join(writable)}")
    return [*argv, "--verify", params.get("verify", DEFAULT_VERIFY), "--device", port]


def run() -> int:
    params = setup()
    debug = params.get("debug") == "1"
    if debug:
        log(f"modules loaded; python started at {_T0:.3f}")
    # The server's imports (~0.25 s under TCG) before the wait: the virtio devices
    # finish probing meanwhile, so the wait below mostly finds them there.
    try:
        from docteur.guest import server
    except ImportError as exc:
        log(f"FATAL: the guest server is missing from the initramfs ({exc})")
        return 70
    if debug:
        log("server imported")
    argv = server_argv(params)
    if params.get("dry") == "1":
        return 0
    return int(server.main(argv) or 0)


def main() -> None:
    code = 1
    try:
        code = run()
        log(f"server exited {code}; powering off")
    except BaseException as exc:  # PID 1: whatever happened, power off below
        # The C excepthook: `traceback` would drag a dozen modules into the guest.
        sys.__excepthook__(type(exc), exc, exc.__traceback__)
        log(f"FATAL: {type(exc).__name__}: {exc}; powering off")
    finally:
        sys.stderr.flush()
        power_off()
        # Only reached when power-off failed: exiting PID 1 panics the kernel,
        # and panic=-1 with QEMU's -no-reboot ends the VM instead of hanging.
        os._exit(code or 1)


if __name__ == "__main__":
    main()
