"""The server under bad clients: each loses its own connection, the others are served."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur.guest import protocol as p
from docteur.guest.protocol import ClientCodec, End, Error, Hello
from docteur.vm.client import Client
from tests.support.protocol import RawSocket
from tests.support.servers import serving


@pytest.fixture(scope="module")
def sock(gen: tuple[Path, Path]):
    with serving({"docteur": gen[1]}, verify="pack") as path:
        yield path


def still_served(path: str) -> None:
    raw = RawSocket(path)
    data, end = raw.until_end(raw.request("get", b"/README.md"))
    assert isinstance(end, End) and data.startswith(b"# generated")
    raw.close()


def test_unknown_op_and_bad_payload_keep_the_connection(sock: str) -> None:
    raw = RawSocket(sock)
    raw.send(p.frame(p.REQUEST, 200, 5, b"\0\0\0"))
    _, err = raw.until_end(5)
    assert isinstance(err, Error) and err.code == "unknown_op"
    raw.send(p.frame(p.REQUEST, p.OP_CODES["get"], 6, b"\x05ab"))
    _, err = raw.until_end(6)
    assert isinstance(err, Error) and err.code == "bad_request"
    raw.send(p.frame(p.REQUEST, p.OP_CODES["exists"], 7, b"\0\0\x04/a\0b"))
    _, err = raw.until_end(7)
    assert isinstance(err, Error) and err.code == "invalid_path"
    _, end = raw.until_end(raw.request("ping"))
    assert isinstance(end, End)
    raw.close()


def test_huge_length_closes_only_that_connection(sock: str) -> None:
    other = RawSocket(sock)
    raw = RawSocket(sock)
    raw.send(p.HEADER.pack(p.REQUEST, 4, 9, 0xFFFFFFFF) + b"x" * 100)
    _, err = raw.until_end(9)
    assert isinstance(err, Error) and err.code == "too_large"
    raw.until_closed()
    assert raw.closed
    data, end = other.until_end(other.request("get", b"/README.md"))
    assert isinstance(end, End) and data
    other.close()


def test_wrong_frame_type_closes_the_connection(sock: str) -> None:
    raw = RawSocket(sock)
    raw.send(p.frame(p.DATA, 0, 1, b"data from a client?"))
    _, err = raw.until_end(0)
    assert isinstance(err, Error) and err.code == "protocol"
    raw.until_closed()
    still_served(sock)


def test_disconnect_mid_body(sock: str) -> None:
    for _ in range(10):
        raw = RawSocket(sock)
        raw.request("get", b"/big.bin")
        raw.s.recv(1000)
        raw.close()
    truncated = RawSocket(sock)
    truncated.send(ClientCodec().request("get", "", b"/README.md")[1][:7])
    truncated.close()
    still_served(sock)


def test_cancel_a_stream_then_go_on(sock: str) -> None:
    raw = RawSocket(sock)
    # Sent together, the cancel is seen before the reply starts.
    rid, data = raw.codec.request("get", "", b"/big.bin")
    raw.send(data + p.frame(p.CANCEL, 0, rid))
    data, end = raw.until_end(rid)
    assert isinstance(end, Error) and end.code == "cancelled" and data == b""
    # Sent later, it races with the reply: either ends it, and the connection goes on.
    rid = raw.request("get", b"/big.bin")
    raw.send(p.frame(p.CANCEL, 0, rid))
    data, end = raw.until_end(rid)
    assert (isinstance(end, Error) and end.code == "cancelled") or len(data) == 6 << 20
    _, end = raw.until_end(raw.request("size", b"/big.bin"))
    assert isinstance(end, End) and end.result == 6 << 20
    raw.close()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(junk=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4),
       prefix=st.sampled_from([b"", p.HEADER.pack(p.REQUEST, 4, 1, 12)]))  # fmt: skip
def test_fuzzed_clients_only_hurt_themselves(sock: str, junk: list[bytes], prefix: bytes) -> None:
    raw = RawSocket(sock)
    with contextlib.suppress(OSError):
        for piece in [prefix, *junk]:
            raw.send(piece)
    raw.close()  # a disconnect, maybe in the middle of a frame or of a reply
    still_served(sock)


async def test_many_clients_at_once(sock: str, gen) -> None:
    async def one(i: int) -> int:
        async with await Client.open_unix(sock) as client:
            sizes = await asyncio.gather(*(client.size(e.key) for e in await client.list("/d1/s1")))
            if i % 3 == 0:
                assert len(await client.get("/big.bin")) == 6 << 20
            return len(sizes)

    counts = await asyncio.gather(*(one(i) for i in range(8)))
    assert len(set(counts)) == 1 and counts[0] > 10


def test_stdio_mode_serves_then_exits_on_eof(gen) -> None:
    codec = ClientCodec()
    requests = [codec.request(op, "", path)[1] for op, path in
                [("get", b"/README.md"), ("list", b"/bin"), ("get", b"/nope")]]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "docteur.guest", "--block", f"docteur={gen[1]}", "--stdio"],
        input=b"".join(requests), capture_output=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    events = codec.receive(proc.stdout)
    assert isinstance(events[0], Hello)
    kinds = [type(e).__name__ for e in events[1:]]
    assert kinds == ["Data", "End", "Data", "End", "Error"]


def test_stream_resyncs_on_greet_after_a_broken_frame(gen) -> None:
    codec = ClientCodec()
    junk = p.HEADER.pack(p.REQUEST, 4, 3, 0x7FFFFFFF) + b"junk" * 10
    proc = subprocess.run(
        [sys.executable, "-m", "docteur.guest", "--block", str(gen[1]), "--stdio"],
        input=junk + ClientCodec.greet() + codec.request("ping")[1], capture_output=True,
        timeout=60,
    )
    events = codec.receive(proc.stdout)
    assert isinstance(events[0], Hello)
    # The too_large ERROR was queued for the old session: GREET may drop it.
    assert all(e.code == "too_large" for e in events if isinstance(e, Error))
    assert isinstance(events[-1], End) and events[-1].op == "ping"
    reader = p.FrameReader(p.MAX_FRAME)
    reader.feed(proc.stdout)
    assert [f[0] for f in reader.frames()].count(p.HELLO) == 2  # greeted again after GREET


def test_bad_arguments_and_missing_image(tmp_path: Path) -> None:
    from docteur.guest import server

    assert server.main(["--verify", "none"]) == 2  # no mode
    assert server.main(["--block", "=x", "--stdio"]) == 2
    codec = ClientCodec()
    proc = subprocess.run(
        [sys.executable, "-m", "docteur.guest", "--block", str(tmp_path / "no.img"), "--stdio"],
        input=codec.request("get", "", b"/x")[1], capture_output=True, timeout=60,
    )
    hello, err = codec.receive(proc.stdout)
    assert isinstance(hello, Hello) and not hello.ok and "no.img" in hello.fields["error"]
    assert isinstance(err, Error) and err.code == "boot_failed"
    assert b"BOOT FAILED" in proc.stderr


def test_a_client_that_never_reads_stays_bounded(sock: str) -> None:
    import gc
    import time

    from docteur.guest import connection, server

    greedy = RawSocket(sock)
    codec = ClientCodec()
    burst = b"".join(codec.request("get", "", b"/big.bin")[1] for _ in range(2000))
    greedy.s.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        greedy.s.send(burst)  # as much as the socket takes; never read a byte back
    time.sleep(0.5)
    still_served(sock)
    conns = [o for o in gc.get_objects() if isinstance(o, connection.ServerConnection)]
    assert conns
    for conn in conns:
        assert conn.out_bytes <= connection.HIGH_WATER + p.CHUNK + 64
        assert len(conn.queue) <= connection.MAX_QUEUED + p.MAX_REQUEST // 10
        assert conn.codec.buffered <= server.READ_SIZE + p.MAX_REQUEST
    greedy.close()
    still_served(sock)
