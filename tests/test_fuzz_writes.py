"""Fuzzed frames of protocol version 2 against a writable server: whatever arrives (puts
cut short, CHUNKs of the wrong size or id, cancels, greets, malformed arguments, junk),
the server stays up, answers only requests it was sent, and the image keeps every byte.

The frames never commit (no `commit`, and every put, remove or rename that could succeed
is left unfinished or names a path that fails), so "every byte unchanged" is the oracle."""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from docteur.guest import protocol as p
from docteur.guest.protocol import Chunk, ProtocolError, Request, ServerCodec
from docteur.guest.values import CommitArgs, PutArgs, RenameArgs
from tests.support.guestproc import GuestProcess
from tests.support.protocol import Pair, RawSocket
from tests.support.v2 import close_served, serve, upgraded_socket, writable_image

IDS = st.integers(1, 12)
# Paths a put cannot bind, and paths a remove or rename cannot find.
PUT_FAILING = [b"/a//b", b"/.git/x", b"/d", b"/README.md/x", b"/d/../..x\0"]
GONE = [b"/nope", b"/a//b", b"/README.md/x", b"/", b"/.."]
VALID = [b"/new", b"/d/new.txt"]  # puts there are kept unfinished (see `commits`)
MODES = st.sampled_from([0o100644, 0o100755, 0o120000, 0o40000, 0])
COMMITS = st.none() | st.builds(CommitArgs, st.text(max_size=8), st.sampled_from(["", "A <a@b>", "x"]),
                                st.none() | st.binary(min_size=20, max_size=20))  # fmt: skip


@st.composite
def frame(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["put", "chunk", "cancel", "greet", "begin", "abort", "log", "remove",
                                 "rename", "read", "junk", "mutated"]))  # fmt: skip
    rid = draw(IDS)
    if kind == "chunk":
        return p.chunk_frame(rid, draw(st.binary(max_size=40)))
    if kind == "cancel":
        return p.frame(p.CANCEL, 0, rid)
    if kind == "greet":
        return p.greet_frame(draw(st.sampled_from([1, 2])))
    if kind == "junk":  # no 0x03 byte: a resync must not land on a GREET hidden in it
        payload = draw(st.binary(max_size=30).map(lambda b: b.replace(b"\x03", b"\x05")))
        return p.frame(draw(st.integers(5, 255)), draw(st.integers(0, 255)), rid, payload)
    if kind == "put":
        args = PutArgs(draw(st.integers(0, 60)), 0o100644, draw(COMMITS))
        return p.encode_request(rid, "put", "", draw(st.sampled_from(PUT_FAILING + VALID)), args=args)
    if kind in ("begin", "abort", "log"):
        args = draw(st.none() | st.integers(0, 3)) if kind == "log" else None
        return p.encode_request(rid, kind, draw(st.sampled_from(["", "docteur", "other"])), args=args)
    if kind == "remove":
        return p.encode_request(rid, "remove", "", draw(st.sampled_from(GONE)), args=draw(COMMITS))
    if kind == "rename":
        args = RenameArgs(draw(st.sampled_from([b"/x", b"/d/e", b"/", b"/a//b"])), draw(COMMITS))
        return p.encode_request(rid, "rename", "", draw(st.sampled_from(GONE)), args=args)
    if kind == "read":
        op = draw(st.sampled_from(["get", "list", "stat", "exists", "info", "ping"]))
        return p.encode_request(rid, op, "", draw(st.sampled_from([b"/", b"/README.md", b"/d"])))
    # mutated: a write request with one byte changed, never the id or the length
    data = p.encode_request(rid, "put", "", b"/README.md/x", args=PutArgs(3, 0o100755, CommitArgs("m")))
    at = draw(st.sampled_from([0, 1, *range(p.HEADER_SIZE, len(data))]))
    return data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]


def commits(stream: bytes, resync: bool = False) -> bool:
    """Whether the stream, as the server parses it, could commit: a commit, a remove or
    rename of a path that may exist, or a put of a path that may be bound and that gets
    all its content. A socket stops at the first broken frame; a stream (`resync`) goes
    on from the next GREET, as the server does."""
    codec = ServerCodec()
    codec.receive(p.greet_frame(2))
    events: list = []
    data = stream
    while True:
        try:
            events += codec.receive(data)
            while codec.paused:
                events += codec.resume()
            break
        except ProtocolError:
            if not resync:
                break
            codec.resync()
            data = b""
    bindable: set[int] = set()
    for e in events:
        if isinstance(e, Request):
            if e.op == "commit" or (e.op in ("remove", "rename") and e.path not in GONE):
                return True
            if e.op == "put" and e.path not in PUT_FAILING:
                if not e.args.size:  # type: ignore[union-attr]
                    return True
                bindable.add(e.id)
        elif isinstance(e, Chunk) and e.last and e.id in bindable:
            return True
    return False


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-writes")


@pytest.fixture(scope="module")
def image(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return writable_image(base, tmp_path_factory.mktemp("fuzzed"), capacity="1M")


def digest(image: Path) -> str:
    return hashlib.sha256(image.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def pristine(image: Path) -> str:
    return digest(image)


@pytest.fixture(scope="module")
def service(image: Path):  # type: ignore[no-untyped-def]
    yield serve(image)
    close_served()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(pieces=st.lists(frame(), max_size=10), cut=st.integers(0, 1 << 10), eof=st.booleans(),
       serial=st.booleans())  # fmt: skip
def test_fuzzed_v2_frames_in_memory(service, image: Path, pristine: str, pieces: list[bytes],
                                    cut: int, eof: bool, serial: bool) -> None:  # fmt: skip
    """On a socket (a broken frame closes it) and on a serial stream (it resyncs)."""
    stream = b"".join(pieces)
    assume(not commits(stream, resync=serial))
    pair = Pair(service, stream=serial)
    pair.send(p.greet_frame(2))
    pair.pump_raw()
    known = {0} | {p.HEADER.unpack_from(x)[2] for x in pieces if x[0] == p.REQUEST}
    cut %= len(stream) + 1
    for part in (stream[:cut], stream[cut:]):
        pair.send(part)
        pair.pump_raw()  # the server loop: what is due goes out, a put starts
    if eof:
        pair.send(b"")
        pair.pump_raw()
    reader = p.FrameReader(p.MAX_FRAME)
    reader.feed(pair.wire)
    for ftype, _, rid, _ in reader.frames():
        assert ftype in (p.HELLO, p.DATA, p.END, p.ERROR)
        assert rid in known, f"a reply to {rid}, which was never asked"
    pair.server.close()  # the client goes: its batch, if any, is aborted
    assert digest(image) == pristine
    after = Pair(service)  # the service is alive and the disk free
    after.send(p.greet_frame(2))
    after.pump()
    after.request("begin")
    assert any(isinstance(e, p.End) for e in after.pump())
    after.server.close()


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(pieces=st.lists(frame(), min_size=1, max_size=8))
def test_fuzzed_v2_frames_against_the_server_process(served: tuple[GuestProcess, Path, str],
                                                     pieces: list[bytes]) -> None:  # fmt: skip
    process, image, pristine = served
    stream = b"".join(pieces)
    assume(not commits(stream))
    raw = upgraded_socket(process.sock)
    with contextlib.suppress(OSError):
        raw.send(stream)
        raw.s.shutdown(1)  # EOF: the server answers what it can, then closes
        raw.until_closed()
    raw.close()
    alive = RawSocket(process.sock)
    _, last = alive.until_end(alive.request("ping"))
    assert isinstance(last, p.End)
    alive.close()
    assert process.proc.poll() is None
    assert digest(image) == pristine


@pytest.fixture(scope="module")
def served(base: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    image = writable_image(base, tmp_path_factory.mktemp("fuzzed-process"), capacity="1M")
    pristine = digest(image)
    with GuestProcess(image, rw=True) as process:
        yield process, image, pristine
