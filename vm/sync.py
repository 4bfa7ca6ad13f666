"""The client's side of push and pull through the appliance (PROTOCOL.md, "Push and pull"):
the four requests of a sync, on a `Client` of a version-2 session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

from docteur.guest.objwire import Records
from docteur.guest.protocol import Data, End
from docteur.guest.values import Committed, ImportArgs, ObjectsArgs, SyncedArgs

from .client import Client, ConnectionLost

# Ids per `objects` request (a request is at most 64 KiB: 3276 ids).
OBJECTS_BATCH = 1024
_READ = 1 << 20


async def sync_info(client: Client, disk: str | None = None) -> dict[str, str]:
    """The disk's head, generation, recorded remote (`URL BRANCH`) and last synced
    commit; `read_only` or `busy` when it cannot be synced now."""
    client._check_version("sync_info")
    result = await client.call("sync_info", b"", disk)
    assert isinstance(result, dict)
    return result


async def read_objects(
    client: Client, ids: list[bytes], disk: str | None = None, stored: bool = False
) -> AsyncIterator[tuple[bytes, str | None, bytes, bool]]:
    """(id, kind, body, is the body a PACK entry) of each of `ids` in order, kind None
    when the disk lacks it; `stored`: a whole object of the PACK comes as its entry."""
    for at in range(0, len(ids), OBJECTS_BATCH):
        asked = ids[at : at + OBJECTS_BATCH]
        records = Records()
        got = 0
        async for event in client.request("objects", b"", disk=disk, args=ObjectsArgs(asked, stored)):
            if isinstance(event, Data):
                try:
                    batch = records.feed(event.data)
                except ValueError as exc:
                    raise ConnectionLost(f"protocol error from the server: {exc}") from None
                for record in batch:
                    if record[0] != asked[got]:
                        raise ConnectionLost("protocol error from the server: objects out of order")
                    got += 1
                    yield record
            elif isinstance(event, End) and (records.pending or got != len(asked)):
                raise ConnectionLost(f"protocol error from the server: {got} of {len(asked)} objects")


async def import_pack(client: Client, pack: str, expected: bytes, head: bytes,
                      synced: tuple[bytes, str] | None, disk: str | None = None) -> Committed:  # fmt: skip
    """Send the pack file `pack`: the disk's new head is `head` (with `synced` recorded)
    if its head is still `expected`. Durable when this returns."""
    client._check_version("import")
    size = os.path.getsize(pack)
    result = await client.upload("import", b"", _file_chunks(pack), size,
                                 lambda n: ImportArgs(n, expected, head, synced), disk or client.disk,
                                 os.path.basename(pack))  # fmt: skip
    if not isinstance(result, Committed):
        raise ConnectionLost(f"protocol error from the server: import answered {result!r:.80}")
    return result


async def set_synced(client: Client, expected: bytes, commit: bytes, record: str,
                     disk: str | None = None) -> Committed:  # fmt: skip
    """Record `commit` as the tip of `record` (`URL BRANCH`), if the head is still `expected`."""
    client._check_version("set_synced")
    result = await client.call("set_synced", b"", disk, SyncedArgs(expected, commit, record))
    if not isinstance(result, Committed):
        raise ConnectionLost(f"protocol error from the server: set_synced answered {result!r:.80}")
    return result


async def _file_chunks(path: str) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(_READ):
            yield piece

