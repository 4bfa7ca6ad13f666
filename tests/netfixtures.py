"""Network trouble for the `docteur make` tests, all real and on loopback.

- `tls_material`: a throwaway CA and server certificates made with the openssl CLI.
- `StallingRelay`: a TCP server that accepts and never answers, or relays to a real
  server until some bytes went back to the client, then goes silent.
- `run_cli`: `docteur` in a child process with an outer timeout (a hang fails the
  test instead of hanging it), and every process it left behind found and killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.vm_helpers import DOCTEUR

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")

# -- certificates ---------------------------------------------------------------------


@dataclass(frozen=True)
class TLSMaterial:
    ca: Path  # the CA certificate a client is told to trust
    good: tuple[Path, Path]  # (certificate, key) for 127.0.0.1, signed by `ca`
    wrong_host: tuple[Path, Path]  # signed by `ca`, but for wrong-host.example only
    untrusted: tuple[Path, Path]  # for 127.0.0.1, signed by a CA nobody trusts

    @staticmethod
    def server_context(pair: tuple[Path, Path]) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pair[0], pair[1])
        return ctx


def _openssl(*args: str | os.PathLike[str], cwd: Path) -> None:
    proc = subprocess.run(["openssl", *map(os.fspath, args)], cwd=cwd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"openssl {' '.join(map(str, args))}: {proc.stderr.decode()}")


_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


def _ca(d: Path, name: str) -> tuple[Path, Path]:
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    _openssl("req", "-x509", *_KEY, "-keyout", key, "-out", cert, "-days", "2",
             "-subj", f"/CN=docteur test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)  # fmt: skip
    return cert, key


def _leaf(d: Path, name: str, ca: tuple[Path, Path], alt_names: str) -> tuple[Path, Path]:
    cert, key, csr, ext = d / f"{name}.pem", d / f"{name}.key", d / f"{name}.csr", d / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={alt_names}\nbasicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl("req", "-new", *_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=d)
    _openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
             "-out", cert, "-days", "2", "-extfile", ext, cwd=d)  # fmt: skip
    return cert, key


def tls_material(d: Path) -> TLSMaterial:
    ca = _ca(d, "ca")
    other = _ca(d, "other-ca")
    return TLSMaterial(
        ca=ca[0],
        good=_leaf(d, "good", ca, "IP:127.0.0.1,DNS:localhost"),
        wrong_host=_leaf(d, "wrong-host", ca, "DNS:wrong-host.example"),
        untrusted=_leaf(d, "untrusted", other, "IP:127.0.0.1,DNS:localhost"),
    )


# -- a server that stalls -------------------------------------------------------------------


class StallingRelay:
    """Listens on loopback. Without `upstream`, accepts and never sends a byte. With it,
    relays each connection to 127.0.0.1:upstream, but only the first `budget` bytes
    (over all connections) go back to the client: then it goes silent, the connection
    held open. `forwarded` counts what the client got."""

    def __init__(self, upstream: int | None = None, budget: int = 0) -> None:
        self.upstream = upstream
        self.budget = budget
        self.forwarded = 0
        self.accepted = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._start(self._accept)

    def _start(self, target, *args: object) -> None:  # type: ignore[no-untyped-def]
        t = threading.Thread(target=target, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                self._socks.append(client)
            if self.upstream is None:
                self._start(self._swallow, client)
                continue
            server = socket.create_connection(("127.0.0.1", self.upstream))
            with self._lock:
                self._socks.append(server)
            self._start(self._pipe, client, server, False)
            self._start(self._pipe, server, client, True)

    @staticmethod
    def _swallow(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while sock.recv(65536):
                pass

    def _pipe(self, src: socket.socket, dst: socket.socket, limited: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if limited:
                    with self._lock:
                        data = data[: self.budget - self.forwarded]
                        self.forwarded += len(data)
                    if not data:
                        return  # silent from now on; the connection stays open
                dst.sendall(data)
            if not limited:
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Wake every thread of the relay and wait for it: a thread left blocked on a
        closed socket would read from whatever socket next gets its descriptor."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self._threads[0].join(10)  # the accepting thread: no new connection after it
        with self._lock:
            socks, threads = list(self._socks), self._threads[1:]
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in threads:
            t.join(10)
        for s in [self.listener, *socks]:
            s.close()


@contextlib.contextmanager
def stalling_relay(upstream: int | None = None, budget: int = 0) -> Iterator[StallingRelay]:
    relay = StallingRelay(upstream, budget)
    try:
        yield relay
    finally:
        relay.close()


# -- the CLI in a child process ---------------------------------------------------------------

_MARK = "DOCTEUR_TEST_RUN"


def marked_processes(mark: str) -> list[int]:
    """Processes (but us) whose environment carries `mark`: the CLI and what it started."""
    needle = f"{_MARK}={mark}".encode()
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{pid}/environ", "rb") as f:
            if needle in f.read().split(b"\0"):
                found.append(int(pid))
    return found


@dataclass
class CLIRun:
    rc: int
    out: str
    err: str
    leftovers: list[int]  # processes it left running (killed since)


def start_cli(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
              mark: str | None = None) -> subprocess.Popen[bytes]:
    full = dict(os.environ if env is None else env)
    full[_MARK] = mark or uuid.uuid4().hex
    return subprocess.Popen([*DOCTEUR, *map(os.fspath, args)], env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def run_cli(*args: str | os.PathLike[str], env: dict[str, str] | None = None,
            timeout: float = 120) -> CLIRun:
    """`docteur ARGS` in a child; a hang past `timeout` fails the test (after a kill)."""
    mark = uuid.uuid4().hex
    proc = start_cli(*args, env=env, mark=mark)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        kill_all(marked_processes(mark))
        pytest.fail(f"docteur {' '.join(map(str, args))} hung for {timeout} s: {err.decode()}")
    # What docteur killed and reaped is gone; a zombie it forgot has an empty environ.
    leftovers = marked_processes(mark)
    kill_all(leftovers)
    return CLIRun(proc.returncode, out.decode(), err.decode(), leftovers)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, 9)
