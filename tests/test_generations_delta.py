"""Compaction stores older versions as deltas: git's delta format, read back by git."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from docteur.guest.delta import apply_delta
from docteur.guest.deltaenc import make_delta
from docteur.guest.device import FileDevice
from docteur.guest.generations import Store
from tests.support.git import git, needs_git
from tests.support.oracle import export_packs, git_files
from tests.support.store import FIRST_FILES, commit_files, open_store, store_files, writable_image


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=3000),
    st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 80), st.binary(max_size=80)), max_size=6),
)
def test_a_delta_rebuilds_its_target(base: bytes, edits: list[tuple[int, int, bytes]]) -> None:
    target = bytearray(base * 2)
    for at, cut, new in edits:
        target[at : at + cut] = new
    delta = make_delta(base, bytes(target))
    assert apply_delta(base, delta) == bytes(target)


@needs_git
def test_compaction_stores_older_versions_as_deltas(tmp_path: Path) -> None:
    image = writable_image(tmp_path, 32 << 20)
    rng = random.Random(5)
    words = [bytes(rng.choice(b"abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    text = bytearray(b" ".join(rng.choice(words) for _ in range(8000)))
    files = dict(FIRST_FILES)
    commits = []
    for i in range(12):
        at = rng.randrange(len(text))
        text[at:at] = b" edit %d " % i
        files["notes.txt"] = bytes(text)
        files[f"dir/f{i}.txt"] = b"%d\n" % i  # the trees change too
        commits.append((commit_files(image, files, when=i)[0], dict(files)))
    dev, store = open_store(image)
    with dev, store:
        before = sum(e.pack_length for e in store.extents)
    with FileDevice(str(image), writable=True) as dev, Store.open(dev) as store:
        store.compact()
        (extent,) = store.extents
    # Twelve versions of a ~50 KiB text: one whole, eleven small deltas.
    assert extent.pack_length < before / 4
    dev, store = open_store(image)
    with dev, store:
        for commit, expected in commits:
            assert {p: d for p, (_, d) in store_files(store, commit).items()} == expected
    repo = tmp_path / "deltas.git"
    export_packs(str(image), repo)
    git("fsck", "--strict", "--no-dangling", cwd=repo)
    listing = git("verify-pack", "-v", repo / "objects" / "pack" / f"pack-{extent.pack_checksum.hex()}.idx")
    # notes.txt and the trees above it: eleven older versions, each a delta on the next.
    assert b"\nchain length = 11: " in listing and b"chain length = 12" not in listing, listing.decode()
    for commit, expected in commits:
        assert {p: d for p, (_, d) in git_files(repo, commit).items()} == expected
