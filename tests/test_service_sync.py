"""Push and pull's four requests (sync_info, objects, import, set_synced) against the real
service in memory: the packs imported are git's own (`git pack-objects`, thin where it
can be), the image's history exported to git first; git is the oracle of what arrives."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from docteur.guest.objwire import Records
from docteur.guest.protocol import Data, End, Error
from docteur.guest.values import CommitArgs, Committed, ImportArgs, ObjectsArgs, SyncedArgs
from tests.support.git import git, git_try, needs_git
from tests.support.store import head_root
from tests.support.v2 import Session, close_served, serve, writable_image
from tests.support.writes import docteur, head_files

pytestmark = needs_git
AUTHOR = "Ops <ops@example.com>"
BIG = b"".join(b"line %d of a file git sends as a delta\n" % i for i in range(2000))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("syncimages")


@pytest.fixture
def image(base: Path, tmp_path: Path) -> Iterator[Path]:
    """An image whose head holds BIG (so that git's thin pack has a delta against it)."""
    img = writable_image(base, tmp_path)
    big = tmp_path / "big.txt"
    big.write_bytes(BIG)
    docteur("put", img, "/big.txt", big, "-m", "big")
    yield img
    close_served()


def clone_of(image: Path, where: Path) -> Path:
    """A git clone of the image's history (docteur export, then git clone)."""
    docteur("export", image, where / "exported.git")
    git("clone", "-q", where / "exported.git", where / "work")
    work = where / "work"
    git("config", "user.name", "Ops", cwd=work)
    git("config", "user.email", "ops@example.com", cwd=work)
    return work


def commit(work: Path, files: dict[str, bytes], message: str) -> bytes:
    for path, data in files.items():
        (work / path).parent.mkdir(parents=True, exist_ok=True)
        (work / path).write_bytes(data)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", message, cwd=work)
    return bytes.fromhex(git("rev-parse", "HEAD", cwd=work).decode().strip())


def pack_of(work: Path, new: bytes, old: bytes, thin: bool = True) -> bytes:
    """git's pack of what `new` has that `old` lacks (thin: deltas against `old`'s objects)."""
    revs = f"{new.hex()}\n^{old.hex()}\n".encode()
    flags = ["--thin"] if thin else []
    return git("pack-objects", "--revs", "--stdout", *flags, "-q", cwd=work, input=revs)


def pack_listed(work: Path, oids: list[str]) -> bytes:
    return git("pack-objects", "--stdout", "-q", cwd=work, input="".join(f"{o}\n" for o in oids).encode())


def send_import(session: Session, pack: bytes, expected: bytes, head: bytes,
                synced: tuple[bytes, str] | None = None, piece: int = 4096) -> End | Error:  # fmt: skip
    rid = session.start("import", args=ImportArgs(len(pack), expected, head, synced))
    for at in range(0, len(pack), piece):
        session.send(session.pair.client.chunk(rid, pack[at : at + piece]))
    return session.answer(rid)[1]


def git_files(work: Path, rev: bytes) -> dict[str, bytes]:
    names = git("ls-tree", "-r", "--name-only", "-z", rev.hex(), cwd=work).split(b"\0")
    return {n.decode(): git("cat-file", "blob", f"{rev.hex()}:{n.decode()}", cwd=work) for n in names if n}


def image_files(image: Path) -> tuple[bytes, dict[str, bytes]]:
    head, files = head_files(image)
    return head, {path: data for path, (_, data) in files.items()}


# -- the reads -------------------------------------------------------------------------------
def test_sync_info_says_the_head_and_whether_a_sync_may_write(image: Path) -> None:
    head, _ = head_files(image)
    service = serve(image)
    session = Session(service)
    info = session.ok("sync_info")
    assert info == {"head": head.hex(), "generation": str(head_root(image).generation), "remote": "",
                    "synced": "", "writable": "yes"}  # fmt: skip
    other = Session(service)
    assert other.ok("begin") is not None
    assert session.ok("sync_info")["writable"] == "busy: a batch is open"  # type: ignore[index]
    other.ok("abort")
    close_served()
    ro = Session(serve(image, rw=False)).ok("sync_info")
    assert ro["head"] == head.hex() and ro["writable"] == "read-only attach"  # type: ignore[index]


@pytest.mark.parametrize("stored", [False, True])
def test_objects_are_sent_in_order_absent_ones_marked(image: Path, tmp_path: Path, stored: bool) -> None:
    work = clone_of(image, tmp_path)
    head, _ = head_files(image)
    tree = git("rev-parse", f"{head.hex()}^{{tree}}", cwd=work).decode().strip()
    blob = git("rev-parse", f"{head.hex()}:big.txt", cwd=work).decode().strip()
    missing = bytes(range(20))
    ids = [head, missing, bytes.fromhex(tree), bytes.fromhex(blob)]
    session = Session(serve(image, rw=False))  # a read: served read-only too
    rid = session.start("objects", args=ObjectsArgs(ids, stored))
    session.pair.raw.events += session.pair.pump()
    events = [e for e in session.pair.raw.events if getattr(e, "id", None) == rid]
    records = Records()
    got = [r for e in events if isinstance(e, Data) for r in records.feed(e.data)]
    assert isinstance(events[-1], End) and records.pending == 0
    assert events[-1].result == sum(len(e.data) for e in events if isinstance(e, Data))
    assert [(oid, kind) for oid, kind, _, _ in got] == [(head, "commit"), (missing, None), (ids[2], "tree"),
                                                        (ids[3], "blob")]  # fmt: skip
    for oid, kind, body, entry in got:
        if kind is None:
            continue
        assert entry == stored  # the image's objects are whole in its PACKs
        if entry:  # the PACK entry: a type-and-size header, then the zlib data of the object
            header = 1
            while body[header - 1] & 0x80:
                header += 1
            body = zlib.decompress(body[header:])
        assert body == git("cat-file", kind, oid.hex(), cwd=work)


# -- import ----------------------------------------------------------------------------------
def test_a_thin_pack_from_git_becomes_the_next_generation(image: Path, tmp_path: Path) -> None:
    work = clone_of(image, tmp_path)
    old, _ = head_files(image)
    generation = head_root(image).generation
    new = commit(work, {"big.txt": BIG + b"one more\n", "n/new.txt": b"new\n"}, "by git")
    pack = pack_of(work, new, old)
    # git sent big.txt as a delta against the image's copy, which the pack does not hold:
    # git itself takes it only with --fix-thin.
    empty = tmp_path / "empty.git"
    git("init", "-q", "--bare", empty)
    refused = git_try("index-pack", "--stdin", cwd=empty, input=pack)
    assert refused.returncode != 0, refused.stderr
    session = Session(serve(image))
    record = ("git://example.org/site.git main",)
    done = send_import(session, pack, old, new, (new, record[0]), piece=1000)
    assert isinstance(done, End) and isinstance(done.result, Committed), done
    assert done.result.commit == new and done.result.generation == generation + 1
    # Durable when answered: the file says so (another reader, the served image closed or not).
    head, files = image_files(image)
    assert head == new and files == git_files(work, new)
    root = head_root(image)
    assert (root.synced, root.remote) == (new, record[0])
    # The served disk reads the new head at once.
    assert session.get(b"/n/new.txt") == b"new\n"
    info = session.ok("sync_info")
    assert info["synced"] == new.hex() and info["remote"] == record[0]  # type: ignore[index]


def test_an_import_on_a_head_that_moved_is_a_conflict_and_writes_nothing(image: Path, tmp_path: Path) -> None:
    work = clone_of(image, tmp_path)
    old, _ = head_files(image)
    new = commit(work, {"n/new.txt": b"new\n"}, "by git")
    pack = pack_of(work, new, old)
    service = serve(image)
    session = Session(service)
    other = Session(service)
    put = other.put(b"/mine.txt", b"mine\n", commit=CommitArgs("mine", AUTHOR))
    assert isinstance(put, End)
    before = image.read_bytes()
    err = send_import(session, pack, old, new)
    assert isinstance(err, Error) and err.code == "conflict", err
    assert "nothing written" in err.message
    assert image.read_bytes() == before


@pytest.mark.parametrize("damage", ["byte", "truncated", "missing_blob", "not_a_commit", "head_absent"])
def test_a_bad_pack_is_refused_whole(image: Path, tmp_path: Path, damage: str) -> None:
    work = clone_of(image, tmp_path)
    old, _ = head_files(image)
    new = commit(work, {"n/new.txt": b"new\n", "n/other.txt": b"other\n"}, "by git")
    pack = pack_of(work, new, old, thin=False)
    head = new
    expected_words = {"byte": "", "truncated": "ends early", "missing_blob": "lacks object",
                      "not_a_commit": "not a commit", "head_absent": "lacks object"}  # fmt: skip
    if damage == "byte":
        pack = pack[:40] + bytes([pack[40] ^ 0xFF]) + pack[41:]
    elif damage == "truncated":
        pack = pack[: len(pack) // 2]
    elif damage == "missing_blob":
        tree = git("rev-parse", f"{new.hex()}:n", cwd=work).decode().strip()
        root = git("rev-parse", f"{new.hex()}^{{tree}}", cwd=work).decode().strip()
        blob = git("rev-parse", f"{new.hex()}:n/new.txt", cwd=work).decode().strip()
        pack = pack_listed(work, [new.hex(), root, tree, blob])  # n/other.txt left out
    elif damage == "not_a_commit":
        head = bytes.fromhex(git("rev-parse", f"{new.hex()}:n/new.txt", cwd=work).decode().strip())
    elif damage == "head_absent":
        head = bytes(range(20))
    before = image.read_bytes()
    session = Session(serve(image))
    err = send_import(session, pack, old, head)
    assert isinstance(err, Error), err
    assert err.code in ("integrity", "not_found", "bad_request"), err
    assert expected_words[damage] in err.message, err.message
    assert "\n" not in err.message
    assert image.read_bytes() == before
    # The disk is free again: the good pack goes in.
    good = pack_of(work, new, old)
    done = send_import(session, good, old, new)
    assert isinstance(done, End) and done.result.commit == new  # type: ignore[union-attr]


def test_imports_keep_the_single_writer_rules(image: Path, tmp_path: Path) -> None:
    work = clone_of(image, tmp_path)
    old, _ = head_files(image)
    new = commit(work, {"n/new.txt": b"new\n"}, "by git")
    pack = pack_of(work, new, old)
    before = image.read_bytes()
    service = serve(image)
    session = Session(service)
    other = Session(service)
    other.ok("begin")
    synced = SyncedArgs(old, old, "u b")
    for err in (send_import(session, pack, old, new), session.error("set_synced", args=synced)):
        assert isinstance(err, Error) and err.code == "busy", err
    other.ok("abort")
    # An import under way holds the disk: a put from another connection is busy.
    rid = session.start("import", args=ImportArgs(len(pack), old, new, None))
    session.send(session.pair.client.chunk(rid, pack[:10]))
    session.pair.pump()
    put = other.put(b"/x.txt", b"x\n")
    assert isinstance(put, Error) and put.code == "busy", put
    session.send(session.pair.client.chunk(rid, pack[10:]))
    assert isinstance(session.answer(rid)[1], End)
    close_served()
    image.write_bytes(before)
    ro = Session(serve(image, rw=False))
    for err in (send_import(ro, pack, old, new), ro.error("set_synced", args=synced)):
        assert isinstance(err, Error) and err.code == "read_only", err
    assert image.read_bytes() == before


# -- set_synced ------------------------------------------------------------------------------
def test_set_synced_is_a_root_only_generation_with_compare_and_swap(image: Path) -> None:
    head, files = image_files(image)
    generation, extents = head_root(image).generation, head_root(image).extents
    session = Session(serve(image))
    done = session.ok("set_synced", args=SyncedArgs(head, head, "https://example.org/r.git main"))
    assert done == Committed(True, head, generation + 1, done.free)  # type: ignore[union-attr]
    root = head_root(image)
    assert (root.synced, root.remote, root.extents) == (head, "https://example.org/r.git main", extents)
    assert image_files(image) == (head, files)
    before = image.read_bytes()
    moved = session.error("set_synced", args=SyncedArgs(bytes(20), head, "u b"))
    absent = session.error("set_synced", args=SyncedArgs(head, bytes(range(20)), "u b"))
    long = session.error("set_synced", args=SyncedArgs(head, head, "u " + "b" * 5000))
    assert (moved.code, absent.code, long.code) == ("conflict", "not_found", "bad_request")
    assert image.read_bytes() == before
