"""`docteur guest build` into the user's cache: --from-manifest gives the same bytes, two
first uses at once build once and leave nothing half-built, bad manifests are one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.cli import DOCTEUR
from tests.support.vm import GUEST

needs_guest = pytest.mark.skipif(
    shutil.which("apt-get") is None or not (GUEST / "manifest.json").exists(),
    reason="needs apt (Debian) and the checkout's guest (make guest)",
)


def docteur(cache: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCTEUR_")}
    return subprocess.Popen([*DOCTEUR, *args], env={**env, "XDG_CACHE_HOME": str(cache)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=900)
    return proc.returncode, out.decode(), err.decode()


def seeded_cache(tmp_path: Path) -> Path:
    """An empty guest cache whose download cache already holds the checkout's .debs."""
    cache = tmp_path / "cache"
    shutil.copytree(GUEST.parent / "debs", cache / "docteur" / "debs", copy_function=os.link)
    return cache


@needs_guest
@pytest.mark.slow
def test_concurrent_builds_from_the_manifest_give_the_same_bytes(tmp_path: Path) -> None:
    manifest = json.loads((GUEST / "manifest.json").read_text())
    if "debs" not in manifest:
        pytest.skip("the checkout's guest predates package SHA-256 in the manifest: make guest")
    cache = seeded_cache(tmp_path)
    given = str(GUEST / "manifest.json")
    procs = [docteur(cache, "guest", "build", "--from-manifest", given) for _ in range(2)]
    results = [finish(p) for p in procs]
    root = cache / "docteur" / "guest"
    key = root / manifest["inputs"]
    for rc, out, err in results:
        assert rc == 0, err
        assert out == f"{key}\n" and "same bytes" in err, err
    built = [err.splitlines() for _, _, err in results if "built " in err]
    assert len(built) == 1  # the other waited, then found it
    # In a pipe, the build is one line (and --from-manifest's verdict), no step or trace line.
    assert len(built[0]) == 2 and built[0][0].startswith(f"guest: built {key}/initrd ("), built
    assert sorted(p.name for p in root.iterdir()) == [".lock", key.name]  # no temp dir left
    for name in ("vmlinuz", "initrd"):
        assert (key / name).read_bytes() == (GUEST / name).read_bytes()


def test_bad_manifests_are_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    bad = tmp_path / "manifest.json"
    bad.write_text("not json")
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"packages": {"libc6": "1"}}))  # no SHA-256: from an older docteur
    cases = [(bad, "not a guest manifest"), (old, "no package versions and SHA-256"),
             (tmp_path / "absent.json", "absent.json")]  # fmt: skip
    if (GUEST / "manifest.json").exists() and shutil.which("apt-get"):
        gone = json.loads((GUEST / "manifest.json").read_text())
        if "debs" in gone:
            gone["packages"]["libc6"] = "0.0-gone"  # a version no mirror has
            (tmp_path / "gone.json").write_text(json.dumps(gone))
            cases.append((tmp_path / "gone.json", "0.0-gone"))
    for path, needle in cases:
        rc, out, err = finish(docteur(cache, "guest", "build", "--from-manifest", str(path)))
        assert rc == 1 and out == "", err
        assert err.count("\n") == 1 and needle in err and "Traceback" not in err, err
        leftovers = list((cache / "docteur" / "guest").glob(".build-*"))
        assert leftovers == [], leftovers
    rc, _, err = finish(docteur(cache, "guest", "path", "--force"))
    assert rc == 1 and err.count("\n") == 1 and "for `guest build`" in err, err
