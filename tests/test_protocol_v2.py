"""The codec of protocol version 2 (writes): negotiation, the new requests and
results, CHUNK frames and the put barrier, at the byte level."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur.guest import protocol as p
from docteur.guest.protocol import (
    BadRequest,
    Cancel,
    Chunk,
    ClientCodec,
    End,
    Greet,
    Hello,
    ProtocolError,
    Request,
    ServerCodec,
)
from docteur.guest.values import (
    Begun,
    CommitArgs,
    Committed,
    LogEntry,
    Put,
    PutArgs,
    RenameArgs,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
HEAD = bytes(range(20))


def upgraded() -> ClientCodec:
    """A client codec in a version-2 session, as a v2 client gets there."""
    client = ClientCodec()
    [hello] = client.receive(ServerCodec.hello({"status": "ok", "versions": "1 2"}))
    assert hello.version == 1 and client.version == 1
    assert client.upgrade(2) == p.GREET_FRAME[:9] + b"\x02\x00\x02"
    assert client.version == 1  # until the HELLO of version 2 arrives
    stale = ServerCodec.end(7, "ping", None) + ServerCodec.hello({"status": "ok"})
    assert client.receive(stale) == []  # the old session's frames are skipped
    [hello] = client.receive(ServerCodec.hello({"status": "ok", "protocol": "2"}, version=2))
    assert hello == Hello(2, p.CHUNK, {"status": "ok", "protocol": "2"}) and client.version == 2
    return client


def test_greet_asks_for_a_version_and_gets_at_most_the_highest() -> None:
    server = ServerCodec()
    assert server.receive(p.GREET_FRAME) == [Greet(1)]
    assert server.receive(p.greet_frame(2)) == [Greet(2)] and server.version == 2
    assert server.receive(p.greet_frame(9)) == [Greet(2)]  # a newer client gets 2
    assert server.receive(p.GREET_FRAME) == [Greet(1)] and server.version == 1
    for payload in (b"\x00\x00", b"\x02"):
        with pytest.raises(ProtocolError, match="GREET"):
            ServerCodec().receive(p.frame(p.GREET, 0, 0, payload))


def test_a_version_1_session_knows_no_writes() -> None:
    """In version 1 the new codes are unknown_op (what a v1 server says), a CHUNK is broken."""
    server = ServerCodec()
    for op in ("begin", "put", "log", "abort"):
        raw = p.frame(p.REQUEST, p.OP_CODES[op], 5, b"\x00\x00\x00")
        [answer] = server.receive(raw)
        assert answer == BadRequest(5, "unknown_op", f"unknown operation {p.OP_CODES[op]}")
    assert not server.paused
    with pytest.raises(ProtocolError, match="unexpected frame type 0x4"):
        server.receive(p.chunk_frame(5, b"x"))
    with pytest.raises(ValueError, match="protocol 1: no put"):
        ClientCodec().request("put", path=b"/a", args=PutArgs(1))


REQUESTS = [
    ("begin", b"", None),
    ("put", b"/a/b.txt", PutArgs(3, 0o100755)),
    ("put", b"/l", PutArgs(0, 0o120000, CommitArgs("add l", "A <a@b>", HEAD))),
    ("remove", b"/old", None),
    ("remove", b"/old", CommitArgs("rm old", "", None)),
    ("rename", b"/a", RenameArgs(b"/b")),
    ("rename", b"/a", RenameArgs(b"/dir/", CommitArgs("mv", "Ö <o@x>", HEAD))),
    ("commit", b"", CommitArgs("héllo\nworld", "N <e>", None)),
    ("commit", b"", CommitArgs()),
    ("abort", b"", None),
    ("log", b"", None),
    ("log", b"", 10),
]


@pytest.mark.parametrize(("op", "path", "args"), REQUESTS)
def test_write_requests_round_trip(op: str, path: bytes, args: object) -> None:
    client = upgraded()
    rid, data = client.request(op, "other", path, args=args)
    server = ServerCodec()
    server.receive(p.greet_frame(2))
    [req] = server.receive(data)
    assert req == Request(rid, op, "other", path, 0, None, args)
    assert server.paused == (op == "put")  # a put stops the parsing
    assert server.receiving == (rid if op == "put" and args.size else None)  # type: ignore[union-attr]


def test_malformed_write_requests_are_bad_requests() -> None:
    server = ServerCodec()
    server.receive(p.greet_frame(2))
    good = p.encode_request(3, "put", "", b"/a", args=PutArgs(1))
    cases = {
        "mode": p.encode_request(3, "put", "", b"/a", args=PutArgs(1, 0o40000)),
        "names no path": p.encode_request(3, "commit", "", b"/x", args=CommitArgs()),
        "unexpected bytes": good[:-2] + b"xx" + p.encode_commit_args(CommitArgs())[:-1] + b"\x00\x00",
        "flag": p.encode_request(3, "commit", "", b"") [:-1] + b"\x07",
        "truncated": p.encode_request(3, "commit", "", b"", args=CommitArgs("m"))[:-3],
        "0xff": p.encode_request(3, "commit", "", b"", args=CommitArgs("m"))[:-6] + b"\xff" + b"\x00" * 4,
    }  # fmt: skip
    for why, raw in cases.items():
        raw = p.HEADER.pack(p.REQUEST, raw[1], 3, len(raw) - p.HEADER_SIZE) + raw[p.HEADER_SIZE :]
        [answer] = server.receive(raw)
        assert isinstance(answer, BadRequest) and answer.code == "bad_request", why
        assert not server.paused, why


RESULTS = [
    ("begin", Begun(HEAD, 4)),
    ("put", Put(HEAD)),
    ("put", Put(HEAD, Committed(True, bytes(19) + b"\x01", 5, 1 << 33))),
    ("put", Put(HEAD, Committed(False, bytes(20), 4, 77))),
    ("remove", None),
    ("remove", Committed(True, HEAD, 1, 0)),
    ("rename", None),
    ("commit", Committed(True, HEAD, 2**32 - 1, 2**64 - 1)),
    ("abort", None),
    ("log", 3),
]


@pytest.mark.parametrize(("op", "result"), RESULTS)
def test_write_results_round_trip(op: str, result: object) -> None:
    client = upgraded()
    args = {"put": PutArgs(0), "rename": RenameArgs(b"/b"), "commit": CommitArgs()}.get(op)
    rid, _ = client.request(op, path=b"/a" if op in ("put", "remove", "rename") else b"", args=args)
    [end] = client.receive(ServerCodec.end(rid, op, result))
    assert end == End(rid, op, result)


def test_log_entries_round_trip_in_data_frames() -> None:
    entries = [
        LogEntry(HEAD, 1_700_000_000, -90, "Dr. Greenthumb <noreply@cypress.hill>", "first\n"),
        LogEntry(bytes(20), -5, 120, "Ünï <u@x>", ""),
    ]
    payload = p.encode_log(entries)
    assert p.decode_log(payload) == entries
    with pytest.raises(ProtocolError, match="log entry"):
        p.decode_log(payload[:-1])


def put_server(size: int) -> tuple[ServerCodec, int]:
    server = ServerCodec()
    server.receive(p.greet_frame(2))
    [req] = server.receive(p.encode_request(9, "put", "", b"/f", args=PutArgs(size)))
    assert isinstance(req, Request) and server.paused
    return server, 9


def test_a_put_is_a_barrier_then_its_chunks_come_out_in_order() -> None:
    server, rid = put_server(10)
    later = p.encode_request(10, "ping")
    data = p.chunk_frame(rid, b"0123") + p.chunk_frame(rid, b"") + p.chunk_frame(rid, b"456789") + later
    assert server.receive(data) == []  # nothing parsed until the put may start
    assert server.buffered == len(data)
    assert server.resume() == [
        Chunk(rid, b"0123", False),
        Chunk(rid, b"", False),
        Chunk(rid, b"456789", True),
        Request(10, "ping", "docteur", b""),
    ]
    assert server.receiving is None and not server.paused


@pytest.mark.parametrize(
    ("after", "why"),
    [
        (p.chunk_frame(9, b"12345"), "only 4 left"),
        (p.chunk_frame(8, b"1"), "not a put receiving"),
        (p.encode_request(10, "ping"), "before the end of put 9"),
    ],
)
def test_what_breaks_a_put_is_a_broken_frame(after: bytes, why: str) -> None:
    server, rid = put_server(10)
    server.receive(p.chunk_frame(rid, b"123456") + after)
    with pytest.raises(ProtocolError, match=why) as caught:
        server.resume()
    assert caught.value.code == "bad_request"


def test_cancel_or_greet_ends_a_put_midway() -> None:
    server, rid = put_server(10)
    server.receive(p.chunk_frame(rid, b"12") + p.frame(p.CANCEL, 0, rid) + p.encode_request(11, "ping"))
    assert server.resume() == [Chunk(rid, b"12", False), Cancel(rid), Request(11, "ping", "docteur", b"")]
    server, rid = put_server(10)
    server.receive(p.chunk_frame(rid, b"12") + p.greet_frame(2))
    assert server.resume() == [Chunk(rid, b"12", False), Greet(2)]
    assert server.receiving is None


def test_the_chunks_of_a_malformed_put_are_dropped() -> None:
    server = ServerCodec()
    server.receive(p.greet_frame(2))
    bad = p.encode_request(4, "put", "", b"/a", args=PutArgs(3, 0o40000))
    events = server.receive(bad + p.chunk_frame(4, b"abc") + p.encode_request(5, "ping"))
    assert [type(e) for e in events] == [BadRequest, Request]


def test_a_chunk_over_max_chunk_is_too_large() -> None:
    server, rid = put_server(1 << 20)
    server.receive(p.chunk_header(rid, p.MAX_CHUNK + 1))
    with pytest.raises(ProtocolError) as caught:
        server.resume()
    assert caught.value.code == "too_large"
    with pytest.raises(ValueError, match="at most"):
        ClientCodec.chunk(rid, bytes(p.MAX_CHUNK + 1))


def test_resync_lands_on_either_greet() -> None:
    server = ServerCodec()
    server.resync()
    junk = b"\x03\x00\x00\x00\x00\x00\x00\x00\x00\x05junk" + b"\x01" * 7
    assert server.receive(junk + p.greet_frame(2)) == [Greet(2)]
    server.resync()
    assert server.receive(junk[:12] + p.GREET_FRAME) == [Greet(1)]


@FAST
@given(data=st.binary(max_size=600), cut=st.integers(0, 600))
def test_fuzzed_bytes_in_a_v2_session_give_events_or_a_protocol_error(data: bytes, cut: int) -> None:
    """Never another exception, never a hang: the codec's promise to the connection."""
    server = ServerCodec()
    server.receive(p.greet_frame(2))
    seed = p.encode_request(1, "put", "", b"/f", args=PutArgs(20)) + p.chunk_frame(1, b"x" * 7)
    stream = seed + data
    try:
        events = server.receive(stream[:cut]) + server.receive(stream[cut:])
        while server.paused:
            events += server.resume()
            if server.paused and not server.buffered:
                break
    except ProtocolError:
        return
    for event in events:
        assert isinstance(event, Request | BadRequest | Cancel | Greet | Chunk)


def test_a_client_joining_a_stream_upgrades_blind_and_skips_to_the_v2_hello() -> None:
    """The microVM's serial port: whatever an earlier session left, then the boot HELLO
    (version 1), then the answer to GREET(2)."""
    client = ClientCodec(resync=True)
    client.upgrade(2)
    leftovers = b"\x11\x00\x00\x00\x00\x07" + b"half a frame"
    v1 = ServerCodec.hello({"status": "ok", "versions": "1 2"})
    v2 = ServerCodec.hello({"status": "ok", "protocol": "2"}, version=2)
    events = client.receive(leftovers + v1 + ServerCodec.end(3, "ping", None) + v2[:7])
    assert events == [] and client.version == 1
    [hello] = client.receive(v2[7:])
    assert hello.version == 2 and client.version == 2
    rid, _ = client.request("begin")
    begun = Begun(HEAD, 0)
    assert client.receive(ServerCodec.end(rid, "begin", begun)) == [End(rid, "begin", begun)]
