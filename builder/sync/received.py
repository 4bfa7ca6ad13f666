"""A pack a pull received, in a scratch file: read with dulwich, thin or not.

A server may send a thin pack (deltas against objects it knows the image has): such
bases are read from the image. The commits and trees are kept in memory (the history
walks and the merge need them); everything is read again, whole, when the objects are
written into the new generation: `import_into` resolves every delta and hands each
object whole to the image's PACK writer, which skips what the image holds already. So
the new generation's PACK is self-contained (FORMAT.md: never a REF_DELTA, never a delta
against another PACK), whatever the server sent.
"""

from __future__ import annotations

from collections.abc import Iterator

from dulwich.object_format import SHA1
from dulwich.objects import ShaFile
from dulwich.pack import PackData, PackInflater

from docteur.guest.errors import DocteurError
from docteur.guest.generations import Store
from docteur.guest.objects import COMMIT, TREE, TYPE_CODES
from docteur.guest.packwrite import PackWriter

from ..errors import BuildError


class Received:
    def __init__(self, path: str, store: Store, where: str) -> None:
        self.path = path
        self.store = store
        self.where = where
        self.small: dict[bytes, tuple[str, bytes]] = {}  # commits and trees
        self.ids: set[bytes] = set()
        for obj in self._objects():
            oid = bytes.fromhex(obj.id.decode())
            self.ids.add(oid)
            kind = obj.type_name.decode()
            if kind in (COMMIT, TREE):
                self.small[oid] = (kind, obj.as_raw_string())

    def _base(self, oid: bytes) -> tuple[int, list[bytes]]:
        """A thin pack's delta base: an object of the image."""
        try:
            kind, body = self.store.read_object(bytes(oid))
        except DocteurError:
            raise KeyError(oid) from None
        return TYPE_CODES[kind], [body]

    def _objects(self) -> Iterator[ShaFile]:
        data = PackData(self.path, object_format=SHA1)
        try:
            yield from PackInflater.for_pack_data(data, resolve_ext_ref=self._base)
        except KeyError as e:
            raise BuildError(
                f"{self.where} sent a pack with a delta against {e}, which the image lacks"
            ) from None
        except (ValueError, AssertionError, OSError) as e:
            raise BuildError(f"{self.where} sent a broken pack: {e}") from None
        finally:
            data.close()

    def import_into(self, writer: PackWriter) -> int:
        """Every object, whole, into `writer`; returns how many the image lacked."""
        before = len(writer.entries)
        for obj in self._objects():
            want = bytes.fromhex(obj.id.decode())
            if writer.add(obj.type_name.decode(), obj.as_raw_string()) != want:
                raise BuildError(f"{self.where}: object {want.hex()} does not hash to its id")
        return len(writer.entries) - before
