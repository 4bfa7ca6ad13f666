"""What a `put` sends: bytes, or an async iterator of chunks of a known or unknown size.

A put declares its size before its first byte (PROTOCOL.md, CHUNK frames), so chunks
of an unknown total are spooled to an unlinked temporary file first: whatever the size,
the content never sits in host memory, and a killed client leaves no file behind.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncGenerator, AsyncIterable
from typing import IO

Content = bytes | bytearray | memoryview | AsyncIterable[bytes]
Chunks = AsyncGenerator[memoryview, None]
SPOOL_READ = 1 << 20  # bytes read back from the spool file at a time


class ContentError(ValueError):
    """The content does not match what the put declared (or is of no usable type)."""


async def prepared(data: Content, size: int | None) -> tuple[Chunks, int]:
    """(chunks, their total size) for `data`; an iterable of unknown size is spooled."""
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data).cast("B")
        if size is not None and size != len(view):
            raise ContentError(f"size={size} given for {len(view)} bytes")
        return _one(view), len(view)
    if not isinstance(data, AsyncIterable):
        raise ContentError(f"put takes bytes or an async iterator of bytes, not {type(data).__name__}")
    if size is not None:
        if size < 0:
            raise ContentError(f"size must not be negative, not {size}")
        return _views(data), size
    return await _spooled(data)


async def _one(view: memoryview) -> Chunks:
    yield view


async def _views(chunks: AsyncIterable[bytes]) -> Chunks:
    async for chunk in chunks:
        if not isinstance(chunk, bytes | bytearray | memoryview):
            raise ContentError(f"a put's chunks are bytes, not {type(chunk).__name__}")
        yield memoryview(chunk).cast("B")


async def _spooled(chunks: AsyncIterable[bytes]) -> tuple[Chunks, int]:
    """Copy `chunks` to an unlinked temporary file (its size is then known) and read it back."""
    spool = tempfile.TemporaryFile(prefix="docteur-put-")  # noqa: SIM115 (closed by _read_back)
    try:
        size = 0
        async for chunk in _views(chunks):
            await asyncio.to_thread(spool.write, chunk)  # a write to a full disk may be slow
            size += len(chunk)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return _read_back(spool), size


async def _read_back(spool: IO[bytes]) -> Chunks:
    try:
        while data := await asyncio.to_thread(spool.read, SPOOL_READ):
            yield memoryview(data)
    finally:
        spool.close()
