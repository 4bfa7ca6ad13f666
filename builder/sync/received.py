"""A pack a pull received, in a scratch file: read with dulwich, thin or not.

A server may send a thin pack (deltas against objects it knows the image has): such
bases are read from the image. The pack is read once, every delta resolved; the commits
and trees are kept in memory (the history walks and the merge need them), the other
objects too while they fit in KEEP bytes (else the pack is read again when they are
written). `import_into` hands each object whole to the image's PACK writer, which
skips what the image holds already. So the new generation's PACK is self-contained
(FORMAT.md: never a REF_DELTA, never a delta against another PACK), whatever the server
sent: objects are re-deflated, not copied (git's pull keeps the server's deltas instead).
"""

from __future__ import annotations

from collections.abc import Iterator

from dulwich.object_format import SHA1
from dulwich.pack import PackData, UnpackedObjectIterator

from docteur.cli.log import get_logger
from docteur.guest.errors import DocteurError
from docteur.guest.objects import COMMIT, TREE, TYPE_CODES, TYPE_NUMBERS
from docteur.guest.packwrite import PackWriter

from ..errors import BuildError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .image import ObjectSource

log = get_logger("docteur.pull")

# Objects kept in memory from the one pass that reads the pack, up to this many bytes;
# a bigger pack is read a second time when its objects are written into the image.
KEEP = 64 << 20


class Received:
    def __init__(self, path: str, store: ObjectSource, where: str) -> None:
        self.path = path
        self.store = store
        self.where = where
        self.small: dict[bytes, tuple[str, bytes]] = {}  # commits and trees
        self.ids: set[bytes] = set()
        self.kept: list[tuple[str, bytes]] | None = []  # every object, while they fit
        self.thin_bases = 0  # objects of the image the server's deltas were made against
        kept_bytes = 0
        for kind, body, oid in self._objects():
            self.ids.add(oid)
            if kind in (COMMIT, TREE):
                self.small[oid] = (kind, body)
            if self.kept is not None:
                kept_bytes += len(body)
                if kept_bytes > KEEP:
                    self.kept = None
                else:
                    self.kept.append((kind, body))
        log.info("received", objects=len(self.ids), thin_bases=self.thin_bases, kept=self.kept is not None)

    def _base(self, oid: bytes) -> tuple[int, list[bytes]]:
        """A thin pack's delta base: an object of the image."""
        self.thin_bases += 1
        try:
            kind, body = self.store.read_object(bytes(oid))
        except DocteurError:
            raise KeyError(oid) from None
        return TYPE_CODES[kind], [body]

    def _objects(self) -> Iterator[tuple[str, bytes, bytes]]:
        """(kind, body, id) of every object, deltas resolved."""
        data = PackData(self.path, object_format=SHA1)
        try:
            for unpacked in UnpackedObjectIterator.for_pack_data(data, resolve_ext_ref=self._base):
                assert unpacked.obj_type_num is not None and unpacked.obj_chunks is not None
                body = b"".join(unpacked.obj_chunks)
                yield TYPE_NUMBERS[unpacked.obj_type_num], body, bytes(unpacked.sha())
        except KeyError as e:
            raise BuildError(f"{self.where} sent a delta against {e}, which the image lacks") from None
        except (ValueError, AssertionError, OSError) as e:
            raise BuildError(f"{self.where} sent a broken pack: {e}") from None
        finally:
            data.close()

    def objects(self) -> Iterator[tuple[str, bytes]]:
        """(kind, body) of every object, deltas resolved."""
        if self.kept is not None:
            return iter(self.kept)
        return ((k, b) for k, b, _ in self._objects())

    def import_into(self, writer: PackWriter) -> int:
        """Every object, whole, into `writer`; returns how many the image lacked."""
        before = len(writer.entries)
        for kind, body in self.objects():
            writer.add(kind, body)
        return len(writer.entries) - before
