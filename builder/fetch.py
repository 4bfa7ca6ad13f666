"""Fetch one commit from a Git source with dulwich: depth 1, only the requested ref.

The result is a self-contained PACK (no thin deltas) holding exactly the
commit, its trees and its blobs, with its IDX. A server may send more (the
tag object when an annotated tag is asked for, or anything else it likes):
then the pack is rebuilt from the fetched objects with `git pack-objects`,
which reuses the server's deltas, so it costs little.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass, replace

from dulwich.object_format import SHA1
from dulwich.objects import Commit, ShaFile, Tag, Tree
from dulwich.pack import Pack, PackData, write_pack_index_v2, write_pack_objects

from docteur.cli.errors import DISK_FULL_LINE
from docteur.cli.log import get_logger
from docteur.cli.progress import Progress
from docteur.guest.objects import MODE_GITLINK, MODE_TREE

from .defaults import DEFAULT_TIMEOUT
from .errors import BuildError
from .gittools import git_argv, git_env, git_failure, git_path, run_git
from .source import Source
from .transport import client_for, describe_failure

log = get_logger("docteur.fetch")


@dataclass(frozen=True)
class PackFiles:
    pack: str  # path of the PACK file
    idx: str  # path of its IDX v2
    commit: bytes  # raw id of the commit the image holds
    objects: int
    ref: bytes = b""  # the ref fetched, HEAD resolved to its branch (push/pull's default)


class _NoHaves:
    """We own nothing: the server must send everything (depth 1)."""

    shallow: set[bytes] = set()  # noqa: RUF012 - dulwich reads it, never writes

    def __next__(self) -> None:
        return None

    next = __next__

    def ack(self, _sha: bytes) -> None:
        pass

    def nak(self) -> None:
        pass


def resolve_ref(refs: dict[bytes, bytes], ref: str | None, display: str) -> tuple[bytes, bytes]:
    """(ref name, object id) for `-b REF`, or the source's HEAD."""
    if ref is None:
        if b"HEAD" in refs:
            return b"HEAD", refs[b"HEAD"]
        if not refs:
            raise BuildError(f"{display} has no HEAD and no refs (an empty repository?)")
        raise BuildError(f"{display} has no HEAD; name a ref with -b ({_ref_choices(refs)})")
    name = ref.encode()
    candidates = [name] if name.startswith(b"refs/") else [b"refs/heads/" + name, b"refs/tags/" + name, name]
    for cand in candidates:
        if cand in refs:
            return cand, refs[cand]
    choices = _ref_choices(refs)
    raise BuildError(f"no ref {ref!r} in {display}{f' ({choices})' if choices else ''}")


_SHOWN_REFS = 8  # per kind, in an error line


def _ref_choices(refs: dict[bytes, bytes]) -> str:
    """`branches: a, b; tags: v2, v1` for a user to pick a -b from: branches by name,
    tags newest version first (v1.10 before v1.9), a few of each."""

    def names(prefix: bytes) -> list[str]:
        return [r[len(prefix) :].decode("utf-8", "replace") for r in refs if r.startswith(prefix)]

    def version(name: str) -> tuple[str | int, ...]:
        return tuple(int(p) if i % 2 else p for i, p in enumerate(re.split(r"(\d+)", name)))

    parts = []
    for kind, listed in (
        ("branches", sorted(names(b"refs/heads/"))),
        ("tags", sorted(names(b"refs/tags/"), key=version, reverse=True)),
    ):
        if listed:
            more = len(listed) - _SHOWN_REFS
            tail = f", … ({more} more)" if more > 0 else ""
            parts.append(f"{kind}: {', '.join(listed[:_SHOWN_REFS])}{tail}")
    return "; ".join(parts)


def fetch(source: Source, ref: str | None, workdir: str, timeout: float = DEFAULT_TIMEOUT) -> PackFiles:
    """Fetch into `workdir`; return the finished PACK and IDX. A server silent for
    `timeout` seconds ends it."""
    gc, path = client_for(source, timeout)
    chosen: list[tuple[bytes, bytes]] = []

    def determine_wants(refs: dict[bytes, bytes], depth: int | None = None) -> list[bytes]:
        refs = {k: v for k, v in refs.items() if not k.endswith(b"^{}")}
        chosen.append(resolve_ref(refs, ref, source.display))
        return [chosen[-1][1]]

    base = os.path.join(workdir, "fetch")
    # With git, the pack streams into `git index-pack --stdin` as it arrives: indexing
    # (inflate + hash every object, on the other core) overlaps the transfer.
    sink: _Sink = _IndexPackSink(workdir, base) if git_path() else _FileSink(base)
    try:
        with Progress("receiving") as bar:
            received = 0

            def pack_data(data: bytes) -> None:
                nonlocal received
                sink.write(data)
                received += len(data)
                bar.update(received)

            progress = Sideband(bar)

            log.info("fetching", source=source.display, ref=ref or "HEAD")
            try:
                result = gc.fetch_pack(
                    path, determine_wants, _NoHaves(), pack_data, progress=progress, depth=1
                )
            except BuildError:
                raise
            except Exception as e:  # dulwich, urllib3 and sockets all raise their own kinds
                raise describe_failure(e, source, timeout) from None
        if not chosen:
            raise BuildError(f"{source.display}: the server sent no references")
        if received == 0:
            raise BuildError(f"{source.display}: the server sent no pack")
        sink.finish()
    finally:
        sink.close()
    name = chosen[-1][0]
    name = (result.symrefs or {}).get(name, name) if name == b"HEAD" else name
    return replace(_finish(base, chosen[-1], source, workdir), ref=name)


class Sideband:
    """The server's progress text (git redraws its lines with \\r), shown on the bar
    one whole line at a time: a message may end in the middle of a line."""

    def __init__(self, bar: Progress, prefix: str = "remote: ") -> None:
        self.bar = bar
        self.prefix = prefix
        self.pending = ""

    def __call__(self, msg: bytes) -> None:
        text = self.pending + msg.decode("utf-8", "replace")
        *complete, self.pending = re.split(r"[\r\n]", text)
        lines = [p.strip() for p in complete if p.strip()]
        if lines:
            self.bar.message(self.prefix + lines[-1])


class _Sink:
    """Where the received PACK goes; finish() leaves `<base>.pack` and `<base>.idx`."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _FileSink(_Sink):
    """No git: write the PACK, then index it with dulwich."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.file = open(base + ".pack", "wb")  # noqa: SIM115 - closed in close()

    def write(self, data: bytes) -> None:
        self.file.write(data)

    def finish(self) -> None:
        self.file.close()
        data = PackData(self.base + ".pack", object_format=SHA1)
        try:
            entries = data.sorted_entries()
            with open(self.base + ".idx", "wb") as f:
                write_pack_index_v2(f, entries, data.get_stored_checksum())
        except Exception as e:
            raise BuildError(f"the fetched pack is broken or thin: {e}") from None
        finally:
            data.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # after a failure (a full disk): keep the first error
            self.file.close()


class _IndexPackSink(_Sink):
    """`git index-pack --stdin`: writes the PACK and its IDX, and checks the PACK
    (a thin or damaged pack fails here)."""

    def __init__(self, workdir: str, base: str) -> None:
        repo = os.path.join(workdir, "index.git")  # index-pack --stdin wants a repository
        run_git(["init", "-q", "--bare", repo], what="git init")
        # Its stderr is drained into memory: a file on a full disk could not even hold
        # the "No space left on device" of a full disk.
        self.err = bytearray()
        self.proc = subprocess.Popen(
            git_argv(["--git-dir", repo, "index-pack", "--stdin", "-o", base + ".idx", base + ".pack"]),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=git_env(),
        )
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()
        self.broken = False

    def write(self, data: bytes) -> None:
        if self.broken:
            return
        try:
            self.proc.stdin.write(data)  # type: ignore[union-attr]
        except BrokenPipeError:
            self.broken = True  # index-pack gave up; finish() says why

    def finish(self) -> None:
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        if self.proc.wait() != 0:
            self.drain.join(5)
            err = bytes(self.err)
            failure = git_failure("git index-pack", err, self.proc.returncode)
            if failure.args[0].startswith(DISK_FULL_LINE):
                raise failure
            lines = err.decode("utf-8", "replace").strip().splitlines()
            raise BuildError(f"the fetched pack is broken: {lines[-1] if lines else 'index-pack failed'}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()  # type: ignore[union-attr]
        self.drain.join(5)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            while data := self.proc.stderr.read(65536):
                self.err += data


def closure(pack: Pack, commit_id: bytes) -> list[bytes]:
    """Hex ids of the commit, every tree and every blob under it, walk order."""
    commit = pack[commit_id]
    order = [commit_id]
    seen = {commit_id}
    stack = [commit.tree]
    while stack:
        tid = stack.pop()
        if tid in seen:
            continue
        seen.add(tid)
        order.append(tid)
        tree = pack[tid]
        if not isinstance(tree, Tree):
            raise BuildError(f"object {tid.decode()} should be a tree")
        subtrees = []
        for entry in tree.iteritems():
            if entry.mode == MODE_GITLINK:
                continue  # a submodule's commit lives in another repository
            if entry.mode & 0o170000 == MODE_TREE:
                subtrees.append(entry.sha)
            elif entry.sha not in seen:
                seen.add(entry.sha)
                order.append(entry.sha)
        stack.extend(reversed(subtrees))
    return order


def _finish(base: str, chosen: tuple[bytes, bytes], source: Source, workdir: str) -> PackFiles:
    pack = Pack(base, object_format=SHA1)
    try:
        want = chosen[1]
        try:
            obj = pack[want]
            while isinstance(obj, Tag):  # annotated tags are peeled to their commit
                obj = pack[obj.object[1]]
        except KeyError as e:
            raise BuildError(f"{source.display}: the pack lacks object {e}") from None
        if not isinstance(obj, Commit):
            raise BuildError(
                f"{chosen[0].decode('utf-8', 'replace')} in {source.display} "
                f"names a {obj.type_name.decode()}, not a commit"
            )
        commit_hex = obj.id
        try:
            wanted = closure(pack, commit_hex)
        except KeyError as e:
            raise BuildError(f"{source.display} sent an incomplete pack: missing {e}") from None
        have = {sha for sha, _off, _crc in pack.index.iterentries()}
        missing = [s for s in wanted if bytes.fromhex(s.decode()) not in have]
        if missing:
            raise BuildError(
                f"{source.display} sent an incomplete pack: {len(missing)} objects missing, "
                f"e.g. {missing[0].decode()}"
            )
        commit = bytes.fromhex(commit_hex.decode())
        if len(have) == len(wanted):
            return PackFiles(base + ".pack", base + ".idx", commit, len(wanted))
        log.info("rebuilding pack", fetched=len(have), kept=len(wanted))
        return _rebuild(pack, base, wanted, commit, workdir)
    finally:
        pack.close()


def _rebuild(pack: Pack, base: str, wanted: list[bytes], commit: bytes, workdir: str) -> PackFiles:
    """A new pack with only `wanted`, deltas reused from the fetched one."""
    out = os.path.join(workdir, "final")
    if git_path():
        repo = os.path.join(workdir, "repo.git")
        run_git(["init", "-q", "--bare", repo], what="git init")
        packdir = os.path.join(repo, "objects", "pack")
        pack_sha = pack.data.get_stored_checksum().hex()
        shutil.copyfile(base + ".pack", os.path.join(packdir, f"pack-{pack_sha}.pack"))
        shutil.copyfile(base + ".idx", os.path.join(packdir, f"pack-{pack_sha}.idx"))
        return pack_objects(repo, out, b"".join(s + b"\n" for s in wanted), commit, len(wanted))
    return write_plain_pack([pack[s] for s in wanted], out, commit)


def pack_objects(repo: str, out: str, wanted: bytes, commit: bytes, count: int) -> PackFiles:
    """`git pack-objects` of the `count` listed ids into `out-<sha>.pack/.idx`.
    On a terminal, git's own progress (counting, compressing, writing) shows."""
    with Progress("packing") as bar:
        verbosity = "--progress" if bar.enabled else "-q"
        side = Sideband(bar, prefix="") if bar.enabled else None
        result = run_git(["--git-dir", repo, "pack-objects", verbosity, "--threads=1", out],
                         input=wanted, what="git pack-objects", on_stderr=side)  # fmt: skip
    sha = result.strip().decode()
    return PackFiles(f"{out}-{sha}.pack", f"{out}-{sha}.idx", commit, count)


def write_plain_pack(objects: list[ShaFile], out: str, commit: bytes) -> PackFiles:
    """No git: `objects` in an undeltified pack `out.pack` and its `out.idx`, with dulwich."""
    log.warning("git is not installed: writing an undeltified pack (larger image)")
    with open(out + ".pack", "wb") as f:
        entries, checksum = write_pack_objects(f.write, objects, object_format=SHA1, deltify=False)
    with open(out + ".idx", "wb") as f:
        write_pack_index_v2(f, sorted((k, off, crc) for k, (off, crc) in entries.items()), checksum)
    return PackFiles(out + ".pack", out + ".idx", commit, len(objects))
