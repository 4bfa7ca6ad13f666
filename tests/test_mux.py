"""The multiplexer behind the microVM's `--socket`, without a VM: a fake guest upstream."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile

from docteur.guest import protocol as p
from docteur.vm.targets.mux import Mux

HELLO = p.frame(p.HELLO, 0, 0, b"docteur\0" + b"\x00\x01" + b"\x00\x04\x00\x00" + b"\x00\x00")


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, int, int, bytes]:
    ftype, code, rid, length = p.HEADER.unpack(await reader.readexactly(p.HEADER_SIZE))
    return ftype, code, rid, await reader.readexactly(length)


async def test_mux_speaks_first_and_answers_bad_frames_like_the_guest() -> None:
    """PROTOCOL.md: the server greets first on every connection; a too large frame is
    ERROR too_large then close; a late CANCEL (the reply already came) is harmless."""
    guest_side, host_side = socket.socketpair()
    up_reader, up_writer = await asyncio.open_connection(sock=host_side)
    mux = Mux(up_reader, up_writer, HELLO)
    pump = asyncio.create_task(mux.pump_upstream())
    where = tempfile.mkdtemp(prefix="dtm", dir="/tmp")
    path = os.path.join(where, "s")
    server = await asyncio.start_unix_server(mux.handle, path=path)
    g_reader, g_writer = await asyncio.open_connection(sock=guest_side)
    try:
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
        ftype, _, up_id, payload = await asyncio.wait_for(_read_frame(g_reader), 2)
        assert ftype == p.REQUEST and payload == p.encode_request(12, "ping")[10:]  # the ping, next
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
    finally:
        server.close()
        pump.cancel()
        g_writer.close()
        up_writer.close()
        shutil.rmtree(where, ignore_errors=True)
