"""The server at the system's limits: out of fds, and a burst of clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from docteur.guest import server
from docteur.guest.boot import boot
from docteur.guest.protocol import ClientCodec, End, Hello
from docteur.vm.client import Client, ConnectionLost
from tests.support.guestproc import GuestProcess

FD_LIMIT = 32  # the server's RLIMIT_NOFILE: room for about 25 clients


@pytest.fixture
def short_dir() -> Iterator[str]:
    where = tempfile.mkdtemp(prefix="dtl", dir="/tmp")  # socket paths must stay short
    yield where
    shutil.rmtree(where, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """The process's own user + system CPU time, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Peer:
    """A blocking raw client: connects at once (the backlog), greeted only once accepted."""

    def __init__(self, path: str):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.connect(path)
        self.codec = ClientCodec()
        self.events: list = []

    def poll_greeting(self) -> bool:
        while self.codec.hello is None:
            if not select.select([self.s], [], [], 0)[0]:
                return False
            self.events += self.codec.receive(self.s.recv(65536))
        return True

    def ask(self, op: str, path: bytes = b"") -> object:
        rid, data = self.codec.request(op, "", path)
        self.s.settimeout(20)
        self.s.sendall(data)
        while True:
            for e in self.codec.receive(self.s.recv(65536)):
                if isinstance(e, End) and e.id == rid:
                    return e.result


def test_out_of_fds_pauses_accepting_and_serves_the_connected(gen) -> None:
    with GuestProcess(gen[1], "none", fd_limit=FD_LIMIT) as served:
        path, log, proc = served.sock, served.log, served.proc
        peers = [Peer(path) for _ in range(FD_LIMIT + 10)]  # more than its fds allow
        time.sleep(1)
        accepted = [p for p in peers if p.poll_greeting()]
        waiting = [p for p in peers if p not in accepted]
        assert accepted and waiting and len(waiting) <= len(accepted)
        # accept() now fails with EMFILE while clients wait in the backlog: the
        # server must neither spin nor flood its log, and keep serving the others.
        lines_before = log.read_bytes().count(b"\n")
        cpu0, wall0 = cpu_seconds(proc.pid), time.monotonic()
        answers = 0
        while time.monotonic() - wall0 < 3:
            for peer in accepted:
                assert peer.ask("size", b"/README.md") > 0
                answers += 1
            time.sleep(0.05)
        cpu, wall = cpu_seconds(proc.pid) - cpu0, time.monotonic() - wall0
        lines = log.read_bytes().count(b"\n") - lines_before
        assert answers >= len(accepted)
        assert cpu < 0.3 * wall, f"the server used {cpu:.2f} s of CPU in {wall:.2f} s"
        assert lines <= wall + 2, log.read_text()[-2000:]
        assert b"accept failed" in log.read_bytes() and b"Too many open files" in log.read_bytes()
        # Fds freed: the waiting clients are accepted and served.
        for peer in accepted:
            peer.s.close()
        deadline = time.monotonic() + 30
        while not all(p.poll_greeting() for p in waiting):
            assert time.monotonic() < deadline, "waiting clients were never accepted"
            time.sleep(0.05)
        for peer in waiting:
            assert peer.ask("size", b"/README.md") > 0
            peer.s.close()


async def test_a_burst_of_300_clients_all_get_their_answer(gen) -> None:
    with GuestProcess(gen[1], "none") as served:
        path = served.sock

        async def one() -> int:
            async with await Client.open_unix(path, timeout=60) as client:
                return await client.size("/README.md")

        sizes = await asyncio.gather(*(one() for _ in range(300)))
        assert len(sizes) == 300 and len(set(sizes)) == 1 and sizes[0] > 0


async def test_the_client_retries_a_full_backlog_then_is_served(gen, short_dir: str) -> None:
    """A listener whose backlog (1) is full until the server starts accepting."""
    path = os.path.join(short_dir, "s")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(1)
    sock.setblocking(False)
    srv = server.Server(boot([("docteur", str(gen[1]))], "none"))
    srv.listener = sock
    thread = threading.Thread(target=srv.run, daemon=True)
    late = threading.Timer(0.3, thread.start)  # accepting starts late: EAGAIN meanwhile
    late.start()
    try:

        async def one() -> Hello:
            async with await Client.open_unix(path, timeout=30) as client:
                assert client.hello is not None
                await client.ping()
                return client.hello

        hellos = await asyncio.gather(*(one() for _ in range(8)))
        assert all(h.ok for h in hellos)
    finally:
        late.join()
        srv.stop = True
        with socket.socket(socket.AF_UNIX) as wake, contextlib.suppress(OSError):
            wake.settimeout(5)
            wake.connect(path)  # wakes the loop's poll: it sees `stop`
        thread.join(10)
        sock.close()


async def test_nobody_listening_is_one_clear_error(short_dir: str) -> None:
    path = os.path.join(short_dir, "s")
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(path)  # a socket file, but nobody listens: ECONNREFUSED, retried, then one line
    try:
        with pytest.raises(ConnectionLost) as info:
            await Client.open_unix(path, timeout=10)
        message = str(info.value)
        assert message.startswith(f"cannot connect to {path}: Connection refused")
        assert "\n" not in message
    finally:
        bound.close()
