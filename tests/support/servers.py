"""Servers on loopback, all real: git's (`git daemon`, smart HTTP through `git http-backend`,
optionally over TLS, an ssh stand-in) and the guest's own server in a thread."""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from docteur.guest import server
from docteur.guest.protocol import ClientCodec
from tests.support.git import git_env

# -- git servers ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextlib.contextmanager
def run_git_daemon(base: Path, writable: bool = False) -> Iterator[str]:
    """`git daemon` serving every repository under `base` (taking pushes when `writable`);
    yields git://127.0.0.1:PORT"""
    port = free_port()
    push = ["--enable=receive-pack"] if writable else []
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", *push, f"--base-path={base}",
         "--listen=127.0.0.1", f"--port={port}", str(base)],
        env=git_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_port(port, proc)
        yield f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(5)


class _GitHTTPHandler(BaseHTTPRequestHandler):
    """Smart HTTP: hands each request to `git http-backend` (CGI)."""

    root: str = ""
    credentials: tuple[str, str] | None = None
    writable: bool = False

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _cgi(self) -> None:
        if self.credentials is not None:
            want = base64.b64encode(":".join(self.credentials).encode()).decode()
            if self.headers.get("Authorization") != f"Basic {want}":
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        env = git_env(
            GIT_PROJECT_ROOT=self.root, GIT_HTTP_EXPORT_ALL="1", PATH_INFO=path,
            QUERY_STRING=query, REQUEST_METHOD=self.command,
            CONTENT_TYPE=self.headers.get("Content-Type", ""), CONTENT_LENGTH=str(len(body)),
            REMOTE_ADDR="127.0.0.1", GIT_PROTOCOL=self.headers.get("Git-Protocol", ""),
        )
        if self.writable:  # http-backend refuses pushes from anonymous users unless told
            env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.receivepack", GIT_CONFIG_VALUE_0="true")
        if self.headers.get("Content-Encoding") == "gzip":
            env["HTTP_CONTENT_ENCODING"] = "gzip"
        proc = subprocess.run(["git", "http-backend"], input=body, env=env,
                              capture_output=True, check=False)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            if not line:
                continue
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            else:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class _QuietHTTPServer(ThreadingHTTPServer):
    """Handshakes a client rejects (an untrusted certificate) are part of the tests, not noise."""

    tls: ssl.SSLContext | None = None

    def get_request(self) -> tuple[socket.socket, object]:
        sock, addr = super().get_request()
        if self.tls is not None:
            # The handshake happens in the handler's thread, on its first read: a client
            # that stalls or hangs up mid-handshake holds up nobody else.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@contextlib.contextmanager
def run_http_git(base: Path, credentials: tuple[str, str] | None = None,
                 tls: ssl.SSLContext | None = None, writable: bool = False) -> Iterator[str]:
    """Smart HTTP on loopback for the repositories under `base` (taking pushes when
    `writable`); yields http://127.0.0.1:PORT (https:// with `tls`, a server-side context)."""
    handler = type("Handler", (_GitHTTPHandler,), {"root": str(base), "credentials": credentials,
                                                   "writable": writable})
    server = _QuietHTTPServer(("127.0.0.1", 0), handler)
    server.tls = tls
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


SSH_STANDIN = """#!/bin/sh
# Stands in for ssh the way git's own tests do: drop the options, log the
# host, run the remote command here.
while [ $# -gt 0 ]; do
    case "$1" in
        -o) case "$2" in *GIT_PROTOCOL=*) export GIT_PROTOCOL="${2#*GIT_PROTOCOL=}";; esac
            shift 2;;
        -p|-i|-l|-F) shift 2;;
        -*) shift;;
        *) break;;
    esac
done
echo "$1" >> "$0.log"
shift
exec sh -c "$*"
"""


def ssh_standin(directory: Path) -> Path:
    """Write the stand-in; point GIT_SSH at it. Hosts it was asked for go to `<it>.log`."""
    script = directory / "fake-ssh"
    script.write_text(SSH_STANDIN)
    script.chmod(0o755)
    return script


# -- the guest's server ------------------------------------------------------------------


@contextlib.contextmanager
def serving(blocks: dict[str, Path], verify: str = "none") -> Iterator[str]:
    """The guest server in a thread on a fresh unix socket; yields the socket path."""
    where = tempfile.mkdtemp(prefix="dts", dir="/tmp")  # socket paths must stay short
    path = os.path.join(where, "s")
    argv = [a for n, p in blocks.items() for a in ("--block", f"{n}={p}")]
    thread = threading.Thread(
        target=server.main, args=([*argv, "--verify", verify, "--listen", path],), daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError("the guest server did not start")
        time.sleep(0.01)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            shutdown(path)
        thread.join(10)
        shutil.rmtree(where, ignore_errors=True)


def shutdown(path: str) -> None:
    codec = ClientCodec()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        s.connect(path)
        s.sendall(codec.request("shutdown")[1])
        while s.recv(65536):
            pass
