"""`docteur run --target unix`: the guest runtime as a host process.

Like MirageOS's unix target runs a unikernel as a process: the very server
the microVM boots (`python -m docteur.guest`) runs here against image files,
over its stdin/stdout for one session, or on the unix socket itself for
`--socket` (it serves several clients natively).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path

from docteur.cli.errors import HostError
from docteur.cli.log import get_logger, notice
from docteur.guest.errors import ImageError
from docteur.guest.image import open_image_fd
from docteur.guest.protocol import Hello
from docteur.vm.client import Client, ClientError
from docteur.vm.runtime.locks import ImageInUse, check_free
from docteur.vm.runtime.process import die_with_parent, terminate
from docteur.vm.targets.config import TargetConfig
from docteur.vm.targets.serving import claim_socket_path, say_not_writable, serve_until_stopped

log = get_logger("docteur.vm.unix")


class TargetError(HostError):
    """The guest server as a host process could not start or stopped."""


def blocks_of(config: TargetConfig) -> dict[str, str]:
    """The images of `config`, each a file we can open and nobody else writes (nor
    reads, for --rw)."""
    blocks = config.blocks
    for name, path in blocks.items():
        try:  # the core's own check: refuses a FIFO or a device at once, never waits on it
            os.close(open_image_fd(path))
            check_free(Path(path), config.writable)
        except (ImageError, ImageInUse) as exc:
            raise TargetError(f"disk {name}: {exc}") from None
    return blocks


def guest_argv(config: TargetConfig, *where: str) -> list[str]:
    """The guest server's command line for images already checked (blocks_of)."""
    argv = [sys.executable, "-m", "docteur.guest"]
    for name, path in config.blocks.items():
        argv += ["--block", f"{name}={path}"]
    return [*argv, "--verify", config.verify, *(["--rw"] if config.writable else []), *where]


class _Tail:
    """The last lines the guest wrote on stderr, for error messages."""

    def __init__(self, stream: asyncio.StreamReader | None):
        self.lines: deque[str] = deque(maxlen=20)
        self.task = asyncio.create_task(self._read(stream)) if stream else None

    def last(self, default: str) -> str:
        return self.lines[-1] if self.lines else default

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            log.info("guest", line=line)


@contextlib.asynccontextmanager
async def session(config: TargetConfig) -> AsyncIterator[Client]:
    """Start the guest server on pipes and yield a greeted client."""
    blocks_of(config)
    proc = await asyncio.create_subprocess_exec(
        *guest_argv(config, "--stdio"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 20,
        preexec_fn=die_with_parent(signal.SIGTERM),  # it removes its socket on SIGTERM
    )
    log.info("guest server started", pid=proc.pid, mode="stdio")
    tail = _Tail(proc.stderr)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        try:
            client = await Client.connect(proc.stdout, proc.stdin, timeout=config.timeout)
        except ClientError as exc:
            await _reap(proc)
            last = tail.last("no output")
            raise TargetError(f"the guest server did not start: {exc} ({last})") from None
        try:
            yield client
        finally:
            await client.close()
    finally:
        await _reap(proc)
        if tail.task:
            tail.task.cancel()


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """A session's server ends when its stdin closes; stopped if it does not."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            if proc.stdin is not None:
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 2.0)
        except TimeoutError:
            await terminate(proc, 2.0)


async def serve(config: TargetConfig, path: str, ready: str | None = None) -> int:
    """Serve the images on the unix socket `path` until SIGINT/SIGTERM."""
    blocks_of(config)  # fail early, before anything starts
    claim_socket_path(path)  # a stale socket would look ready; anything else is kept
    proc = await asyncio.create_subprocess_exec(
        *guest_argv(config, "--listen", path), stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent(signal.SIGTERM),  # it removes its socket on SIGTERM
    )
    log.info("guest server started", pid=proc.pid, mode="listen", socket=path)
    tail = _Tail(proc.stderr)
    try:
        hello = await _await_ready(proc, path, config.timeout, tail)
        if not hello.ok:
            raise TargetError(hello.fields.get("error", "boot failed"))
        disks = ", ".join(hello.disks)
        say_not_writable(config, hello)
        # Ctrl-C/SIGTERM before this raise (the server is stopped on the way out);
        # from now on they stop serving cleanly.
        if await serve_until_stopped(ready or f"docteur: serving {disks} on {path}", proc.wait()):
            if proc.returncode == 0:  # a client asked for `shutdown`, as the microVM powers off
                notice("docteur: the guest server stopped", "guest server stopped")
                return 0
            last = tail.last(f"exit status {proc.returncode}")
            raise TargetError(f"the guest server stopped (exit status {proc.returncode}): {last}")
        return 0
    finally:
        if proc.returncode is None:
            await terminate(proc, 3.0)
        with contextlib.suppress(FileNotFoundError):
            if proc.returncode is not None and os.path.exists(path):
                os.unlink(path)
        if tail.task:
            tail.task.cancel()


async def _await_ready(
    proc: asyncio.subprocess.Process, path: str, timeout: float, tail: _Tail
) -> Hello:
    """Connect once the socket exists: the greeting says the disks are verified."""
    deadline = loop_time() + timeout
    while loop_time() < deadline:
        if proc.returncode is not None:
            last = tail.last(f"exit status {proc.returncode}")
            raise TargetError(f"the guest server stopped: {last}")
        if os.path.exists(path):
            client = await Client.open_unix(path, timeout=max(1.0, deadline - loop_time()))
            hello = client.hello
            await client.close()
            assert hello is not None
            return hello
        await asyncio.sleep(0.02)
    raise TargetError(f"the guest server was not ready within {timeout:g} s")


def loop_time() -> float:
    return asyncio.get_running_loop().time()
