"""`docteur run --target microvm`: the appliance behind the run/query commands.

Turns a TargetConfig into an Appliance (blocks, verify mode, accel, memory, timeout)
and gives back a connected protocol client, or, for `--socket PATH`, serves many
clients over the guest's single serial port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from docteur.cli.log import notice
from docteur.vm.runtime.appliance import Appliance, ApplianceError
from docteur.vm.targets.config import TargetConfig
from docteur.vm.targets.mux import Mux
from docteur.vm.targets.serving import claim_socket_path, say_not_writable, serve_until_stopped


def appliance(config: TargetConfig, **kw: Any) -> Appliance:
    return Appliance(
        blocks={name: Path(path) for name, path in config.blocks.items()},
        verify=config.verify,
        writable=config.writable,
        memory=config.memory,
        accel=config.accel,
        timeout=config.timeout,
        kernel=Path(config.kernel) if config.kernel else None,
        initrd=Path(config.initrd) if config.initrd else None,
        snapshot=config.snapshot,
        **kw,
    )


@contextlib.asynccontextmanager
async def session(config: TargetConfig) -> AsyncIterator[Any]:
    """Boot, yield the connected protocol client, power off and reap on exit."""
    async with appliance(config) as vm:
        yield vm.client


async def serve(config: TargetConfig, path: str, ready: str | None = None) -> int:
    """Boot, listen on `path` for protocol clients, print one ready line, serve
    until SIGINT/SIGTERM or the guest goes away; then power off cleanly."""
    claim_socket_path(path)  # before a boot that would be wasted
    # Ctrl-C/SIGTERM during the boot raise (the VM is reaped on the way out); once
    # serving, they ask for a clean power-off.
    async with appliance(config, make_client=None) as vm:
        assert vm.reader is not None and vm.writer is not None
        claim_socket_path(path)  # again: the boot took a while
        say_not_writable(config, vm.greeting)
        mux = Mux(vm.reader, vm.writer, vm.hello, vm.hellos)
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
                raise ApplianceError(f"the guest stopped: {vm.exit_description()}", vm.log_tail())
            return 0
        finally:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            await mux.stop()  # each client's put cancelled and batch aborted before the power-off
            pump.cancel()
