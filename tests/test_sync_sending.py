"""The objects a push sends (builder/sync/sending.py): whole objects of the image go as
the very PACK entries the image holds, deltas as their result. Every object of an image
with delta chains, written by dulwich as a push writes them, must make a PACK that git's
index-pack takes, holding exactly those objects (git's own ids and fsck the oracle)."""

from __future__ import annotations

import random
from pathlib import Path

from dulwich.object_format import SHA1
from dulwich.pack import write_pack_data

from docteur.builder.stores import readable_store
from docteur.builder.sync.sending import records
from docteur.cli.progress import Progress
from tests.support.git import git
from tests.support.images import packed_image


def _growing_repo(repo: Path) -> Path:
    """A file that grows by a line a commit (its versions are stored as delta chains), and
    an incompressible one (stored whole)."""
    git("init", "-q", "-b", "main", repo)
    (repo / "noise.bin").write_bytes(random.Random(3).randbytes(100_000))
    lines = [f"line {i} of a text that git stores as deltas of one another" for i in range(400)]
    for rev in range(12):
        lines.append(f"added in revision {rev}")
        (repo / "grows.txt").write_text("\n".join(lines) + "\n")
        git("add", "-A", cwd=repo)
        git("commit", "-q", "-m", f"revision {rev}", cwd=repo)
    return repo


def test_every_object_sent_is_the_one_git_has(tmp_path: Path) -> None:
    source = _growing_repo(tmp_path / "src")
    image = packed_image(source, tmp_path / "h.img", history=True)
    listed = git("rev-list", "--objects", "--no-object-names", "--all", cwd=source)
    oids = [bytes.fromhex(h) for h in listed.decode().split()]
    pack = tmp_path / "sent.pack"
    with readable_store(str(image)) as store, pack.open("wb") as out:
        sent = list(records(store, oids, Progress("sending", enabled=False)))
        write_pack_data(out.write, iter(sent), SHA1, num_records=len(sent))
    reused = sum(u.comp_chunks is not None for u in sent)
    assert 0 < reused < len(sent), "both ways of sending (entry reused, delta resolved) are tested"
    repo = tmp_path / "r.git"
    git("init", "-q", "--bare", repo)
    git("index-pack", "--stdin", "--strict", cwd=repo, input=pack.read_bytes())
    have = git("cat-file", "--batch-check=%(objectname)", "--batch-all-objects", cwd=repo)
    assert sorted(have.decode().split()) == sorted(o.hex() for o in oids)
    for ref in git("for-each-ref", "--format=%(objectname)", cwd=source).decode().split():
        git("update-ref", f"refs/heads/b{ref[:8]}", ref, cwd=repo)
    git("fsck", "--strict", "--no-dangling", cwd=repo)
