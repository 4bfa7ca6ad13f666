"""The dulwich client a fetch goes through, one per kind of source, none able to wait
forever; and one line for whatever a transport raises (`describe_failure`).

A stall timeout bounds every wait on a server: no byte for `timeout` seconds
and the fetch ends (`is_stall` recognizes how). Each transport gets it its own way:
git:// on its socket (connect and every read), http(s):// through urllib3
(connect, TLS handshake, every read; no silent retries, which would multiply
it), ssh through a watch on the ssh process's stdout that kills the process.
A local repository is read by a local `git upload-pack`: no network, no timeout.

TLS trust for https://, as git has it: the file named by GIT_SSL_CAINFO, else by
git's `http.sslCAInfo`, else OpenSSL's default store (which SSL_CERT_FILE and
SSL_CERT_DIR replace). Certificates and host names are always checked.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import select
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from dulwich import client as dclient
from dulwich.config import ConfigDict, StackedConfig
from dulwich.errors import GitProtocolError, HangupException, NotGitRepository
from dulwich.protocol import DEFAULT_GIT_PROTOCOL_VERSION_FETCH, Protocol

from docteur.cli.errors import describe_os_error, is_disk_full
from docteur.cli.redact import redact

from .defaults import DEFAULT_TIMEOUT
from .errors import BuildError
from .gittools import git_path
from .source import Source

if TYPE_CHECKING:
    import ssl

    import urllib3


class Stalled(TimeoutError):
    """The server (the ssh process) sent nothing for the whole stall timeout."""


def client_for(
    source: Source, timeout: float = DEFAULT_TIMEOUT, thin: bool = False
) -> tuple[dclient.GitClient, str]:
    """A client for `source` and the path to ask it for; `thin`: a fetch accepts a thin
    pack (deltas against objects the client has; a pull completes it)."""
    if source.kind == "local-git":
        if git_path():
            # git-upload-pack does what a server would (depth, deltas reused), in C.
            return dclient.SubprocessGitClient(thin_packs=thin), source.location
        return dclient.LocalGitClient(thin_packs=thin), source.location
    scheme = source.location.split("://", 1)[0].lower() if "://" in source.location else "ssh"
    if scheme == "git":
        parts = urlsplit(source.location)
        assert parts.hostname is not None  # parse_source checked it
        return _TCPClient(parts.hostname, parts.port, timeout, thin), parts.path
    ssh = os.environ.get("GIT_SSH_COMMAND") or os.environ.get("GIT_SSH") or None
    pool = _http_pool(source.location, timeout) if scheme in ("http", "https") else None
    try:
        gc, path = dclient.get_transport_and_path(
            source.location, thin_packs=thin, ssh_command=ssh, quiet=True, pool_manager=pool
        )
    except ValueError as e:
        raise BuildError(f"bad URL {source.display!r}: {redact(str(e))}") from None
    if isinstance(gc, dclient.SSHGitClient):
        gc.ssh_vendor = _SSHVendor(timeout)
    return gc, path


def is_stall(e: BaseException) -> bool:
    """Is `e` one of the ways a transport says the stall timeout ran out?"""
    # urllib3 is loaded only for http(s) (it costs ~0.1 s to import): not loaded, not its error.
    exceptions = sys.modules.get("urllib3.exceptions")
    if exceptions is not None:
        if isinstance(e, exceptions.NewConnectionError):
            return False  # a refused or unreachable connection, which urllib3 files under timeouts
        if isinstance(e, exceptions.ReadTimeoutError | exceptions.ConnectTimeoutError):
            return True
    # A socket's own timeout has no errno; ETIMEDOUT is the kernel giving up on a route.
    return isinstance(e, TimeoutError) and e.errno is None


# -- git:// --------------------------------------------------------------------------


class _TCPClient(dclient.TCPGitClient):
    """git://, with the timeout on the socket. dulwich's own connects without one and
    offers no hook to set it, so the (short) request is sent here the way it does."""

    def __init__(self, host: str, port: int | None, timeout: float, thin: bool = False) -> None:
        super().__init__(host, port, thin_packs=thin, quiet=True)
        self.timeout = timeout

    def _connect(
        self, cmd: bytes, path: str | bytes, protocol_version: int | None = None
    ) -> tuple[Protocol, Callable[[], bool], IO[bytes] | None]:
        if cmd not in (b"upload-pack", b"receive-pack"):
            raise NotImplementedError(f"git daemon serves no {cmd.decode()}")
        path = path if isinstance(path, bytes) else path.encode(self._remote_path_encoding)
        sock = socket.create_connection((self._host, self._port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = sock.makefile("rb", -1)
        wfile = sock.makefile("wb", 0)

        def close() -> None:
            rfile.close()
            wfile.close()
            sock.close()

        def shutdown_write() -> None:
            wfile.flush()
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)

        proto = Protocol(rfile.read, wfile.write, close, report_activity=self._report_activity,
                         shutdown_write=shutdown_write)  # fmt: skip
        # A push speaks version 0 (send_pack set it; git has no version 2 push).
        default = DEFAULT_GIT_PROTOCOL_VERSION_FETCH if cmd == b"upload-pack" else self.protocol_version
        self.protocol_version = protocol_version or default
        # Version 2 hides behind two NULs, where old servers look for nothing more.
        version = b"\0\0version=2\0" if self.protocol_version == 2 else b""
        if path.startswith(b"/~"):
            path = path[1:]
        proto.send_cmd(b"git-" + cmd, path, b"host=" + self._host.encode("ascii") + version)
        return proto, lambda: bool(select.select([sock], [], [], 0)[0]), None


# -- ssh ---------------------------------------------------------------------------


class _SSHVendor(dclient.SubprocessSSHVendor):
    """The ssh command as dulwich runs it, its output read through a stall watch."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def run_command(self, *args, **kwargs) -> dclient.SubprocessWrapper:  # type: ignore[no-untyped-def]
        con = super().run_command(*args, **kwargs)
        unwatched = getattr(con.read, "__self__", None)
        if isinstance(unwatched, io.BufferedReader):
            unwatched.detach()  # set aside, without closing the pipe as dropping it would
        con.read = io.BufferedReader(_WatchedPipe(con.proc, self.timeout)).read  # type: ignore[method-assign]
        return con


class _WatchedPipe(io.RawIOBase):
    """The stdout of `proc`; when nothing comes for `timeout` seconds, `proc` is killed
    (a stalled ssh may never exit on its own) and the read raises `Stalled`. Closing
    this view leaves the pipe open: it is the process wrapper's to close."""

    def __init__(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.pipe = proc.stdout
        self.timeout = timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        ready, _, _ = select.select([self.pipe], [], [], self.timeout)
        if not ready:
            self.proc.kill()
            self.proc.wait()
            raise Stalled(f"no data for {self.timeout:g} s")
        return self.pipe.readinto(buffer)  # type: ignore[attr-defined]


# -- http(s):// ------------------------------------------------------------------------


def _http_pool(url: str, timeout: float) -> urllib3.PoolManager:
    import urllib3

    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname or ""
    base = urlunsplit((parts.scheme, f"{host}:{parts.port}" if parts.port else host, parts.path, "", ""))
    config = ConfigDict()
    named = ca_file() if parts.scheme == "https" else None
    if named:
        cafile, origin = named
        if not os.access(cafile, os.R_OK):  # else urllib3 says only "No such file", no name
            why = "no such file" if not os.path.exists(cafile) else "permission denied"
            raise BuildError(f"cannot read the CA certificates {cafile} (from {origin}): {why}")
        config.set((b"http",), b"sslCAInfo", cafile.encode())
    pool = dclient.default_urllib3_manager(config, base_url=base, timeout=timeout)
    # No retry after a timeout or a failed connection (git makes none either): each
    # would wait the whole timeout again. Redirects are still followed.
    pool.connection_pool_kw["retries"] = urllib3.Retry(total=5, connect=0, read=0, other=0, redirect=5)
    return pool


def ca_file() -> tuple[str, str] | None:
    """The CA bundle a git user named for https, and where it was named: GIT_SSL_CAINFO,
    else http.sslCAInfo. None: OpenSSL's default store."""
    named = os.environ.get("GIT_SSL_CAINFO")
    if named:
        return named, "GIT_SSL_CAINFO"
    try:
        value = StackedConfig.default().get((b"http",), b"sslCAInfo")
    except KeyError:
        return None
    except (OSError, ValueError) as e:  # a configuration file git itself would refuse
        raise BuildError(f"cannot read git's configuration: {e}") from None
    return (os.path.expanduser(value.decode()), "http.sslCAInfo") if value else None


# -- what went wrong -----------------------------------------------------------------

# OpenSSL's verify codes for a certificate valid, but for another host name or IP
# address (the ssl module names none of them).
_NAME_MISMATCH = (62, 64)


def _certificate_error(e: ssl.SSLCertVerificationError, where: str) -> BuildError:
    why = e.verify_message or e.reason or str(e)
    if e.verify_code in _NAME_MISMATCH:
        return BuildError(f"TLS certificate of {where} is for another host: {why}")
    return BuildError(
        f"untrusted TLS certificate from {where}: {why} "
        "(trust its CA with GIT_SSL_CAINFO, http.sslCAInfo or SSL_CERT_FILE)"
    )


def _chain(e: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    stack: list[BaseException | None] = [e]
    while stack:
        cur = stack.pop()
        if cur is None or any(cur is s for s in seen):
            continue
        seen.append(cur)
        # urllib3 keeps the cause in `reason`; ssl's `reason` is a word, not an exception.
        linked = [cur.__cause__, cur.__context__, getattr(cur, "reason", None), *getattr(cur, "args", ())]
        stack += [x for x in linked if isinstance(x, BaseException)]
    return seen


def describe_failure(e: Exception, source: Source, timeout: float) -> BuildError:
    """One line saying what went wrong, for any transport's exception."""
    where = source.display
    chain = _chain(e)
    # ssl is loaded by https (urllib3) only: not loaded, not its error (~5 ms of imports).
    tls = sys.modules.get("ssl")
    for x in chain:
        if is_disk_full(x):
            return BuildError(describe_os_error(x, f"fetching {where}: no room for the scratch copy"))
    for x in chain:
        if is_stall(x):
            return BuildError(f"timed out: nothing from {where} for {timeout:g} s (see --timeout)")
        if tls is not None and isinstance(x, tls.SSLCertVerificationError):
            return _certificate_error(x, where)
    text = " ".join(str(x) for x in chain)
    for x in chain:
        if isinstance(x, socket.gaierror) or type(x).__name__ == "NameResolutionError":
            return BuildError(f"unknown host in {where}")
        if isinstance(x, ConnectionRefusedError):
            return BuildError(f"connection refused: {where}")
    if "Name or service not known" in text or "nodename nor servname" in text:
        return BuildError(f"unknown host in {where}")
    if "Connection refused" in text:
        return BuildError(f"connection refused: {where}")
    for x in chain:
        if isinstance(x, NotGitRepository):
            return BuildError(f"not a git repository: {where}")
        if isinstance(x, dclient.HTTPUnauthorized):
            return BuildError(f"authentication failed: {where}")
        if isinstance(x, HangupException | GitProtocolError):
            lines = [
                ln.decode("utf-8", "replace") if isinstance(ln, bytes) else str(ln)
                for ln in getattr(x, "stderr_lines", None) or []
            ]
            detail = "; ".join(ln.strip() for ln in lines if ln.strip()) or str(x)
            low = detail.lower()
            if any(
                s in low
                for s in (
                    "not a git repository",
                    "not exported",
                    "not found",
                    "does not appear to be a git",
                    "no such",
                )
            ):
                return BuildError(f"not a git repository: {where} ({redact(detail)})")
            return BuildError(f"{where}: {redact(detail)}")
    for x in chain:
        if isinstance(x, OSError) and x.errno in (errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH):
            return BuildError(f"cannot reach {where}: {x.strerror}")
    for x in chain:
        if isinstance(x, FileNotFoundError) and x.filename:  # the ssh command itself
            return BuildError(f"fetching {where} failed: cannot run {x.filename}: {x.strerror}")
        if isinstance(x, OSError) and x.strerror:  # not "[Errno N] ..."
            detail = f"{x.filename}: {x.strerror}" if x.filename else x.strerror
            return BuildError(f"fetching {where} failed: {redact(detail)}")
    return BuildError(f"fetching {where} failed: {redact(str(e)) or type(e).__name__}")
