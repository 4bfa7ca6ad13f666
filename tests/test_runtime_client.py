"""The asyncio client's failure modes, and the unix target's session API."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from docteur.cli.commands import block_specs
from docteur.cli.errors import UsageError
from docteur.guest.boot import boot
from docteur.guest.protocol import V1_OPS, Error, ServerCodec
from docteur.vm.client import Client, ConnectionLost, NotFoundError, Timeout
from docteur.vm.targets import unix
from docteur.vm.targets.config import TargetConfig
from tests.support.protocol import ask


@pytest.fixture
def short_dir():
    where = tempfile.mkdtemp(prefix="dtc", dir="/tmp")
    yield where
    shutil.rmtree(where, ignore_errors=True)


async def test_a_silent_server_times_out(short_dir: str) -> None:
    path = os.path.join(short_dir, "s")

    async def greet_then_sleep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(ServerCodec.hello({"status": "ok", "disk.docteur": ""}))
        await asyncio.sleep(30)

    server = await asyncio.start_unix_server(greet_then_sleep, path=path)
    async with server:
        client = await Client.open_unix(path, timeout=0.3)
        start = time.monotonic()
        with pytest.raises(Timeout, match="get /x"):
            await client.get("/x")
        assert time.monotonic() - start < 2
        await client.close()
        # No greeting at all: a timeout too, not a hang.
        server.close()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await asyncio.sleep(30)

    path2 = os.path.join(short_dir, "t")
    async with await asyncio.start_unix_server(mute, path=path2):
        with pytest.raises(Timeout, match="greeting"):
            await Client.open_unix(path2, timeout=0.3)


async def test_not_a_docteur_server(short_dir: str) -> None:
    path = os.path.join(short_dir, "s")

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        writer.close()

    async with await asyncio.start_unix_server(http, path=path):
        with pytest.raises(ConnectionLost):
            await Client.open_unix(path, timeout=2)


async def test_server_killed_mid_body(gen, short_dir: str) -> None:
    path = os.path.join(short_dir, "s")
    proc = subprocess.Popen(
        [sys.executable, "-m", "docteur.guest", "--block", str(gen[1]), "--listen", path],
        stderr=subprocess.DEVNULL,
    )
    try:
        while not os.path.exists(path):
            await asyncio.sleep(0.01)
        client = await Client.open_unix(path, timeout=10)
        got = 0
        start = time.monotonic()
        with pytest.raises(ConnectionLost):
            async for chunk in client.stream("/big.bin"):
                got += len(chunk)
                if got == len(chunk):
                    proc.send_signal(signal.SIGKILL)
                await asyncio.sleep(0.01)
        assert time.monotonic() - start < 5
        with pytest.raises(ConnectionLost):
            await client.ping()
        await client.close()
    finally:
        proc.kill()
        proc.wait()


async def test_unix_target_session(gen) -> None:
    config = TargetConfig(blocks=block_specs(str(gen[1]), [f"other={gen[1]}"]), verify="none",
                          timeout=30.0)  # fmt: skip
    async with unix.session(config) as client:
        assert client.hello is not None and set(client.hello.disks) == {"docteur", "other"}
        assert await client.get("/bin/run.sh", disk="other") == b"#!/bin/sh\necho hi\n"
        with pytest.raises(NotFoundError):
            await client.get("/nope")
    with pytest.raises(UsageError, match="NAME=IMAGE"):
        block_specs(None, ["nonsense"])


OPS = sorted(V1_OPS)  # the reads; writes: tests/test_service_writes.py
# The host's own control requests: state changes rather than answers about a path.
CONTROL = ("shutdown", "snapshot", "restored")
PATHS = st.one_of(
    st.binary(max_size=80),
    st.lists(st.sampled_from([b"", b".", b"..", b"d1", b"s1", b"bin", b"run.sh", b"README.md",
                              b"\0", b"big.bin", b"sub", b"module"]), max_size=6)
    .map(lambda segs: b"/".join(segs)),
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(op=st.sampled_from([o for o in OPS if o not in CONTROL]), path=PATHS,
       offset=st.integers(0, 1 << 40), length=st.none() | st.integers(0, 1 << 40))  # fmt: skip
def test_fuzzed_requests_get_typed_answers(gen, op: str, path: bytes, offset: int,
                                           length: int | None) -> None:  # fmt: skip
    _, last = ask(_service(gen[1]), op, path, offset=offset, length=length)
    if isinstance(last, Error):
        assert last.code in ("invalid_path", "not_found", "not_a_file", "not_a_directory"), last


_SERVICES: dict[Path, object] = {}


def _service(image: Path):
    if image not in _SERVICES:
        _SERVICES[image] = boot([("docteur", str(image))], "none")
    return _SERVICES[image]


async def test_a_socket_that_is_not_a_docteur_server(short_dir: str) -> None:
    """Whatever answers first, if it is not a greeting, the error says so in one line."""
    path = os.path.join(short_dir, "http.sock")

    async def http_like(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        await writer.drain()
        await reader.read()  # until the client hangs up
        writer.close()

    server = await asyncio.start_unix_server(http_like, path)
    try:
        with pytest.raises(ConnectionLost, match=r"^not a docteur server \(no greeting\)") as info:
            async with await Client.open_unix(path, timeout=5) as client:
                await client.list("/")
        assert "\n" not in str(info.value)
    finally:
        server.close()
        await server.wait_closed()
