"""QEMU's own record of a batch's writes (blklogwrites) feeds the same crash-state check.

The writes a batch made through a RecordingDevice are replayed through QEMU's
blklogwrites driver (HMP `qemu-io`): QEMU must end with the same image, its log must
parse to the same operations, and every crash state of that log must recover. A VM
writing through blklogwrites is checked the same way.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from docteur.guest.device import FileDevice
from docteur.guest.generations import Store
from tests.support.crash import Batch, RecordingDevice, check_crash_states, read_log_writes
from tests.support.git import needs_git
from tests.support.store import AUTHOR, FIRST_FILES, commit_files, writable_image, write_tree

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [needs_git, pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")]

MIN_STATES = 50


def _replay_through_qemu(image: Path, log: Path, ops: list, scratch: Path) -> None:
    """Issue `ops` on `image` through QEMU's blklogwrites driver, logging to `log`."""
    log.write_bytes(b"")
    commands = []
    for i, op in enumerate(ops):
        if op[0] == "flush":
            commands.append('qemu-io lw "flush"')
            continue
        _, off, data = op
        chunk = scratch / f"write{i}.bin"
        chunk.write_bytes(data)
        commands.append(f'qemu-io lw "write -s {chunk} {off} {len(data)}"')
    spec = (
        '{"driver":"blklogwrites","node-name":"lw",'
        f'"file":{{"driver":"file","filename":"{image}"}},'
        f'"log":{{"driver":"file","filename":"{log}"}}}}'
    )
    assert QEMU is not None
    proc = subprocess.run(
        [QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-monitor", "stdio", "-blockdev", spec],
        input="\n".join([*commands, "quit", ""]).encode(), capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    writes = sum(1 for op in ops if op[0] == "write")
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.count(b"wrote ") == writes, proc.stdout.decode(errors="replace")[-2000:]


def test_a_batch_logged_by_qemu_recovers_from_every_crash_state(tmp_path: Path) -> None:
    image = writable_image(tmp_path)
    old = commit_files(image, {**FIRST_FILES, "old.txt": b"the generation before\n"}, when=1)
    before = tmp_path / "before.img"
    shutil.copyfile(image, before)
    files = {**FIRST_FILES, "new.txt": b"logged by QEMU\n", "d/e/f.txt": b"deep\n"}
    with FileDevice(str(image), writable=True) as dev:
        rec = RecordingDevice(dev)
        with Store.open(rec) as store:
            writer = store.begin()
            new = store.commit(writer, write_tree(writer, files), "logged", AUTHOR, when=2)

    replayed, log = tmp_path / "replayed.img", tmp_path / "writes.log"
    shutil.copyfile(before, replayed)
    _replay_through_qemu(replayed, log, rec.ops, tmp_path)
    assert replayed.read_bytes() == image.read_bytes()
    ops = read_log_writes(log)
    assert ops == rec.ops

    with FileDevice(str(before)) as dev, Store.open(dev) as store:
        assert store.area is not None
        first = before.read_bytes()[: store.area.first_end]
    expected = {old[0]: {**FIRST_FILES, "old.txt": b"the generation before\n"}, new[0]: files}
    count = check_crash_states(before, ops, Batch(first, expected, old, new), tmp_path)
    print(f"crash states of QEMU's log: {count}")
    assert count >= MIN_STATES
