"""What the image knows of its remote: the recorded `URL BRANCH` and the last commit
known to be there (the head root record's remote and synced fields)."""

from __future__ import annotations

from dataclasses import dataclass

from docteur.cli.log import get_logger
from docteur.guest.device import FileDevice
from docteur.guest.generations import Store
from docteur.guest.roots import REMOTE_MAX, ZERO_ID

from .remote import Remote, branch_name, is_recorded, public_url

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .image import SyncImage

log = get_logger("docteur.sync")


@dataclass(frozen=True)
class SyncState:
    record: str  # "URL BRANCH", "" when none is recorded
    synced: bytes | None  # the last commit known to be on it

    def about(self, remote: Remote) -> SyncState:
        """The state as far as `remote` goes: the synced commit only if it is the recorded one."""
        return self if is_recorded(remote, self.record) else SyncState(self.record, None)


def sync_state(store: Store) -> SyncState:
    root = store.head
    if root is None:
        return SyncState("", None)
    synced = root.synced if root.synced != ZERO_ID and root.synced in store else None
    return SyncState(root.remote, synced)


def record_sync(store: Store | SyncImage, commit: bytes, remote: Remote) -> int | None:
    """Record `commit` as `remote`'s tip: a root-only generation."""
    if len(remote.record.encode()) > REMOTE_MAX:
        log.warning("remote name too long to record", remote=remote.display, limit=REMOTE_MAX)
        return None
    return store.set_synced(commit, remote.record)


def record_origin(image: str, url: str, ref: bytes, commit: bytes) -> None:
    """`docteur make --capacity` of a git source: the image remembers where it came from
    (the URL without credentials) and the branch, `commit` being the remote's tip. A
    tag or a detached HEAD is not a branch: nothing is recorded then."""
    if not ref.startswith(b"refs/heads/"):
        return
    record = f"{public_url(url)} {branch_name(ref.decode('utf-8', 'replace'))}"
    if len(record.encode()) > REMOTE_MAX:
        log.warning("source name too long to record; push and pull will need it", limit=REMOTE_MAX)
        return
    with FileDevice(image, writable=True) as dev, Store.open(dev) as store:
        store.set_synced(commit, record)
