"""kill -9 of a process committing batch after batch, at random moments: the image holds
the last acknowledged commit or the next one, exactly, and the next writer carries on."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.git import needs_git
from tests.support.store import FIRST_FILES, open_store, store_files, writable_image

pytestmark = needs_git

KILLS = 8
# The writer: batch i adds n<i>.txt (and rewrites big.bin, so batches take a while);
# it prints each commit once `commit` has returned, i.e. once acknowledged.
_WRITER = """
import sys
from docteur.guest.device import FileDevice
from docteur.guest.generations import Store
from tests.support.store import write_tree
from tests.test_generations_kill import files_of

image, start = sys.argv[1], int(sys.argv[2])
with FileDevice(image, writable=True) as dev, Store.open(dev) as store:
    for i in range(start, start + 10_000):
        writer = store.begin()
        tree = write_tree(writer, files_of(i))
        commit, gen = store.commit(writer, tree, f"batch {i}", "K <k@example.com>", when=i)
        print(commit.hex(), gen, flush=True)
"""


def files_of(i: int) -> dict[str, bytes]:
    files = {**FIRST_FILES, **{f"n{j}.txt": b"batch %d\n" % j for j in range(i + 1)}}
    files["big.bin"] = random.Random(i).randbytes(256 << 10)
    return files


def test_kill_9_at_random_moments(tmp_path: Path) -> None:
    image = writable_image(tmp_path, 64 << 20)
    rng = random.Random(9)
    start, acked, gen = 0, None, 0
    outcomes = {"acknowledged": 0, "next": 0}
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(image), str(start)],
            stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        first = proc.stdout.readline()  # one batch done: the writer is in its loop
        assert first, "the writer died on its own"
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        last = [first.split(), *(line.split() for line in out.splitlines())][-1]
        acked, acked_gen = bytes.fromhex(last[0]), int(last[1])
        assert acked_gen > gen
        dev, store = open_store(image)
        with dev, store:
            head, gen = store.head_commit, store.generation
            assert store.warnings() == []
            if head == acked:
                outcomes["acknowledged"] += 1
                assert gen == acked_gen
            else:  # killed after the root was written, before the writer could say so
                outcomes["next"] += 1
                assert gen == acked_gen + 1 and store.commit_object().parents == (acked,)
            message = store.commit_object().message.decode()
            i = int(message.split()[1])
            got = {p: d for p, (_, d) in store_files(store, head).items()}
            assert got == files_of(i)
        start = i + 1
    print(f"kill -9 outcomes: {outcomes}")
    assert outcomes["acknowledged"] > 0
