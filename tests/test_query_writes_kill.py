"""kill -9 of the appliance's writer while a client writes batches through
`docteur run --target unix --rw`, at many moments: mid-put, during the commit, anywhere.

After each kill the image's head is the last commit the client saw acknowledged or the
one it was committing (exact content, per git at the end), `docteur run` ends in one line,
and nothing is left: no process, no socket.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from docteur.vm.client import Client, ClientError
from tests.support.git import git, needs_git
from tests.support.oracle import export_packs, git_files
from tests.support.served import Served
from tests.support.writes import head_files, made

pytestmark = [needs_git, pytest.mark.slow]

ROUNDS = 24
MIB = 1 << 20
Files = dict[str, bytes]
Op = tuple[str, str, bytes | str]  # (put, path, data) | (rm, path, b"") | (mv, source, dest)


def _ops(rng: random.Random, files: Files, tag: str) -> list[Op]:
    """A batch: a big put (1-4 MiB), small puts, a remove and a rename of existing files."""
    ops: list[Op] = [("put", f"/big/{tag}.bin", rng.randbytes(rng.randint(1, 4) * MIB))]
    for n in range(rng.randint(1, 3)):
        ops.append(("put", f"/small/{tag}-{n}.txt", b"%s %d\n" % (tag.encode(), n)))
    names = sorted(files)
    if names:
        ops.append(("rm", "/" + rng.choice(names), b""))
    if len(names) > 1:
        source = "/" + rng.choice([n for n in names if "/" + n != ops[-1][1]])
        ops.append(("mv", source, f"/moved/{tag}.{source.rsplit('/', 1)[1]}"))
    return ops


def _apply(files: Files, ops: list[Op]) -> Files:
    out = dict(files)
    for op, path, arg in ops:
        if op == "put":
            assert isinstance(arg, bytes)
            out[path[1:]] = arg
        elif op == "rm":
            del out[path[1:]]
        else:
            assert isinstance(arg, str)
            out[arg[1:]] = out.pop(path[1:])
    return out


async def _pieces(data: bytes, at: int | None, kill: Callable[[], None]) -> AsyncIterator[bytes]:
    """`data` in 256 KiB chunks; the writer is killed once `at` chunks went out."""
    for n, start in enumerate(range(0, len(data), 1 << 18)):
        if n == at:
            kill()
        yield data[start : start + (1 << 18)]


Acked = list[tuple[bytes, Files]]


async def _write_until_killed(sock: str, rng: random.Random, files: Files, tag: str, moment: str,
                              kill: Callable[[], None]) -> tuple[Acked, Files | None]:  # fmt: skip
    """Batches until the connection dies (the kill comes in the second batch's put or commit,
    or at any `moment`): the acknowledged (commit, files), in order, and the files of the
    batch in flight when it died (None: it died between batches)."""
    acked: Acked = []
    loop = asyncio.get_running_loop()
    if moment == "any":  # a timer, wherever the client is
        loop.call_later(rng.uniform(0.0, 0.6), kill)
    span = 0.0
    in_flight: Files | None = None
    try:
        async with await Client.open_unix(sock, timeout=60) as client:
            for k in range(50):
                ops = _ops(rng, files, f"{tag}.{k}")
                in_flight = _apply(files, ops)
                batch = client.batch(message=f"batch {tag}.{k}")
                await batch.begin()
                for op, path, arg in ops:
                    if op == "put":
                        assert isinstance(arg, bytes)
                        at = rng.randrange(max(1, len(arg) >> 18)) if moment == "put" and k == 1 else None
                        await batch.put(path, _pieces(arg, at, kill), size=len(arg))
                    elif op == "rm":
                        await batch.remove(path)
                    else:
                        await batch.rename(path, str(arg))
                started = loop.time()
                commit = asyncio.ensure_future(batch.commit())
                if moment == "commit" and k == 1:  # before, at or just after its commit point
                    await asyncio.sleep(rng.uniform(0.0, span * 1.2))
                    kill()
                result = await commit
                span = loop.time() - started  # how long a commit takes here
                assert result is not None
                acked.append((result.commit, in_flight))
                files, in_flight = in_flight, None
    except ClientError:
        return acked, in_flight
    raise AssertionError("the writer was never killed")


async def test_kill_9_of_the_writer_mid_batch_leaves_old_or_new(tmp_path: Path) -> None:
    image = made(tmp_path, {"seed/a.txt": b"a\n", "seed/b.txt": b"b\n"}, capacity="1G")
    head, first = head_files(image)
    states: dict[bytes, Files] = {head: {p: d for p, (_, d) in first.items()}}
    history = [head]
    rng = random.Random(9)
    outcomes: dict[str, int] = {}
    mid_batch = 0
    for i in range(ROUNDS):
        with Served(image) as server:
            guest = server.guest_pid()
            whole = i % 6 == 5  # now and then `docteur run` itself dies: its guest follows it

            def kill(server: Served = server, guest: int = guest, whole: bool = whole) -> None:
                os.kill(server.proc.pid if whole else guest, signal.SIGKILL)

            moment = ("put", "commit", "any")[i % 3]
            files = states[history[-1]]
            acked, in_flight = await _write_until_killed(server.sock, rng, files, str(i), moment, kill)
            mid_batch += in_flight is not None
            status, err = server.wait()
            if whole:
                assert status == -signal.SIGKILL
            else:  # the guest's death is reported in one line
                assert status == 1 and err.count("\n") == 1 and "stopped" in err, err
            # (After a kill of `docteur run`, its guest got SIGTERM: it cleans up and exits.)
            assert server.leftovers() == []
        for commit, files in acked:
            states[commit] = files
            history.append(commit)
        head, got = head_files(image)
        files_now = {p: d for p, (_, d) in got.items()}
        outcome = f"{moment}: {'old' if head == history[-1] else 'new'}"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if head == history[-1]:
            assert files_now == states[head], f"round {i}"
        else:  # the batch in flight reached its commit point before the kill
            assert in_flight is not None and files_now == in_flight, f"round {i}"
            states[head] = in_flight
            history.append(head)
    print(f"kill -9 outcomes over {ROUNDS} rounds: {dict(sorted(outcomes.items()))}")
    assert mid_batch >= ROUNDS // 2  # the put and commit moments always hit a batch
    # git's view of the whole history: every acknowledged commit, in order, exact content.
    repo = tmp_path / "check.git"
    assert export_packs(str(image), repo) == history[-1]
    git("fsck", "--strict", "--no-dangling", cwd=repo)
    logged = git("log", "--format=%H", "main", cwd=repo).decode().split()
    assert logged == [c.hex() for c in reversed(history)]
    for commit in history:
        assert {p: d for p, (_, d) in git_files(repo, commit).items()} == states[commit]
