"""The guest's side of a snapshot start (the host's: docteur.vm.runtime.snapshot).

The host saves a cold-booted, verified guest's state and later restores it instead of
booting. Two requests tell the guest (PROTOCOL.md, Snapshots):

- `snapshot` (op 18), sent just before the state is saved: the guest notes what its
  disks hold where a change would show (the header, every PACK's and IDX's trailer, the
  write area's header and root records), read from the disks themselves.
- `restored` (op 19), sent after a restore: the guest drops its page cache of the disks
  (it holds the pages of the run the state was saved in), reads the same bytes again and
  compares. Equal: the disks are the ones it verified, and the greeting and `info` say
  `restored`. Different: the guest serves nothing any more (boot_failed), and the host
  boots cold instead.

The host has already compared the images' identity (device, inode, size, times, PACK
checksums) before choosing the snapshot; this is the guest's own check that the disks it
was given are the verified ones.
"""

from __future__ import annotations

import os

from .errors import IntegrityError
from .values import Result

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is dear to import in the VM
    from .connection import Session
    from .image import Image
    from .protocol import Request
    from .service import Service
    from .values import Answer

_BLOCK = 4096
HOST_OPS = ("snapshot", "restored")  # the appliance's own requests: a relay refuses them to clients


def regions(image: Image) -> list[tuple[int, int]]:
    """(offset, length) of the bytes that change whenever the image does: the header
    block, each PACK's and IDX's trailer, the write area's header and root records."""
    layout = image.layout
    out = [(0, _BLOCK), (layout.pack_end - 20, 20), (layout.idx_end - 40, 40)]
    store = image.store
    for e in store.extents:
        out += [(e.pack_offset + e.pack_length - 20, 20), (e.idx_offset + e.idx_length - 40, 40)]
    area = store.area
    if area is not None:
        out.append((area.offset, area.data_start - area.offset))  # header and every slot
    return out


def marks(image: Image) -> bytes:
    """Those bytes as the disk holds them now (not as the page cache remembers them)."""
    fd = image.fd
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return b"".join(os.pread(fd, length, offset) for offset, length in regions(image))


def snapshot(service: Service, req: Request, session: Session | None = None) -> Answer:
    service.marks = {name: marks(disk.image) for name, disk in service.disks.items()}
    return Result(None)


def restored(service: Service, req: Request, session: Session | None = None) -> Answer:
    if not service.marks:
        raise IntegrityError("no snapshot was taken of this guest")
    for name, disk in service.disks.items():
        if marks(disk.image) != service.marks.get(name):
            error = f"disk {name!r}: not the disk verified before the snapshot"
            service.boot_error = error
            service.hello_fields.update(status="error", error=error)
            raise IntegrityError(error)
    service.hello_fields["restored"] = "yes"
    return Result(None)
