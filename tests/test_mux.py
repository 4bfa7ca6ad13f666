"""The multiplexer behind the microVM's `--socket`, without a VM: a fake guest upstream."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator

from docteur.guest import protocol as p
from docteur.vm.targets.mux import Mux

HELLO = p.frame(p.HELLO, 0, 0, b"docteur\0" + b"\x00\x01" + b"\x00\x04\x00\x00" + b"\x00\x00")


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    ftype, code, rid, length = p.HEADER.unpack(await reader.readexactly(p.HEADER_SIZE))
    return ftype, code, rid, await reader.readexactly(length)


Relay = tuple[Mux, str, asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def _relay(*hellos: object) -> AsyncIterator[Relay]:
    """A Mux (built with `hellos`) serving a unix socket, a fake guest upstream:
    (the mux, the socket's path, the guest's reader and writer); all closed after."""
    guest_side, host_side = socket.socketpair()
    up_reader, up_writer = await asyncio.open_connection(sock=host_side)
    mux = Mux(up_reader, up_writer, *hellos)  # type: ignore[arg-type]
    pump = asyncio.create_task(mux.pump_upstream())
    where = tempfile.mkdtemp(prefix="dtm", dir="/tmp")
    path = os.path.join(where, "s")
    server = await asyncio.start_unix_server(mux.handle, path=path)
    g_reader, g_writer = await asyncio.open_connection(sock=guest_side)
    try:
        yield mux, path, g_reader, g_writer
    finally:
        server.close()
        pump.cancel()
        g_writer.close()
        up_writer.close()
        shutil.rmtree(where, ignore_errors=True)


async def test_mux_speaks_first_and_answers_bad_frames_like_the_guest() -> None:
    """PROTOCOL.md: the server greets first on every connection; a too large frame is
    ERROR too_large then close; a late CANCEL (the reply already came) is harmless."""
    async with _relay(HELLO) as (_, path, g_reader, g_writer):
        reader, writer = await asyncio.open_unix_connection(path)
        assert await asyncio.wait_for(_read_frame(reader), 2) == (p.HELLO, 0, 0, HELLO[10:])
        # A request goes up under a new id and its END comes back under the client's id.
        writer.write(p.encode_request(7, "ping"))
        ftype, code, up_id, _ = await asyncio.wait_for(_read_frame(g_reader), 2)
        assert ftype == p.REQUEST
        g_writer.write(p.frame(p.END, code, up_id))
        assert (await asyncio.wait_for(_read_frame(reader), 2))[:3] == (p.END, code, 7)
        writer.write(p.HEADER.pack(p.CANCEL, 0, 7, 0))  # too late: nothing to cancel
        writer.write(p.encode_request(8, "ping"))
        assert (await asyncio.wait_for(_read_frame(g_reader), 2))[0] == p.REQUEST  # still served
        # The appliance's own requests (a snapshot start's) never go up from a client.
        for rid, op in ((10, "snapshot"), (11, "restored")):
            writer.write(p.encode_request(rid, op))
            ftype, code, got, msg = await asyncio.wait_for(_read_frame(reader), 2)
            assert (ftype, p.ERRORS[code], got) == (p.ERROR, "unknown_op", rid) and op.encode() in msg
        writer.write(p.encode_request(12, "ping"))
        ftype, code, up_id, _ = await asyncio.wait_for(_read_frame(g_reader), 2)
        assert ftype == p.REQUEST and p.OPS[code] == "ping"  # the ping, next (nothing of the others)
        writer.close()

        reader, writer = await asyncio.open_unix_connection(path)
        await _read_frame(reader)
        writer.write(p.HEADER.pack(p.REQUEST, 9, 5, p.MAX_REQUEST + 1))
        ftype, code, rid, msg = await asyncio.wait_for(_read_frame(reader), 2)
        assert (ftype, p.ERRORS[code], rid) == (p.ERROR, "too_large", 5) and msg
        assert await asyncio.wait_for(reader.read(), 2) == b""  # then closed
        writer.close()

        reader, writer = await asyncio.open_unix_connection(path)
        await _read_frame(reader)
        writer.write(p.HEADER.pack(0x42, 0, 0, 0))
        ftype, code, rid, _ = await asyncio.wait_for(_read_frame(reader), 2)
        assert (ftype, p.ERRORS[code], rid) == (p.ERROR, "protocol", 0)
        writer.close()


HEAD = bytes(range(20))
FIELDS = {"status": "ok", "versions": "1 2", "disk.docteur": HEAD.hex(), "generation.docteur": "0",
          "free.docteur": "1000"}  # fmt: skip


async def test_mux_keeps_a_batch_to_its_client_over_the_one_upstream_session() -> None:
    """Protocol 2 behind the multiplexer (PROTOCOL.md, "A multiplexer ..."): to the guest
    every client is one connection, so the mux keeps a batch to the client that began it,
    sends a put's content in one piece, aborts the batch when its client leaves, and
    greets new clients with the head it saw committed."""
    hellos = {1: p.ServerCodec.hello(FIELDS), 2: p.ServerCodec.hello({**FIELDS, "protocol": "2"}, version=2)}
    async with _relay(hellos[1], hellos) as (mux, path, g_reader, g_writer):
        guest = p.ServerCodec()
        guest.version = 2

        async def upstream() -> p.Request | p.Chunk | p.Cancel:
            """The next frame the guest gets (decoded as the guest decodes it)."""
            while True:
                events = guest.resume() if guest.paused else []
                if events:
                    return events[0]
                ftype, code, rid, payload = await asyncio.wait_for(_read_frame(g_reader), 2)
                events = guest.receive(p.HEADER.pack(ftype, code, rid, len(payload)) + payload)
                if events:
                    return events[0]  # type: ignore[return-value]

        async def client(version: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            reader, writer = await asyncio.open_unix_connection(path)
            assert (await asyncio.wait_for(_read_frame(reader), 2))[0] == p.HELLO
            if version == 2:
                writer.write(p.greet_frame(2))
                hello = p.ClientCodec().receive(p.frame(*await asyncio.wait_for(_read_frame(reader), 2)))[0]
                assert isinstance(hello, p.Hello) and hello.version == 2
            return reader, writer

        async def answer(reader: asyncio.StreamReader) -> tuple[int, str, int, bytes]:
            ftype, code, rid, payload = await asyncio.wait_for(_read_frame(reader), 2)
            kind = p.ERRORS[code] if ftype == p.ERROR else p.OPS[code]
            return ftype, kind, rid, payload

        a_reader, a = await client(2)
        b_reader, b = await client(2)
        a.write(p.encode_request(1, "begin"))
        begin = await upstream()
        assert isinstance(begin, p.Request) and begin.op == "begin"
        g_writer.write(p.ServerCodec.end(begin.id, "begin", p.Begun(HEAD, 0)))
        assert (await answer(a_reader))[:3] == (p.END, "begin", 1)

        # Another client's begin, write and commit never reach the guest.
        commit_args = p.CommitArgs("m")
        b.write(p.encode_request(1, "begin"))
        b.write(p.encode_request(2, "put", path=b"/x", args=p.PutArgs(3, 0o100644, commit_args)))
        b.write(p.chunk_frame(2, b"xyz") + p.encode_request(3, "commit", args=commit_args))
        refused = [(await answer(b_reader))[1:3] for _ in range(3)]
        assert refused == [("busy", 1), ("busy", 2), ("no_batch", 3)]

        # The owner's second begin is busy too (as the guest answers it), here.
        a.write(p.encode_request(9, "begin"))
        assert (await answer(a_reader))[1:3] == ("busy", 9)
        # A put the guest refuses before its content: the client's CANCEL still goes up
        # (the guest waits for the content or a CANCEL), and the port is free again.
        a.write(p.encode_request(8, "put", path=b"/early", args=p.PutArgs(5)))
        early = await upstream()
        assert isinstance(early, p.Request) and early.op == "put"
        g_writer.write(p.ServerCodec.error(early.id, "invalid_path", "refused"))
        assert (await answer(a_reader))[1:3] == ("invalid_path", 8)
        a.write(p.frame(p.CANCEL, 0, 8))
        assert await upstream() == p.Cancel(early.id)

        # A put's content goes up in one piece: B's ping waits behind it.
        a.write(p.encode_request(2, "put", path=b"/big", args=p.PutArgs(10)) + p.chunk_frame(2, b"01234"))
        put = await upstream()
        assert isinstance(put, p.Request) and put.op == "put"
        assert await upstream() == p.Chunk(put.id, b"01234", False)
        b.write(p.encode_request(4, "ping"))
        await asyncio.sleep(0.2)
        a.write(p.chunk_frame(2, b"56789"))
        assert await upstream() == p.Chunk(put.id, b"56789", True)
        ping = await upstream()
        assert isinstance(ping, p.Request) and ping.op == "ping"
        g_writer.write(p.ServerCodec.end(ping.id, "ping", None))
        assert (await answer(b_reader))[:3] == (p.END, "ping", 4)

        # A leaves: its put is cancelled, its batch aborted; the answers go nowhere.
        a.close()
        assert await upstream() == p.Cancel(put.id)
        abort = await upstream()
        assert isinstance(abort, p.Request) and (abort.op, abort.disk) == ("abort", "docteur")
        g_writer.write(p.ServerCodec.error(put.id, "cancelled", "cancelled"))
        g_writer.write(p.ServerCodec.end(abort.id, "abort", None))

        # The disk is B's to write now; its commit updates the greeting of later clients.
        b.write(p.encode_request(5, "remove", path=b"/old", args=commit_args))
        remove = await upstream()
        assert isinstance(remove, p.Request) and remove.op == "remove"
        new = bytes(20 * [7])
        g_writer.write(p.ServerCodec.end(remove.id, "remove", p.Committed(True, new, 1, 900)))
        assert (await answer(b_reader))[:3] == (p.END, "remove", 5)
        c_reader, c = await client(1)  # a version-1 client: no writes, the new head
        c.write(p.encode_request(1, "begin"))
        assert (await answer(c_reader))[1:3] == ("unknown_op", 1)
        c.write(p.GREET_FRAME)
        hello = p.ClientCodec().receive(p.frame(*await asyncio.wait_for(_read_frame(c_reader), 2)))[0]
        assert isinstance(hello, p.Hello) and hello.disks == {"docteur": new.hex()}
        assert hello.fields["generation.docteur"] == "1" and hello.fields["free.docteur"] == "900"
        assert not mux.closed.is_set()  # the pump lived through the answers of the mux's own requests
        for w in (b, c):
            w.close()
