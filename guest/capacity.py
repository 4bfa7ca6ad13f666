"""Room for writes: turning a plain image into one with a write area, and growing it.

Used by `docteur make --capacity` and `docteur grow`; see FORMAT.md, section 2.
"""

from __future__ import annotations

import os

from .device import BLOCK, FileDevice, align_up
from .errors import DocteurError, ImageError
from .generations import Store
from .roots import MAX_PAD, SLOT_SIZE, SLOTS, Area

# Below this much room for data, preparing an image for writes is refused.
MIN_DATA = 64 * 1024


def prepare(path: str, capacity: int) -> Area:
    """Give the plain image file at `path` room for writes up to `capacity` bytes in
    all: the file grows (sparse), the root ring is zeroed, the area header written,
    then flushed. The first generation is not touched."""
    with FileDevice(path, writable=True) as dev:
        with Store.open(dev) as store:
            layout, binding = store.layout, store.binding
        if store.area is not None:
            raise DocteurError(f"{path} already has room for writes (use docteur grow)")
        if store.skipped:
            raise ImageError(f"{path}: {store.skipped[0].reason}: rebuild the image with docteur make")
        if dev.is_block:
            # Where the first generation's padding ends is only known from the file's size.
            raise DocteurError(f"{path} is a block device: give the image file room instead")
        end = dev.size
        tail = dev.pread(min(end - layout.idx_end, MAX_PAD), layout.idx_end)
        if end - layout.idx_end > MAX_PAD or tail.strip(b"\0"):
            raise ImageError(f"{path}: unexpected data after the IDX: not a plain docteur image")
        area = Area(align_up(end), SLOTS, SLOT_SIZE, os.urandom(16), end, binding)
        usable = capacity - capacity % BLOCK  # the data area ends on a whole block
        if usable < area.data_start + MIN_DATA:
            raise DocteurError(
                f"capacity {capacity} is too small: the image needs at least {area.data_start + MIN_DATA}"
            )
        os.ftruncate(dev.fd, usable)
        dev.size = usable
        # Zero the ring explicitly, then the header: no slot found there predates this area.
        dev.pwrite(bytes(area.slots * area.slot_size), area.ring)
        dev.flush()
        dev.pwrite(area.to_bytes(), area.offset)
        dev.flush()
        return area


def grow(path: str, size: int) -> int:
    """Make the image at `path` `size` bytes long (sparse); returns the free space.
    An image without a write area gets one."""
    with FileDevice(path, writable=True) as dev:
        if size < dev.size:
            raise DocteurError(f"{path} is {dev.size} bytes already; give a bigger size")
        with Store.open(dev) as store:
            has_area = store.writable
        if has_area and not dev.is_block:
            os.ftruncate(dev.fd, size - size % BLOCK)
    if not has_area:
        prepare(path, size)
    with FileDevice(path) as dev, Store.open(dev) as store:
        return store.free_space()
