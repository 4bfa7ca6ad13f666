"""`async with Appliance(blocks={...}) as vm:` — the docteur microVM from Python.

Starts QEMU, drives QMP (qemu.qmp) over a socketpair, waits for the guest's
greeting on the virtio-serial port and hands out the protocol client. Leaving
the block shuts the guest down (protocol shutdown, then QMP quit, then
SIGKILL) and always reaps QEMU and removes the run directory, also on errors
and cancellation. Every await has a timeout: a dead or paused QEMU must never
hang the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, QMPClient

from docteur.cli.errors import HostError
from docteur.cli.log import get_logger
from docteur.guest import protocol
from docteur.guest.defaults import DEFAULT_VERIFY
from docteur.guest.errors import ImageError
from docteur.guest.image import open_image_fd
from docteur.vm.guestbuild import cache
from docteur.vm.runtime import locks, qemu, snapshot
from docteur.vm.runtime.defaults import BOOT_TIMEOUT, DEFAULT_MEMORY, MIN_MEMORY, SNAPSHOT_MODES
from docteur.vm.runtime.process import die_with_parent, terminate
from docteur.vm.runtime.rundir import make_rundir

log = get_logger("docteur.vm")
# The checkout's build directory (`make guest`); the lookup is guestbuild.cache's.
DEFAULT_BUILD = cache.CHECKOUT_BUILD
LOG_TAIL = 25
SHUTDOWN_ID = 0xFFFFFFF0  # request id of the appliance's own shutdown request
# Wraps the greeted port's streams into a protocol client (docteur.vm.client).
ClientFactory = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[Any]]


class ApplianceError(HostError):
    """One-line message; `log_tail` holds the end of the guest console log."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message)
        self.log_tail = log_tail

    @property
    def detail(self) -> str:  # type: ignore[override]
        """The log tail, for a VM that died or hung without a word; nothing when the
        message already says it all (the guest's own refusal, or QEMU's last line)."""
        tail = self.log_tail.strip()
        last = tail.splitlines()[-1] if tail else ""
        if not tail or isinstance(self, GuestRefused) or last.removeprefix(f"{qemu.QEMU}: ") in str(self):
            return ""
        return f"--- guest log (tail) ---\n{self.log_tail}"


class BootError(ApplianceError):
    pass


class GuestRefused(BootError):
    """The guest booted and says why it serves nothing (e.g. a corrupt image): its
    message is the whole story, the console log adds nothing."""


def _host_paths(message: str, blocks: dict[str, Path]) -> str:
    """The guest names its disks by device (`disk 'docteur' (/dev/vda): ... /dev/vda:`):
    say the image the user gave instead."""
    for name, dev in re.findall(r"disk '([^']+)' \((/dev/[a-z0-9]+)\)", message):
        if name in blocks:
            message = re.sub(re.escape(dev) + r"\b", str(blocks[name]), message)
    return message


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _default_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
    from docteur.vm.client import Client  # imported late: only when a client is asked for

    return await Client.over_streams(reader, writer)


def guest_artifacts(build_dir: Path | None = None) -> tuple[Path, Path]:
    """(kernel, initrd): prebuilt ones, a build directory's, or the user's cache (built on
    first use); see docteur.vm.guestbuild.cache."""
    return cache.artifacts(build_dir)


def _check_image(name: str, path: Path) -> Path:
    try:  # the core's own check: refuses a FIFO or a device at once, never waits on it
        os.close(open_image_fd(str(path)))
    except ImageError as exc:
        raise ApplianceError(f"block {name}: {exc}") from None
    return path.resolve()


class Appliance:
    """One microVM serving `blocks` ({name: image}); see the module docstring.

    `writable`: every disk attached read-write (cache=none) and served writable by the
    guest (protocol 2 writes); nobody else may use the images meanwhile (locks.py).
    `blockdevs`: a disk's own QEMU -blockdev instead of its file (qemu.Launch.blockdevs).

    After `async with`: `client` (the runtime's protocol client), `greeting`
    (the guest's HELLO), `boot_seconds`, `events` (QMP), `shutdown_reason`,
    `returncode`, and `log_tail()` while the run directory still exists.
    """

    def __init__(
        self,
        blocks: dict[str, str | Path],
        verify: str = DEFAULT_VERIFY,
        memory: int = DEFAULT_MEMORY,
        accel: str = "auto",
        timeout: float = BOOT_TIMEOUT,
        build_dir: Path | None = None,
        kernel: Path | None = None,
        initrd: Path | None = None,
        extra_args: list[str] | None = None,
        greet: bool = True,
        make_client: ClientFactory | bool | None = True,
        require_ok: bool = True,
        snapshot: str = "off",
        writable: bool = False,
        blockdevs: dict[str, dict[str, Any]] | None = None,
    ):
        self._given = {k: v for k, v in locals().items() if k != "self"}  # for a second start
        if not blocks:
            raise ApplianceError("no block device given")
        if memory < MIN_MEMORY:
            raise ApplianceError(f"--memory {memory}: the guest needs at least {MIN_MEMORY} MiB")
        self.blocks = {qemu.check_block_name(n): _check_image(n, Path(p)) for n, p in blocks.items()}
        given = cache.prebuilt(kernel, initrd)
        kernel, initrd = given or guest_artifacts(build_dir)
        self.kernel, self.initrd = kernel, initrd
        self.verify, self.memory, self.timeout = verify, memory, timeout
        self.accel = qemu.choose_accel(accel)
        self.extra_args = extra_args or []
        self.writable = writable  # attach read-write (cache=none), the guest serves writes
        self.blockdevs = blockdevs or {}  # a disk's own -blockdev (qemu.Launch.blockdevs)
        self.greet = greet
        # True: the runtime's asyncio client (docteur.vm.client); None/False: raw
        # streams only (vm.reader/vm.writer), e.g. for the --socket multiplexer.
        self.make_client = _default_client if make_client is True else make_client or None
        self.hello = b""  # the guest's HELLO frame, header included
        self.hellos: dict[int, bytes] = {}  # the HELLO of each protocol version greeted
        self.greeting: protocol.Hello | None = None  # ... decoded
        self.require_ok = require_ok  # a HELLO whose status is not ok raises BootError
        if snapshot not in SNAPSHOT_MODES:
            raise ApplianceError(f"--snapshot must be one of {', '.join(SNAPSHOT_MODES)}")
        self.snapshot = snapshot  # auto: restore a saved state if any, else boot and save one
        self.restored = False  # this run restored a snapshot instead of booting
        self.pausing = False  # paused on purpose (a snapshot being saved): not a stopped guest
        self.events: list[dict[str, Any]] = []  # every QMP event, in order
        self.shutdown_reason: str | None = None  # QMP SHUTDOWN reason, e.g. guest-shutdown
        self.client: Any = None  # protocol client once greeted
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.returncode: int | None = None
        self.boot_seconds: float | None = None  # QEMU start to greeting
        self.rundir: Path | None = None
        self._rundir_lock: int | None = None  # flock'ed fd of rundir/owner.lock
        self.proc: asyncio.subprocess.Process | None = None
        self.qmp: QMPClient | None = None
        self._event_task: asyncio.Task[None] | None = None
        self._paused = asyncio.Event()  # the VM stopped without exiting
        self._paused_reason = ""
        self._socks: list[socket.socket] = []

    @property
    def clean_shutdown(self) -> bool:
        """QEMU exited because the guest powered off (not a panic, reset or kill)."""
        return self.shutdown_reason == "guest-shutdown"

    def exit_description(self) -> str:
        """How QEMU ended, for error messages."""
        rc = self.proc.returncode if self.proc else None
        how = f"QEMU killed by signal {-rc}" if rc is not None and rc < 0 else f"QEMU exited with status {rc}"
        reason = {
            None: "", "guest-reset": " after a guest reset (kernel panic?)",
            "guest-shutdown": " after the guest powered off",
        }.get(self.shutdown_reason, f" ({self.shutdown_reason})")  # fmt: skip
        said = ""  # QEMU's own last word, e.g. "cannot set up guest memory ..."
        with contextlib.suppress(OSError, TypeError):
            lines = (self.rundir / "qemu.err").read_text(errors="replace").split("\n")  # type: ignore[operator]
            said = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
            said = f": {said.removeprefix(f'{qemu.QEMU}: ')}" if rc and said else ""
        return how + reason + said

    # ---- guest log -------------------------------------------------------
    @property
    def console_log(self) -> Path:
        assert self.rundir is not None
        return self.rundir / "console.log"

    def log_tail(self, lines: int = LOG_TAIL) -> str:
        text = ""
        for name in ("console.log", "qemu.err"):
            with contextlib.suppress(OSError, TypeError):
                text += (self.rundir / name).read_text(errors="replace")  # type: ignore[operator]
        return "\n".join(text.splitlines()[-lines:])

    # ---- start -----------------------------------------------------------
    async def __aenter__(self) -> Appliance:
        try:
            try:
                await self.start()
            except snapshot.Unusable as exc:  # removed: this start boots cold (and saves anew)
                log.warning("snapshot not restored, booting", reason=str(exc))
                await self.close()
                self.__init__(**self._given)  # type: ignore[misc]  # a fresh start, same settings
                await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        exe = qemu.find_qemu()
        for path in self.blocks.values():  # one docteur line, not QEMU's lock error
            try:
                locks.check_free(path, self.writable)
            except locks.ImageInUse as exc:
                raise ApplianceError(str(exc)) from None
        # Short, private run directory for the console log and QEMU's stderr.
        # (locked by us while it exists; stale ones of dead owners are removed first)
        self.rundir, self._rundir_lock = make_rundir()
        qmp_host, qmp_qemu = socket.socketpair()
        port_host, port_qemu = socket.socketpair()
        self._socks = [qmp_host, port_host]
        launch = qemu.Launch(
            kernel=self.kernel, initrd=self.initrd, blocks=self.blocks,
            console_log=self.console_log, qmp_fd=qmp_qemu.fileno(), port_fd=port_qemu.fileno(),
            verify=self.verify, memory=self.memory, accel=self.accel, extra_args=self.extra_args,
            writable=self.writable, blockdevs=self.blockdevs,
        )  # fmt: skip
        argv = launch.argv(exe)
        fds = (qmp_qemu.fileno(), port_qemu.fileno())
        # (a start that does not greet never gets to the moment a snapshot is taken or resumed)
        plan = snapshot.Plan(self.snapshot if self.greet else "off", self.blocks,
                             [Path(exe), self.kernel, self.initrd])  # fmt: skip
        argv += plan.qemu_args(argv, fds, self.rundir)
        fds += plan.fds
        log.debug("qemu command", argv=" ".join(argv))
        t0 = time.monotonic()
        with open(self.rundir / "qemu.err", "wb") as err:
            try:
                self.proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err,
                    pass_fds=fds,
                    start_new_session=True,  # Ctrl-C reaches us, and we shut QEMU down
                    # kill -9 of us: no orphan VM serving nobody
                    preexec_fn=die_with_parent(signal.SIGKILL),
                )  # fmt: skip
            finally:
                qmp_qemu.close()
                port_qemu.close()
                plan.loaded()
        log.info("qemu started", pid=self.proc.pid, accel=self.accel, memory=self.memory,
                 blocks=",".join(self.blocks), verify=self.verify, rundir=str(self.rundir))  # fmt: skip
        self.qmp = QMPClient("docteur")
        self._event_task = asyncio.create_task(self._watch_events())
        await self._until_exit(self.qmp.connect(qmp_host), 10.0, "QMP connection")
        self.reader, self.writer = await asyncio.open_connection(sock=port_host)
        if plan.restoring:
            try:
                await self._until_exit(plan.resume(self), self.timeout, "restore")
            except (ApplianceError, snapshot.SnapshotError) as exc:
                plan.give_up()
                raise snapshot.Unusable(str(exc)) from None
            self.restored = True
        if self.greet:
            await self._until_exit(self._greet(), self.timeout, "boot")
            self.boot_seconds = time.monotonic() - t0
            log.info("guest ready", seconds=round(self.boot_seconds, 3), restored=self.restored)
            await plan.save(self)  # on the raw port: before a client reads it
            if self.make_client is not None:
                self.client = await self._until_exit(self.make_client(self.reader, self.writer),
                                                     self.timeout, "boot")  # fmt: skip

    async def _greet(self) -> None:
        """GREET, then wait for the guest's HELLO: the guest has verified its disks.

        Done here on the raw stream (not by the client) so the boot is timed the
        same way with or without a client, and `hello` can be replayed by the
        multiplexer behind `docteur run --socket`."""
        assert self.reader is not None and self.writer is not None
        self.hello = await self._hello(protocol.GREET_FRAME)
        self.greeting = self._decode(self.hello)
        offered = self.greeting.fields.get("versions", "").split() if self.greeting else []
        if str(protocol.VERSIONS[-1]) in offered:
            # Upgrade the port's one session now, before anything is asked: the
            # multiplexer forwards the clients of either version over it.
            latest = await self._hello(protocol.greet_frame(protocol.VERSIONS[-1]), protocol.VERSIONS[-1])
            self.greeting = self._decode(latest)
        if self.require_ok and not (self.greeting and self.greeting.ok):
            why = self.greeting.fields.get("error", "no reason given") if self.greeting else "?"
            why = _host_paths(why, self.blocks)
            tail = self.log_tail()
            log.info("guest log (tail)", tail=tail)  # -v: the error line alone leaves it out
            raise GuestRefused(f"the guest refuses to serve: {why}", tail)

    async def _hello(self, greet: bytes, version: int | None = None) -> bytes:
        """Send `greet`, return the HELLO frame it brings (of `version`, when given:
        frames of the session before are skipped); kept in `hellos`."""
        assert self.reader is not None and self.writer is not None
        self.writer.write(greet)
        await self.writer.drain()
        while True:
            header = await self.reader.readexactly(protocol.HEADER_SIZE)
            ftype, _, _, length = protocol.HEADER.unpack(header)
            if length > protocol.MAX_FRAME or (version is None and ftype != protocol.HELLO):
                raise ApplianceError(f"the guest answered GREET with frame type {ftype:#x}")
            frame = header + await self.reader.readexactly(length)
            hello = self._decode(frame) if ftype == protocol.HELLO else None
            if hello is not None and (version is None or hello.version == version):
                self.hellos[hello.version] = frame
                return frame

    @staticmethod
    def _decode(frame: bytes) -> protocol.Hello | None:
        events = protocol.ClientCodec().receive(frame)
        return events[0] if events else None  # type: ignore[return-value]

    async def _until_exit(self, aw: Any, timeout: float, what: str) -> Any:
        """Await aw unless QEMU exits or the timeout passes first: a boot failure."""
        assert self.proc is not None
        task = asyncio.ensure_future(aw)
        # Whatever happens to us (cancellation included), the inner task's outcome is
        # collected: an unretrieved exception is logged at garbage collection, and
        # under CPython 3.11.7 that traceback formatting can break a concurrent ast.parse.
        task.add_done_callback(_consume)
        died = asyncio.ensure_future(self.proc.wait())
        # A KVM internal error pauses the VM instead of ending QEMU: fail at once.
        paused = asyncio.ensure_future(self._paused.wait())
        try:
            done, _ = await asyncio.wait({task, died, paused}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        except BaseException:
            task.cancel()
            raise
        finally:
            died.cancel()
            paused.cancel()
        if task in done:
            exc = task.exception()
            # (QMP's ConnectError: QEMU closed the QMP socket, i.e. it is exiting)
            if not isinstance(exc, (ConnectionError, EOFError, asyncio.IncompleteReadError, ConnectError)):
                return task.result()
            # The port closed under us: QEMU is exiting; say why once it has.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), 2.0)
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if died in done or self.proc.returncode is not None:
            await asyncio.sleep(0.05)  # let the last console bytes land
            with contextlib.suppress(OSError, TypeError):
                said = (self.rundir / "qemu.err").read_text(errors="replace")  # type: ignore[operator]
                in_use = locks.lock_refusal(said, self.blocks, self.writable)
                if in_use:  # another process took the image between our check and QEMU's
                    raise ApplianceError(in_use)
            msg = f"{what} failed: {self.exit_description()}"
        elif paused in done:
            msg = f"{what} failed: QEMU stopped the guest ({self._paused_reason})"
        else:
            msg = f"{what} timed out after {timeout:g} s"
            if self.accel == "kvm" and not qemu.kvm_usable():
                msg += " (KVM without vmx/svm CPU flags does not work: try --accel tcg)"
        raise BootError(msg, self.log_tail())

    async def _watch_events(self) -> None:
        assert self.qmp is not None
        with contextlib.suppress(asyncio.CancelledError, Exception):
            async for event in self.qmp.events:
                self.events.append(event)
                if event["event"] == "SHUTDOWN":
                    self.shutdown_reason = event.get("data", {}).get("reason")
                elif event["event"] == "STOP" and self.shutdown_reason is None and not self.pausing:
                    await self._why_paused()

    async def _why_paused(self) -> None:
        assert self.qmp is not None
        status: Any = {}
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            status = await asyncio.wait_for(self.qmp.execute("query-status"), 1.0)
        self._paused_reason = (status or {}).get("status", "paused")
        if self._paused_reason not in ("running", "shutdown"):
            self._paused.set()

    # ---- stop ------------------------------------------------------------
    async def wait(self, timeout: float | None = None) -> int:
        """Wait for QEMU to exit (e.g. after the guest powered off)."""
        assert self.proc is not None
        self.returncode = await asyncio.wait_for(self.proc.wait(), timeout)
        return self.returncode

    async def shutdown(self, timeout: float = 5.0) -> int | None:
        """Ask the guest to power off, then QEMU to quit, then kill it."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        if self.hello and self.writer is not None and not self.writer.is_closing():
            # A raw request, so it works whoever reads the port (client or mux);
            # the guest server exits and init powers off: QEMU exits 0 in ms.
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                self.writer.write(protocol.encode_request(SHUTDOWN_ID, "shutdown"))
                await asyncio.wait_for(self.writer.drain(), 1.0)
                return await self.wait(timeout / 2)
        if self.qmp is not None:
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(self.qmp.execute("quit"), 1.0)
                return await self.wait(timeout / 2)
        return None

    async def close(self) -> None:
        """Idempotent teardown: QEMU reaped, sockets closed, run directory gone."""
        try:
            with contextlib.suppress(Exception):
                await self.shutdown()
        finally:
            await self._reap()
            if self.client is not None and hasattr(self.client, "close"):
                with contextlib.suppress(Exception, asyncio.TimeoutError):
                    await asyncio.wait_for(self.client.close(), 1.0)
            if self.writer is not None:
                self.writer.close()
            for s in self._socks:
                s.close()
            if self.qmp is not None:
                qmp, self.qmp = self.qmp, None
                with contextlib.suppress(Exception, asyncio.TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(qmp.disconnect(), 1.0)
            if self._event_task is not None:
                self._event_task.cancel()
            if self.rundir is not None:
                shutil.rmtree(self.rundir, ignore_errors=True)
            if self._rundir_lock is not None:
                os.close(self._rundir_lock)
                self._rundir_lock = None
            if self.proc is not None:
                log.info("qemu exited", status=self.returncode, reason=self.shutdown_reason)

    async def _reap(self) -> None:
        """Stop whatever still runs (SIGTERM, then SIGKILL) and wait for it."""
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(Exception, asyncio.TimeoutError):
            await asyncio.wait_for(terminate(proc, grace=1.0), 6.0)
        self.returncode = proc.returncode


# qemu.qmp logs every disconnect at ERROR; our own errors say what happened.
logging.getLogger("qemu.qmp").setLevel(logging.CRITICAL)
