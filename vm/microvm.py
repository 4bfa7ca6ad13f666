"""`docteur run --target microvm`: the appliance behind the run/query commands.

vm/cli.py owns the argument parsing and the shared `run` code; this module
turns the parsed arguments into an Appliance (blocks, verify mode, --accel,
--memory, --timeout) and gives back a connected protocol client, or, for
`--socket PATH`, serves many clients over the guest's single serial port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import structlog

from docteur.builder.log import error_line, notice
from docteur.guest.defaults import DEFAULT_VERIFY
from docteur.vm import qemu
from docteur.vm.appliance import Appliance, ApplianceError, GuestRefused
from docteur.vm.cli import block_specs, claim_socket_path, serve_until_stopped
from docteur.vm.mux import Mux

log = structlog.get_logger("docteur.vm")


def blocks_of(args: argparse.Namespace) -> dict[str, Path]:
    """--block NAME=IMAGE (repeatable) and a bare IMAGE (= --block docteur=IMAGE)."""
    return {name: Path(path) for name, path in block_specs(args, ApplianceError).items()}


def appliance(args: argparse.Namespace, **kw: Any) -> Appliance:
    return Appliance(
        blocks=blocks_of(args),
        verify=getattr(args, "verify", None) or DEFAULT_VERIFY,
        memory=getattr(args, "memory", 128),
        accel=getattr(args, "accel", "auto"),
        timeout=getattr(args, "timeout", 60.0),
        **kw,
    )


@contextlib.asynccontextmanager
async def session(args: argparse.Namespace) -> AsyncIterator[Any]:
    """Boot, yield the connected protocol client, power off and reap on exit."""
    async with appliance(args) as vm:
        yield vm.client


def describe(exc: BaseException) -> str:
    """The one-line error, plus the guest log tail when there is one (for stderr)."""
    msg = str(exc)
    tail = getattr(exc, "log_tail", "")
    last = tail.strip().splitlines()[-1] if tail.strip() else ""
    if isinstance(exc, GuestRefused) or (last and last.removeprefix(f"{qemu.QEMU}: ") in msg):
        log.info("guest log (tail)", tail=tail)  # the message already says it all: one line
        return msg
    return f"{msg}\n--- guest log (tail) ---\n{tail}" if tail else msg


async def serve(args: argparse.Namespace, path: str, ready: str | None = None) -> int:
    """Boot, listen on `path` for protocol clients, print one ready line, serve
    until SIGINT/SIGTERM or the guest goes away; then power off cleanly."""
    claim_socket_path(path)  # before a boot that would be wasted
    # Ctrl-C/SIGTERM during the boot raise (the VM is reaped on the way out); once
    # serving, they ask for a clean power-off.
    async with appliance(args, make_client=None) as vm:
        assert vm.reader is not None and vm.writer is not None
        claim_socket_path(path)  # again: the boot took a while
        mux = Mux(vm.reader, vm.writer, vm.hello)
        pump = asyncio.create_task(mux.pump_upstream())
        server = await asyncio.start_unix_server(mux.handle, path=path)
        try:
            line = ready or f"docteur: serving {', '.join(vm.blocks)} on {path}"
            await serve_until_stopped(line, mux.closed.wait())
            if mux.closed.is_set():
                with contextlib.suppress(Exception, asyncio.TimeoutError):
                    await vm.wait(2.0)
                if vm.clean_shutdown:  # a client asked for `shutdown`
                    notice("docteur: the guest powered off", "guest powered off")
                    return 0
                error = ApplianceError(f"the guest stopped: {vm.exit_description()}", vm.log_tail())
                error_line(describe(error))
                return 1
            return 0
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            pump.cancel()
