"""Images for the tests, two ways that mean two things.

- `image_of`: through the product (`docteur make`'s own code), as a user gets one.
- `packed_image`: git's own pack and IDX wrapped with guest.layout.write_image, bypassing
  `docteur make`: the reader is tested against what git writes, or on a crafted object set.

The shared images (`generated_image`, `self_image`) are built once per test session.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from docteur.builder.make import make
from docteur.guest.layout import write_image
from tests.support.git import git
from tests.support.repos import generate_repo


def image_of(source: Path, dest: Path, *, rev: str | None = None, date: str | None = None) -> Path:
    """`docteur make file://SOURCE DEST` (a repository, or a plain directory with `date`)."""
    make(f"file://{source}", str(dest), ref=rev, date=date)
    return dest


def packed_image(repo: Path, dest: Path, rev: str = "HEAD", *, history: bool = False,
                 objects: list[bytes] | None = None, ref_deltas: bool = False,
                 keep: bool = False) -> Path:  # fmt: skip
    """An image of `rev` from git's own pack: its tree (like `docteur make`), or with
    `history` every object it reaches, or exactly `objects` (hex ids: a crafted image;
    pack-objects then parses no tree). `ref_deltas`: deltas name their base by id (git's
    default) rather than by offset. `keep` leaves git's PACK and IDX beside `dest`
    (`dest.with_suffix(".pack")`, `".idx"`) to compare the image against."""
    head = git("rev-parse", rev, cwd=repo).strip().decode()
    if objects is None:
        limit = () if history else ("-n1",)
        names = git("rev-list", "--objects", "--no-object-names", *limit, rev, cwd=repo)
    else:
        names = b"".join(oid + b"\n" for oid in objects)
    flags = ("-q",) if ref_deltas else ("-q", "--delta-base-offset")
    pack = git("pack-objects", "--stdout", *flags, cwd=repo, input=names)
    pack_path, idx_path = dest.with_suffix(".pack"), dest.with_suffix(".idx")
    pack_path.write_bytes(pack)
    git("index-pack", "-o", idx_path, pack_path, cwd=repo)
    idx = idx_path.read_bytes()
    if not keep:
        pack_path.unlink()
        idx_path.unlink()
    with dest.open("wb") as out:
        write_image(out, bytes.fromhex(head), io.BytesIO(pack), idx)
    return dest


# -- shared images (built once per test session, whichever module asks first) --
def _once(base: Path, name: str, build: Callable[[Path], object]) -> Path:
    path = base / name
    if not path.exists():
        tmp = base / (name + ".building")
        build(tmp)
        tmp.rename(path)
    return path


def generated_image(base: Path) -> tuple[Path, Path]:
    """(bare repository, image) of the generated repository."""
    repo = base / "gen.git"
    if not repo.exists():
        generate_repo(repo)
    return repo, _once(base, "gen.img", lambda p: packed_image(repo, p))


def self_image(base: Path) -> tuple[Path, Path]:
    """(this checkout, an image of its HEAD)."""
    here = Path(__file__).resolve().parents[2]
    return here, _once(base, "self.img", lambda p: packed_image(here, p))
