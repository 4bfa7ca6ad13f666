"""Below the guest's writes, inside QEMU's block layer (TCG boots):

- blkdebug injects EIO on a write or on a flush (the device reports it: werror=report):
  the batch fails with a clear error and no END, reads go on, writes are refused, and the
  image boots to the generation before;
- blklogwrites records every write and flush the guest issued for a batch: the order is
  data, flush, root, flush, and every crash state of that record recovers to old or new
  (tests/support/crash.py, the enumerator of the host's crash tests).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from docteur.guest.objects import MODE_FILE
from docteur.vm.client import DiskImageError, ReadOnlyError
from docteur.vm.runtime.appliance import Appliance
from tests.support.crash import Batch, check_crash_states, read_log_writes
from tests.support.git import needs_git
from tests.support.store import open_store
from tests.support.vm import needs_vm
from tests.support.writes import head_files, made

pytestmark = [pytest.mark.vm, needs_vm, needs_git]

FIRST = {"README.md": b"# faults\n", "a.txt": b"before\n"}
MIN_STATES = 50

# blkdebug fires on events its parent raises on it, so a raw node sits on top: raw's
# writes raise `pwritev`, its flushes `flush_to_disk`. `once`: one failure, then the
# device works again, as a disk that failed once would (the guest must not trust it).
RULES = {
    "write": 'event = "pwritev"\niotype = "write"\n',
    "flush": 'event = "flush_to_disk"\niotype = "flush"\n',
}


def _blkdebug(image: Path, rules: Path, fault: str) -> dict[str, Any]:
    rules.write_text(f'[inject-error]\n{RULES[fault]}errno = "5"\nonce = "on"\n')
    return {"driver": "raw", "file": {"driver": "blkdebug", "config": str(rules),
                                      "image": {"driver": "file", "filename": str(image)}}}  # fmt: skip


@pytest.mark.parametrize("fault", sorted(RULES))
async def test_an_io_error_fails_the_batch_and_stops_writes(tmp_path: Path, fault: str) -> None:
    image = made(tmp_path, FIRST)
    head, files = head_files(image)
    drive = {"docteur": _blkdebug(image, tmp_path / "rules.conf", fault)}
    async with Appliance(blocks={"docteur": image}, writable=True, blockdevs=drive, timeout=90) as vm:
        client = vm.client
        with pytest.raises(DiskImageError, match=r"I/O error|Input/output error"):
            async with client.batch(message="doomed") as b:
                await b.put("/new.txt", b"never committed\n" * 1000)
        assert b.result is None  # no END
        assert await client.get("/a.txt") == b"before\n"  # reads go on
        assert await client.exists("/new.txt") == "absent"
        with pytest.raises(ReadOnlyError, match="I/O error"):
            await client.put("/again.txt", b"refused")
        info = await client.info()
        assert "I/O error" in info["writable.docteur"] and info["disk.docteur"] == head.hex()
    assert vm.clean_shutdown
    # Booted again (the plain drive): the generation before the batch, verified whole.
    async with Appliance(blocks={"docteur": image}, verify="full", timeout=90) as vm:
        assert vm.greeting is not None and vm.greeting.disks["docteur"] == head.hex()
        assert await vm.client.get("/a.txt") == b"before\n"
        assert await vm.client.exists("/new.txt") == "absent"
    assert head_files(image) == (head, files)


async def test_a_vms_writes_replayed_recover_from_every_crash_state(tmp_path: Path) -> None:
    image = made(tmp_path, FIRST)
    old_head, _ = head_files(image)
    dev, store = open_store(image)
    with dev, store:
        assert store.area is not None
        area, old = store.area, (store.head_commit, store.generation)
    before = tmp_path / "before.img"
    shutil.copyfile(image, before)
    log = tmp_path / "writes.log"
    log.write_bytes(b"")
    logged = {"docteur": {"driver": "blklogwrites", "file": {"driver": "file", "filename": str(image)},
                          "log": {"driver": "file", "filename": str(log)}}}  # fmt: skip
    new_files = {**FIRST, "new.txt": b"logged by QEMU\n", "d/e/f.txt": b"deep\n" * 300}
    async with Appliance(blocks={"docteur": image}, writable=True, blockdevs=logged, timeout=90) as vm:
        async with vm.client.batch(message="logged") as b:
            await b.put("/new.txt", new_files["new.txt"])
            await b.put("/d/e/f.txt", new_files["d/e/f.txt"])
        assert b.result is not None
        new = (b.result.commit, b.result.generation)
    assert vm.clean_shutdown

    ops = read_log_writes(log)
    # The record is the whole story: replayed on the image before, it gives the image after.
    replayed = bytearray(before.read_bytes())
    for op in ops:
        if op[0] == "write":
            replayed[op[1] : op[1] + len(op[2])] = op[2]
    assert bytes(replayed) == image.read_bytes()

    # data ..., flush, the root slot, flush: nothing of the batch is written after its root.
    kinds = ["flush" if op[0] == "flush" else "root" if area.ring <= op[1] < area.data_start else "data"
             for op in ops]  # fmt: skip
    assert kinds.count("root") == 1, kinds
    root = kinds.index("root")
    last_data = max(i for i, k in enumerate(kinds[:root]) if k == "data")
    assert "flush" in kinds[last_data + 1 : root], kinds
    assert "flush" in kinds[root + 1 :] and "data" not in kinds[root + 1 :], kinds

    first = before.read_bytes()[: area.first_end]
    expected = {old_head: FIRST, new[0]: new_files}
    assert {p: (MODE_FILE, d) for p, d in new_files.items()} == head_files(image)[1]
    count = check_crash_states(before, ops, Batch(first, expected, old, new), tmp_path)
    print(f"crash states of the VM's log: {count}")
    assert count >= MIN_STATES
