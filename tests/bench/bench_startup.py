"""The CLI's start-up, against the cheapest peers there are.

Rows (best of RUNS, each command a fresh process, the installed `docteur` script):
- `docteur --version` vs `python -c pass` (the same interpreter)            (info)
- `docteur verify` of a ~4 MB image vs `git verify-pack -v` of its PACK      (goal ≤ 1.2×)
- the imports of `python -X importtime -m docteur.cli verify IMAGE`, summed over the
  top-level ones, site's included, in ms vs the same sum for `python -c pass` (goal ≤ 50 ms)

Bytecode is written first (the environment may set PYTHONDONTWRITEBYTECODE, and an
installed docteur has its .pyc files): compiling the sources on every start is not what a
user pays.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.bench.bench_image import ENV, _run
from tests.support.images import image_of

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "bench" / "startup"
DOCTEUR = str(Path(sys.executable).with_name("docteur"))
RUNS = 9
Row = tuple[str, float, float, str]
BYTECODE_ENV = {k: v for k, v in ENV.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _image() -> tuple[Path, Path]:
    """(a ~4 MB image of text files and a few binaries, git's IDX of its PACK)."""
    image, idx = CACHE / "four.img", CACHE / "four.idx"
    if image.exists() and idx.exists():
        return image, idx
    rng = random.Random(4)
    repo = CACHE / "four"
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]  # fmt: skip
    for d in range(8):
        (repo / f"src{d}").mkdir(parents=True, exist_ok=True)
        for f in range(60):
            lines = (b" ".join(rng.choices(words, k=8)) for _ in range(rng.randint(50, 400)))
            (repo / f"src{d}" / f"f{f}.txt").write_bytes(b"\n".join(lines))
    for i in range(3):
        (repo / f"blob{i}.bin").write_bytes(rng.randbytes(500_000))
    _run("git", "init", "-q", "-b", "main", repo)
    _run("git", "add", "-A", cwd=repo)
    _run("git", "commit", "-q", "-m", "four", cwd=repo)
    image_of(repo, image)
    data = image.read_bytes()
    pack = CACHE / "four.pack"
    pack.write_bytes(data[28 : int.from_bytes(data[20:28], "little")].rstrip(b"\0"))
    _run("git", "index-pack", "-o", idx, pack)
    return image, idx


def _best(*argv: str) -> float:
    best = float("inf")
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(argv, env=BYTECODE_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       check=True)  # fmt: skip
        best = min(best, time.perf_counter() - start)
    return best


def _import_ms(*argv: str) -> float:
    """The smallest (of RUNS) sum of the top-level imports' cumulative times."""
    best = float("inf")
    for _ in range(RUNS):
        err = subprocess.run([sys.executable, "-X", "importtime", *argv], env=BYTECODE_ENV,
                             capture_output=True, check=True).stderr.decode()  # fmt: skip
        top = re.findall(r"^import time:\s+\d+ \|\s+(\d+) \| (?! )", err, re.MULTILINE)
        best = min(best, sum(int(us) for us in top) / 1000)
    return best


def rows() -> list[Row]:
    CACHE.mkdir(parents=True, exist_ok=True)
    image, idx = _image()
    subprocess.run([DOCTEUR, "verify", "-q", image], env=BYTECODE_ENV, check=True)  # writes the .pyc
    size = image.stat().st_size / 1e6
    return [
        ("docteur --version vs python -c pass (s)", _best(DOCTEUR, "--version"),
         _best(sys.executable, "-c", "pass"), "info"),
        (f"docteur verify vs git verify-pack -v, {size:.1f} MB image (s)",
         _best(DOCTEUR, "verify", "-q", str(image)), _best("git", "verify-pack", "-v", str(idx)), "≤ 1.2×"),
        ("imports of python -m docteur.cli verify vs python -c pass (ms)",
         _import_ms("-m", "docteur.cli", "verify", "-q", str(image)), _import_ms("-c", "pass"),
         "≤ 50 ms"),
    ]  # fmt: skip


if __name__ == "__main__":
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    for row in rows():
        print(row)
