"""The server's connection state machine, in memory: a client codec and a server
connection joined over bytes, answering from a real service over a real image."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur.guest import connection as c
from docteur.guest import protocol as p
from docteur.guest.boot import boot
from docteur.guest.connection import Session
from docteur.guest.protocol import ClientCodec, Data, End, Error, Hello, Request
from docteur.guest.service import Service
from docteur.guest.values import Answer, Body
from tests.support.git import cat_blobs, ls_tree
from tests.support.protocol import Pair

BIG = 6 << 20


@pytest.fixture(scope="module")
def service(gen: tuple[Path, Path]) -> Service:
    return boot([("docteur", str(gen[1]))], "none")


@pytest.fixture(scope="module")
def files(gen: tuple[Path, Path]) -> dict[bytes, bytes]:
    rows = [(oid, b"/" + path) for _, kind, oid, path in ls_tree(gen[0]) if kind == "blob"]
    wanted = [r for r in rows if r[1] in (b"/big.bin", b"/README.md")]
    blobs = cat_blobs(gen[0], [oid for oid, _ in wanted])
    return {path: blobs[oid] for oid, path in wanted}


class Counting:
    """The real service, counting what its get bodies give and the bodies abandoned."""

    def __init__(self, service: Service):
        self.service = service
        self.pulled = 0
        self.abandoned = 0

    def greeting(self, session: Session) -> dict[str, str]:
        return self.service.greeting(session)

    def end_session(self, session: Session) -> None:
        self.service.end_session(session)

    def handle(self, request: Request, session: Session) -> Answer:
        answer = self.service.handle(request, session)
        if isinstance(answer, Body):
            return Body(self._count(answer.chunks), answer.end)
        return answer

    def _count(self, chunks: Iterator) -> Iterator:
        try:
            for chunk in chunks:
                self.pulled += len(chunk)
                yield chunk
        except GeneratorExit:
            self.abandoned += 1
            raise


def replies(events: list) -> dict[int, list]:
    by_id: dict[int, list] = {}
    for e in events:
        if not isinstance(e, Hello):
            by_id.setdefault(e.id, []).append(e)
    return by_id


def body(events: list) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Data))


def test_pipelined_requests_are_answered_in_order(service: Service, files) -> None:
    pair = Pair(service)
    frames = [pair.client.request(op, "", path) for op, path in (
        ("get", b"/big.bin"), ("size", b"/README.md"), ("get", b"/nope"), ("list", b"/"),
        ("get", b"/README.md"), ("ping", b""))]  # fmt: skip
    pair.send(b"".join(f for _, f in frames))  # all at once, one read
    events = pair.pump()
    assert isinstance(events[0], Hello)
    ends = [e for e in events if isinstance(e, End | Error)]
    assert [e.id for e in ends] == [rid for rid, _ in frames]  # in the order asked
    by_id = replies(events)
    big, size, nope, listing, readme, ping = (by_id[rid] for rid, _ in frames)
    assert body(big) == files[b"/big.bin"] and big[-1].result == p.GetEnd(BIG, 0, BIG)
    assert size[-1].result == len(files[b"/README.md"])
    assert nope[-1].code == "not_found"
    assert b"/big.bin" in [e.key for e in p.decode_entries(body(listing))]
    assert body(readme) == files[b"/README.md"]
    assert isinstance(ping[-1], End) and pair.server.state == c.OPEN


def test_cancel_of_a_queued_request(service: Service) -> None:
    app = Counting(service)
    pair = Pair(app)
    first = pair.request("get", b"/README.md")
    queued = pair.request("get", b"/big.bin")
    pair.send(p.frame(p.CANCEL, 0, queued))
    by_id = replies(pair.pump())
    assert isinstance(by_id[first][-1], End)
    [err] = by_id[queued]  # no byte of it, only the error
    assert isinstance(err, Error) and err.code == "cancelled"
    assert app.pulled == len(body(by_id[first]))  # the cancelled body was never opened


def test_cancel_of_a_stream_in_flight(service: Service) -> None:
    app = Counting(service)
    pair = Pair(app)
    rid = pair.request("get", b"/big.bin")
    started = pair.pump(budget=600_000)  # a reader that took a little of it
    assert any(isinstance(e, Data) for e in started)
    pair.send(pair.client.cancel(rid))  # the client codec drops what still comes
    pair.send(p.frame(p.CANCEL, 0, 12345))  # a cancel of an unknown id: no answer at all
    after = pair.pump()
    assert app.abandoned == 1 and app.pulled < BIG  # the source was closed, not drained
    reader = p.FrameReader(p.MAX_FRAME)
    reader.feed(pair.wire)
    frames = list(reader.frames())
    assert frames[-1][:3] == (p.ERROR, p.ERROR_CODES["cancelled"], rid)
    assert {f[2] for f in frames} == {0, rid}
    assert after == []  # the client codec dropped the rest of the cancelled reply
    pair.request("ping")
    assert [type(e) for e in pair.pump()] == [End]  # the connection goes on


def test_a_slow_reader_stops_the_pulling_at_the_high_water_mark(service: Service) -> None:
    app = Counting(service)
    mark = 64 << 10
    pair = Pair(app, high_water=mark)
    rid = pair.request("get", b"/big.bin")
    pair.server.data_to_send()
    held = app.pulled
    for _ in range(5):  # asked again and again, nothing written: nothing more pulled
        pair.server.data_to_send()
    assert app.pulled == held
    # Past the mark by at most one frame, and one piece read for the next frame.
    assert 0 < held <= mark + 2 * p.CHUNK
    assert pair.server.out_bytes <= mark + p.CHUNK + 64
    got = body(pair.pump(budget=600_000))  # the reader takes some: more is pulled, bounded
    assert len(got) >= 300_000 and app.pulled - len(got) <= mark + 2 * p.CHUNK
    got += body(pair.pump())
    assert len(got) == BIG and app.pulled == BIG and rid


def test_too_many_queued_requests_stop_the_reading(service: Service) -> None:
    pair = Pair(service, max_queued=8)
    assert pair.server.wants_input
    pair.send(b"".join(pair.client.request("exists", "", b"/README.md")[1] for _ in range(10)))
    assert not pair.server.wants_input  # back-pressure: read no more
    events = pair.pump()
    assert sum(isinstance(e, End) for e in events) == 10
    assert pair.server.wants_input


def test_a_broken_frame_on_a_socket_closes_it(service: Service) -> None:
    pair = Pair(service)
    pair.pump()
    pair.send(p.frame(p.DATA, 0, 3, b"data from a client?"))
    assert pair.server.state == c.CLOSING and not pair.server.wants_input
    pair.send(pair.client.request("ping")[1])  # ignored: the connection is closing
    reader = p.FrameReader(p.MAX_FRAME)
    pair.pump()
    reader.feed(pair.wire)
    frames = list(reader.frames())
    assert frames[-1][:3] == (p.ERROR, p.ERROR_CODES["protocol"], 0)
    assert pair.server.state == c.CLOSED


def test_a_broken_frame_on_a_stream_resyncs_at_the_next_greet(service: Service) -> None:
    pair = Pair(service, stream=True)
    pair.pump()
    queued = pair.request("get", b"/big.bin")
    pair.send(p.HEADER.pack(p.REQUEST, 4, 9, 1 << 30) + b"junk" * 50)
    assert pair.server.state == c.RESYNC and pair.server.wants_input
    pair.send(pair.client.request("ping")[1])  # skipped: no GREET yet
    errors = [e for e in pair.pump() if isinstance(e, Error)]
    assert [(e.id, e.code) for e in errors] == [(9, "too_large")]
    assert queued  # its work was dropped with the session: no reply
    pair.send(b"more junk" + ClientCodec.greet())
    ping = pair.request("ping")
    pair.pump()
    reader = p.FrameReader(p.MAX_FRAME)
    reader.feed(pair.wire)
    kinds = [(f[0], f[2]) for f in reader.frames()]
    assert kinds == [(p.HELLO, 0), (p.ERROR, 9), (p.HELLO, 0), (p.END, ping)]
    assert pair.server.state == c.OPEN


def test_eof_with_queued_work_answers_it_then_closes(service: Service, files) -> None:
    pair = Pair(service)
    rids = [pair.request("get", b"/big.bin"), pair.request("size", b"/README.md")]
    pair.send(b"")  # the client half-closed after asking
    assert pair.server.state == c.DRAINING and not pair.server.wants_input
    by_id = replies(pair.pump())
    assert body(by_id[rids[0]]) == files[b"/big.bin"]
    assert isinstance(by_id[rids[1]][-1], End)
    assert pair.server.state == c.CLOSED


@pytest.mark.parametrize("cut", [0, 10, 10 + 1000], ids=["before", "after-header", "mid-payload"])
def test_a_greet_in_the_middle_of_a_reply_keeps_the_framing(
    service: Service, files, cut: int
) -> None:
    pair = Pair(service, stream=True)
    hello_size = len(p.ServerCodec.hello(service.greeting(Session())))
    pair.request("get", b"/big.bin")
    pair.pump(budget=hello_size + cut)  # the host read part of the first DATA frame
    pair.send(ClientCodec.greet())
    ping = pair.request("ping")
    pair.pump()
    reader = p.FrameReader(p.MAX_FRAME)
    reader.feed(pair.wire)
    frames = list(reader.frames())
    assert reader.buffered == 0  # every frame whole: the half-written one was finished
    types = [f[0] for f in frames]
    assert types == [p.HELLO, *([p.DATA] if cut else []), p.HELLO, p.END]
    assert frames[-1][2] == ping and frames[-2][3].startswith(p.MAGIC)
    if cut:
        data = frames[1][3]  # the whole frame, not only its head
        assert len(data) > cut and files[b"/big.bin"].startswith(data)


# -- fuzzing ----------------------------------------------------------------------
IDS = st.integers(1, 40)
PATHS = st.sampled_from([b"/", b"/README.md", b"/big.bin", b"/d1", b"/nope", b"/a//b", b"/.."])


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["request", "cancel", "greet", "junk", "huge", "mutated"]))
    rid = draw(IDS)
    if kind == "cancel":
        return p.frame(p.CANCEL, 0, rid)
    if kind == "greet":
        return p.GREET_FRAME
    if kind == "junk":  # a type no client sends, any code and payload; without a 0x03
        # byte, so that no GREET pattern hides in it for a resync to land on
        payload = draw(st.binary(max_size=40).map(lambda b: b.replace(b"\x03", b"\x04")))
        return p.frame(draw(st.integers(4, 255)), draw(st.integers(0, 255)), rid, payload)
    if kind == "huge":
        return p.HEADER.pack(p.REQUEST, 4, rid, draw(st.integers(p.MAX_REQUEST + 1, 2**32 - 1)))
    op = draw(st.sampled_from(sorted(op for op in p.V1_OPS if op != "shutdown")))
    data = p.encode_request(rid, op, "", draw(PATHS), draw(st.integers(0, 1 << 30)),
                            draw(st.none() | st.integers(0, 1 << 30)))  # fmt: skip
    if kind == "mutated":  # one byte changed, never the id or the length (the framing)
        spots = [0, 1, *range(p.HEADER_SIZE, len(data))]
        at = draw(st.sampled_from(spots))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1 :]
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(stream=st.booleans(), pieces=st.lists(frames(), max_size=12),
       cuts=st.lists(st.integers(0, 1 << 12), max_size=6),
       budgets=st.lists(st.none() | st.integers(1, 1 << 18), max_size=6), eof=st.booleans())  # fmt: skip
def test_fuzzed_frames_never_break_the_connection(
    service: Service, stream: bool, pieces: list[bytes], cuts: list[int], budgets: list, eof: bool
) -> None:
    pair = Pair(service, stream=stream, high_water=1 << 16)
    data = b"".join(pieces)
    # Replies go to requests only: a cancel, a greet or junk never gets one of its own.
    known = {0} | {rid for ftype, _, rid, _ in map(p.HEADER.unpack_from, pieces) if ftype == p.REQUEST}
    last = 0
    for i, cut in enumerate(sorted(x % (len(data) + 1) for x in cuts)):
        pair.send(data[last:cut])
        last = cut
        pair.pump_raw(budgets[i] if i < len(budgets) else None)
    pair.send(data[last:])
    if eof:
        pair.send(b"")
    pair.pump_raw()
    reader = p.FrameReader(p.MAX_FRAME)
    reader.feed(pair.wire)
    out = list(reader.frames())
    assert reader.buffered == 0 and out[0][0] == p.HELLO
    for ftype, _, rid, _ in out:
        assert ftype in (p.HELLO, p.DATA, p.END, p.ERROR)
        assert rid in known, f"a reply for id {rid}, which the client never used"
    server = pair.server
    assert server.state in ((c.CLOSED,) if eof else (c.OPEN, c.RESYNC, c.CLOSED))
    assert not server.has_output and not server.has_work


def test_the_service_serves_every_operation_the_codec_decodes() -> None:
    from docteur.guest.service import OPERATIONS

    assert set(OPERATIONS) == set(p.OPS.values())
