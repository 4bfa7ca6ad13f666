"""The small block-device interface the writer works on, and its one real implementation.

`FileDevice` opens an image file on the host or a block device (`/dev/vdX`) in
the VM. Writers only ever issue whole 4096-byte blocks at 4096-aligned offsets,
which is what O_DIRECT on a block device needs, so the same code runs on both.

After any error on a write or a flush the device is *failed*: the state of the
write cache is unknown (a later fsync may report success although the pages it
failed to write were dropped: "fsyncgate"), so every later write or flush raises
DeviceFailed until the process restarts and reads the disk again.
"""

from __future__ import annotations

import os
import stat

from .errors import DocteurError
from .layout import device_size

BLOCK = 4096
# QEMU's file-posix driver takes OFD read locks on byte 100 + permission bit for
# the permissions it holds (bit 1 = write) and 200 + bit for those it refuses to
# share. A write lock on byte 101 therefore conflicts with any QEMU that has the
# image attached writable, and with another docteur writer.
LOCK_BYTE = 101
# A reader (a docteur server, a read-only QEMU) holds shared locks on byte 100 ("I
# read") and 201 ("I do not share write"), exactly as a read-only QEMU does: readers
# never conflict with each other, a writer refuses to start while byte 201 is held.
READ_BYTE = 100
NO_WRITE_BYTE = 201


class DeviceError(DocteurError):
    """The device cannot be opened, locked or used as asked."""


class DeviceFailed(DeviceError):
    """A write or a flush failed earlier: nothing more is written until a restart."""


class Locked(DeviceError):
    """Another process writes the image."""


def align_up(n: int, block: int = BLOCK) -> int:
    return -(-n // block) * block


class Device:
    """What the store needs from a disk. Subclasses implement the `_raw_*` methods;
    this class enforces block alignment of writes and the stop-after-error rule."""

    size: int = 0
    name: str = "device"
    writable: bool = True
    failed: BaseException | None = None

    def pread(self, n: int, off: int) -> bytes:
        raise NotImplementedError

    def _raw_pwrite(self, data: bytes | memoryview, off: int) -> None:
        raise NotImplementedError

    def _raw_flush(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def refuse_if_failed(self) -> None:
        if self.failed is not None:
            raise DeviceFailed(
                f"{self.name}: stopped writing after an I/O error ({self.failed}): restart to write again"
            )

    def pwrite(self, data: bytes | memoryview, off: int) -> None:
        self.refuse_if_failed()
        if off % BLOCK or len(data) % BLOCK:
            raise ValueError(f"unaligned write of {len(data)} bytes at {off}")
        if off + len(data) > self.size:
            raise DeviceError(f"{self.name}: write past the end ({off + len(data)} > {self.size})")
        try:
            self._raw_pwrite(data, off)
        except OSError as exc:
            self.failed = exc
            raise DeviceFailed(f"{self.name}: write of {len(data)} bytes at {off} failed: {exc}") from None

    def flush(self) -> None:
        self.refuse_if_failed()
        try:
            self._raw_flush()
        except OSError as exc:
            self.failed = exc
            raise DeviceFailed(f"{self.name}: flush failed: {exc}") from None

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FileDevice(Device):
    """An image file (pwrite + fdatasync) or a block device (O_DIRECT, aligned buffers).

    `writable` opens it for writing and takes the writer lock (see LOCK_BYTE): the
    lock belongs to the open file description, so it dies with its holder. `direct`
    forces direct I/O on (or off) whatever the path is; by default block devices
    only use it."""

    def __init__(self, path: str, writable: bool = False, direct: bool | None = None):
        self.name = path
        self.writable = writable
        flags = (os.O_RDWR if writable else os.O_RDONLY) | os.O_CLOEXEC
        try:
            self.fd = os.open(path, flags)
        except FileNotFoundError:
            raise DeviceError(f"{path}: no such file") from None
        except OSError as exc:
            raise DeviceError(f"{path}: {exc.strerror}") from None
        self._direct_fd = -1
        self._buf: memoryview | None = None
        try:
            st = os.fstat(self.fd)
            if stat.S_ISDIR(st.st_mode):
                raise DeviceError(f"{path}: is a directory, not an image")
            self.is_block = stat.S_ISBLK(st.st_mode)
            self.size = device_size(self.fd)
            if writable:
                lock_writer(self.fd, path)
            if self.is_block if direct is None else direct:
                # Direct I/O: the guest's page cache would only double the data, and
                # a flush then covers exactly what the device was given.
                self._direct_fd = os.open(path, flags | os.O_DIRECT)
        except BaseException:
            self.close()
            raise

    def _buffer(self, n: int) -> memoryview:
        """An aligned buffer (anonymous mmap: page-aligned) of at least `n` bytes."""
        if self._buf is None or len(self._buf) < n:
            import mmap  # a shared library: loaded only for block devices

            self._buf = memoryview(mmap.mmap(-1, max(align_up(n), 1 << 20)))
        return self._buf

    def pread(self, n: int, off: int) -> bytes:
        n = max(0, min(n, self.size - off))
        if self._direct_fd < 0:
            return os.pread(self.fd, n, off)
        start = off - off % BLOCK
        length = align_up(off + n) - start
        buf = self._buffer(length)
        got = os.preadv(self._direct_fd, [buf[:length]], start)
        skip = off - start
        return bytes(buf[skip : min(skip + n, got)])

    def _raw_pwrite(self, data: bytes | memoryview, off: int) -> None:
        if self._direct_fd < 0:
            view = memoryview(data)
            while view:
                done = os.pwrite(self.fd, view, off)
                view, off = view[done:], off + done
            return
        buf = self._buffer(len(data))
        buf[: len(data)] = data
        done = os.pwritev(self._direct_fd, [buf[: len(data)]], off)
        if done != len(data):
            raise OSError(5, f"short write ({done} of {len(data)} bytes)")

    def _raw_flush(self) -> None:
        # fdatasync on a block device sends a FLUSH (virtio-blk: the host fdatasyncs).
        os.fdatasync(self.fd)

    def close(self) -> None:
        for fd in (self._direct_fd, self.fd):
            if fd >= 0:
                os.close(fd)
        self._direct_fd = self.fd = -1
        if self._buf is not None:
            self._buf.release()
            self._buf = None


def _flock(kind: int, byte: int) -> bytes:
    import struct

    # struct flock on Linux: l_type, l_whence (short), l_start, l_len (off_t), l_pid.
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, byte, 1, 0)


def _held(fd: int, byte: int) -> bool:
    """Whether another open file holds any lock on `byte` (what an exclusive lock
    there would conflict with)."""
    import fcntl
    import struct

    got = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, byte))
    return struct.unpack_from("h", got)[0] != fcntl.F_UNLCK


def _who(fd: int, byte: int, kinds: str) -> str:
    holder = _lock_holder(fd, byte)
    return f"another process (pid {holder})" if holder else f"another process ({kinds})"


def lock_writer(fd: int, path: str) -> None:
    """Take the exclusive writer lock on the image open on `fd`, or raise Locked."""
    import fcntl

    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_WRLCK, LOCK_BYTE))
    except (BlockingIOError, PermissionError):
        who = _who(fd, LOCK_BYTE, "a docteur writer or QEMU")
        raise Locked(f"{path} is being written by {who}") from None
    # Taken first, tested after (readers do the reverse): of a reader and a writer
    # starting together, at least one sees the other.
    if _held(fd, NO_WRITE_BYTE):
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, LOCK_BYTE))
        who = _who(fd, NO_WRITE_BYTE, "a docteur server or a VM")
        raise Locked(f"{path} is being served by {who}: stop it before writing")


def lock_reader(fd: int, path: str) -> None:
    """Take a reader's shared locks on the image open on `fd` (see READ_BYTE), or
    raise Locked when a writer has it. A file system without OFD locks takes none."""
    import fcntl

    try:
        for byte in (READ_BYTE, NO_WRITE_BYTE):
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_RDLCK, byte))
        writing = _held(fd, LOCK_BYTE)
    except (BlockingIOError, PermissionError):
        writing = True  # byte 201 held exclusively: only a writer would
    except OSError:
        return  # no locks here (ENOLCK, EINVAL): nothing to protect against
    if writing:
        for byte in (READ_BYTE, NO_WRITE_BYTE):
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, byte))
        raise Locked(f"{path} is being written by {_who(fd, LOCK_BYTE, 'a docteur writer or QEMU')}")


def _lock_holder(fd: int, byte: int = LOCK_BYTE) -> int | None:
    """The pid of a process holding an OFD lock on `byte` of this file, when
    /proc tells (OFD locks report no pid through F_GETLK)."""
    st = os.fstat(fd)
    me = os.getpid()
    # As /proc shows a lock's file: device major:minor in hex, then the inode.
    tag = f" {os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != me]
    except OSError:
        return None
    for pid in pids:
        fdinfo = f"/proc/{pid}/fdinfo"
        try:
            names = os.listdir(fdinfo)
        except OSError:
            continue
        for name in names:
            try:
                with open(f"{fdinfo}/{name}") as f:
                    text = f.read()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("lock:") and "OFDLCK" in line and tag in line:
                    fields = line.split()
                    try:
                        start, end = int(fields[-2]), fields[-1]
                    except (ValueError, IndexError):
                        continue
                    if start <= byte and (end == "EOF" or int(end) >= byte):
                        return int(pid)
    return None
