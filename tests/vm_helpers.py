"""Helpers for the microVM tests: skip markers, images, a minimal raw client.

The raw client speaks the protocol with the guest's own sans-IO codec, one
request at a time, so these tests check the appliance independently of the
host's asyncio client.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from docteur.guest import protocol
from docteur.vm.runtime.appliance import DEFAULT_BUILD, Appliance

GUEST = DEFAULT_BUILD / "guest"
needs_vm = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or not (GUEST / "initrd").exists(),
    reason="needs qemu-system-x86_64 and the guest (make guest)",
)
DOCTEUR = [sys.executable, "-c", "import sys; from docteur.cli.main import main; sys.exit(main())"]


def docteur_make(repo: Path, image: Path) -> Path:
    subprocess.run([*DOCTEUR, "make", f"file://{repo}", str(image)], check=True,
                   capture_output=True)  # fmt: skip
    return image


class GuestError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class RawClient:
    def __init__(self, vm: Appliance):
        assert vm.reader is not None and vm.writer is not None
        self.reader, self.writer = vm.reader, vm.writer
        self.codec = protocol.ClientCodec()
        self.codec.receive(vm.hello)  # the greeting the appliance already read

    async def call(self, op: str, disk: str = "docteur", path: bytes = b"",
                   on_data: object = None) -> tuple[object, bytes]:  # fmt: skip
        rid, frame = self.codec.request(op, disk, path)
        self.writer.write(frame)
        await self.writer.drain()
        chunks: list[bytes] = []
        while True:
            data = await self.reader.read(1 << 20)
            if not data:
                raise ConnectionError("the guest's port closed")
            for ev in self.codec.receive(data):
                if isinstance(ev, protocol.Data) and ev.id == rid:
                    chunks.append(ev.data)
                    if callable(on_data):
                        on_data(ev.data)
                elif isinstance(ev, protocol.End) and ev.id == rid:
                    return ev.result, b"".join(chunks)
                elif isinstance(ev, protocol.Error) and ev.id == rid:
                    raise GuestError(ev.code, ev.message)

    async def get(self, path: bytes, disk: str = "docteur") -> bytes:
        return (await self.call("get", disk, path))[1]


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
