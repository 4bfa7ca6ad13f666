"""Protocol version 2 against the real service in memory (the connection state machine
without sockets): negotiation, every write operation and error, batches per session,
read your writes, aborts, the put barrier and its bounded memory."""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from docteur.guest import protocol as p
from docteur.guest.protocol import End, Error
from docteur.guest.values import Begun, CommitArgs, Committed, Put, PutArgs
from tests.support.protocol import Pair
from tests.support.v2 import FILES, Session, close_served, serve, writable_image
from tests.support.writes import head_files

AUTHOR = "Ops <ops@example.com>"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("v2images")


@pytest.fixture
def image(base: Path, tmp_path: Path) -> Iterator[Path]:
    yield writable_image(base, tmp_path)
    close_served()


def files_of(image: Path) -> dict[str, bytes]:
    return {path: data for path, (_, data) in head_files(image)[1].items()}


def expected(**changes: bytes | None) -> dict[str, bytes]:
    out = dict(FILES)
    for key, data in changes.items():
        path = key.replace("__", "/").replace("_dot_", ".")
        if data is None:
            out.pop(path)
        else:
            out[path] = data
    return out


# -- negotiation ---------------------------------------------------------------------
V1_SCRIPT = [("info", b""), ("get", b"/README.md"), ("list", b"/d"), ("stat", b"/run.sh"),
             ("exists", b"/nope"), ("size", b"/d/a.txt"), ("digest", b"/d"), ("get", b"/d")]  # fmt: skip


def v1_wire(image: Path, rw: bool) -> bytes:
    service = serve(image, rw)
    service.hello_fields["verified.docteur"] = "pack ok"  # not its time: that varies
    pair = Pair(service)
    for op, path in V1_SCRIPT:
        pair.request(op, path)
    for code in range(11, 18):  # the v2 operations, as a v1 client could send them
        pair.send(p.frame(p.REQUEST, code, 100 + code, b"\x00\x00\x00"))
    pair.pump()
    service.close()
    return pair.wire


def test_a_version_1_client_sees_the_same_bytes_from_a_writable_server(image: Path) -> None:
    ro, rw = v1_wire(image, rw=False), v1_wire(image, rw=True)
    assert ro == rw
    reader = p.FrameReader(p.MAX_FRAME)
    reader.feed(rw)
    frames = list(reader.frames())
    unknown = [f for f in frames if f[0] == p.ERROR and f[2] > 100]
    assert [(f[1], f[2]) for f in unknown] == [(p.ERROR_CODES["unknown_op"], 100 + c) for c in range(11, 18)]
    hello = p.ClientCodec().receive(p.frame(*frames[0]))[0]
    assert hello.version == 1 and hello.fields["versions"] == "1 2"
    assert not any(k.startswith(("writable.", "max_chunk")) for k in hello.fields)


def test_a_version_2_session_says_what_it_may_write(image: Path, base: Path, tmp_path: Path) -> None:
    session = Session(serve(image))
    fields = session.hello.fields
    assert fields["protocol"] == "2" and fields["max_chunk"] == str(p.MAX_CHUNK)
    assert fields["writable.docteur"] == "yes"
    close_served()
    assert Session(serve(image, rw=False)).hello.fields["writable.docteur"] == "read-only attach"
    plain = writable_image(base, tmp_path, capacity="", name="plain.img")  # no write area
    session = Session(serve(plain))
    assert session.hello.fields["writable.docteur"] == "no write area"
    err = session.error("begin")
    assert err.code == "read_only" and "read-only (no write area)" in err.message


def test_without_rw_every_write_is_read_only_and_reads_go_on(image: Path) -> None:
    before = image.read_bytes()
    session = Session(serve(image, rw=False))
    calls = [("begin", b"", None), ("put", b"/x", PutArgs(0)), ("remove", b"/README.md", None),
             ("commit", b"", CommitArgs())]  # fmt: skip
    for op, path, args in calls:
        err = session.error(op, path, args)
        assert (err.code, err.message) == ("read_only", "disk docteur is served read-only"), op
    assert session.rename(b"/README.md", b"/x").code == "read_only"
    assert session.get(b"/README.md") == FILES["README.md"]
    assert image.read_bytes() == before


# -- batches -----------------------------------------------------------------------------
def test_a_batch_is_one_commit_and_durable_when_answered(image: Path) -> None:
    session = Session(serve(image))
    head, _ = head_files(image)
    assert session.ok("begin") == Begun(head, 0)
    put = session.put(b"/new/n.txt", b"new\n")
    blob = bytes.fromhex("3e757656cf36eca53338e520d134963a44f793f8")  # git hash-object of it
    assert isinstance(put, End) and put.result == Put(blob)
    assert isinstance(session.put(b"/run.sh", b"#!/bin/sh\nexit 0\n", 0o100755), End)
    assert session.ok("remove", b"/d/e") is None
    assert session.rename(b"/README.md", b"/new/") .result is None  # type: ignore[union-attr]
    assert files_of(image) == FILES  # nothing visible on the disk before the commit
    done = session.ok("commit", args=CommitArgs("deploy", AUTHOR))
    assert isinstance(done, Committed) and done.committed and done.generation == 1
    new_head, files = head_files(image)  # a fresh open of the file: durable
    assert new_head == done.commit
    assert {k: v[1] for k, v in files.items()} == {
        "d/a.txt": b"a\n", "new/n.txt": b"new\n", "new/README.md": b"hello\n",
        "run.sh": b"#!/bin/sh\nexit 0\n", "x/e/c.txt": b"c\n",
    }  # fmt: skip
    assert files["run.sh"][0] == 0o100755
    assert session.ok("info")["free"] == str(done.free)
    [entry, first] = session.log()
    assert (entry.commit, entry.author, entry.message) == (done.commit, AUTHOR, "deploy\n")
    assert first.commit == head
    assert [e.commit for e in session.log(1)] == [done.commit]


def test_single_writes_are_their_own_batches(image: Path) -> None:
    session = Session(serve(image))
    put = session.put(b"/x.txt", b"x", commit=CommitArgs())
    assert isinstance(put, End) and put.result.commit.committed  # type: ignore[union-attr]
    rm = session.ok("remove", b"/d/a.txt")
    mv = session.rename(b"/x.txt", b"/y.txt", CommitArgs("move it", AUTHOR))
    assert isinstance(rm, Committed) and isinstance(mv, End)
    assert [g.generation for g in (put.result.commit, rm, mv.result)] == [1, 2, 3]  # type: ignore[union-attr]
    assert files_of(image) == expected(d__a_dot_txt=None, y_dot_txt=b"x")
    messages = [e.message for e in session.log()]
    assert messages[:3] == ["move it\n", "rm /d/a.txt\n", "put /x.txt\n"]


def test_an_unchanged_tree_makes_no_commit(image: Path) -> None:
    before = image.read_bytes()
    session = Session(serve(image))
    session.ok("begin")
    assert isinstance(session.put(b"/README.md", FILES["README.md"]), End)  # the same bytes
    done = session.ok("commit", args=CommitArgs("nothing"))
    assert isinstance(done, Committed) and done == Committed(False, bytes(20), 0, done.free)
    assert done.free > 0
    put = session.put(b"/README.md", FILES["README.md"], commit=CommitArgs())
    assert isinstance(put, End) and not put.result.commit.committed  # type: ignore[union-attr]
    session.ok("begin")
    session.put(b"/tmp.txt", b"t")
    session.ok("remove", b"/tmp.txt")
    done = session.ok("commit", args=CommitArgs())
    assert isinstance(done, Committed) and not done.committed and done.commit == bytes(20)
    assert image.read_bytes() == before


def test_one_batch_per_disk_and_reads_of_the_others_see_the_last_commit(image: Path) -> None:
    service = serve(image)
    owner, other = Session(service), Session(service)
    owner.ok("begin")
    assert owner.put(b"/d/a.txt", b"changed\n").__class__ is End
    owner.ok("remove", b"/run.sh")
    owner.put(b"/big/z.bin", bytes(range(256)) * 40)
    # read your writes, through every read operation
    assert owner.get(b"/d/a.txt") == b"changed\n"
    assert owner.get(b"/big/z.bin") == bytes(range(256)) * 40
    assert owner.ok("exists", b"/run.sh") == "absent" and owner.ok("exists", b"/big") == "directory"
    assert owner.ok("size", b"/big/z.bin") == 10240
    stat = owner.ok("stat", b"/d/a.txt")
    assert stat.size == 8 and stat.digest == owner.ok("digest", b"/d/a.txt")
    listed = owner.answer(owner.start("list", b"/"))[0]
    assert b"/big" in listed and b"/run.sh" not in listed
    ranged = owner.answer(owner.start("get", b"/big/z.bin", offset=300, length=5))
    assert ranged[0] == bytes(range(44, 49)) and ranged[1].result.length == 5  # type: ignore[union-attr]
    # the others: the last commit, and busy for writes
    assert other.get(b"/d/a.txt") == b"a\n" and other.ok("exists", b"/run.sh") == "file"
    assert other.error("get", b"/big/z.bin").code == "not_found"
    assert other.error("begin").code == "busy"
    assert owner.error("begin").code == "busy"
    for op, path, args in [("put", b"/q", PutArgs(0)), ("remove", b"/README.md", None)]:
        assert other.error(op, path, args).code == "busy"
    assert other.error("commit", args=CommitArgs()).code == "no_batch"
    assert other.error("abort").code == "no_batch"
    owner.ok("commit", args=CommitArgs("c"))
    assert other.get(b"/big/z.bin") == bytes(range(256)) * 40  # committed: everybody's now
    assert other.ok("begin").generation == 1


def test_reads_go_on_while_a_batch_writes_into_the_file(image: Path) -> None:
    """A batch's data reaches the image file before its commit (and stays there after an
    abort): the server's own writes are not "the image changed while served"."""
    service = serve(image)
    owner, other = Session(service), Session(service)
    owner.ok("begin")
    big = random.Random(5).randbytes(6 << 20)  # past the writer's buffer: on the file now
    assert isinstance(owner.put(b"/big", big), End)
    assert other.get(b"/README.md") == FILES["README.md"]
    assert owner.get(b"/big") == big and owner.get(b"/d/a.txt") == b"a\n"
    owner.ok("abort")
    assert other.get(b"/d/e/b.txt") == b"b\n" and owner.get(b"/run.sh") == FILES["run.sh"]


def test_abort_writes_nothing_and_frees_the_disk(image: Path) -> None:
    before = image.read_bytes()
    session = Session(serve(image))
    session.ok("begin")
    session.put(b"/x", b"x" * 100_000)
    assert session.ok("abort") is None
    assert session.error("abort").code == "no_batch"
    assert session.ok("begin").generation == 0
    session.ok("abort")
    assert image.read_bytes()[: len(before)] == before and files_of(image) == FILES


@pytest.mark.parametrize("how", ["eof", "close", "greet"])
def test_a_session_that_ends_aborts_its_batch(image: Path, how: str) -> None:
    service = serve(image)
    owner = Session(service, stream=how == "greet")
    owner.ok("begin")
    owner.put(b"/x", b"x")
    other = Session(service)
    assert other.error("begin").code == "busy"
    if how == "eof":
        owner.send(b"")
        owner.pair.pump()
    elif how == "close":
        owner.server.close()
    else:
        owner.send(p.greet_frame(2))
        owner.pair.pump()
        assert owner.error("commit", args=CommitArgs()).code == "no_batch"  # a new session
    assert other.ok("begin") is not None
    other.ok("abort")
    assert files_of(image) == FILES


def test_expected_head_conflict_writes_nothing(image: Path) -> None:
    session = Session(serve(image))
    head, _ = head_files(image)
    session.ok("begin")
    session.put(b"/x", b"x")
    err = session.error("commit", args=CommitArgs("m", "", bytes(20)))
    assert err.code == "conflict" and head.hex() in err.message
    assert session.error("commit", args=CommitArgs()).code == "no_batch"  # the batch is closed
    put = session.put(b"/y", b"y", commit=CommitArgs("", "", b"\x01" * 20))
    assert isinstance(put, Error) and put.code == "conflict"
    done = session.ok("remove", b"/run.sh", CommitArgs("rm", "", head))  # the right head
    assert done.committed  # type: ignore[union-attr]
    assert files_of(image) == expected(run_dot_sh=None)


# -- errors ------------------------------------------------------------------------------
ERRORS = [
    ("put", b"/d", "value_expected"),
    ("put", b"/README.md/x", "dictionary_expected"),
    ("put", b"/a//b", "invalid_path"),
    ("put", b"/.git/config", "invalid_path"),
    ("remove", b"/nope", "not_found"),
    ("remove", b"/", "invalid_path"),
    ("rename", b"/nope", "not_found"),
    ("rename_dir", b"/d", "rename_source_prefix"),
    ("rename_onto_dir", b"/d", "already_present"),
]


@pytest.mark.parametrize(("op", "path", "code"), ERRORS)
@pytest.mark.parametrize("in_batch", [True, False])
def test_write_errors_leave_the_batch_and_the_disk_as_they_were(
    image: Path, op: str, path: bytes, code: str, in_batch: bool
) -> None:
    before = image.read_bytes()
    session = Session(serve(image))
    commit = None if in_batch else CommitArgs()
    if in_batch:
        session.ok("begin")
        session.put(b"/kept", b"kept")
    if op == "put":
        last = session.put(path, b"content that is never written", commit=commit)
    elif op == "remove":
        last = session.call("remove", path, commit)
    elif op == "rename":
        last = session.rename(path, b"/z", commit)
    elif op == "rename_dir":
        last = session.rename(path, path + b"/e/inside", commit)
    else:
        last = session.rename(b"/d/e", b"/x", commit)  # /x/e is a directory already
    assert isinstance(last, Error) and last.code == code, last
    if in_batch:
        assert session.get(b"/kept") == b"kept"  # the batch goes on
        assert session.ok("commit", args=CommitArgs()).committed  # type: ignore[union-attr]
        assert files_of(image) == {**FILES, "kept": b"kept"}
    else:
        assert image.read_bytes() == before


def test_commit_arguments_inside_a_batch_and_bad_authors_are_bad_requests(image: Path) -> None:
    session = Session(serve(image))
    session.ok("begin")
    assert session.error("remove", b"/README.md", CommitArgs("x")).code == "bad_request"
    err = session.error("commit", args=CommitArgs("m", "not an author"))
    assert err.code == "bad_request"
    assert session.ok("remove", b"/README.md") is None  # the batch is still open
    session.ok("abort")
    put = session.put(b"/x", b"x" * 1000, commit=CommitArgs("m", "nobody"))
    assert isinstance(put, Error) and put.code == "bad_request"
    assert files_of(image) == FILES


def test_no_space_fails_the_put_and_keeps_the_disk(base: Path, tmp_path: Path) -> None:
    image = writable_image(base, tmp_path, capacity="1M", name="small.img")
    before = image.read_bytes()
    session = Session(serve(image))
    noise = random.Random(9).randbytes(2 << 20)  # 2 MiB that does not compress
    put = session.put(b"/big", noise, commit=CommitArgs())
    assert isinstance(put, Error) and put.code == "no_space", put
    assert image.read_bytes() == before
    assert session.put(b"/small", b"s", commit=CommitArgs()).__class__ is End  # room for that


# -- the put barrier ----------------------------------------------------------------------
def test_a_put_waits_for_the_replies_before_it_and_a_cancel_drops_it(image: Path) -> None:
    session = Session(serve(image), high_water=1 << 12)
    session.ok("begin")
    get = session.start("get", b"/README.md")
    rid, data = session.pair.raw.request("put", b"/p", args=PutArgs(10))
    session.send(data + session.pair.client.chunk(rid, b"01234"))
    assert session.server.codec.paused and not session.server.wants_input  # the barrier
    assert session.answer(get)[0] == FILES["README.md"]
    assert session.server.upload is not None and session.server.wants_input  # receiving now
    session.send(p.frame(p.CANCEL, 0, rid))
    _, last = session.answer(rid)
    assert isinstance(last, Error) and last.code == "cancelled"
    assert session.ok("exists", b"/p") == "absent"  # the batch is as it was
    assert isinstance(session.put(b"/p", b"0123456789"), End)
    assert session.get(b"/p") == b"0123456789"


def test_chunks_past_the_declared_size_break_the_connection(image: Path) -> None:
    session = Session(serve(image))
    session.ok("begin")
    rid, data = session.pair.raw.request("put", b"/p", args=PutArgs(3))
    session.send(data + session.pair.client.chunk(rid, b"0123"))
    events = session.pair.pump()
    assert isinstance(events[-1], Error) and events[-1].code == "bad_request" and events[-1].id == rid
    assert session.server.state in ("closing", "closed")
    other = Session(session.pair.server.app)  # type: ignore[arg-type]
    assert other.ok("begin").generation == 0  # the batch went with the connection


def test_a_put_cut_short_by_eof_is_not_committed(image: Path) -> None:
    before = image.read_bytes()
    session = Session(serve(image))
    rid, data = session.pair.raw.request("put", b"/p", args=PutArgs(100, 0o100644, CommitArgs()))
    session.send(data + session.pair.client.chunk(rid, b"x" * 60))
    session.send(b"")
    _, last = session.answer(rid)
    assert isinstance(last, Error) and last.code == "bad_request"
    assert image.read_bytes() == before


def test_a_big_put_passes_through_bounded_memory(image: Path, base: Path, tmp_path: Path) -> None:
    image = writable_image(base, tmp_path, capacity="200M", name="roomy.img")
    session = Session(serve(image))
    size, piece = 96 << 20, bytes(range(256)) * 256  # 64 KiB pieces, as the server reads them
    rid = session.start("put", b"/huge.bin", PutArgs(size, 0o100644, CommitArgs()))
    assert not session.server.wants_input  # the barrier: nothing is read before the put starts
    session.pair.pump()  # the put starts (as the server loop writes what is due)
    tracemalloc.start()
    try:
        most = 0
        for _ in range(size // len(piece)):
            assert session.server.wants_input
            session.send(session.pair.client.chunk(rid, piece))  # written as it comes
            most = max(most, session.server.codec.buffered)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _, last = session.answer(rid)
    assert isinstance(last, End) and last.result.commit.committed, last  # type: ignore[union-attr]
    assert most <= len(piece) + p.HEADER_SIZE
    assert peak < 24 << 20, f"peak {peak >> 20} MiB for a {size >> 20} MiB put"
    assert session.ok("size", b"/huge.bin") == size


def test_a_single_put_holds_the_disk_while_its_content_comes(image: Path) -> None:
    """Another write may not commit between a single put's first and last CHUNK: the
    put's commit would be built on a head it did not see (a lost update)."""
    service = serve(image)
    putter, other = Session(service), Session(service)
    rid = putter.start("put", b"/slow.txt", PutArgs(10, 0o100644, CommitArgs("slow")))
    putter.pair.pump()  # the put starts
    putter.send(putter.pair.client.chunk(rid, b"01234"))
    assert other.error("remove", b"/run.sh", CommitArgs()).code == "busy"
    assert other.error("begin").code == "busy"
    putter.send(putter.pair.client.chunk(rid, b"56789"))
    _, last = putter.answer(rid)
    assert isinstance(last, End) and last.result.commit.committed  # type: ignore[union-attr]
    assert other.ok("remove", b"/run.sh").committed  # type: ignore[union-attr]
    assert files_of(image) == expected(run_dot_sh=None, slow_dot_txt=b"0123456789")


def test_a_single_write_with_a_stale_head_is_refused_before_its_content(image: Path) -> None:
    before = image.read_bytes()
    session = Session(serve(image))
    rid = session.start("put", b"/z", PutArgs(1 << 20, 0o100644, CommitArgs("", "", b"\x07" * 20)))
    _, last = session.answer(rid)  # answered at once: no content was needed
    assert isinstance(last, Error) and last.code == "conflict"
    for _ in range(4):  # the content still comes, and is dropped
        session.send(session.pair.client.chunk(rid, bytes(1 << 18)))
    assert session.ok("exists", b"/z") == "absent"
    assert image.read_bytes() == before


def test_a_serial_stream_whose_host_leaves_mid_put_aborts_and_waits_for_a_greet(image: Path) -> None:
    service = serve(image)
    port = Session(service, stream=True)
    port.ok("begin")
    rid = port.start("put", b"/half", PutArgs(1000))
    port.pair.pump()
    port.send(port.pair.client.chunk(rid, b"x" * 400))
    port.server.abandon()  # the port reads EOF: no host any more
    other = Session(service)
    assert other.ok("begin").generation == 0  # the batch went with the host
    other.ok("abort")
    port.send(port.pair.client.chunk(rid, b"y" * 600) + b"leftovers of the old host")
    assert port.pair.pump() == []  # skipped, up to a new host's GREET
    port.send(port.pair.client.upgrade(2))  # a new host
    [hello] = port.pair.pump()
    assert hello.version == 2
    assert port.ok("exists", b"/half") == "absent" and port.ok("begin").generation == 0
