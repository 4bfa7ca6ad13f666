"""An image's store opened for a host command, as every command opens it.

Apart from writes.py so that push and pull open the image without the batch and
directory-walking modules writes.py needs (~13 ms of imports).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from docteur.cli.log import get_logger
from docteur.guest.device import FileDevice
from docteur.guest.generations import Store

from .errors import BuildError

log = get_logger("docteur.writes")
# Every command opens an image hashing each PACK of the generation it adopts: a damaged
# newest PACK is skipped (one warning) by every command alike, and no batch is ever
# built on top of one (its commit would share the damage and be skipped in turn).
CHECK = "pack"


@contextlib.contextmanager
def writable_store(image: str) -> Iterator[Store]:
    """The image open for writing, its lock held; a read-only one is refused."""
    with FileDevice(image, writable=True) as dev, Store.open(dev, CHECK) as store:
        _warn(image, store)
        if not store.writable:
            why = "".join(f" ({s.reason})" for s in store.skipped if s.generation is None)
            raise BuildError(f"{image} has no room for writes{why}: run docteur grow {image} SIZE")
        yield store


@contextlib.contextmanager
def readable_store(image: str) -> Iterator[Store]:
    with FileDevice(image) as dev, Store.open(dev, CHECK) as store:
        _warn(image, store)
        yield store


def _warn(image: str, store: Store) -> None:
    for line in store.warnings():
        log.warning(line.removeprefix("warning: "), image=image)
