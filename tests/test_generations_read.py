"""The read path of images with generations: a real server serves the head generation
exactly as git sees it, falls back past a damaged one with one warning, reports what it
serves, shares the image with other readers but never with a writer; `docteur verify`
checks every live generation; plain images are served and verified as they always were."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from docteur.builder.report import report
from docteur.guest.capacity import prepare
from docteur.guest.device import BLOCK, FileDevice, Locked, align_up
from docteur.guest.errors import DocteurError
from docteur.guest.generations import Store
from docteur.guest.image import Image
from docteur.guest.objects import MODE_FILE, TREE, Tree, TreeEntry
from docteur.guest.verify import verify_full, verify_pack
from docteur.vm.client import Client
from tests.support.cli import DOCTEUR, docteur, fails
from tests.support.corrupt import corrupt
from tests.support.git import git, needs_git
from tests.support.guestproc import GuestProcess
from tests.support.history import FIRST, History, build_history, check_served
from tests.support.oracle import git_files
from tests.support.store import AUTHOR, write_tree
from tests.support.vm import needs_vm

pytestmark = needs_git

REMOVED_BY_4 = ["/sub/old.txt", "/sub", "/docs/a.md", "/new/added.txt"]
# What a plain image's greeting and `info` held before images had generations.
# `versions`: every server of protocol 2 lists what it speaks (PROTOCOL.md, version 2).
PLAIN_HELLO = {"status", "verify", "protocol", "versions", "disk.docteur", "verified.docteur"}
PLAIN_INFO = PLAIN_HELLO | {
    "disk", "commit", "tree", "parents", "author", "author_time", "committer", "committer_time",
    "committer_tz", "message", "image", "image_size", "objects",
}  # fmt: skip


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> History:
    return build_history(tmp_path_factory.mktemp("genread"))


def _copy(history: History, tmp_path: Path) -> Path:
    image = tmp_path / "copy.img"
    shutil.copyfile(history.image, image)
    return image


def _newest(image: Path) -> tuple[int, int, int, int]:
    """(newest root record's offset, its PACK's offset and length, its IDX's offset)."""
    with FileDevice(str(image)) as dev, Store.open(dev) as store:
        assert store.head is not None and store.area is not None
        e = store.extents[0]
        return (
            store.area.slot_offset(store.slots.index(store.head)),
            e.pack_offset,
            e.pack_length,
            e.idx_offset,
        )


# -- serving the head ------------------------------------------------------------------
@pytest.mark.parametrize("verify", ["pack", "full", "none"])
async def test_a_server_serves_the_head_as_git_sees_it(history: History, verify: str) -> None:
    head = history.commits[-1]
    with (
        GuestProcess(history.image, verify) as served,
        FileDevice(str(history.image)) as dev,
        Store.open(dev) as store,
    ):
        async with await Client.open_unix(served.sock, timeout=60) as client:
            assert client.hello is not None
            hello = client.hello.fields
            assert hello["disk.docteur"] == head.hex()
            assert (hello["generation.docteur"], hello["skipped.docteur"]) == ("4", "")
            assert hello["free.docteur"] == str(store.free_space())
            await check_served(client, history.repo, head, REMOVED_BY_4)
            info = await client.info()
            assert info["commit"] == head.hex() and info["parents"] == history.commits[-2].hex()
            assert (info["generation"], info["skipped"], info["free"]) == ("4", "", str(store.free_space()))
            assert info["objects"] == str(sum(len(index) for _, index, _ in store.packs()))
        log = served.log.read_text()
    assert f"commit {head.hex()}, generation 4, verify {verify} ok" in log, log
    assert "warning" not in log


async def test_last_modified_follows_the_generations(history: History) -> None:
    """Spelled out (git log is the oracle above): a path keeps the time of the newest
    generation that changed it, a path no generation changed the first one's."""
    first_time = Image.open(str(history.plain)).commit_object().committer.timestamp
    with GuestProcess(history.image) as served:
        async with await Client.open_unix(served.sock, timeout=60) as client:
            assert await client.last_modified("/keep/same.txt") == (first_time, 0)
            assert await client.last_modified("/keep") == (first_time, 0)
            assert await client.last_modified("/readme.txt") == (1_710_001_000, 0)
            assert await client.last_modified("/docs/b.md") == (1_710_002_000, 90)  # renamed in 2
            assert await client.last_modified("/new/renamed.txt") == (1_710_004_000, 0)
            assert await client.last_modified("/") == (1_710_004_000, 0)


def test_docteur_run_unix_serves_the_head(history: History) -> None:
    out = subprocess.run(
        [*DOCTEUR, "run", "--target", "unix", str(history.image), "--filename", "/new/renamed.txt"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"changed in 3\n"


# -- damage ----------------------------------------------------------------------------
def _damage_root(image: Path) -> str:
    root, *_ = _newest(image)
    corrupt(image, root + 200, mask=0x40)
    return "root record in slot .*: checksum mismatch"


def _damage_pack(image: Path) -> str:
    _, pack, length, _ = _newest(image)
    corrupt(image, pack + length // 2, mask=0x40)
    return f"PACK at byte {pack}: checksum mismatch"


def _damage_idx(image: Path) -> str:
    *_, idx = _newest(image)
    corrupt(image, idx + 8 + 4 * 100, mask=0x40)
    return f"IDX at byte {idx}: checksum mismatch"


@pytest.mark.parametrize("damage", [_damage_root, _damage_pack, _damage_idx])
@pytest.mark.parametrize("verify", ["pack", "full"])
async def test_a_damaged_newest_generation_serves_the_one_before(
    history: History, tmp_path: Path, damage, verify: str
) -> None:
    import re

    image = _copy(history, tmp_path)
    why = damage(image)
    previous = history.commits[3]
    with GuestProcess(image, verify) as served:
        async with await Client.open_unix(served.sock, timeout=60) as client:
            assert client.hello is not None
            hello = client.hello.fields
            assert (hello["disk.docteur"], hello["generation.docteur"]) == (previous.hex(), "3")
            warning = hello["skipped.docteur"]
            assert re.fullmatch(f"warning: generation 4 skipped \\({why}\\); serving generation 3", warning)
            assert (await client.info())["skipped"] == warning
            await check_served(client, history.repo, previous, ["/keep2.txt", "/new/renamed.txt"])
        log = served.log.read_text()
    assert log.count("warning") == 1 and f"disk 'docteur': {warning}" in log, log


async def test_all_roots_damaged_serve_the_first_generation(history: History, tmp_path: Path) -> None:
    image = _copy(history, tmp_path)
    with FileDevice(str(image)) as dev, Store.open(dev) as store:
        assert store.area is not None
        slots = [store.area.slot_offset(i) for i, root in enumerate(store.slots) if root is not None]
    assert len(slots) == 4
    for slot in slots:
        corrupt(image, slot + 300, mask=0x40)
    with GuestProcess(image) as served:
        async with await Client.open_unix(served.sock, timeout=60) as client:
            assert client.hello is not None
            hello = client.hello.fields
            assert (hello["disk.docteur"], hello["generation.docteur"]) == (history.commits[0].hex(), "0")
            assert [int(line.split()[2]) for line in hello["skipped.docteur"].split("\n")] == [4, 3, 2, 1]
            assert {p: d for p, (_, d) in git_files(history.repo, history.commits[0]).items()} == FIRST
            await check_served(client, history.repo, history.commits[0], ["/keep2.txt", "/big.bin"])
            # Nothing changed since the first generation: its time, for every path.
            first = (await client.info())["committer_time"]
            assert (await client.last_modified("/readme.txt"))[0] == int(first)


# -- verify ------------------------------------------------------------------------------
def _report(history: History, commit: bytes) -> str:
    with Image.open(str(history.image)) as image:
        return report(commit.hex(), image.commit_object(commit)).decode()


def test_docteur_verify_reports_the_head(history: History, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = docteur(capsys, "verify", history.image)
    assert (rc, err) == (0, "")
    assert out == _report(history, history.commits[-1])
    assert out.startswith(f"commit\t: {history.commits[-1].hex()}\n") and "generation 4" in out
    for check in (verify_pack, verify_full):
        with Image.open(str(history.image), "pack") as image:
            check(image)


def test_docteur_verify_warns_of_a_skipped_generation(
    history: History, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _copy(history, tmp_path)
    _damage_pack(image)
    rc, out, err = docteur(capsys, "verify", image)
    assert rc == 0
    assert out == _report(history, history.commits[3])
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("docteur: warning: generation 4 skipped (PACK at byte"), (
        err
    )


@pytest.mark.parametrize("check", [verify_pack, verify_full])
def test_damage_in_an_extent_fails_verify_naming_it(history: History, tmp_path: Path, check) -> None:
    """Opened without hashing the PACKs (as `--verify none` does), the boot checks find a
    damaged extent and name it."""
    image = _copy(history, tmp_path)
    _, pack, length, _ = _newest(image)
    corrupt(image, pack + length // 2, mask=0x40)
    with Image.open(str(image)) as opened, pytest.raises(DocteurError) as caught:
        assert opened.generation == 4
        check(opened)
    message = str(caught.value)
    assert message.startswith(f"{image}: extent at byte {pack}: PACK checksum mismatch"), message


def test_damage_in_the_first_generation_fails_verify(
    history: History, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = _copy(history, tmp_path)
    with Image.open(str(image)) as opened:
        at = opened.layout.pack_end - 30
    corrupt(image, at, mask=0x40)
    line = fails(capsys, "verify", image)
    assert str(image) in line and "PACK checksum mismatch" in line, line


def test_verify_full_needs_the_head_tree_whole(history: History, tmp_path: Path) -> None:
    """A generation whose tree names a blob no PACK holds: the IDX and PACK checksums
    pass, the full check does not."""
    image = _copy(history, tmp_path)
    ghost = bytes.fromhex("aa" * 20)
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        writer = store.begin()
        tree = writer.add(TREE, Tree.from_entries([TreeEntry(MODE_FILE, b"ghost.txt", ghost)]).as_raw())
        store.commit(writer, tree, "a tree naming a missing blob", AUTHOR)
    with Image.open(str(image), "pack") as opened:
        assert opened.generation == 5
        verify_pack(opened)
        with pytest.raises(
            DocteurError, match=f"blob {'aa' * 20} \\(/ghost.txt\\) is missing from the image"
        ):
            verify_full(opened)


def test_verify_accepts_a_write_area_but_not_garbage(history: History, tmp_path: Path) -> None:
    """The bytes after the first IDX: a write area is no padding error, garbage still is."""
    prepared = tmp_path / "prepared.img"
    shutil.copyfile(history.plain, prepared)
    prepare(str(prepared), 4 << 20)
    with Image.open(str(prepared)) as opened:
        assert (opened.generation, opened.warnings()) == (0, [])
        verify_pack(opened)
        verify_full(opened)
        area_at = align_up(opened.layout.idx_end)
    junk = tmp_path / "junk.img"
    shutil.copyfile(history.plain, junk)
    with open(junk, "r+b") as f:
        f.seek(area_at)
        f.write(b"not a write area" + bytes(BLOCK - 16))
    with Image.open(str(junk)) as opened:
        assert opened.generation == 0
        assert opened.warnings() == [
            f"warning: write area header at byte {area_at} ignored: no write area signature; "
            "serving generation 0"
        ]
        with pytest.raises(DocteurError, match=f"non-zero byte {area_at} in the zero padding after the IDX"):
            verify_pack(opened)


# -- plain images: unchanged ------------------------------------------------------------------
async def test_a_plain_image_reports_what_it_always_did(
    history: History, capsys: pytest.CaptureFixture[str]
) -> None:
    with GuestProcess(history.plain) as served:
        # A protocol-1 session: what a client always saw (version 2 adds its own fields).
        async with await Client.open_unix(served.sock, timeout=60, version=1) as client:
            assert client.hello is not None
            assert set(client.hello.fields) == PLAIN_HELLO
            assert set(await client.info()) == PLAIN_INFO
            await check_served(client, history.repo, history.commits[0], [])
        log = served.log.read_text()
    assert "generation" not in log and "warning" not in log
    rc, out, err = docteur(capsys, "verify", history.plain)
    assert (rc, err) == (0, "")
    first = history.commits[0].hex()
    tree = git("rev-parse", f"{first}^{{tree}}", cwd=history.repo).decode().strip()
    raw = git("cat-file", "commit", first, cwd=history.repo).decode()
    # The original prints the message and a newline only when the commit has one (a
    # directory's commit has none).
    message = raw.split("\n\n", 1)[1] + "\n" if "\n\n" in raw else ""
    name, email = git("log", "-1", "--format=%an%n%ae", first, cwd=history.repo).decode().splitlines()
    assert out == f'commit\t: {first}\nauthor\t: "{name}" <{email}>\nroot\t: {tree}\n\n{message}'


# -- readers and writers ---------------------------------------------------------------------
async def test_a_served_image_refuses_writers_and_shares_with_readers(
    history: History, tmp_path: Path
) -> None:
    image = _copy(history, tmp_path)
    with GuestProcess(image) as served:
        with pytest.raises(Locked) as caught:
            FileDevice(str(image), writable=True)
        assert str(caught.value) == (
            f"{image} is being served by another process (pid {served.proc.pid}): stop it before writing"
        )
        with GuestProcess(image) as second:  # a second reader is welcome
            async with await Client.open_unix(second.sock, timeout=60) as client:
                assert await client.get("/keep2.txt") == b"added in 4\n"
        async with await Client.open_unix(served.sock, timeout=60) as client:
            assert await client.get("/keep2.txt") == b"added in 4\n"  # untouched, still served
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:  # free again
        assert store.generation == 4


async def test_a_server_does_not_start_on_an_image_being_written(history: History, tmp_path: Path) -> None:
    image = _copy(history, tmp_path)
    with FileDevice(str(image), writable=True), GuestProcess(image) as served:
        async with await Client.open_unix(served.sock, timeout=60) as client:
            assert client.hello is not None and not client.hello.ok
            error = client.hello.fields["error"]
    assert error.startswith(f"disk 'docteur' ({image}): cannot open the image: {image} is being written by")


def test_note_own_write_keeps_what_was_checked(history: History, tmp_path: Path) -> None:
    """An in-process writer's batch: the reader re-records the file after it and keeps
    serving; without the call the same batch is a change."""
    from docteur.guest.errors import ImageChanged

    for acknowledge in (True, False):
        image = _copy(history, tmp_path)
        with Image.open(str(image), lock=False) as reader:
            tree = reader.commit_object().tree
            assert reader.read_object(tree)[0] == "tree"  # checked, and remembered as such
            with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
                writer = store.begin()
                store.commit(writer, write_tree(writer, {"x": b"y"}), "own", AUTHOR)
            if acknowledge:
                reader.note_own_write()
                assert reader.read_object(tree)[0] == "tree"
            else:
                with pytest.raises(ImageChanged):
                    reader.read_object(tree)


# -- the microVM ----------------------------------------------------------------------------
@pytest.mark.vm
@needs_vm
async def test_the_microvm_serves_the_head_and_keeps_writers_off(history: History, tmp_path: Path) -> None:
    """One `full` boot (every extent walked from the block device), two disks: the image
    with generations as git sees its head, and a copy whose newest PACK is damaged, served
    as generation 3 with its warning. A writer is refused while QEMU holds the images (its
    read-only attach unshares write)."""
    from docteur.vm.runtime.appliance import Appliance

    damaged = _copy(history, tmp_path)
    _damage_pack(damaged)
    async with Appliance(
        blocks={"docteur": history.image, "damaged": damaged}, verify="full", timeout=120
    ) as vm:
        hello = vm.greeting.fields
        assert (hello["disk.docteur"], hello["generation.docteur"]) == (history.commits[-1].hex(), "4")
        assert (hello["disk.damaged"], hello["generation.damaged"]) == (history.commits[3].hex(), "3")
        assert hello["skipped.docteur"] == "" and "generation 4 skipped" in hello["skipped.damaged"]
        await check_served(vm.client, history.repo, history.commits[-1], REMOVED_BY_4)
        await check_served(vm.client, history.repo, history.commits[3], ["/keep2.txt"], disk="damaged")
        assert "disk 'damaged': warning: generation 4 skipped" in vm.log_tail(200)
        with pytest.raises(Locked, match=f"{history.image} is being served by another process \\(pid "):
            FileDevice(str(history.image), writable=True)


def _rewrite_newest_idx(image: Path) -> int:
    """Change the first CRC32 of the newest extent's IDX and make every checksum agree
    (the IDX's own, the root record's): only rebuilding the IDX can tell. Its PACK's offset."""
    from docteur.guest.idx import _NAMES
    from docteur.guest.objects import sha1

    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        assert store.head is not None and store.area is not None
        root, e = store.head, store.extents[0]
        idx = bytearray(dev.pread(e.idx_length, e.idx_offset))
        count = int.from_bytes(idx[8 + 255 * 4 : 8 + 256 * 4], "big")
        idx[_NAMES + 20 * count] ^= 0x01
        idx[-20:] = sha1(bytes(idx[:-20])).digest()
        block = bytes(idx) + bytes(align_up(len(idx)) - len(idx))
        dev.pwrite(block, e.idx_offset)
        extents = (e._replace(idx_checksum=bytes(idx[-20:])), *root.extents[1:])
        dev.pwrite(root._replace(extents=extents).to_bytes(), store.area.slot_offset(store.slots.index(root)))
        dev.flush()
        return e.pack_offset


def _orphan_head(image: Path) -> int:
    """A generation whose commit's parent is in no PACK (the store always parents the
    head: written here by hand)."""
    from docteur.guest.objects import COMMIT, Commit, Signature

    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        writer = store.begin()
        who = Signature.make("O", "o@example.com", 1, "+0000")
        body = Commit(store.head_tree, (bytes.fromhex("bb" * 20),), who, who, b"orphan\n").as_raw()
        oid = writer.add(COMMIT, body)
        store._publish([writer.finish(), *store.extents], oid)
        return store.generation


@pytest.mark.parametrize(
    ("craft", "why"),
    [
        (_rewrite_newest_idx, "extent at byte {}: PACK entry at .* CRC32 .* differs from the IDX's"),
        (_orphan_head, "commit {} of the head's history is missing from the image"),
    ],
)
def test_verify_full_checks_each_extent_and_the_history(
    history: History, tmp_path: Path, craft, why: str
) -> None:
    """Checksums that all agree yet a wrong extent or history: `pack` passes, `full` fails."""
    image = _copy(history, tmp_path)
    at = craft(image)
    with Image.open(str(image), "pack") as opened:
        assert opened.warnings() == [] and opened.generation >= 4
        verify_pack(opened)
        detail = f"{at}" if craft is _rewrite_newest_idx else "bb" * 20
        with pytest.raises(DocteurError, match=why.format(detail)):
            verify_full(opened)


@pytest.mark.vm
@needs_vm
async def test_the_microvm_does_not_start_on_an_image_being_written(history: History, tmp_path: Path) -> None:
    """Refused before QEMU starts (no boot), in one line: the writer's lock on byte 101
    (QEMU's own refusal, should the writer come later, is said the same way: test_run_rw)."""
    from docteur.vm.runtime.appliance import Appliance, ApplianceError

    image = _copy(history, tmp_path)
    with FileDevice(str(image), writable=True), pytest.raises(ApplianceError) as caught:
        async with Appliance(blocks={"docteur": image}, timeout=60):
            pass
    # (the writer is this very process: /proc does not name it)
    assert str(caught.value) == f"{image} is being written by another process (a docteur writer or QEMU)"
