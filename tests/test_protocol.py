"""The sans-IO codec: round trips, arbitrary splits, and fuzzed input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur.guest import protocol as p
from docteur.guest.protocol import (
    BadRequest,
    Cancel,
    ClientCodec,
    Data,
    End,
    Error,
    Greet,
    Hello,
    ProtocolError,
    Request,
    ServerCodec,
)
from docteur.guest.values import Entry, GetEnd, Stat

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
paths = st.binary(max_size=300)
ops = st.sampled_from(sorted(p.V1_OPS))  # v2 writes: tests/test_protocol_v2.py


def greeted() -> ClientCodec:
    client = ClientCodec()
    [hello] = client.receive(ServerCodec.hello({"status": "ok", "disk.docteur": "ab" * 20}))
    assert isinstance(hello, Hello) and hello.ok and hello.disks == {"docteur": "ab" * 20}
    return client


@FAST
@given(op=ops, disk=st.sampled_from(["", "docteur", "other"]), path=paths,
       offset=st.integers(0, 2**64 - 1), length=st.none() | st.integers(0, 2**64 - 2))  # fmt: skip
def test_requests_round_trip(op: str, disk: str, path: bytes, offset: int, length: int | None):
    _, data = ClientCodec().request(op, disk, path, offset, length)
    [req] = ServerCodec().receive(data)
    assert isinstance(req, Request)
    assert (req.op, req.disk, req.path) == (op, disk or "docteur", path)
    if op == "get":
        assert (req.offset, req.length) == (offset, length)


RESULTS = {
    "info": {"commit": "x", "message": "héllo\nworld"},
    "exists": "symlink",
    "stat": Stat("file", 0o100755, 12, b"\x01" * 20, 1700000000),
    "get": GetEnd(100, 10, 20),
    "size": 2**40,
    "digest": b"\xab" * 20,
    "last_modified": (1700000000, -90),
    "list": 3,
    "ping": None,
    "shutdown": None,
}


@pytest.mark.parametrize("op", sorted(RESULTS))
def test_results_round_trip(op: str) -> None:
    client = greeted()
    rid, _ = client.request(op, "", b"/x")
    [end] = client.receive(ServerCodec.end(rid, op, RESULTS[op]))
    want = "ab" * 20 if op == "digest" else RESULTS[op]
    assert isinstance(end, End) and end.id == rid and end.result == want


def test_list_entries_round_trip() -> None:
    entries = [Entry(b"/a", "file", 0o100644), Entry(b"/d\xff", "directory", 0o40000),
               Entry(b"/l", "symlink", 0o120000), Entry(b"/s", "submodule", 0o160000)]  # fmt: skip
    assert p.decode_entries(p.encode_entries(entries)) == entries
    with pytest.raises(ProtocolError):
        p.decode_entries(p.encode_entries(entries)[:-1])


@FAST
@given(chunks=st.lists(st.binary(min_size=0, max_size=3000), max_size=5),
       cuts=st.lists(st.integers(0, 20000), max_size=10))  # fmt: skip
def test_any_split_of_the_stream_gives_the_same_events(chunks: list[bytes], cuts: list[int]):
    client = greeted()
    stream = b""
    rid, _ = client.request("get", "", b"/f")
    for c in chunks:
        stream += p.data_header(rid, len(c)) + c
    stream += ServerCodec.end(rid, "get", GetEnd(sum(map(len, chunks)), 0, 0))
    pieces, last = [], 0
    for cut in sorted(c % (len(stream) + 1) for c in cuts):
        pieces.append(stream[last:cut])
        last = cut
    pieces.append(stream[last:])
    events = [e for piece in pieces for e in client.receive(piece)]
    assert [e.data for e in events if isinstance(e, Data)] == chunks
    assert isinstance(events[-1], End)


@FAST
@given(st.binary(max_size=2000))
def test_server_codec_never_crashes_on_garbage(data: bytes) -> None:
    codec = ServerCodec()
    try:
        events = codec.receive(data)
    except ProtocolError as exc:
        assert exc.code in p.ERROR_CODES
        return
    for e in events:
        assert isinstance(e, Request | BadRequest | Cancel | Greet)
    # Nothing is buffered beyond one frame's worth.
    assert codec.buffered <= p.HEADER_SIZE + p.MAX_REQUEST


@FAST
@given(st.binary(max_size=2000))
def test_client_codec_never_crashes_on_garbage(data: bytes) -> None:
    client = greeted()
    client.request("get", "", b"/x")
    with contextlib.suppress(ProtocolError):
        client.receive(data)


@FAST
@given(code=st.integers(0, 255), payload=st.binary(max_size=600))
def test_any_request_frame_is_decoded_or_refused(code: int, payload: bytes) -> None:
    [event] = ServerCodec().receive(p.frame(p.REQUEST, code, 7, payload))
    assert event.id == 7
    if isinstance(event, BadRequest):
        assert event.code in ("unknown_op", "bad_request")


def test_huge_declared_length_is_refused_without_reading_it() -> None:
    codec = ServerCodec()
    with pytest.raises(ProtocolError) as info:
        codec.receive(p.HEADER.pack(p.REQUEST, 4, 9, 1 << 31))
    assert info.value.code == "too_large" and info.value.request_id == 9
    client = greeted()
    with pytest.raises(ProtocolError):
        client.receive(p.HEADER.pack(p.DATA, 0, 1, p.MAX_FRAME + 1))


def test_greeting_is_checked() -> None:
    with pytest.raises(ProtocolError, match="greeting"):
        ClientCodec().receive(p.frame(p.DATA, 0, 1, b"x"))
    bad = p.frame(p.HELLO, 0, 0, b"docteur\0" + b"\x00\x03" + b"\0\0\0\0" + b"\0\0")
    with pytest.raises(ProtocolError, match="version 3"):
        ClientCodec().receive(bad)


def test_errors_and_cancel() -> None:
    client = greeted()
    rid, _ = client.request("get", "", b"/x")
    [err] = client.receive(ServerCodec.error(rid, "not_found", "no /x"))
    assert err == Error(rid, "not_found", "no /x")
    rid, _ = client.request("get", "", b"/y")
    client.cancel(rid)
    # What was already on its way for a cancelled request is dropped.
    assert client.receive(p.data_header(rid, 3) + b"abc" + ServerCodec.end(rid, "get", GetEnd(3, 0, 3))) == []
    [cancel] = ServerCodec().receive(client.cancel(5))
    assert cancel == Cancel(5)


def test_resync_finds_the_greeting_after_junk() -> None:
    client = ClientCodec(resync=True)
    junk = b"\x11\0\0\0\0\x05\0\0\0\x10" + b"docteur\0" + b"tail of an old frame"
    hello = ServerCodec.hello({"status": "ok"})
    events = client.receive(junk + hello[:7]) + client.receive(hello[7:])
    assert len(events) == 1 and isinstance(events[0], Hello)
    server = ServerCodec()
    server.resync()
    assert server.receive(b"garbage\x03\0\0") == []
    assert server.receive(b"\0\0\0\0\0\0\0" + ClientCodec().request("ping")[1]) == [
        Greet(), Request(1, "ping", "docteur", b"")]  # fmt: skip
