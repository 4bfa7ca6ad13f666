"""`docteur push IMAGE [REMOTE] [-b BRANCH]`: send the image's new commits, never force.

The remote's advertised refs are the haves: only the commits they do not reach, and the
trees and blobs those bring, are sent (history.new_objects). The branch is updated only
when it still points at the commit last synced with, at a later commit of the image's own
history (a push whose bookkeeping a crash interrupted), or is absent; and only when that
commit is an ancestor of the head. The server compares the old value again as it
updates the ref, so a push racing another one fails rather than overwrites. The server's
report is read: a rejected ref is an error naming it and the server's reason. After
success the image records the new tip (a root-only generation).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from dulwich.errors import GitProtocolError
from dulwich.pack import UnpackedObject

from docteur.cli.log import get_logger
from docteur.cli.progress import Progress

from ..defaults import DEFAULT_TIMEOUT
from ..errors import BuildError
from ..fetch import Sideband
from ..transport import client_for, describe_failure, is_stall
from .history import Objects, is_ancestor, new_objects, reach
from .image import SyncImage
from .remote import Remote, is_recorded, resolve
from .state import SyncState, record_sync

log = get_logger("docteur.push")
ZERO_HEX = b"0" * 40


@dataclass(frozen=True)
class Pushed:
    remote: str  # URL BRANCH, as shown
    old: bytes | None  # the remote's tip before (None: the branch was absent)
    head: bytes
    objects: int  # sent; 0 when the remote had the head already


class _Messages(Sideband):
    """The server's progress lines on the bar, and kept: a hook's message explains a refusal."""

    def __init__(self, bar: Progress) -> None:
        super().__init__(bar)
        self.lines: list[str] = []

    def __call__(self, msg: bytes) -> None:
        super().__call__(msg)
        for line in msg.decode("utf-8", "replace").replace("\r", "\n").split("\n"):
            line = line.strip()
            if line and not _is_counter(line):
                self.lines.append(line)


def _is_counter(line: str) -> bool:
    """git's own progress counters (`Resolving deltas: 100% ...`), not a message."""
    head = line.split(":", 1)[0]
    return head in ("Resolving deltas", "Checking connectivity", "Counting objects", "Compressing objects")


def check_tip(objects: Objects, remote: Remote, tip: bytes | None, head: bytes, state: SyncState) -> None:
    """Raise unless moving `remote`'s branch from `tip` to `head` loses nothing."""
    where = f"{remote.ref.decode()} on {remote.source.display}"
    if tip is None or tip == head:
        return
    if tip not in objects or not is_ancestor(objects, tip, head):
        raise BuildError(
            f"push refused: {where} is at {tip.hex()}, which the image's head does not contain "
            "(docteur pull first; a push is never forced)"
        )
    if state.synced is not None and not is_ancestor(objects, state.synced, tip):
        raise BuildError(
            f"push refused: {where} was rewound since the last sync (it is at {tip.hex()}, "
            f"was at {state.synced.hex()}): history rewritten on the remote"
        )


def push_from(store: SyncImage, url: str | None, branch: str | None,
              timeout: float = DEFAULT_TIMEOUT) -> Pushed:  # fmt: skip
    """The push of `store`, an image file or a running appliance (image.py)."""
    state = store.sync_state()
    remote = resolve(state.record, url, branch)
    state = state.about(remote)
    objects = Objects(store)
    head = store.head_commit
    gc, path = client_for(remote.source, timeout)
    seen: dict[str, bytes | None] = {}
    sent = [0]

    def update_refs(refs: dict[bytes, bytes]) -> dict[bytes, bytes]:
        value = refs.get(remote.ref)
        tip = bytes.fromhex(value.decode()) if value and value != ZERO_HEX else None
        seen["tip"] = tip
        check_tip(objects, remote, tip, head, state)
        return {} if tip == head else {remote.ref: head.hex().encode()}

    def generate_pack_data(have: list[bytes], want: list[bytes], ofs_delta: bool = True,
                           progress: object = None) -> tuple[int, Iterator[UnpackedObject]]:  # fmt: skip
        haves = [bytes.fromhex(h.decode()) for h in have if h != ZERO_HEX]
        stop = reach(objects, [h for h in haves if h in objects])
        commits = sorted(reach(objects, [head], stop))
        oids = new_objects(objects, commits)
        sent[0] = len(oids)
        log.info("sending", objects=len(oids), commits=len(commits), remote=remote.display)
        return len(oids), store.records(oids, bar)

    with Progress("sending", unit="objects") as bar:
        messages = _Messages(bar)
        log.info("pushing", remote=remote.display, head=head.hex())
        try:
            result = gc.send_pack(path, update_refs, generate_pack_data, progress=messages)
        except BuildError:
            raise
        except Exception as e:  # dulwich, urllib3 and sockets all raise their own kinds
            if isinstance(e, GitProtocolError) and "tip" in seen and not _stalled(e):
                # The server took the request and refused it (e.g. "unpack failed").
                raise BuildError(_refusal(remote, str(e), messages.lines)) from None
            raise describe_failure(e, remote.source, timeout) from None
    status = (result.ref_status or {}).get(remote.ref)
    if status is not None:
        raise BuildError(_refusal(remote, status, messages.lines))
    if "tip" not in seen:
        raise BuildError(f"{remote.source.display}: the server sent no references")
    # The server took it: only now does the image say so.
    if state.synced != head and (not state.record or is_recorded(remote, state.record)):
        if store.read_only is None:
            record_sync(store, head, remote)
        else:
            log.warning("pushed, not recorded in the image", image=store.name, reason=store.read_only)
    return Pushed(remote.display, seen["tip"], head, sent[0])


def _stalled(e: BaseException | None) -> bool:
    seen = 0
    while e is not None and seen < 10:
        if is_stall(e):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _refusal(remote: Remote, reason: str, lines: list[str]) -> str:
    said = "; ".join(dict.fromkeys(lines))
    return f"push rejected: {remote.ref.decode()} on {remote.source.display}: {reason.strip()}" + (
        f" (remote: {said})" if said else ""
    )
