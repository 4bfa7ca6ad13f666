"""Memory stays bounded: a 100 000-file image is served under 64 MiB of RSS."""

from __future__ import annotations

import asyncio
import random

import pytest

from docteur.vm.client import Client
from tests.support.git import ls_tree
from tests.support.guestproc import GuestProcess
from tests.support.images import packed_image
from tests.support.repos import generate_repo


@pytest.mark.slow
async def test_100k_files_served_under_64_mib(tmp_path) -> None:
    repo = generate_repo(tmp_path / "many.git", files=100_000, commits=1, big=1 << 20)
    image = packed_image(repo, tmp_path / "many.img")
    files = [b"/" + p for _, kind, _, p in ls_tree(repo) if kind == "blob"]
    served = GuestProcess(image, verify="pack")
    try:
        async with await Client.open_unix(served.sock, timeout=60) as client:
            for i in range(0, len(files), 1000):  # every path resolved
                kinds = await asyncio.gather(*(client.exists(f) for f in files[i : i + 1000]))
                assert "absent" not in kinds
            sample = random.Random(1).sample(files, 20_000)
            for i in range(0, len(sample), 500):  # and many of them read
                await asyncio.gather(*(client.get(f) for f in sample[i : i + 500]))
            listed = await client.list("/d3/s2")
            assert len(listed) > 1000
        assert served.peak_rss_mib() < 64
    finally:
        served.close()
