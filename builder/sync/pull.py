"""`docteur pull IMAGE [REMOTE] [-b BRANCH] [--merge]`: the remote's new commits into the image.

The fetch offers the image's commits as haves and its shallow commits as such (an image
made at depth 1 lacks its first commit's parents, and the server must know). Then:
- the remote's tip is the head or behind it: nothing changes (but the record of the tip);
- the head is behind the tip: fast-forward, the tip becomes the head of a new generation
  whose PACK holds the received objects (received.py);
- the histories diverged: `conflict`, the image unchanged; with --merge, a two-parent
  commit when the paths each side changed do not overlap (merge.py), else `conflict`;
- the tip does not descend from the commit last synced with: the remote rewrote its
  history; refused, the image unchanged.
Nothing is written into the image before that decision.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from docteur.cli.log import get_logger
from docteur.cli.progress import Progress
from docteur.guest.generations import _signature
from docteur.guest.objects import COMMIT, TREE, Commit, object_id

from ..defaults import DEFAULT_AUTHOR, DEFAULT_TIMEOUT
from ..errors import BuildError
from ..fetch import Sideband, resolve_ref
from ..transport import client_for, describe_failure
from .history import Objects, arrived, is_ancestor, new_objects, newest_first, reach, shallow
from .image import SyncImage
from .merge import Change, changes, merge_tree
from .received import Received
from .remote import Remote, is_recorded, resolve
from .state import SyncState, record_sync

log = get_logger("docteur.pull")
# Commits offered as haves, newest first (git offers up to 256 before giving up on
# finding more in common).
HAVES = 256


class Conflict(BuildError):
    """Diverged histories (without --merge), or overlapping changes (with it)."""


@dataclass(frozen=True)
class Pulled:
    remote: str
    outcome: str  # "up to date" | "ahead" | "fast-forward" | "merge"
    head: bytes
    generation: int
    changes: list[Change] = field(default_factory=list)
    ahead: int = 0  # the image's commits the remote lacks


class _Haves:
    """dulwich's graph walker: the commits offered, and the image's shallow boundary."""

    def __init__(self, haves: list[bytes], shallow_commits: set[bytes]) -> None:
        self.todo = [h.hex().encode() for h in haves]
        self.shallow = {s.hex().encode() for s in shallow_commits}

    def __next__(self) -> bytes | None:
        return self.todo.pop(0) if self.todo else None

    next = __next__

    def ack(self, _sha: bytes) -> None:
        pass

    def nak(self) -> None:
        pass


def pull_into(target: SyncImage, url: str | None, branch: str | None, merge: bool = False,
              author: str = DEFAULT_AUTHOR, timeout: float = DEFAULT_TIMEOUT) -> Pulled:  # fmt: skip
    """The pull into `target`, an image file or a running appliance (image.py)."""
    if merge:
        from docteur.guest.batch import check_author  # a batch's modules: ~8 ms, for --merge only

        check_author(author)
    if target.read_only is not None:
        raise BuildError(f"{target.name} cannot be pulled into: {target.read_only}")
    state = target.sync_state()
    remote = resolve(state.record, url, branch)
    state = state.about(remote)
    with target.scratch() as work:
        objects = Objects(target)
        tip, received = _fetch(target, objects, remote, state, work, timeout)
        if received is not None:
            objects.extra.update(received.small)
        _check_complete(objects, received, tip, remote)
        return _integrate(target, objects, remote, state, tip, received, merge, author)


def _fetch(store: SyncImage, objects: Objects, remote: Remote, state: SyncState, work: str,
           timeout: float) -> tuple[bytes, Received | None]:  # fmt: skip
    gc, path = client_for(remote.source, timeout, thin=True)
    head = store.head_commit
    found: list[bytes] = []

    def determine_wants(refs: dict[bytes, bytes], depth: int | None = None) -> list[bytes]:
        refs = {k: v for k, v in refs.items() if not k.endswith(b"^{}")}
        _, value = resolve_ref(refs, remote.ref.decode(), remote.source.display)
        found.append(bytes.fromhex(value.decode()))
        return [] if found[-1] in objects else [value]

    haves = ([state.synced] if state.synced else []) + [
        c for c in newest_first(objects, head, HAVES) if c != state.synced
    ]
    walker = _Haves(haves, shallow(objects, head))
    pack = os.path.join(work, "received.pack")
    received = 0
    with open(pack, "wb") as sink, Progress("receiving") as bar:

        def pack_data(data: bytes) -> None:
            nonlocal received
            sink.write(data)
            received += len(data)
            bar.update(received)

        log.info("fetching", remote=remote.display, haves=len(haves), shallow=len(walker.shallow))
        try:
            gc.fetch_pack(path, determine_wants, walker, pack_data, progress=Sideband(bar))
        except BuildError:
            raise
        except Exception as e:  # dulwich, urllib3 and sockets all raise their own kinds
            raise describe_failure(e, remote.source, timeout) from None
    if not found:
        raise BuildError(f"{remote.source.display}: the server sent no references")
    if not received:
        return found[-1], None
    return found[-1], Received(pack, store, remote.source.display)


def _check_complete(objects: Objects, received: Received | None, tip: bytes, remote: Remote) -> None:
    """Every object the new commits need is in the image or arrived (git's connectivity
    check): a server that wrongly assumed the image holds something is caught here."""
    if tip not in objects:
        raise BuildError(f"{remote.source.display} sent no commit {tip.hex()}")
    if received is None:
        return
    for oid in new_objects(objects, arrived(objects, tip)):
        if oid not in received.ids and oid not in objects.store:
            raise BuildError(
                f"{remote.source.display} sent an incomplete pack: object {oid.hex()} is missing; "
                "the image is unchanged"
            )


def _integrate(store: SyncImage, objects: Objects, remote: Remote, state: SyncState, tip: bytes,
               received: Received | None, merge: bool, author: str) -> Pulled:  # fmt: skip
    head = store.head_commit
    shown = remote.display
    # The record moves with a pull from the recorded remote (or when none is recorded).
    records = not state.record or is_recorded(remote, state.record)
    synced = (tip, remote.record) if records else None
    # First: a tip that does not descend from the last commit synced with (even one
    # behind the head) means the remote's history was rewritten under us.
    if state.synced is not None and not is_ancestor(objects, state.synced, tip):
        raise BuildError(
            f"{remote.ref.decode()} on {remote.source.display} was rewritten (force-pushed): its tip "
            f"{tip.hex()} does not descend from {state.synced.hex()}, the last commit synced with; "
            "the image is unchanged"
        )
    if is_ancestor(objects, tip, head):
        ahead = len(reach(objects, [head], reach(objects, [tip])))
        if records and state.synced != tip:
            record_sync(store, tip, remote)
        return Pulled(shown, "ahead" if ahead else "up to date", head, store.generation, ahead=ahead)
    head_tree = objects.commit(head).tree
    if is_ancestor(objects, head, tip):
        generation = store.adopt(received, (), tip, synced)
        diff = changes(objects, head_tree, objects.commit(tip).tree)
        return Pulled(shown, "fast-forward", tip, generation, diff)
    ours = reach(objects, [head], reach(objects, [tip]))
    theirs = reach(objects, [tip], reach(objects, [head]))
    if not merge:
        raise Conflict(
            f"conflict: the image has {len(ours)} commit{'s' * (len(ours) != 1)} that "
            f"{shown} lacks, which has {len(theirs)} the image lacks (docteur pull --merge joins "
            "them when their changes do not overlap); the image is unchanged"
        )
    base = _merge_base(objects, head, tip, state)
    editor, clashes = merge_tree(objects, objects.commit(base).tree, head_tree, objects.commit(tip).tree)
    if clashes:
        listed = ", ".join(p.decode("utf-8", "replace") for p in clashes[:5])
        more = f" and {len(clashes) - 5} more" if len(clashes) > 5 else ""
        raise Conflict(f"conflict: both sides changed {listed}{more}; the image is unchanged")
    diff = editor.changed_paths()
    root, trees = editor.finish()
    who = _signature(author, int(time.time()), "+0000")
    message = f"Merge branch '{remote.branch}' of {remote.url}\n".encode()
    raw = Commit(root, (head, tip), who, who, message).as_raw()
    merged = object_id(COMMIT, raw)
    extra = [*((TREE, body) for _, body in trees), (COMMIT, raw)]
    generation = store.adopt(received, extra, merged, synced)
    return Pulled(shown, "merge", merged, generation, diff)


def _merge_base(objects: Objects, head: bytes, tip: bytes, state: SyncState) -> bytes:
    """The commit both histories grew from: the last one synced with, else the newest
    commit of the tip's history that the head's holds."""
    if state.synced is not None and is_ancestor(objects, state.synced, head):
        return state.synced
    mine = reach(objects, [head])
    for oid in newest_first(objects, tip, 1 << 30):
        if oid in mine:
            return oid
    raise BuildError("the image and the remote share no commit: nothing to merge from")
